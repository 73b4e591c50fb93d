"""TPSMM's dense motion network (Sec. 3.2-3.3; modules/dense_motion.py): K TPS warps and the
background affine combined into one optical flow, plus multi-resolution occlusion masks.

At `scale_factor` of the frame (the anti-aliased `down`, fomm.blocks):
1. heatmap representation: per keypoint, gaussian(driving) - gaussian(source), variance
   `kp_variance`, after a zero channel for the background (K * 5 + 1 channels);
2. K + 1 transformations: [0] the identity grid (or the background affine applied to it),
   [1:] the K TPS warps from the driving to the source keypoints (fomm.tpsmm.tps, Eq. 2);
3. the source warped by each transformation (K + 1 images);
4. an hourglass on (heatmaps, warped sources) gives contribution maps M (softmax over the
   K + 1; Eq. 5) and the flow T = sum_k M_k T_k (Eq. 6);
5. occlusion masks: sigmoid convolutions of the hourglass' last two decoder levels and of
   log2(1 / scale_factor) further up blocks (4 masks: frame / 8 to frame / 1 at 0.25).
During training, in the first `dropout_epoch` epochs, TPS dropout (Eq. 7-8) removes each
TPS transformation from the softmax with probability p (never the background).

Every grid_sample passes align_corners=True, as the original does; keypoints, grids and the
flow are computed in at least fp32 (autocast off), the hourglass in whatever autocast says.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fomm.blocks import AntiAliasInterpolation2d, at_least_fp32, full_precision, kp2gaussian, make_coordinate_grid, warp
from fomm.tpsmm.hourglass import Hourglass, UpBlock2d
from fomm.tpsmm.tps import POINTS_PER_TPS, KeypointTPS

ALIGN_CORNERS = True
NUM_OCCLUSION_MASKS = 4
DROPOUT_EPS = 1e-6


class DenseMotionNetwork(nn.Module):
    def __init__(self, block_expansion: int, num_blocks: int, max_features: int, num_tps: int,
                 num_channels: int = 3, scale_factor: float = 0.25, bg: bool = False,
                 multi_mask: bool = True, kp_variance: float = 0.01):
        super().__init__()
        if scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)
        self.scale_factor = scale_factor
        self.multi_mask = multi_mask
        in_features = num_channels * (num_tps + 1) + num_tps * POINTS_PER_TPS + 1
        self.hourglass = Hourglass(block_expansion, in_features, num_blocks, max_features)
        levels = self.hourglass.out_channels  # channels of the decoder levels, coarse to fine
        self.maps = nn.Conv2d(levels[-1], num_tps + 1, kernel_size=(7, 7), padding=(3, 3))
        if multi_mask:
            self.up_nums = int(math.log(1 / scale_factor, 2))
            self.occlusion_num = NUM_OCCLUSION_MASKS
            self.up = nn.ModuleList(UpBlock2d(levels[-1] // 2 ** i, levels[-1] // 2 ** (i + 1))
                                    for i in range(self.up_nums))
            from_decoder = self.occlusion_num - self.up_nums  # masks read from the last decoder levels
            channels = [levels[-1 - i] for i in reversed(range(from_decoder))]
            channels += [levels[-1] // 2 ** (i + 1) for i in range(self.up_nums)]
        else:
            channels = [levels[-1]]
        self.occlusion = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=(7, 7), padding=(3, 3)) for c in channels)
        self.num_tps = num_tps
        self.bg = bg
        self.kp_variance = kp_variance

    # ------------------------------------------------------------------ the steps
    def create_heatmap_representations(self, source_image: torch.Tensor, kp_driving: dict,
                                       kp_source: dict) -> torch.Tensor:
        """(B, 5K + 1, h, w): a zero map, then gaussian(driving) - gaussian(source) per keypoint."""
        size = source_image.shape[2:]
        with full_precision(kp_driving["fg_kp"]):
            driving = kp2gaussian(at_least_fp32(kp_driving["fg_kp"]), size, self.kp_variance)
            source = kp2gaussian(at_least_fp32(kp_source["fg_kp"]), size, self.kp_variance)
            heatmap = driving - source  # (B, 5K, h, w)
            zeros = heatmap.new_zeros(heatmap.shape[0], 1, *size)
            return torch.cat([zeros, heatmap], dim=1)

    def tps(self, kp_driving: dict, kp_source: dict) -> KeypointTPS:
        """The K keypoint TPS (driving -> source keypoints, Eq. 2)."""
        batch = kp_driving["fg_kp"].shape[0]
        return KeypointTPS(kp_driving["fg_kp"].reshape(batch, -1, POINTS_PER_TPS, 2),
                           kp_source["fg_kp"].reshape(batch, -1, POINTS_PER_TPS, 2))

    def create_transformations(self, source_image: torch.Tensor, kp_driving: dict, kp_source: dict,
                               bg_param: torch.Tensor | None) -> torch.Tensor:
        """(B, K + 1, h, w, 2) sampling grids: the background's (identity or affine), then each TPS."""
        batch, _, h, w = source_image.shape
        with full_precision(kp_driving["fg_kp"]):
            driving_to_source = self.tps(kp_driving, kp_source).transform_grid((h, w))  # (B, K, h, w, 2)
            identity = make_coordinate_grid((h, w), driving_to_source.dtype, driving_to_source.device)
            background = identity.view(1, 1, h, w, 2).expand(batch, 1, h, w, 2)
            if bg_param is not None:
                homogeneous = torch.cat([background, torch.ones_like(background[..., :1])], dim=-1)  # (B, 1, h, w, 3)
                affine = at_least_fp32(bg_param).to(homogeneous.dtype).view(batch, 1, 1, 1, 3, 3)
                moved = torch.matmul(affine, homogeneous.unsqueeze(-1)).squeeze(-1)
                background = moved[..., :2] / moved[..., 2:3]
            return torch.cat([background, driving_to_source], dim=1)

    def create_deformed_source_image(self, source_image: torch.Tensor, transformations: torch.Tensor
                                     ) -> torch.Tensor:
        """(B, K + 1, C, h, w): the source warped by each transformation."""
        batch, channels, h, w = source_image.shape
        count = transformations.shape[1]
        repeated = source_image.unsqueeze(1).expand(batch, count, channels, h, w).reshape(batch * count, channels, h, w)
        deformed = warp(repeated, transformations.reshape(batch * count, h, w, 2), ALIGN_CORNERS)
        return deformed.view(batch, count, -1, h, w)

    @staticmethod
    def dropout_softmax(logits: torch.Tensor, p: float) -> torch.Tensor:
        """Softmax over the transformations with each TPS dropped with probability p (Eq. 7-8).

        Keep flags are drawn per sample and transformation from torch's global RNG on the CPU,
        as the original draws them; the background (index 0) is always kept. The original
        divides the logits by 1 - p after exponentiating them, which changes nothing, so no
        rescaling happens here either.
        """
        keep = (torch.rand(logits.shape[0], logits.shape[1]) < (1 - p)).to(logits.device, logits.dtype)
        keep[:, 0] = 1
        shifted = logits - logits.max(dim=1, keepdim=True).values
        exp = shifted.exp() * keep[:, :, None, None]
        return exp / (exp.sum(dim=1, keepdim=True) + DROPOUT_EPS)

    # ------------------------------------------------------------------ forward
    def forward(self, source_image: torch.Tensor, kp_driving: dict, kp_source: dict,
                bg_param: torch.Tensor | None = None, dropout_flag: bool = False, dropout_p: float = 0.0
                ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """deformed_source (B, K+1, C, h, w), contribution_maps (B, K+1, h, w), deformation
        (B, h, w, 2) (the flow, a grid_sample grid) and occlusion_map (a list of (B, 1, *, *)
        masks, coarse to fine)."""
        if self.scale_factor != 1:
            source_image = self.down(source_image)
        batch, _, h, w = source_image.shape
        heatmap = self.create_heatmap_representations(source_image, kp_driving, kp_source)
        transformations = self.create_transformations(source_image, kp_driving, kp_source, bg_param)
        deformed_source = self.create_deformed_source_image(source_image, transformations)
        out: dict = {"deformed_source": deformed_source}
        features = torch.cat([heatmap.to(deformed_source.dtype), deformed_source.view(batch, -1, h, w)], dim=1)
        levels = self.hourglass(features)

        logits = self.maps(levels[-1])
        with full_precision(logits):
            logits = at_least_fp32(logits)
            if dropout_flag:
                contribution = self.dropout_softmax(logits, dropout_p)
            else:
                contribution = F.softmax(logits, dim=1)
            out["contribution_maps"] = contribution  # (B, K+1, h, w)
            # Eq. 6: the flow is the contribution-weighted sum of the K + 1 grids.
            weighted = transformations.to(contribution.dtype).permute(0, 1, 4, 2, 3) * contribution.unsqueeze(2)
            out["deformation"] = weighted.sum(dim=1).permute(0, 2, 3, 1)  # (B, h, w, 2)
        out["occlusion_map"] = self.occlusion_masks(levels)
        return out

    def occlusion_masks(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sigmoid masks from the last decoder levels, then from each further up block."""
        if not self.multi_mask:
            return [torch.sigmoid(self.occlusion[0](levels[-1]))]
        from_decoder = self.occlusion_num - self.up_nums
        masks = [torch.sigmoid(self.occlusion[i](levels[i - from_decoder])) for i in range(from_decoder)]
        features = levels[-1]
        for i, block in enumerate(self.up):
            features = block(features)
            masks.append(torch.sigmoid(self.occlusion[from_decoder + i](features)))
        return masks
