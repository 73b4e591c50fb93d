"""MRAA's generator (paper Sec. 3.2; modules/generator.py): Johnson's architecture (a 7x7 conv,
down blocks, residual bottleneck, up blocks, a 7x7 conv and sigmoid) around the pixelwise flow.

The encoder's deepest features are warped by the optical flow and multiplied by the occlusion
map. With `skips`, before every up block and after the last, the encoder's feature map of that
resolution is warped and blended with the decoder's: warped x O + decoded x (1 - O), and the
final image likewise with the warped source frame. Flow and occlusion are bilinearly resized to
each resolution (align_corners=False, the original's torch default).

Outputs: prediction (B, C, H, W); with a flow predictor also deformed (the source warped by the
flow), optical_flow and `deformation` (the same (B, h, w, 2) backward grid, the name the
project's tools read), occlusion_map (B, 1, h, w), mask (B, K + 1, h, w) and sparse_deformed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fomm.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d, resize_grid, warp
from fomm.mraa.config import GeneratorParams
from fomm.mraa.pixelwise_flow_predictor import ALIGN_CORNERS, PixelwiseFlowPredictor


class Generator(nn.Module):
    def __init__(self, params: GeneratorParams, num_regions: int, num_channels: int, revert_axis_swap: bool):
        super().__init__()
        flow = params.pixelwise_flow_predictor_params
        self.pixelwise_flow_predictor = (PixelwiseFlowPredictor(flow, num_regions, num_channels, revert_axis_swap)
                                         if flow is not None else None)
        expansion, widest, levels = params.block_expansion, params.max_features, params.num_down_blocks
        width = lambda i: min(widest, expansion * (2 ** i))  # noqa: E731
        self.first = SameBlock2d(num_channels, expansion, kernel_size=(7, 7), padding=(3, 3))
        self.down_blocks = nn.ModuleList(DownBlock2d(width(i), width(i + 1), kernel_size=(3, 3), padding=(1, 1))
                                         for i in range(levels))
        self.up_blocks = nn.ModuleList(UpBlock2d(width(levels - i), width(levels - i - 1), kernel_size=(3, 3),
                                                 padding=(1, 1)) for i in range(levels))
        self.bottleneck = nn.Sequential()
        for i in range(params.num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(width(levels), kernel_size=(3, 3), padding=(1, 1)))
        self.final = nn.Conv2d(expansion, num_channels, kernel_size=(7, 7), padding=(3, 3))
        self.num_channels = num_channels
        self.skips = params.skips

    @staticmethod
    def deform_input(features: torch.Tensor, optical_flow: torch.Tensor) -> torch.Tensor:
        """`features` warped by the flow, bilinearly resized to their size first."""
        return warp(features, resize_grid(optical_flow, features.shape[2:], ALIGN_CORNERS), ALIGN_CORNERS)

    def apply_optical(self, previous: torch.Tensor | None, skip: torch.Tensor, motion: dict | None) -> torch.Tensor:
        """warp(skip) x O + previous x (1 - O) (warp(skip) x O without `previous`); `skip` or
        `previous` unchanged without motion."""
        if motion is None:
            return previous if previous is not None else skip
        warped = self.deform_input(skip, motion["optical_flow"])
        occlusion = motion.get("occlusion_map")
        if occlusion is None:
            return warped
        if occlusion.shape[2:] != warped.shape[2:]:
            occlusion = F.interpolate(occlusion, size=warped.shape[2:], mode="bilinear", align_corners=ALIGN_CORNERS)
        if previous is None:
            return warped * occlusion
        return warped * occlusion + previous * (1 - occlusion)

    def forward(self, source: torch.Tensor, driving_region_params: dict, source_region_params: dict,
                bg_params: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.first(source)
        skips = [out]
        for block in self.down_blocks:
            out = block(out)
            skips.append(out)
        output: dict[str, torch.Tensor] = {}
        motion = None
        if self.pixelwise_flow_predictor is not None:
            motion = self.pixelwise_flow_predictor(source, driving_region_params, source_region_params, bg_params)
            output["deformed"] = self.deform_input(source, motion["optical_flow"])
            output.update(optical_flow=motion["optical_flow"], deformation=motion["optical_flow"],
                          mask=motion["mask"], sparse_deformed=motion["sparse_deformed"])
            if "occlusion_map" in motion:
                output["occlusion_map"] = motion["occlusion_map"]
        out = self.apply_optical(None, out, motion)
        out = self.bottleneck(out)
        for i, block in enumerate(self.up_blocks):
            if self.skips:
                out = self.apply_optical(out, skips[-(i + 1)], motion)
            out = block(out)
        if self.skips:
            out = self.apply_optical(out, skips[0], motion)
        out = torch.sigmoid(self.final(out))
        if self.skips:
            out = self.apply_optical(out, source, motion)
        output["prediction"] = out
        return output
