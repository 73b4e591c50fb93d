"""AKD and MKR (REFERENCE §2) from keypoints of real and generated frames.

Keypoints are (T, J, 2) float pixel (x, y) with NaN for joints a pose backend did not find,
as `PoseBackend.detect` returns them. The paper measures in pixels at 256x256: detect on
frames at that size (metrics.evaluate does) or scale the coordinates first.
"""
from __future__ import annotations

import numpy as np

from core.errors import UserError


def _check(kp_real: np.ndarray, kp_fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kp_real, kp_fake = np.asarray(kp_real, dtype=np.float64), np.asarray(kp_fake, dtype=np.float64)
    if kp_real.shape != kp_fake.shape or kp_real.ndim != 3 or kp_real.shape[-1] != 2:
        raise UserError(f"keypoints of shapes {kp_real.shape} and {kp_fake.shape}; "
                        "expected the same (T, J, 2)")
    return kp_real, kp_fake


def found(kp: np.ndarray) -> np.ndarray:
    """Which joints were found, (T, J) bool (both coordinates finite)."""
    return np.isfinite(kp).all(axis=-1)


def akd(kp_real: np.ndarray, kp_fake: np.ndarray, distance: str = "coordinate") -> np.ndarray:
    """Average keypoint distance per frame over joints found in both frames, (T,); NaN if none.

    distance="coordinate" (the original's): mean of |x_r - x_f| and |y_r - y_f| over those
    joints, so a shift by (k, k) pixels gives k. distance="euclidean": mean joint-to-joint
    Euclidean distance (a shift by (k, k) gives k * sqrt(2)).
    """
    kp_real, kp_fake = _check(kp_real, kp_fake)
    both = found(kp_real) & found(kp_fake)  # (T, J)
    if distance == "coordinate":
        per_joint = np.abs(kp_real - kp_fake).mean(axis=-1)  # (T, J)
    elif distance == "euclidean":
        per_joint = np.linalg.norm(kp_real - kp_fake, axis=-1)  # (T, J)
    else:
        raise UserError(f"AKD distance {distance!r}; expected 'coordinate' or 'euclidean'")
    total = np.where(both, per_joint, 0.0).sum(axis=1)
    count = both.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def mkr(kp_real: np.ndarray, kp_fake: np.ndarray) -> np.ndarray:
    """Missing keypoint rate per frame, (T,): of the joints found in the real frame, the share
    not found in the generated frame; NaN for frames where the real frame has no joint."""
    kp_real, kp_fake = _check(kp_real, kp_fake)
    in_real = found(kp_real)  # (T, J)
    lost = in_real & ~found(kp_fake)
    count = in_real.sum(axis=1)
    return np.where(count > 0, lost.sum(axis=1) / np.maximum(count, 1), np.nan)


def scale_to(kp: np.ndarray, size: tuple[int, int], target: int = 256) -> np.ndarray:
    """Keypoints found at frame size (H, W) rescaled to pixels of a target x target frame."""
    height, width = size
    return np.asarray(kp, dtype=np.float64) * np.array([target / width, target / height])
