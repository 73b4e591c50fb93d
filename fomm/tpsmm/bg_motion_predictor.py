"""TPSMM's background motion predictor (Sec. 3.2; modules/bg_motion_predictor.py): a ResNet-18
on the source and driving frames stacked (6 channels) regressing one affine, the K+1-th
transformation of the dense motion (the camera's motion).

`bg_encoder` carries torchvision's names (fomm.backbones); as in the original its fc starts
at zero weights and the identity bias [1, 0, 0, 0, 1, 0], so training starts from no
background motion.
"""
from __future__ import annotations

import torch
from torch import nn

from fomm.backbones import resnet18

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class BGMotionPredictor(nn.Module):
    def __init__(self, num_channels: int = 3):
        super().__init__()
        self.bg_encoder = resnet18(num_classes=6, in_channels=2 * num_channels)
        with torch.no_grad():
            self.bg_encoder.fc.weight.zero_()
            self.bg_encoder.fc.bias.copy_(torch.tensor(IDENTITY))

    def forward(self, source_image: torch.Tensor, driving_image: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3) affine matrices, last row [0, 0, 1]: driving coordinates -> source ones."""
        batch = source_image.shape[0]
        affine = self.bg_encoder(torch.cat([source_image, driving_image], dim=1)).view(batch, 2, 3)
        last_row = torch.tensor([0.0, 0.0, 1.0], dtype=affine.dtype, device=affine.device).expand(batch, 1, 3)
        return torch.cat([affine, last_row], dim=1)
