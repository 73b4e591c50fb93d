"""dlib's offline face models, loaded once per process: the HOG face detector, the
68-point landmark predictor and the 128-d face descriptor (ResNet).

The model files ship in the `face-recognition-models` package; its folder is found with
`importlib.util.find_spec` (no `pkg_resources`). Every function takes an RGB uint8 image
(H, W, 3) and returns numpy arrays in that image's pixel coordinates (x, y).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from core.errors import UserError


def models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise UserError("the face-recognition-models package is not installed "
                        "(pip install face-recognition-models)")
    return Path(spec.origin).parent / "models"


@functools.lru_cache(maxsize=None)
def _detector():
    import dlib
    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def _predictor():
    import dlib
    return dlib.shape_predictor(str(models_dir() / "shape_predictor_68_face_landmarks.dat"))


@functools.lru_cache(maxsize=None)
def _encoder():
    import dlib
    return dlib.face_recognition_model_v1(str(models_dir() / "dlib_face_recognition_resnet_model_v1.dat"))


def _rect(box):
    import dlib
    left, top, right, bottom = (int(round(v)) for v in box)
    return dlib.rectangle(left, top, right, bottom)


def detect_faces(image: np.ndarray, upsample: int = 1) -> np.ndarray:
    """Face boxes (N, 4) as left, top, right, bottom, largest first."""
    image = np.ascontiguousarray(image)
    rects = _detector()(image, upsample)
    boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], dtype=np.float64)
    if len(boxes) == 0:
        return np.zeros((0, 4))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[np.argsort(-areas)]


def largest_face(image: np.ndarray, upsample: int = 1) -> np.ndarray | None:
    """The largest face box (4,) or None."""
    boxes = detect_faces(image, upsample)
    return boxes[0] if len(boxes) else None


def _shape(image: np.ndarray, box: np.ndarray | None):
    """dlib's 68-point shape of the face in `box` (default: the largest found), or None."""
    if box is None:
        box = largest_face(image)
        if box is None:
            return None
    return _predictor()(image, _rect(box))


def landmarks(image: np.ndarray, box: np.ndarray | None = None) -> np.ndarray | None:
    """68 facial landmarks (68, 2) of the face in `box` (default: the largest found), or None."""
    image = np.ascontiguousarray(image)
    shape = _shape(image, box)
    if shape is None:
        return None
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def descriptor(image: np.ndarray, box: np.ndarray | None = None) -> np.ndarray | None:
    """128-d identity descriptor of the face in `box` (default: the largest found), or None."""
    image = np.ascontiguousarray(image)
    shape = _shape(image, box)
    if shape is None:
        return None
    return np.asarray(_encoder().compute_face_descriptor(image, shape), dtype=np.float64)
