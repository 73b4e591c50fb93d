"""The paper's evaluation arithmetic: AliaksandrSiarohin/pose-evaluation (REFERENCE §8).

pose-evaluation's `extract.py` writes one value per frame and its `cmp*.py` scripts reduce
them. The functions here take the very values those scripts read and return one number per
frame (NaN where the script skips the frame) with the reason of every skip:

- face AKD (`cmp_kp.py`): a frame's value is a (68, 2) landmark array at 256x256, or None
  when face-alignment found no face. Per frame: mean |real - generated| over the 68x2
  coordinates; frames whose generated value is None are skipped. A None real value beside a
  generated one makes the script stop with a TypeError (None - array); here such a frame is
  skipped and counted under its own reason, so the count tells whether the original would
  have run at all.
- body MKR and AKD (`cmp_with_missing.py`): (18, 2) OpenPose joints, (-1, -1) for a joint not
  found. MKR per frame: joints present in the real frame but not in the generated one, over
  joints present in the real frame (frames with none skipped). AKD per frame: mean |diff| over
  the coordinates of joints present in both (frames with none skipped).
- AED (`cmp.py`): per frame the sum of squared differences of the two embeddings (squared L2),
  no frame skipped (OpenFace embeds every frame). cmp.py has summed squares since
  pose-evaluation commit 5a5c45e ("Add all the metrics"); only its first two commits (54e33b4
  among them) reduced a frame with the mean |diff|.

Every number is then the mean over the remaining frames of all videos pooled (`pooled`), not
a mean of per-video means. The project's own protocol ("project") differs: AED is plain L2.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from core.errors import UserError

PROTOCOLS = ("paper", "project")
MISSING = -1.0  # OpenPose's marker for a joint not found

# Skip reasons, as written in per-frame tables and summaries.
NO_FAKE_FACE = "no face in generated frame"
NO_REAL_FACE = "no face in real frame (pose-evaluation's cmp_kp.py stops with a TypeError here)"
NO_REAL_JOINT = "no joint in real frame"
NO_SHARED_JOINT = "no joint found in both frames"
NO_EMBEDDING = "no embedding (the identity backend found no subject)"


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r}; expected one of {list(PROTOCOLS)}")
    return protocol


@dataclass
class FrameScores:
    """One value per frame (NaN where skipped) and why each skipped frame was skipped."""
    values: np.ndarray  # (T,)
    reasons: list[str] = field(default_factory=list)  # (T,) "" where scored

    @property
    def skipped(self) -> dict[str, int]:
        return dict(Counter(reason for reason in self.reasons if reason))


def _scores(values: list[float], reasons: list[str]) -> FrameScores:
    return FrameScores(np.asarray(values, dtype=np.float64), reasons)


def face_akd(real: list, fake: list) -> FrameScores:
    """cmp_kp.py per frame: real/fake are sequences of (68, 2) arrays or None."""
    if len(real) != len(fake):
        raise UserError(f"{len(real)} real and {len(fake)} generated frames; expected the same number")
    values, reasons = [], []
    for kp_real, kp_fake in zip(real, fake):
        if kp_fake is None:
            values.append(np.nan), reasons.append(NO_FAKE_FACE)
        elif kp_real is None:
            values.append(np.nan), reasons.append(NO_REAL_FACE)
        else:
            diff = np.abs(np.asarray(kp_real, np.float64) - np.asarray(kp_fake, np.float64))
            values.append(float(diff.mean())), reasons.append("")
    return _scores(values, reasons)


def present(joints: np.ndarray) -> np.ndarray:
    """Which OpenPose joints were found: (..., J, 2) -> (..., J) bool (not both -1)."""
    return ~(np.asarray(joints) == MISSING).all(axis=-1)


def body_mkr_akd(real: np.ndarray, fake: np.ndarray) -> tuple[FrameScores, FrameScores]:
    """cmp_with_missing.py per frame: real/fake (T, 18, 2) with -1 for missing joints."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.shape != fake.shape or real.ndim != 3 or real.shape[-1] != 2:
        raise UserError(f"joints of shapes {real.shape} and {fake.shape}; expected the same (T, 18, 2)")
    in_real, in_fake = present(real), present(fake)  # (T, J)
    mkr, mkr_reasons, akd, akd_reasons = [], [], [], []
    for frame in range(len(real)):
        count_real = int(in_real[frame].sum())
        if count_real == 0:
            mkr.append(np.nan), mkr_reasons.append(NO_REAL_JOINT)
        else:
            lost = int((in_real[frame] & ~in_fake[frame]).sum())
            mkr.append(lost / count_real), mkr_reasons.append("")
        both = in_real[frame] & in_fake[frame]  # (J,)
        if not both.any():
            akd.append(np.nan), akd_reasons.append(NO_SHARED_JOINT)
        else:
            akd.append(float(np.abs(real[frame][both] - fake[frame][both]).mean())), akd_reasons.append("")
    return _scores(mkr, mkr_reasons), _scores(akd, akd_reasons)


def aed(real: np.ndarray, fake: np.ndarray, squared: bool = True) -> FrameScores:
    """cmp.py per frame: sum of squared differences (squared=False: its square root, the
    project's protocol). A NaN row (a substitute backend that found no subject) is skipped."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.shape != fake.shape or real.ndim != 2:
        raise UserError(f"embeddings of shapes {real.shape} and {fake.shape}; expected the same (T, D)")
    squared_distance = ((real - fake) ** 2).sum(axis=1)  # (T,)
    values = squared_distance if squared else np.sqrt(squared_distance)
    reasons = [NO_EMBEDDING if not np.isfinite(value) else "" for value in values]
    return FrameScores(values, reasons)


def face_values(keypoints: np.ndarray) -> list:
    """A pose backend's (T, 68, 2) with NaN -> what extract.py stores: an array, or None
    for a frame without a face."""
    return [None if not np.isfinite(frame).all() else frame for frame in np.asarray(keypoints, np.float64)]


def openpose_values(keypoints: np.ndarray) -> np.ndarray:
    """A pose backend's (T, 18, 2) with NaN -> extract.py's convention, -1 for a missing joint."""
    keypoints = np.asarray(keypoints, np.float64).copy()
    keypoints[~np.isfinite(keypoints).all(axis=-1)] = MISSING
    return keypoints


def pooled(parts: list[FrameScores]) -> dict:
    """The mean over every scored frame of every video, with the frame counts behind it:
    {value, frames, scored, skipped: {reason: count}} (value None when no frame is scored)."""
    values = np.concatenate([part.values for part in parts]) if parts else np.zeros(0)
    reasons = Counter()
    for part in parts:
        reasons.update(part.skipped)
    scored = np.isfinite(values)
    return {"value": float(values[scored].mean()) if scored.any() else None,
            "frames": int(len(values)), "scored": int(scored.sum()), "skipped": dict(reasons)}
