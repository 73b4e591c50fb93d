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

from core.errors import UserError
from metrics.backends import BackendUnavailable, PoseBackend

# BlazePose index of each OpenPose COCO-18 joint (nose, neck, right arm, left arm, right leg,
# left leg, right eye, left eye, right ear, left ear); the neck (-1) is the shoulders' midpoint.
OPENPOSE18_FROM_BLAZEPOSE = [0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7]
LEFT_SHOULDER, RIGHT_SHOULDER = 11, 12

INSTALL_HINT = ("pip install 'motion-transfer[pose]' (mediapipe==0.10.21; it pins numpy<2 and "
                "pyarrow<26, so install it in its own environment)")


def to_openpose18(points: np.ndarray) -> np.ndarray:
    """BlazePose joints (..., 33, 2) -> the paper's OpenPose COCO-18 order (..., 18, 2).

    The neck, which BlazePose lacks, is the midpoint of the shoulders (NaN unless both are found).
    """
    points = np.asarray(points, dtype=np.float64)
    out = points[..., [max(index, 0) for index in OPENPOSE18_FROM_BLAZEPOSE], :].copy()
    out[..., 1, :] = (points[..., LEFT_SHOULDER, :] + points[..., RIGHT_SHOULDER, :]) / 2
    return out


class MediapipePose(PoseBackend):
    """Joints in pixels of the single person mediapipe finds per frame.

    joints="blazepose-33" (default) keeps mediapipe's 33 joints (scheme "mediapipe-33");
    joints="openpose-18" maps them to the 18 joints the paper's OpenPose numbers count
    (scheme "mediapipe-openpose-18"), so MKR counts the same joints as the paper's, although
    the detector is still a different one.
    Each frame is processed on its own (`static_image_mode=True`) so that real and generated
    frames are scored the same way, without tracking carrying detections across frames.
    """

    name = "mediapipe-pose"
    scheme = "mediapipe-33"
    num_joints = 33

    def __init__(self, min_visibility: float = 0.5, model_complexity: int = 1,
                 min_detection_confidence: float = 0.5, joints: str = "blazepose-33"):
        if joints not in ("blazepose-33", "openpose-18"):
            raise UserError(f"mediapipe joints {joints!r}; expected 'blazepose-33' or 'openpose-18'")
        try:
            import mediapipe
            solutions_pose = mediapipe.solutions.pose
        except (ImportError, AttributeError) as error:
            raise BackendUnavailable(f"mediapipe is not installed ({error}); {INSTALL_HINT}") from None
        self.min_visibility = float(min_visibility)
        self.openpose18 = joints == "openpose-18"
        if self.openpose18:
            self.scheme, self.num_joints = "mediapipe-openpose-18", 18
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
        return to_openpose18(points) if self.openpose18 else points

    def close(self) -> None:
        self.model.close()


class MediapipeOpenPose18(MediapipePose):
    """mediapipe's joints mapped to OpenPose's 18 (neck = midpoint of the shoulders, missing
    joints NaN, -1 in the paper protocol's tables): the offline substitute for rtpose."""

    name = "mediapipe-openpose-18"
    scheme = "mediapipe-openpose-18"
    num_joints = 18

    def __init__(self, min_visibility: float = 0.5, model_complexity: int = 1,
                 min_detection_confidence: float = 0.5):
        super().__init__(min_visibility, model_complexity, min_detection_confidence, joints="openpose-18")
