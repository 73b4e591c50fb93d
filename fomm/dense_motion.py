"""Dense motion network (FOMM §3.2, Eq. 5-6 and §3.3).

From source and driving keypoints it builds K+1 sparse backward motions
T_k(z) = p_k^S + J_k (z - p_k^D) with J_k = J_k^S (J_k^D)^-1 (Eq. 4) plus the identity
for the background, warps the (downscaled) source by each, and feeds the warped sources
with the heatmap differences H_k = G(p_k^D) - G(p_k^S) (Eq. 6) to an hourglass. Its
softmax masks M_k combine the sparse motions into the dense motion
T(z) = sum_k M_k(z) T_k(z) (Eq. 5); a sigmoid head gives the occlusion map (§3.3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fomm.blocks import (AntiAliasInterpolation2d, Hourglass, at_least_fp32, full_precision, kp2gaussian,
                         make_coordinate_grid, warp)
from fomm.config import DenseMotionParams


class DenseMotionNetwork(nn.Module):
    def __init__(self, params: DenseMotionParams, num_kp: int, num_channels: int,
                 estimate_occlusion_map: bool, align_corners: bool = False):
        super().__init__()
        self.num_kp = num_kp
        self.kp_variance = params.kp_variance
        self.scale_factor = params.scale_factor
        self.align_corners = align_corners
        self.hourglass = Hourglass(params.block_expansion, in_features=(num_kp + 1) * (num_channels + 1),
                                   max_features=params.max_features, num_blocks=params.num_blocks)
        width = self.hourglass.out_filters
        self.mask = nn.Conv2d(width, num_kp + 1, kernel_size=7, padding=3)
        self.occlusion = nn.Conv2d(width, 1, kernel_size=7, padding=3) if estimate_occlusion_map else None
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, self.scale_factor)

    def heatmap_representation(self, spatial_size, kp_driving, kp_source) -> torch.Tensor:
        """(B, K+1, 1, h, w): G(p^D) - G(p^S) per keypoint, zeros for the background (Eq. 6)."""
        heatmap = (kp2gaussian(kp_driving["value"], spatial_size, self.kp_variance)
                   - kp2gaussian(kp_source["value"], spatial_size, self.kp_variance))  # (B, K, h, w)
        zeros = heatmap.new_zeros(heatmap.shape[0], 1, *heatmap.shape[2:])
        return torch.cat([zeros, heatmap], dim=1).unsqueeze(2)

    def sparse_motions(self, spatial_size, kp_driving, kp_source) -> torch.Tensor:
        """(B, K+1, h, w, 2): identity, then T_k(z) = p^S + J^S (J^D)^-1 (z - p^D) (Eq. 4)."""
        with full_precision(kp_driving["value"]):
            return self._sparse_motions(spatial_size, kp_driving, kp_source)

    def _sparse_motions(self, spatial_size, kp_driving, kp_source) -> torch.Tensor:
        h, w = spatial_size
        value_d, value_s = at_least_fp32(kp_driving["value"]), at_least_fp32(kp_source["value"])
        bs = value_d.shape[0]
        grid = make_coordinate_grid((h, w), value_s.dtype, value_s.device).view(1, 1, h, w, 2)
        coords = grid - value_d.view(bs, self.num_kp, 1, 1, 2)  # (B, K, h, w, 2)
        if "jacobian" in kp_driving and "jacobian" in kp_source:
            jacobian = torch.matmul(at_least_fp32(kp_source["jacobian"]),
                                    torch.inverse(at_least_fp32(kp_driving["jacobian"])))  # (B, K, 2, 2)
            jacobian = jacobian.view(bs, self.num_kp, 1, 1, 2, 2)
            coords = torch.matmul(jacobian, coords.unsqueeze(-1)).squeeze(-1)
        driving_to_source = coords + value_s.view(-1, self.num_kp, 1, 1, 2)
        return torch.cat([grid.expand(bs, 1, h, w, 2), driving_to_source], dim=1)

    def deformed_sources(self, source: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
        """(B, K+1, C, h, w): the source warped by each sparse motion."""
        bs, c, h, w = source.shape
        k1 = self.num_kp + 1
        repeated = source.unsqueeze(1).expand(bs, k1, c, h, w).reshape(bs * k1, c, h, w)
        deformed = warp(repeated, motions.reshape(bs * k1, h, w, 2), self.align_corners)
        return deformed.view(bs, k1, c, h, w)

    def forward(self, source: torch.Tensor, kp_driving: dict, kp_source: dict) -> dict[str, torch.Tensor]:
        if self.scale_factor != 1:
            source = self.down(source)
        bs, _, h, w = source.shape
        heatmaps = self.heatmap_representation((h, w), kp_driving, kp_source)  # (B, K+1, 1, h, w)
        motions = self.sparse_motions((h, w), kp_driving, kp_source)  # (B, K+1, h, w, 2)
        if motions.shape[0] != bs:
            raise ValueError(f"source batch {bs} does not match keypoint batch {motions.shape[0]}")
        deformed = self.deformed_sources(source, motions)  # (B, K+1, C, h, w)
        net_in = torch.cat([heatmaps.to(deformed.dtype), deformed], dim=2).view(bs, -1, h, w)
        features = self.hourglass(net_in)
        mask = F.softmax(at_least_fp32(self.mask(features)), dim=1)  # (B, K+1, h, w)
        with full_precision(mask):
            deformation = (motions.permute(0, 1, 4, 2, 3) * mask.unsqueeze(2)).sum(dim=1)  # (B, 2, h, w)
        out = {"sparse_deformed": deformed, "mask": mask,
               "deformation": deformation.permute(0, 2, 3, 1)}  # (B, h, w, 2)
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(features))  # (B, 1, h, w)
        return out
