"""Body joints from mediapipe's bundled pose model (BlazePose, 33 joints with visibility).

The paper's AKD and MKR for bodies use OpenPose's 18 joints (REFERENCE §2), which does not
run offline here. mediapipe 0.10.21 ships its pose model inside the wheel, so it runs
offline, but it is an optional extra (`pip install 'motion-transfer[pose]'`) because it pins
numpy<2. Its 33 BlazePose joints are a different scheme ("mediapipe-33"): numbers do not
compare with the paper's OpenPose numbers. A joint whose visibility is under
`min_visibility` counts as not found (NaN), which is what MKR counts.
"""
from __future__ import annotations

import numpy as np

from metrics.backends import BackendUnavailable, PoseBackend

INSTALL_HINT = ("pip install 'motion-transfer[pose]' (mediapipe==0.10.21; it pins numpy<2 and "
                "pyarrow<26, so install it in its own environment)")


class MediapipePose(PoseBackend):
    """Joints (33, 2) in pixels of the single person mediapipe finds per frame.

    Each frame is processed on its own (`static_image_mode=True`) so that real and generated
    frames are scored the same way, without tracking carrying detections across frames.
    """

    name = "mediapipe-pose"
    scheme = "mediapipe-33"
    num_joints = 33

    def __init__(self, min_visibility: float = 0.5, model_complexity: int = 1,
                 min_detection_confidence: float = 0.5):
        try:
            import mediapipe
            solutions_pose = mediapipe.solutions.pose
        except (ImportError, AttributeError) as error:
            raise BackendUnavailable(f"mediapipe is not installed ({error}); {INSTALL_HINT}") from None
        self.min_visibility = float(min_visibility)
        try:
            self.model = solutions_pose.Pose(static_image_mode=True, model_complexity=model_complexity,
                                             enable_segmentation=False,
                                             min_detection_confidence=min_detection_confidence)
        except Exception as error:  # a broken install (e.g. a missing bundled .tflite)
            raise BackendUnavailable(f"mediapipe could not load its pose model "
                                     f"({type(error).__name__}: {error}); {INSTALL_HINT}") from None

    def detect_one(self, frame: np.ndarray) -> np.ndarray | None:
        height, width = frame.shape[:2]
        result = self.model.process(np.ascontiguousarray(frame))
        if result.pose_landmarks is None:
            return None
        joints = result.pose_landmarks.landmark
        points = np.array([[joint.x * width, joint.y * height] for joint in joints], dtype=np.float64)
        visible = np.array([joint.visibility for joint in joints]) >= self.min_visibility
        points[~visible] = np.nan  # (33, 2)
        return points

    def close(self) -> None:
        self.model.close()
