"""Occlusion-aware generator (FOMM §3.3, Eq. 8).

The source is encoded (a 7x7 same block, then down blocks), its feature map is warped
by the dense backward motion from the dense motion network and multiplied by the
occlusion map, xi' = O * f_w(xi, T) (Eq. 8), then decoded (residual bottleneck, up
blocks, 7x7 conv, sigmoid) into the driving frame's prediction.

Two grid conventions, kept apart: `align_corners` is grid_sample's (True for the released
checkpoints, trained on torch 1.0, whose grid_sample behaved so), `interpolate_align_corners`
is that of the bilinear resizes of the deformation and the occlusion map. torch 1.0's bilinear
F.interpolate already behaved as align_corners=False (only grid_sample's default changed, in
1.3), so it is False for every FOMM, released or new.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fomm.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d, resize_grid, warp
from fomm.config import CommonParams, GeneratorParams
from fomm.dense_motion import DenseMotionNetwork


class OcclusionAwareGenerator(nn.Module):
    def __init__(self, params: GeneratorParams, common: CommonParams, align_corners: bool = False,
                 interpolate_align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        self.interpolate_align_corners = interpolate_align_corners
        be, mf, n_down = params.block_expansion, params.max_features, params.num_down_blocks
        self.dense_motion_network = DenseMotionNetwork(
            params.dense_motion_params, num_kp=common.num_kp, num_channels=common.num_channels,
            estimate_occlusion_map=params.estimate_occlusion_map, align_corners=align_corners)
        self.first = SameBlock2d(common.num_channels, be, kernel_size=7, padding=3)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(min(mf, be * 2 ** i), min(mf, be * 2 ** (i + 1)), kernel_size=3, padding=1)
            for i in range(n_down))
        self.up_blocks = nn.ModuleList(
            UpBlock2d(min(mf, be * 2 ** (n_down - i)), min(mf, be * 2 ** (n_down - i - 1)),
                      kernel_size=3, padding=1)
            for i in range(n_down))
        bottleneck_width = min(mf, be * 2 ** n_down)
        self.bottleneck = nn.Sequential()
        for i in range(params.num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(bottleneck_width, kernel_size=3, padding=1))
        self.final = nn.Conv2d(be, common.num_channels, kernel_size=7, padding=3)

    def deform(self, inp: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
        """Warp `inp` (B, C, H, W) by a (B, h, w, 2) backward grid, resized to (H, W) if needed."""
        grid = resize_grid(deformation, inp.shape[2:], self.interpolate_align_corners)
        return warp(inp, grid, self.align_corners)

    def encode(self, source: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, F, H/2^n, W/2^n) source features.

        One image expanded along the batch (stride 0, as animation passes the source) is
        encoded once and its features expanded: at 256 px the encoder is a fifth of the
        generator's FLOPs, repeated for nothing in every frame of a batch. Eval mode only, so
        that training (whose BatchNorm counts every image of the batch) is untouched."""
        if not self.training and source.shape[0] > 1 and source.stride(0) == 0:
            return self.encode(source[:1]).expand(source.shape[0], -1, -1, -1)
        out = self.first(source)
        for block in self.down_blocks:
            out = block(out)
        return out

    def forward(self, source: torch.Tensor, kp_driving: dict, kp_source: dict) -> dict[str, torch.Tensor]:
        """source (B, C, H, W) in [0, 1]; keypoint dicts of batch B (a source of batch 1 is repeated)."""
        batch = kp_driving["value"].shape[0]
        if source.shape[0] == 1 and batch > 1:
            source = source.expand(batch, *source.shape[1:])
        out = self.encode(source)  # (B, F, H/2^n, W/2^n)
        motion = self.dense_motion_network(source, kp_driving, kp_source)
        deformation = motion["deformation"]  # (B, h, w, 2)
        result = {"mask": motion["mask"], "sparse_deformed": motion["sparse_deformed"],
                  "deformation": deformation}
        out = self.deform(out, deformation)
        occlusion = motion.get("occlusion_map")
        if occlusion is not None:
            result["occlusion_map"] = occlusion
            if occlusion.shape[2:] != out.shape[2:]:
                occlusion = F.interpolate(occlusion, size=out.shape[2:], mode="bilinear",
                                          align_corners=self.interpolate_align_corners)
            out = out * occlusion.to(out.dtype)
        result["deformed"] = self.deform(source, deformation)  # (B, C, H, W)
        out = self.bottleneck(out)
        for block in self.up_blocks:
            out = block(out)
        result["prediction"] = torch.sigmoid(self.final(out))  # (B, C, H, W)
        return result
