"""TPSMM's inpainting network (Sec. 3.3; modules/inpainting_network.py): an encoder of the
source frame whose feature maps are warped by the dense motion's flow and multiplied by the
occlusion mask of their resolution, then decoded coarse to fine with the warped maps
concatenated, and the occluded regions inpainted:

    prediction = sigmoid(final(out * (1 - m) + f)) * (1 - m) + deformed * m

with m the finest occlusion mask, f the finest warped encoder map and deformed the source
warped by the flow (the original's last two steps). `warped_encoder_maps` are the warped,
occluded encoder maps with the encoder and masks detached (the warp loss, Eq. 11, trains
only the flow through them); `encode` is the same encoding of the driving frame
(`get_encode` of the original), the warp loss' target.

Every grid_sample and bilinear interpolate passes align_corners=True, as the original.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fomm.blocks import at_least_fp32, resize_grid, warp
from fomm.tpsmm.hourglass import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d

ALIGN_CORNERS = True


class InpaintingNetwork(nn.Module):
    def __init__(self, num_channels: int, block_expansion: int, max_features: int, num_down_blocks: int,
                 multi_mask: bool = True):
        super().__init__()
        self.num_down_blocks = num_down_blocks
        self.multi_mask = multi_mask
        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=7, padding=3)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(min(max_features, block_expansion * 2 ** i), min(max_features, block_expansion * 2 ** (i + 1)))
            for i in range(num_down_blocks))
        # The original writes the decoder widths out for three levels.
        in_features = [max_features, max_features, max_features // 2]
        out_features = [max_features // 2, max_features // 4, max_features // 8]
        self.up_blocks = nn.ModuleList(UpBlock2d(in_features[i], out_features[i]) for i in range(num_down_blocks))
        self.resblock = nn.ModuleList(ResBlock2d(in_features[i // 2]) for i in range(2 * num_down_blocks))
        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=(7, 7), padding=(3, 3))
        self.num_channels = num_channels

    # ------------------------------------------------------------------ warping
    @staticmethod
    def deform_input(inp: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
        """`inp` (B, C, H, W) sampled at the flow (B, h, w, 2), resized bilinearly to (H, W)."""
        grid = resize_grid(at_least_fp32(deformation), tuple(inp.shape[2:]), ALIGN_CORNERS)
        return warp(inp, grid, ALIGN_CORNERS)

    def occlude_input(self, inp: torch.Tensor, occlusion_map: torch.Tensor) -> torch.Tensor:
        if not self.multi_mask and inp.shape[2:] != occlusion_map.shape[2:]:
            occlusion_map = F.interpolate(occlusion_map, size=tuple(inp.shape[2:]), mode="bilinear",
                                          align_corners=ALIGN_CORNERS)
        return inp * occlusion_map

    def mask_index(self, level: int) -> int:
        """The occlusion mask of decoder step `level` (0: the coarsest map): its own with
        multi_mask, else the one mask."""
        return level if self.multi_mask else 0

    # ------------------------------------------------------------------ forward
    def forward(self, source_image: torch.Tensor, dense_motion: dict) -> dict:
        """prediction (B, C, H, W), deformed (the source warped by the flow), warped_encoder_maps
        (coarse to fine) and the dense motion's contribution_maps, deformed_source, occlusion_map."""
        out = self.first(source_image)
        encoder_maps = [out]
        for block in self.down_blocks:
            out = block(out)
            encoder_maps.append(out)
        occlusion = dense_motion["occlusion_map"]
        deformation = dense_motion["deformation"]
        result = {"contribution_maps": dense_motion["contribution_maps"],
                  "deformed_source": dense_motion["deformed_source"], "occlusion_map": occlusion}

        mask = occlusion[self.mask_index(0)]
        warped = [self.occlude_input(self.deform_input(out.detach(), deformation), mask.detach())]
        out = self.occlude_input(self.deform_input(out, deformation), mask)
        for i in range(self.num_down_blocks):
            out = self.up_blocks[i](self.resblock[2 * i + 1](self.resblock[2 * i](out)))
            skip = encoder_maps[-(i + 2)]
            mask = occlusion[self.mask_index(i + 1)]
            warped.append(self.occlude_input(self.deform_input(skip.detach(), deformation), mask.detach()))
            skip = self.occlude_input(self.deform_input(skip, deformation), mask)
            if i < self.num_down_blocks - 1:
                out = torch.cat([out.to(skip.dtype), skip], dim=1)

        deformed = self.deform_input(source_image, deformation)
        result["deformed"] = deformed
        result["warped_encoder_maps"] = warped
        last = occlusion[-1]
        if not self.multi_mask:
            last = F.interpolate(last, size=tuple(out.shape[2:]), mode="bilinear", align_corners=ALIGN_CORNERS)
        out = out * (1 - last) + skip
        out = torch.sigmoid(self.final(out))
        result["prediction"] = out * (1 - last) + deformed * last
        return result

    def encode(self, driving_image: torch.Tensor, occlusion_map: list[torch.Tensor]) -> list[torch.Tensor]:
        """The driving frame's encoder maps, fine to coarse, each times its occlusion mask, all
        detached: the warp loss' target (the original's get_encode)."""
        out = self.first(driving_image)
        masks = [occlusion_map[self.mask_index(level)] for level in range(self.num_down_blocks + 1)]
        encoded = [self.occlude_input(out.detach(), masks[-1].detach())]
        for i, block in enumerate(self.down_blocks):
            out = block(out.detach())
            encoded.append(self.occlude_input(out.detach(), masks[-(i + 2)].detach()))
        return encoded
