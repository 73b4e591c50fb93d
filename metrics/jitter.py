"""Jitter: how much a generated video trembles beyond the motion of the video that drove it.

Two numbers, each per frame (NaN where undefined, with the reason), pooled like every metric
(metrics.protocol.pooled: the mean over every scored frame of every clip):

- `jitter`, the **keypoint acceleration error** (px / frame^2 at 256x256). With landmarks
  p_t (J, 2) of the reference video (the real clip in `evaluate` and `benchmark`, the driving
  video in animation) and q_t of the generated one, both in pixels of the frames resized to
  256x256, the acceleration is the second difference a_t = p_{t+1} - 2 p_t + p_{t-1}, and

      jitter_t = mean over joints j of || a_t^gen(j) - a_t^ref(j) ||_2        (1 <= t <= T-2)

  This is the acceleration error of 3-D human-motion estimation (Kanazawa et al., "Learning
  3D Human Dynamics from Video", CVPR 2019, Sec. 5; reported as "Accel" by VIBE, Kocabas et
  al., CVPR 2020), here on 2-D landmarks: a video whose motion follows the reference scores 0
  whatever its identity (relative motion transfers displacements, so accelerations match),
  and a face trembling by +-e px from frame to frame over a still reference scores 4e. A frame counts only where every
  landmark the average uses was found in frames t-1, t and t+1 on both sides; joints missing
  there are left out of the mean (bodies), a face missing drops the frame (dlib68 finds all
  68 or none). Landmarks come from the pose backend (dlib68 offline for faces); where none
  applies, any (T, J, 2) trajectories can be passed, such as the model's own keypoints
  (benchmarks/smoothing.py reports both).

- `flicker`, the **static-region temporal error** (1/255 per pixel and channel): Lai et al.'s
  temporal warping error ("Learning Blind Video Temporal Consistency", ECCV 2018, Eq. 9) on the
  pixels where the reference video does not move. There its optical flow is zero, so the warp
  is the identity and no flow estimator (with its own version and CPU dependence) is needed;
  the error is taken as a mean absolute difference rather than a squared one, and the
  reference's own frame-to-frame change there (sensor and compression noise) is subtracted,
  so a copy of the reference scores 0:

      static_t = pixels where max over a (2r+1)^2 window of mean_c |R_t - R_{t-1}| <= tau
      flicker_t = mean_{static_t} |G_t - G_{t-1}| - mean_{static_t} |R_t - R_{t-1}|   (t >= 1)

  with R the reference and G the generated frames (uint8, the same size; `evaluate` scores
  them at 256x256), tau = STATIC_THRESHOLD levels and r = STATIC_MARGIN px. It needs the two
  videos to share their geometry (the reconstruction protocol, `evaluate` on a method's
  reconstruction); in cross-identity animation only `jitter` applies.
"""
from __future__ import annotations

import numpy as np

from core.errors import UserError
from metrics.protocol import FrameScores

STATIC_THRESHOLD = 3.0   # uint8 levels (mean over channels) a static pixel changes by at most
STATIC_MARGIN = 2        # px: a pixel this close to a moving one is not static
MIN_STATIC_FRACTION = 0.01  # frames whose static region is smaller are skipped

CLIP_EDGE = "no acceleration at a clip's first and last frames"
NO_LANDMARKS = "landmarks not found in frames t-1, t and t+1 of both videos"
FIRST_FRAME = "no previous frame (a clip's first)"
NO_STATIC_PIXELS = "fewer than 1 % static pixels in the real frame pair"


def acceleration(points: np.ndarray) -> np.ndarray:
    """(T, J, 2) trajectories -> (T, J, 2) second differences p_{t+1} - 2 p_t + p_{t-1}, NaN at
    t = 0 and t = T-1 (and wherever a landmark is NaN in one of the three frames)."""
    points = np.asarray(points, np.float64)
    if points.ndim != 3 or points.shape[-1] != 2:
        raise UserError(f"landmarks of shape {points.shape}: expected (T, J, 2)")
    out = np.full_like(points, np.nan)
    if len(points) >= 3:
        out[1:-1] = points[2:] - 2 * points[1:-1] + points[:-2]
    return out


def acceleration_error(reference: np.ndarray, generated: np.ndarray) -> FrameScores:
    """`jitter` per frame (see the module): mean over joints of |a_gen - a_ref| (L2), in the
    landmarks' units (pixels at 256x256 for the pose backends)."""
    reference, generated = np.asarray(reference, np.float64), np.asarray(generated, np.float64)
    if reference.shape != generated.shape:
        raise UserError(f"landmarks of shapes {reference.shape} and {generated.shape}; expected the same (T, J, 2)")
    distance = np.linalg.norm(acceleration(generated) - acceleration(reference), axis=-1)  # (T, J)
    found = np.isfinite(distance)
    counts = found.sum(axis=1)
    values = np.where(counts > 0, np.where(found, distance, 0).sum(axis=1) / np.maximum(counts, 1), np.nan)
    reasons = ["" if counts[t] else CLIP_EDGE if t in (0, len(values) - 1) else NO_LANDMARKS
               for t in range(len(values))]
    return FrameScores(values, reasons)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of (H, W) by a (2 radius + 1)^2 square (separable running maximum)."""
    if radius <= 0:
        return mask
    for axis in (0, 1):
        padded = np.pad(mask, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=axis)
        mask = windows.any(axis=-1)
    return mask


def static_flicker(reference: np.ndarray, generated: np.ndarray, threshold: float = STATIC_THRESHOLD,
                   margin: int = STATIC_MARGIN) -> FrameScores:
    """`flicker` per frame (see the module) of `generated` against `reference`, (T, H, W, 3)
    uint8 of one shape; frame 0 and frames with under MIN_STATIC_FRACTION static pixels are
    skipped."""
    reference, generated = np.asarray(reference), np.asarray(generated)
    if reference.shape != generated.shape or reference.ndim != 4:
        raise UserError(f"frames of shapes {reference.shape} and {generated.shape}; expected the same (T, H, W, 3)")
    values, reasons = [np.nan], [FIRST_FRAME]
    for t in range(1, len(reference)):
        change_ref = np.abs(reference[t].astype(np.float32) - reference[t - 1]).mean(axis=-1)  # (H, W)
        static = ~_dilate(change_ref > threshold, margin)
        if static.sum() < MIN_STATIC_FRACTION * static.size:
            values.append(np.nan), reasons.append(NO_STATIC_PIXELS)
            continue
        change_gen = np.abs(generated[t].astype(np.float32) - generated[t - 1]).mean(axis=-1)
        values.append(float(change_gen[static].mean(dtype=np.float64) - change_ref[static].mean(dtype=np.float64)))
        reasons.append("")
    return FrameScores(np.asarray(values[:len(reference)], np.float64), reasons[:len(reference)])
