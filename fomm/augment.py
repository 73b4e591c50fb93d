"""The original training augmentations (first-order-model `augmentation.py`), applied to
a whole clip at once so that both frames of a training pair move together.

Frames are float32 arrays (T, H, W, 3) in [0, 1]; every random choice is drawn once per
clip from the `numpy.random.Generator` passed in, which the dataset seeds per item, so a
given (epoch, item) always gets the same augmentation whatever worker computes it.

Order as in the original `AllAugmentationTransform`: flip, rotation, resize, crop, jitter.
"""
from __future__ import annotations

import logging

import numpy as np

from core.config import AugmentationParams, CropParams, FlipParams, JitterParams, ResizeParams, RotationParams
from core.frames import resize

log = logging.getLogger(__name__)


def random_flip(frames: np.ndarray, params: FlipParams, rng: np.random.Generator) -> np.ndarray:
    """Reverse time (probability 1/2) or else mirror left-right (probability 1/2).

    As the original's `RandomFlip`, a time flip returns at once: the two never combine, so
    with both enabled a clip is time-flipped 1/2, mirrored 1/4 and unchanged 1/4 of the time.
    """
    if params.time_flip and rng.random() < 0.5:
        return np.ascontiguousarray(frames[::-1])
    if params.horizontal_flip and rng.random() < 0.5:
        return np.ascontiguousarray(frames[:, :, ::-1])
    return frames


def random_rotation(frames: np.ndarray, params: RotationParams, rng: np.random.Generator) -> np.ndarray:
    """Rotate every frame by one angle drawn from U(-degrees, degrees), keeping the size."""
    if params.degrees <= 0:
        return frames
    from skimage.transform import rotate
    angle = rng.uniform(-params.degrees, params.degrees)
    return np.stack([rotate(f, angle, mode="constant", cval=0.0, preserve_range=True, order=1)
                     for f in frames]).astype(np.float32)


def random_resize(frames: np.ndarray, params: ResizeParams, rng: np.random.Generator) -> np.ndarray:
    """Scale every frame by one ratio drawn from U(ratio[0], ratio[1])."""
    low, high = params.ratio
    if low == high == 1.0:
        return frames
    ratio = rng.uniform(low, high)
    height, width = frames.shape[1:3]
    size = (max(1, round(height * ratio)), max(1, round(width * ratio)))
    return resize(frames, size)  # bilinear, anti-aliased


def random_crop(frames: np.ndarray, params: CropParams, rng: np.random.Generator) -> np.ndarray:
    """Crop (zero-padding where the frame is smaller) a `size` window at one random place."""
    crop_h, crop_w = params.size
    t, height, width, c = frames.shape
    pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                                 (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        height, width = frames.shape[1:3]
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    return np.ascontiguousarray(frames[:, top:top + crop_h, left:left + crop_w])


def _grayscale(frames: np.ndarray) -> np.ndarray:
    return frames @ np.array([0.299, 0.587, 0.114], np.float32)  # (T, H, W)


def color_jitter(frames: np.ndarray, params: JitterParams, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue factors drawn once and applied to every frame
    (torchvision's definitions), in a random order as torchvision's ColorJitter does."""
    ops = []
    if params.brightness > 0:
        factor = rng.uniform(max(0.0, 1 - params.brightness), 1 + params.brightness)
        ops.append(lambda x, f=factor: x * f)
    if params.contrast > 0:
        factor = rng.uniform(max(0.0, 1 - params.contrast), 1 + params.contrast)
        ops.append(lambda x, f=factor: (x - _grayscale(x).mean(axis=(1, 2), keepdims=True)[..., None]) * f
                   + _grayscale(x).mean(axis=(1, 2), keepdims=True)[..., None])
    if params.saturation > 0:
        factor = rng.uniform(max(0.0, 1 - params.saturation), 1 + params.saturation)
        ops.append(lambda x, f=factor: (x - _grayscale(x)[..., None]) * f + _grayscale(x)[..., None])
    if params.hue > 0:
        shift = rng.uniform(-params.hue, params.hue)
        ops.append(lambda x, s=shift: _shift_hue(x, s))
    for index in rng.permutation(len(ops)):
        frames = np.clip(ops[index](frames), 0.0, 1.0)
    return frames.astype(np.float32)


def _shift_hue(frames: np.ndarray, shift: float) -> np.ndarray:
    from skimage.color import hsv2rgb, rgb2hsv
    hsv = rgb2hsv(frames)  # (T, H, W, 3)
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    return hsv2rgb(hsv)


class Augmentation:
    """All augmentations a config asks for, in the original's order; identity when none."""

    def __init__(self, params: AugmentationParams | None):
        self.params = params or AugmentationParams()

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(T, H, W, 3) float32 in [0, 1] -> augmented frames (size may change with crop/resize)."""
        p = self.params
        if p.flip_param is not None:
            frames = random_flip(frames, p.flip_param, rng)
        if p.rotation_param is not None:
            frames = random_rotation(frames, p.rotation_param, rng)
        if p.resize_param is not None:
            frames = random_resize(frames, p.resize_param, rng)
        if p.crop_param is not None:
            frames = random_crop(frames, p.crop_param, rng)
        if p.jitter_param is not None:
            frames = color_jitter(frames, p.jitter_param, rng)
        return frames
