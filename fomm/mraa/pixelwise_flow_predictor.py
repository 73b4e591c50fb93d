"""MRAA's pixelwise flow predictor (paper Sec. 3.2; modules/pixelwise_flow_predictor.py): the
dense optical flow from the source to the driving frame, combined from K + 1 coarse motions.

At `scale_factor` of the frame (blurred and subsampled, as FOMM), for each driving position z:
- the background motion B z (homogeneous, the identity without bg_params) and, per region k,
  the affine motion A_k (z - p_k^D) + p_k^S with A_k = A_k^S (A_k^D)^-1 (Eq. 4), multiplied by
  sign(A_k[0, 0]) with revert_axis_swap (SVD may flip both axes of one frame's region);
- the region heat maps G(p^D, Sigma^D) - G(p^S, Sigma^S) (Eq. 6; the covariances with
  use_covar_heatmap, else region_var I), a zero map for the background;
- the source warped by each motion (use_deformed_source);
an hourglass on [heat map, warped source] per motion, a 7x7 conv to K + 1 mask logits (softmax)
and, with estimate_occlusion_map, a 7x7 conv to the occlusion map (sigmoid). The optical flow is
the masks' weighted sum of the K + 1 motions (Eq. 5).

Grids follow grid_sample with the original's torch default, align_corners=False, on the
original's coordinate grid (-1 and +1 on the border pixels' centres). Coordinates, inverses and
Gaussians stay float32 at least under bf16 autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fomm.blocks import (AntiAliasInterpolation2d, Hourglass, at_least_fp32, full_precision, inverse_2x2,
                         make_coordinate_grid, warp)
from fomm.mraa.config import PixelwiseFlowPredictorParams

# MRAA was written for torch 1.4, whose grid_sample and bilinear interpolate default to this.
ALIGN_CORNERS = False


def region2gaussian(shift: torch.Tensor, covar: torch.Tensor | float, spatial_size: tuple[int, int]) -> torch.Tensor:
    """(B, K, h, w) exp(-1/2 (z - p)^T Sigma^-1 (z - p)) around shifts (B, K, 2); `covar` is
    (B, K, 2, 2) or one variance for every region."""
    grid = make_coordinate_grid(spatial_size, shift.dtype, shift.device)  # (h, w, 2)
    centred = grid - shift[:, :, None, None, :]  # (B, K, h, w, 2)
    dx, dy = centred[..., 0], centred[..., 1]
    if isinstance(covar, float):
        return torch.exp(-0.5 * (dx * dx + dy * dy) / covar)
    precision = inverse_2x2(covar)[:, :, None, None]  # (B, K, 1, 1, 2, 2)
    # Written out: per-pixel 2x2 matmuls are far slower than these products.
    mahalanobis = (precision[..., 0, 0] * dx * dx + precision[..., 0, 1] * dx * dy
                   + precision[..., 1, 0] * dy * dx + precision[..., 1, 1] * dy * dy)
    return torch.exp(-0.5 * mahalanobis)


def region_motion_affine(source_affine: torch.Tensor, driving_affine: torch.Tensor,
                         revert_axis_swap: bool) -> torch.Tensor:
    """A^S (A^D)^-1 (B, K, 2, 2), times sign(a_00) with revert_axis_swap."""
    affine = source_affine @ inverse_2x2(driving_affine)
    if revert_axis_swap:
        affine = affine * torch.sign(affine[:, :, 0:1, 0:1])
    return affine


class PixelwiseFlowPredictor(nn.Module):
    def __init__(self, params: PixelwiseFlowPredictorParams, num_regions: int, num_channels: int,
                 revert_axis_swap: bool):
        super().__init__()
        channels_per_motion = num_channels * int(params.use_deformed_source) + 1
        self.hourglass = Hourglass(params.block_expansion, in_features=(num_regions + 1) * channels_per_motion,
                                   max_features=params.max_features, num_blocks=params.num_blocks)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_regions + 1, kernel_size=(7, 7), padding=(3, 3))
        if params.estimate_occlusion_map:
            self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=(7, 7), padding=(3, 3))
        else:
            self.occlusion = None
        self.num_regions = num_regions
        self.scale_factor = params.scale_factor
        self.region_var = params.region_var
        self.use_covar_heatmap = params.use_covar_heatmap
        self.use_deformed_source = params.use_deformed_source
        self.revert_axis_swap = revert_axis_swap
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, self.scale_factor)

    def create_heatmap_representations(self, source: torch.Tensor, driving_region_params: dict,
                                       source_region_params: dict) -> torch.Tensor:
        """(B, K + 1, 1, h, w): zeros for the background, then G_driving - G_source (Eq. 6)."""
        size = source.shape[2:]
        driving_covar = driving_region_params["covar"] if self.use_covar_heatmap else float(self.region_var)
        source_covar = source_region_params["covar"] if self.use_covar_heatmap else float(self.region_var)
        heatmap = (region2gaussian(driving_region_params["shift"], driving_covar, size)
                   - region2gaussian(source_region_params["shift"], source_covar, size))  # (B, K, h, w)
        background = heatmap.new_zeros((heatmap.shape[0], 1) + tuple(size))
        return torch.cat([background, heatmap], dim=1).unsqueeze(2)

    def create_sparse_motions(self, source: torch.Tensor, driving_region_params: dict,
                              source_region_params: dict, bg_params: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K + 1, h, w, 2): where each driving position comes from in the source under the
        background's motion and under each region's (Eq. 4)."""
        batch, _, h, w = source.shape
        source_shift = source_region_params["shift"]
        identity = make_coordinate_grid((h, w), source_shift.dtype, source_shift.device).view(1, 1, h, w, 2)
        coordinates = identity - driving_region_params["shift"].view(batch, self.num_regions, 1, 1, 2)
        if "affine" in driving_region_params:
            affine = region_motion_affine(source_region_params["affine"], driving_region_params["affine"],
                                          self.revert_axis_swap)[:, :, None, None]  # (B, K, 1, 1, 2, 2)
            coordinates = (affine[..., 0] * coordinates[..., 0:1] + affine[..., 1] * coordinates[..., 1:2])
        driving_to_source = coordinates + source_shift.view(batch, self.num_regions, 1, 1, 2)
        background = identity.expand(batch, 1, h, w, 2)
        if bg_params is not None:
            homogeneous = torch.cat([background, torch.ones_like(background[..., :1])], dim=-1)  # (B, 1, h, w, 3)
            moved = (bg_params.view(batch, 1, 1, 1, 3, 3) @ homogeneous.unsqueeze(-1)).squeeze(-1)
            background = moved[..., :2] / moved[..., 2:3]
        return torch.cat([background, driving_to_source], dim=1)

    def create_deformed_source_image(self, source: torch.Tensor, sparse_motions: torch.Tensor) -> torch.Tensor:
        """(B, K + 1, C, h, w): the source warped by each of the K + 1 motions."""
        batch, channels, h, w = source.shape
        motions = self.num_regions + 1
        repeated = source.unsqueeze(1).expand(batch, motions, channels, h, w).reshape(batch * motions, channels, h, w)
        deformed = warp(repeated, sparse_motions.reshape(batch * motions, h, w, 2), ALIGN_CORNERS)
        return deformed.view(batch, motions, channels, h, w)

    def forward(self, source: torch.Tensor, driving_region_params: dict, source_region_params: dict,
                bg_params: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.scale_factor != 1:
            source = self.down(source)
        batch, _, h, w = source.shape
        with full_precision(source):
            driving = {k: at_least_fp32(v) for k, v in driving_region_params.items()}
            sources = {k: at_least_fp32(v) for k, v in source_region_params.items()}
            bg = at_least_fp32(bg_params) if bg_params is not None else None
            heatmap = self.create_heatmap_representations(source, driving, sources)
            sparse_motion = self.create_sparse_motions(source, driving, sources, bg)  # (B, K + 1, h, w, 2)
            deformed = self.create_deformed_source_image(at_least_fp32(source), sparse_motion)
        inputs = torch.cat([heatmap, deformed], dim=2) if self.use_deformed_source else heatmap
        prediction = self.hourglass(inputs.view(batch, -1, h, w))
        mask_logits = self.mask(prediction)  # (B, K + 1, h, w)
        out = {}
        with full_precision(source):
            mask = F.softmax(at_least_fp32(mask_logits), dim=1)
            flow = (sparse_motion * mask.unsqueeze(-1)).sum(dim=1)  # (B, h, w, 2)
        out.update(optical_flow=flow, mask=mask, sparse_deformed=deformed)
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction))  # (B, 1, h, w)
        return out
