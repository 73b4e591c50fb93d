"""Per-frame reconstruction metrics: L1 (the paper's), SSIM and PSNR (scikit-image), LPIPS (optional).

All take a real and a generated clip of the same shape, (T, H, W, 3) uint8, and return one
value per frame, (T,) float64; averaging is left to the caller (the paper averages L1 over
all frames of all test videos, REFERENCE §2).
"""
from __future__ import annotations

import functools
import logging
import warnings

import numpy as np

from core.errors import UserError
from metrics.backends import BackendUnavailable, check_frames

log = logging.getLogger(__name__)


def check_pair(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two clips (T, H, W, 3) uint8 of the same shape."""
    real, fake = check_frames(real), check_frames(fake)
    if real.shape != fake.shape:
        raise UserError(f"generated clip of shape {fake.shape} against real clip of shape {real.shape}; "
                        "expected the same (T, H, W, 3)")
    if len(real) == 0:
        raise UserError(f"empty clips of shape {real.shape}; expected at least one frame")
    return real, fake


def l1(real: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """Mean absolute difference per frame with pixel values in [0, 1] (the paper's L1), (T,)."""
    real, fake = check_pair(real, fake)
    diff = np.abs(real.astype(np.float64) - fake.astype(np.float64)) / 255.0  # (T, H, W, 3)
    return diff.reshape(len(diff), -1).mean(axis=1)


def ssim(real: np.ndarray, fake: np.ndarray, gaussian_weights: bool = False) -> np.ndarray:
    """SSIM per frame over RGB (scikit-image, data range 255; 7x7 uniform window by default), (T,).

    `gaussian_weights=True` gives the 11x11 Gaussian window (sigma 1.5) of Wang et al. 2004.
    """
    from skimage.metrics import structural_similarity
    real, fake = check_pair(real, fake)
    options = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False) if gaussian_weights else {}
    return np.array([structural_similarity(r, f, channel_axis=-1, data_range=255, **options)
                     for r, f in zip(real, fake)], dtype=np.float64)


def psnr(real: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """PSNR in dB per frame (scikit-image, data range 255), (T,); +inf for identical frames."""
    from skimage.metrics import peak_signal_noise_ratio
    real, fake = check_pair(real, fake)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical frames: divide by zero -> inf
        return np.array([peak_signal_noise_ratio(r, f, data_range=255) for r, f in zip(real, fake)],
                        dtype=np.float64)


INSTALL_HINT = ("pip install 'motion-transfer[lpips]' (the lpips package) on a machine that can "
                "download its backbone's ImageNet weights once into the torch hub cache")


class LPIPS:
    """Learned perceptual distance (Zhang et al. 2018) through the `lpips` package, per frame.

    The package ships its linear calibration layers but its backbone (AlexNet/VGG) weights come
    from torchvision's download; without them this raises `BackendUnavailable` at construction.
    """

    def __init__(self, net: str = "alex", device: str = "cpu", batch_size: int = 16):
        try:
            import lpips
        except ImportError as error:
            raise BackendUnavailable(f"lpips is not installed ({error}); {INSTALL_HINT}") from None
        try:
            self.model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
        except Exception as error:  # weight downloads fail with many exception types
            raise BackendUnavailable(f"lpips could not load its {net} weights "
                                     f"({type(error).__name__}: {error}); {INSTALL_HINT}") from None
        self.net, self.device, self.batch_size = net, device, batch_size

    def __call__(self, real: np.ndarray, fake: np.ndarray) -> np.ndarray:
        import torch
        real, fake = check_pair(real, fake)
        def tensor(frames):  # (B, H, W, 3) uint8 -> (B, 3, H, W) in [-1, 1]
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2)
            return x.float() / 127.5 - 1.0
        out = []
        with torch.no_grad():
            for start in range(0, len(real), self.batch_size):
                stop = start + self.batch_size
                out.append(self.model(tensor(real[start:stop]), tensor(fake[start:stop])).flatten().cpu())
        return torch.cat(out).double().numpy() if out else np.zeros(0)


_LPIPS_FAILURES: dict[str, BackendUnavailable] = {}


@functools.lru_cache(maxsize=None)
def _load_lpips(net: str) -> LPIPS:
    return LPIPS(net)


def get_lpips(net: str = "alex") -> LPIPS:
    """One LPIPS model per process (raises BackendUnavailable where it cannot load).

    A failure is remembered, so a run does not retry a weight download for every clip.
    """
    if net in _LPIPS_FAILURES:
        raise _LPIPS_FAILURES[net]
    try:
        return _load_lpips(net)
    except BackendUnavailable as error:
        _LPIPS_FAILURES[net] = error
        raise


def lpips_status(net: str = "alex") -> str:
    """'available' or 'unavailable: <reason and what to install>', never raises."""
    try:
        get_lpips(net)
        return "available"
    except BackendUnavailable as error:
        return f"unavailable: {error}"
