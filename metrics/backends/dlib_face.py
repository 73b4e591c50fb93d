"""dlib's 128-d face descriptor (a ResNet trained for face verification), offline.

The paper's AED for faces uses an OpenFace embedding (REFERENCE §2). dlib's descriptor
plays the same role (same person: Euclidean distance under about 0.6 by dlib's own
convention) but lives in a different space, hence scheme "dlib-128".
"""
from __future__ import annotations

import numpy as np

from core import faces
from metrics.backends import IdentityBackend
from metrics.backends.dlib68 import face_box


class DlibFaceIdentity(IdentityBackend):
    """Descriptor (128,) of the largest face in each frame; NaN row where no face is found."""

    name = "dlib-face"
    scheme = "dlib-128"
    dim = 128

    def __init__(self, upsample: int = 1):
        self.upsample = int(upsample)
        faces._encoder()  # load now: a missing model file fails at construction

    def embed_one(self, frame: np.ndarray) -> np.ndarray | None:
        box = face_box(frame, self.upsample)
        if box is None:
            return None
        return faces.descriptor(frame, box)  # (128,)
