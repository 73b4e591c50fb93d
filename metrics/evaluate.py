"""Score one generated clip against its real clip, one row per frame (REFERENCE §2).

    score_clip(real, fake, pose="dlib68", identity="dlib-face", protocol="paper") -> DataFrame
        frame, l1, ssim, psnr, akd, mkr, aed, [lpips], akd_skip, mkr_skip, aed_skip (why a
        frame has no value), joints_real, joints_fake (joints found per frame),
        identity_real, identity_fake (bool), jitter, jitter_skip, flicker, flicker_skip
        (metrics/jitter.py: keypoint acceleration error, static-region flicker)

L1, SSIM, PSNR and LPIPS compare the frames at their own size. Keypoints are detected on
frames resized to 256x256, so AKD is in pixels at 256x256 as in the paper. NaN marks a
frame where a backend found nothing; the counts of missing detections are in the
`joints_*` / `identity_*` columns and in `frame.attrs`.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from core.frames import resize
from metrics import jitter as jitter_metrics
from metrics import keypoints as keypoint_metrics
from metrics import protocol as paper_protocol
from metrics import reconstruction
from metrics.backends import (BackendUnavailable, IdentityBackend, PoseBackend, get_identity_backend,
                              get_pose_backend)

log = logging.getLogger(__name__)

KEYPOINT_SIZE = 256


def resize_frames(frames: np.ndarray, size: int = KEYPOINT_SIZE) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) with the metrics' filter (core.frames.resize
    "bicubic": exact anti-aliased PIL bicubic); unchanged if already that size."""
    return resize(frames, (size, size), "bicubic")


def keypoints_at_256(pose: PoseBackend, frames: np.ndarray) -> np.ndarray:
    """Keypoints (T, J, 2) in pixels of the frames resized to 256x256 (the paper's AKD scale)."""
    return pose.detect(resize_frames(frames))


def _pose(pose) -> PoseBackend | None:
    return get_pose_backend(pose) if isinstance(pose, str) else pose


def _identity(identity) -> IdentityBackend | None:
    return get_identity_backend(identity) if isinstance(identity, str) else identity


def _lpips_column(real, fake, lpips) -> tuple[np.ndarray, str]:
    """LPIPS per frame and a status; NaN and 'unavailable: ...' when the package cannot load."""
    try:
        model = reconstruction.get_lpips() if lpips is True else lpips
        return model(real, fake), "available"
    except BackendUnavailable as error:
        log.warning("LPIPS unavailable, column left NaN: %s", error)
        return np.full(len(real), np.nan), f"unavailable: {error}"


def score_clip(real: np.ndarray, fake: np.ndarray, pose: PoseBackend | str | None = None,
               identity: IdentityBackend | str | None = None, lpips=False, aed_squared: bool | None = None,
               real_keypoints: np.ndarray | None = None,
               real_embeddings: np.ndarray | None = None, protocol: str = "project",
               l1: np.ndarray | None = None) -> pd.DataFrame:
    """Per-frame metrics of `fake` against `real`, both (T, H, W, 3) uint8 of the same shape.

    pose / identity: a backend, its registry name, or None (columns akd, mkr / aed are NaN).
    lpips: False, True (the default LPIPS model) or an `LPIPS` instance; an LPIPS that cannot
    load leaves the column NaN with `attrs['lpips_status']` saying why, never raises.
    protocol: "paper" (pose-evaluation's arithmetic, metrics.protocol: squared-L2 AED, no
    MKR for faces) or "project" (L2 AED); aed_squared overrides the AED distance.
    real_keypoints / real_embeddings: the real clip's detections at 256x256, when scoring
    several models against the same real clip (computed here otherwise).
    l1: per-frame L1 the caller already has from the model's float output (the reconstruction
    protocol, fomm.reconstruction); taken from the uint8 frames when None.
    Columns `akd_skip`, `mkr_skip`, `aed_skip` give the reason a frame's value is missing.
    """
    real, fake = reconstruction.check_pair(real, fake)
    protocol = paper_protocol.check_protocol(protocol)
    squared = protocol == "paper" if aed_squared is None else aed_squared
    pose, identity = _pose(pose), _identity(identity)
    count = len(real)
    table = pd.DataFrame({"frame": np.arange(count, dtype=np.int64),
                          "l1": reconstruction.l1(real, fake) if l1 is None else np.asarray(l1, np.float64),
                          "ssim": reconstruction.ssim(real, fake),
                          "psnr": reconstruction.psnr(real, fake)})
    attrs = {"protocol": protocol}
    no_backend = ["no backend"] * count
    table["akd"], table["mkr"] = np.nan, np.nan
    table["akd_skip"], table["mkr_skip"] = no_backend, no_backend
    table["joints_real"], table["joints_fake"] = 0, 0
    if pose is not None:
        kp_real = keypoints_at_256(pose, real) if real_keypoints is None else real_keypoints
        kp_fake = keypoints_at_256(pose, fake)  # (T, J, 2)
        akd, mkr = keypoint_scores(kp_real, kp_fake, pose, protocol)
        table["akd"], table["akd_skip"] = akd.values, akd.reasons
        table["mkr"], table["mkr_skip"] = mkr.values, mkr.reasons
        table["joints_real"] = keypoint_metrics.found(kp_real).sum(axis=1)
        table["joints_fake"] = keypoint_metrics.found(kp_fake).sum(axis=1)
        attrs.update(pose_backend=pose.name, pose_scheme=pose.scheme)
    _jitter_columns(table, real, fake, (kp_real, kp_fake) if pose is not None else None)
    table["aed"], table["aed_skip"] = np.nan, no_backend
    table["identity_real"], table["identity_fake"] = False, False
    if identity is not None:
        emb_real = identity.embed(resize_frames(real)) if real_embeddings is None else real_embeddings
        emb_fake = identity.embed(resize_frames(fake))  # (T, D)
        aed = paper_protocol.aed(emb_real, emb_fake, squared=squared)
        table["aed"], table["aed_skip"] = aed.values, aed.reasons
        table["identity_real"] = np.isfinite(emb_real).all(axis=1)
        table["identity_fake"] = np.isfinite(emb_fake).all(axis=1)
        attrs.update(identity_backend=identity.name, identity_scheme=identity.scheme,
                     aed_distance="squared-l2" if squared else "l2")
    if lpips is not False:
        table["lpips"], attrs["lpips_status"] = _lpips_column(real, fake, lpips)
    table.attrs.update(attrs)
    table.attrs.update(missing_counts(table))
    return table


def _jitter_columns(table: pd.DataFrame, real: np.ndarray, fake: np.ndarray, keypoints) -> None:
    """jitter (the pose backend's landmarks at 256x256; "no backend" without one) and flicker
    (the frames at their own size), metrics/jitter.py."""
    table["jitter"], table["jitter_skip"] = np.nan, ["no backend"] * len(table)
    if keypoints is not None:
        scores = jitter_metrics.acceleration_error(*keypoints)
        table["jitter"], table["jitter_skip"] = scores.values, scores.reasons
    scores = jitter_metrics.static_flicker(real, fake)
    table["flicker"], table["flicker_skip"] = scores.values, scores.reasons


FACES_HAVE_NO_MKR = "faces: pose-evaluation reports no MKR"


def keypoint_scores(kp_real: np.ndarray, kp_fake: np.ndarray, pose: PoseBackend,
                    protocol: str) -> tuple[paper_protocol.FrameScores, paper_protocol.FrameScores]:
    """(AKD, MKR) per frame from (T, J, 2) keypoints with NaN for joints not found.

    68 landmarks are a face: AKD as cmp_kp.py (a frame whose generated face is missing is
    skipped); under the paper protocol MKR is left out, since pose-evaluation has none for
    faces. Other schemes go through cmp_with_missing.py's arithmetic (missing joints as -1).
    """
    mkr, akd = paper_protocol.body_mkr_akd(paper_protocol.openpose_values(kp_real),
                                           paper_protocol.openpose_values(kp_fake))
    if pose.num_joints == 68:
        akd = paper_protocol.face_akd(paper_protocol.face_values(kp_real), paper_protocol.face_values(kp_fake))
        if protocol == "paper":
            mkr = paper_protocol.FrameScores(np.full(len(kp_real), np.nan), [FACES_HAVE_NO_MKR] * len(kp_real))
    return akd, mkr


def embeddings_at_256(identity: IdentityBackend, frames: np.ndarray) -> np.ndarray:
    """Identity embeddings (T, D) of the frames resized to 256x256, as score_clip computes them."""
    return identity.embed(resize_frames(frames))


def missing_counts(table: pd.DataFrame) -> dict:
    """Frames where the pose backend found nothing and where the identity backend found no subject."""
    has_pose = "pose_backend" in table.attrs
    has_identity = "identity_backend" in table.attrs
    return {
        "frames": int(len(table)),
        "pose_missing_real": int((table["joints_real"] == 0).sum()) if has_pose else None,
        "pose_missing_fake": int((table["joints_fake"] == 0).sum()) if has_pose else None,
        "identity_missing_real": int((~table["identity_real"]).sum()) if has_identity else None,
        "identity_missing_fake": int((~table["identity_fake"]).sum()) if has_identity else None,
    }
