"""Keypoint detector with local affine jacobians (FOMM §3.1, Eq. 4-5).

An hourglass on the frame (downscaled by `scale_factor`) predicts K heatmaps; a spatial
softmax with temperature turns each into a distribution whose expectation over the
coordinate grid is the keypoint p_k in [-1, 1]. A second head predicts four maps per
keypoint (or one set shared by all, `single_jacobian_map`), averaged under the same
heatmap into the 2x2 jacobian J_k; its weights start at zero and its bias at
[1, 0, 0, 1], so every jacobian is the identity at initialisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fomm.blocks import AntiAliasInterpolation2d, Hourglass, at_least_fp32, make_coordinate_grid
from fomm.config import CommonParams, KpDetectorParams


class KPDetector(nn.Module):
    def __init__(self, params: KpDetectorParams, common: CommonParams):
        super().__init__()
        self.num_kp = common.num_kp
        self.temperature = params.temperature
        self.scale_factor = params.scale_factor
        self.predictor = Hourglass(params.block_expansion, in_features=common.num_channels,
                                   max_features=params.max_features, num_blocks=params.num_blocks)
        width = self.predictor.out_filters
        self.kp = nn.Conv2d(width, common.num_kp, kernel_size=7, padding=params.pad)
        if common.estimate_jacobian:
            self.num_jacobian_maps = 1 if params.single_jacobian_map else common.num_kp
            self.jacobian = nn.Conv2d(width, 4 * self.num_jacobian_maps, kernel_size=7, padding=params.pad)
            with torch.no_grad():
                self.jacobian.weight.zero_()
                self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0] * self.num_jacobian_maps))
        else:
            self.jacobian = None
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(common.num_channels, self.scale_factor)

    @staticmethod
    def heatmap_to_keypoints(heatmap: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) spatial distributions -> (B, K, 2) expected (x, y) (Eq. 4)."""
        grid = make_coordinate_grid(heatmap.shape[2:], heatmap.dtype, heatmap.device)  # (H, W, 2)
        return (heatmap.unsqueeze(-1) * grid.view(1, 1, *grid.shape)).sum(dim=(2, 3))  # (B, K, 2)

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """frames (B, C, H, W) in [0, 1] -> {'value': (B, K, 2), 'jacobian': (B, K, 2, 2)}."""
        if self.scale_factor != 1:
            frames = self.down(frames)
        features = self.predictor(frames)  # (B, F, h, w)
        logits = self.kp(features)  # (B, K, h', w')
        b, k, h, w = logits.shape
        # softmax in fp32: with temperature 0.1 bf16 logits lose the peak's position.
        heatmap = F.softmax(at_least_fp32(logits).view(b, k, -1) / self.temperature, dim=2).view(b, k, h, w)
        out = {"value": self.heatmap_to_keypoints(heatmap)}
        if self.jacobian is not None:
            maps = at_least_fp32(self.jacobian(features)).reshape(b, self.num_jacobian_maps, 4, h, w)
            jacobian = (heatmap.unsqueeze(2) * maps).view(b, k, 4, -1).sum(dim=-1)  # (B, K, 4)
            out["jacobian"] = jacobian.view(b, k, 2, 2)
        return out
