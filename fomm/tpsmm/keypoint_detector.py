"""TPSMM's keypoint detector (Sec. 3.1; modules/keypoint_detector.py): a ResNet-18 regressing
the 5K keypoints of K thin-plate splines directly, no heatmaps.

`fg_encoder` is the ResNet-18 with torchvision's parameter names (fomm.backbones), its fc
512 -> K * 5 * 2, so released `kp_detector` state dicts load by name. The keypoints are
2 * sigmoid(fc) - 1 in the coordinate grid of fomm.blocks (x, y in [-1, 1]); consecutive
groups of 5 form one TPS.
"""
from __future__ import annotations

import torch
from torch import nn

from fomm.backbones import resnet18
from fomm.tpsmm.tps import POINTS_PER_TPS


class KPDetector(nn.Module):
    def __init__(self, num_tps: int, num_channels: int = 3):
        super().__init__()
        self.num_tps = num_tps
        # The original replaces torchvision's fc by nn.Linear(512, num_tps * 5 * 2).
        self.fg_encoder = resnet18(num_classes=num_tps * POINTS_PER_TPS * 2, in_channels=num_channels)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'fg_kp': (B, 5K, 2)} for images (B, C, H, W)."""
        logits = self.fg_encoder(image)  # (B, 10K)
        fg_kp = torch.sigmoid(logits) * 2 - 1
        return {"fg_kp": fg_kp.view(image.shape[0], self.num_tps * POINTS_PER_TPS, 2)}
