"""68 facial landmarks from dlib (HOG face detector + shape predictor), offline.

The paper's AKD for faces uses the face-alignment network's 68 landmarks (REFERENCE §2);
dlib's predictor follows the same iBUG 68-point scheme but is a different model, so its
numbers are declared under scheme "dlib-68" and do not compare with "fan-68" numbers.
"""
from __future__ import annotations

import collections
import hashlib

import numpy as np

from core import faces
from metrics.backends import PoseBackend

_BOXES: collections.OrderedDict = collections.OrderedDict()
_BOX_CACHE_SIZE = 512


def face_box(frame: np.ndarray, upsample: int = 1) -> np.ndarray | None:
    """The largest face box of a frame, remembered for the last few hundred frames.

    dlib68 and dlib-face both need the box of the same frames when a clip is scored; the HOG
    detector is most of their cost, so the second asks the cache (keyed by the frame's bytes).
    """
    frame = np.ascontiguousarray(frame)
    key = (hashlib.blake2b(frame.data, digest_size=16).digest(), frame.shape, upsample)
    if key in _BOXES:
        _BOXES.move_to_end(key)
        return _BOXES[key]
    box = faces.largest_face(frame, upsample)
    _BOXES[key] = box
    if len(_BOXES) > _BOX_CACHE_SIZE:
        _BOXES.popitem(last=False)
    return box


def clear_face_boxes() -> None:
    """Forget remembered face boxes (benchmarks time the detector, not the cache)."""
    _BOXES.clear()


class Dlib68Pose(PoseBackend):
    """Landmarks (68, 2) of the largest face in each frame; a frame without a face is all NaN.

    `upsample`: how many times dlib's detector doubles the image before searching; 1 finds
    faces down to about 40 px, which covers 256x256 crops. dlib places all 68 landmarks
    whenever it finds the face, so on faces MKR is the share of frames whose face was lost.
    """

    name = "dlib68"
    scheme = "dlib-68"
    num_joints = 68

    def __init__(self, upsample: int = 1):
        self.upsample = int(upsample)
        faces._predictor()  # load now: a missing model file fails at construction

    def detect_one(self, frame: np.ndarray) -> np.ndarray | None:
        box = face_box(frame, self.upsample)
        if box is None:
            return None
        return faces.landmarks(frame, box)  # (68, 2)
