"""MRAA's background motion predictor (paper Sec. 3.3; modules/bg_motion_predictor.py): one
3x3 transformation of the background from the source and driving frames.

An hourglass encoder on the two frames stacked (6 channels), its deepest features averaged over
the positions, and a linear layer to the transformation's free entries, starting at the
identity (zero weights): `bg_type` 'shift' gives a translation (2), 'affine' an affine (6),
'perspective' a homography with its last entry fixed to 1 (8), and 'zero' no network at all
(the identity, as mgif256.yaml uses; its released checkpoint has an empty state dict).
Output: (B, 3, 3), mapping homogeneous driving coordinates to the source's.
"""
from __future__ import annotations

import torch
from torch import nn

from fomm.blocks import Encoder
from fomm.mraa.config import BgPredictorParams

# Outputs of the linear layer and their initial values (the identity) per bg_type.
IDENTITY = {"shift": (0, 0), "affine": (1, 0, 0, 0, 1, 0), "perspective": (1, 0, 0, 0, 1, 0, 0, 0)}


class BGMotionPredictor(nn.Module):
    def __init__(self, params: BgPredictorParams, num_channels: int):
        super().__init__()
        self.bg_type = params.bg_type
        if self.bg_type != "zero":
            self.encoder = Encoder(params.block_expansion, in_features=num_channels * 2,
                                   max_features=params.max_features, num_blocks=params.num_blocks)
            in_features = min(params.max_features, params.block_expansion * (2 ** params.num_blocks))
            self.fc = nn.Linear(in_features, len(IDENTITY[self.bg_type]))
            self.fc.weight.data.zero_()
            self.fc.bias.data.copy_(torch.tensor(IDENTITY[self.bg_type], dtype=torch.float))

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
        batch = source.shape[0]
        eye = torch.eye(3, dtype=source.dtype, device=source.device)
        if self.bg_type == "zero":
            return eye.expand(batch, 3, 3).clone()
        features = self.encoder(torch.cat([source, driving], dim=1))[-1].mean(dim=(2, 3))  # (B, C)
        prediction = self.fc(features)
        prediction = prediction.to(torch.promote_types(prediction.dtype, torch.float32))  # a grid transform: fp32 at least
        eye = eye.to(prediction.dtype)
        if self.bg_type == "shift":
            top = torch.cat([eye[:2, :2].expand(batch, 2, 2), prediction.view(batch, 2, 1)], dim=2)
            return torch.cat([top, eye[2:].expand(batch, 1, 3)], dim=1)
        top = prediction[:, :6].view(batch, 2, 3)
        if self.bg_type == "affine":
            return torch.cat([top, eye[2:].expand(batch, 1, 3)], dim=1)
        bottom = torch.cat([prediction[:, 6:], torch.ones_like(prediction[:, :1])], dim=1).view(batch, 1, 3)
        return torch.cat([top, bottom], dim=1)  # perspective
