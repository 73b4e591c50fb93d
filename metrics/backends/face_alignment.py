"""The paper's face landmarks: the `face-alignment` package (FAN, 68 2D landmarks).

This is the package the original evaluation used for AKD on VoxCeleb and Nemo
(REFERENCE §2). It downloads its face detector and FAN weights on first use (into torch's
hub cache); without the package or without those weights this backend raises
`BackendUnavailable` at construction, and dlib68 (scheme "dlib-68") is the offline default.

It does not claim `paper_equivalent`: no golden vectors cover face AKD (pose-evaluation's
`extract_face_pose` is not in reference/pose-evaluation-golden.pt), and pose-evaluation pins
no face-alignment version, so the detector and FAN weights of today's release are not shown
to give the original's landmarks. Tables mark its AKD "not comparable" until a golden test
proves it.
"""
from __future__ import annotations

import logging

import numpy as np

from metrics.backends import BackendUnavailable, PoseBackend

log = logging.getLogger(__name__)

INSTALL_HINT = ("pip install 'motion-transfer[face-alignment]' (the face-alignment package) on a "
                "machine that can download its weights once into the torch hub cache")


class FaceAlignmentPose(PoseBackend):
    """Landmarks (68, 2) of one face per frame from FAN; all NaN where no face is found.

    `device`: torch device string for the network (the caller chooses; default CPU).
    `pick`: "first" (the detector's first face, `kp[0]` in pose-evaluation's extract.py) or
    "largest".
    """

    name = "face-alignment"
    scheme = "fan-68"
    num_joints = 68

    def __init__(self, device: str = "cpu", face_detector: str = "sfd", pick: str = "first"):
        if pick not in ("first", "largest"):
            raise BackendUnavailable(f"face-alignment pick {pick!r}; expected 'first' or 'largest'")
        self.pick = pick
        try:
            import face_alignment
        except ImportError as error:
            raise BackendUnavailable(f"face-alignment is not installed ({error}); {INSTALL_HINT}") from None
        # The enum member was renamed from _2D to TWO_D in face-alignment 1.4.
        types = face_alignment.LandmarksType
        landmarks_type = types.TWO_D if hasattr(types, "TWO_D") else types._2D
        try:
            self.model = face_alignment.FaceAlignment(landmarks_type, device=device, flip_input=False,
                                                      face_detector=face_detector)
        except Exception as error:  # weight download failures surface as many exception types
            raise BackendUnavailable(f"face-alignment could not load its weights "
                                     f"({type(error).__name__}: {error}); {INSTALL_HINT}") from None

    def detect_one(self, frame: np.ndarray) -> np.ndarray | None:
        found = self.model.get_landmarks_from_image(np.ascontiguousarray(frame))
        if not found:
            return None
        if self.pick == "first":
            return np.asarray(found[0], dtype=np.float64)[:, :2]  # (68, 2)
        def area(points):
            extent = points[:, :2].max(axis=0) - points[:, :2].min(axis=0)
            return float(extent[0] * extent[1])
        largest = max(found, key=area)
        return np.asarray(largest, dtype=np.float64)[:, :2]  # (68, 2)
