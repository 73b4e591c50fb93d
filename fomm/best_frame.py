"""`--find-best-frame`: the driving frame whose face pose is closest to the source's.

Relative motion transfer (FOMM Eq. 8) applies each driving frame's displacement from an
*initial* driving frame to the source's keypoints; it works best when the initial driving
frame has the source's pose. As in the original demo, each face's 68 landmarks are
normalised (centred, divided by the square root of their convex hull's area) and the frame
with the smallest summed squared distance to the source's wins.

Landmarks come from face-alignment (2D-FAN) when it is importable and its weights are
already in torch's hub cache (no download at run time), else from dlib's offline 68-point
predictor (core/faces.py).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from core.errors import UserError

logger = logging.getLogger(__name__)


def normalize_landmarks(points: np.ndarray) -> np.ndarray:
    """(68, 2) pixel landmarks -> centred, scale-free landmarks (68, 2)."""
    from scipy.spatial import ConvexHull
    centred = points - points.mean(axis=0, keepdims=True)
    area = ConvexHull(points).volume  # in 2-D, `volume` is the area
    return centred / np.sqrt(max(area, 1e-12))


def _face_alignment_weights_cached() -> bool:
    import torch
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return any(checkpoints.glob("2DFAN4*")) and any(checkpoints.glob("s3fd*"))


@functools.lru_cache(maxsize=1)
def _face_alignment_model():
    import face_alignment
    landmarks_type = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
    return face_alignment.FaceAlignment(landmarks_type, flip_input=True, device="cpu")


def landmark_backend(name: str = "auto") -> str:
    """'face-alignment' when requested/available with cached weights, else 'dlib'."""
    available = importlib.util.find_spec("face_alignment") is not None and _face_alignment_weights_cached()
    if name == "face-alignment" and not available:
        raise UserError("--landmarks face-alignment: the face-alignment package or its weights "
                        "(2DFAN4, s3fd in torch's hub cache) are not installed")
    if name not in ("auto", "dlib", "face-alignment"):
        raise UserError(f"--landmarks {name!r}: expected auto, dlib or face-alignment")
    if name == "auto":
        return "face-alignment" if available else "dlib"
    return name


def landmarks_fn(backend: str) -> Callable[[np.ndarray], np.ndarray | None]:
    """A function (H, W, 3) uint8 -> (68, 2) landmarks or None for the chosen backend."""
    if backend == "face-alignment":
        def detect(image):
            found = _face_alignment_model().get_landmarks(image)
            return None if not found else np.asarray(found[0][:, :2], dtype=np.float64)
        return detect
    from core import faces
    return faces.landmarks


def find_best_frame(source: np.ndarray, driving_frames: Iterable[np.ndarray],
                    backend: str = "auto") -> int:
    """Index of the driving frame (streamed, one at a time) whose normalised landmarks are
    closest to `source`'s. Frames without a face are skipped; UserError if the source or
    every driving frame has no face."""
    detect = landmarks_fn(landmark_backend(backend))
    source_points = detect(source)
    if source_points is None:
        raise UserError("--find-best-frame: no face found in the source image")
    target = normalize_landmarks(source_points)
    best_index, best_distance, seen = -1, np.inf, 0
    for index, frame in enumerate(driving_frames):
        seen += 1
        points = detect(frame)
        if points is None:
            continue
        distance = float(((normalize_landmarks(points) - target) ** 2).sum())
        if distance < best_distance:
            best_index, best_distance = index, distance
    if best_index < 0:
        raise UserError(f"--find-best-frame: no face found in any of the {seen} driving frames")
    logger.info("best frame: %d of %d (landmark distance %.4f)", best_index, seen, best_distance)
    return best_index
