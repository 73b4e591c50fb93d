"""OpenPose body joints from the rtpose VGG19 network, the paper's body AKD/MKR (REFERENCE §8).

pose-evaluation's `extract_body_pose` runs tensorboy/pytorch_Realtime_Multi-Person_Pose_Estimation's
`get_model('vgg19')` with the user's `pose_model.pth`: a VGG19 trunk (to conv4_4_CPM, 128
channels at stride 8) and six two-branch stages (38 part-affinity maps, 19 heatmaps). It then
writes, per frame, an (18, 2) array with -1 for a joint type without any heatmap peak; for a
joint type with several peaks the last one it lists wins, so PAF grouping never changes the
stored value. `RtposeNet` rebuilds the network with that repository's module names
(`model0.0.weight` ... `model6_2.12.bias`) so its weights load unchanged.

Decoding here is simpler than the original's, a documented difference: one scale (the frame
resized to 368 px high) instead of four, no left-right flip averaging, and no sub-pixel
refinement of the peaks. Without `pose_model.pth` the backend is unavailable and body tables
fall back to mediapipe mapped to the same 18 joints (not comparable with the paper).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metrics.backends import BackendUnavailable, PoseBackend

log = logging.getLogger(__name__)

WEIGHTS_ENV = "RTPOSE_WEIGHTS"
WEIGHTS_FILE = Path.home() / ".cache" / "motion-transfer" / "pose_model.pth"
BOX_SIZE, STRIDE, PEAK_THRESHOLD = 368, 8, 0.1
NUM_JOINTS = 18

# VGG19 trunk as (name, in, out) convs with 'pool' between groups (all 3x3, padding 1).
TRUNK = [(3, 64), (64, 64), "pool", (64, 128), (128, 128), "pool", (128, 256), (256, 256), (256, 256),
         (256, 256), "pool", (256, 512), (512, 512), (512, 256), (256, 128)]


def _sequential(layers: list) -> nn.Sequential:
    return nn.Sequential(OrderedDict((str(index), layer) for index, layer in enumerate(layers)))


def trunk() -> nn.Sequential:
    """VGG19 to conv4_2 plus conv4_3_CPM and conv4_4_CPM, a ReLU after every conv."""
    layers = []
    for item in TRUNK:
        if item == "pool":
            layers.append(nn.MaxPool2d(2, 2, 0))
        else:
            layers += [nn.Conv2d(item[0], item[1], 3, 1, 1), nn.ReLU(inplace=True)]
    return _sequential(layers)


def stage(inputs: int, outputs: int, first: bool) -> nn.Sequential:
    """Stage 1: three 3x3 convs, 1x1 to 512, 1x1 out. Stages 2-6: five 7x7 convs, 1x1, 1x1 out.
    A ReLU follows every conv but the last."""
    if first:
        shapes = [(inputs, 128, 3), (128, 128, 3), (128, 128, 3), (128, 512, 1), (512, outputs, 1)]
    else:
        shapes = [(inputs, 128, 7)] + [(128, 128, 7)] * 4 + [(128, 128, 1), (128, outputs, 1)]
    layers = []
    for index, (cin, cout, kernel) in enumerate(shapes):
        layers.append(nn.Conv2d(cin, cout, kernel, 1, kernel // 2))
        if index < len(shapes) - 1:
            layers.append(nn.ReLU(inplace=True))
    return _sequential(layers)


class RtposeNet(nn.Module):
    """(B, 3, H, W) BGR / 256 - 0.5 -> (pafs (B, 38, H/8, W/8), heatmaps (B, 19, H/8, W/8))."""

    def __init__(self):
        super().__init__()
        self.model0 = trunk()
        for index in range(1, 7):
            inputs = 128 if index == 1 else 128 + 38 + 19
            setattr(self, f"model{index}_1", stage(inputs, 38, index == 1))
            setattr(self, f"model{index}_2", stage(inputs, 19, index == 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model0(x)  # (B, 128, H/8, W/8)
        pafs, heatmaps = self.model1_1(features), self.model1_2(features)
        for index in range(2, 7):
            joined = torch.cat([pafs, heatmaps, features], 1)  # (B, 185, H/8, W/8)
            pafs = getattr(self, f"model{index}_1")(joined)
            heatmaps = getattr(self, f"model{index}_2")(joined)
        return pafs, heatmaps


def last_peaks(heatmaps: np.ndarray, threshold: float = PEAK_THRESHOLD) -> np.ndarray:
    """(H, W, >=18) heatmaps -> (18, 2) (x, y) of each joint type's last local maximum above
    `threshold` in row-major order (the one extract.py keeps), -1 where there is none."""
    from scipy.ndimage import generate_binary_structure, maximum_filter
    out = -np.ones((NUM_JOINTS, 2))
    footprint = generate_binary_structure(2, 1)
    for joint in range(NUM_JOINTS):
        plane = heatmaps[:, :, joint]
        ys, xs = np.nonzero((maximum_filter(plane, footprint=footprint) == plane) & (plane > threshold))
        if len(ys):
            out[joint] = xs[-1], ys[-1]
    return out


def weights_path(path: str | os.PathLike | None = None) -> Path:
    """`path`, else $RTPOSE_WEIGHTS, else ~/.cache/motion-transfer/pose_model.pth."""
    return Path(path or os.environ.get(WEIGHTS_ENV) or WEIGHTS_FILE)


class RtposeBodyPose(PoseBackend):
    """OpenPose's 18 joints from rtpose VGG19; a joint without a heatmap peak is NaN."""

    name = "body-pose"
    scheme = "openpose-18"
    num_joints = NUM_JOINTS
    paper_equivalent = True

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "cpu"):
        path = weights_path(weights)
        if not path.is_file():
            raise BackendUnavailable(f"rtpose weights not found: put pose-evaluation's pose_model.pth at "
                                     f"{path} (or set ${WEIGHTS_ENV})")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {key.removeprefix("module."): value for key, value in state.items()}
        self.model = RtposeNet()
        self.model.load_state_dict(state)
        self.model = self.model.to(device).eval()
        self.device = device

    def detect_one(self, frame: np.ndarray) -> np.ndarray | None:
        height, width = frame.shape[:2]
        scale = BOX_SIZE / height
        size = (int(round(height * scale)), int(round(width * scale)))
        bgr = torch.from_numpy(np.ascontiguousarray(frame[..., ::-1])).permute(2, 0, 1)[None].float()
        image = F.interpolate(bgr, size=size, mode="bicubic", align_corners=False)  # (1, 3, h, w)
        pad = (0, -size[1] % STRIDE, 0, -size[0] % STRIDE)
        image = F.pad(image / 256 - 0.5, pad, value=0.0)
        with torch.no_grad():
            _, heatmaps = self.model(image.to(self.device))
        heatmaps = F.interpolate(heatmaps.float().cpu(), scale_factor=STRIDE, mode="bicubic", align_corners=False)
        heatmaps = F.interpolate(heatmaps[..., :size[0], :size[1]], size=(height, width), mode="bicubic",
                                 align_corners=False)
        joints = last_peaks(heatmaps[0].permute(1, 2, 0).numpy())  # (18, 2), -1 missing
        joints[(joints == -1).all(axis=1)] = np.nan
        return joints
