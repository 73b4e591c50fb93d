"""Monkey-Net's networks (github.com/AliaksandrSiarohin/monkey-net @ 0c8aa4ea, modules/*.py):
the movement embedding, keypoint detector, dense motion, generator and discriminator, with
the original's parameter names. The family, its losses and checkpoint mapping are model.py's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fomm.api import Motion
from fomm.blocks import (Encoder, ResBlock2d, SameBlock2d, UpBlock2d, full_precision, make_coordinate_grid,
                         warp)
from fomm.monkey_net.config import (MonkeyNetDenseMotionParams, MonkeyNetDiscriminatorParams,
                                    MonkeyNetEmbeddingParams, MonkeyNetGeneratorParams,
                                    MonkeyNetKpDetectorParams)
from fomm.monkey_net.keypoints import full, heatmap_moments, keypoint_gaussians


def downscale(frames: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """Nearest-neighbour resize by `scale_factor`, as the original's F.interpolate default."""
    if scale_factor == 1:
        return frames
    return F.interpolate(frames, scale_factor=scale_factor, mode="nearest")


def resize_map(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W): nearest, or (tri/bi)linear with align_corners=False (the
    default of torch 0.4.1 and now; a T->T trilinear resize is bilinear per frame)."""
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    if mode == "nearest":
        return F.interpolate(maps, size=tuple(size), mode="nearest")
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def detach_motion(motion: Motion) -> Motion:
    return {key: value.detach() for key, value in motion.items()}


class MovementEmbedding(nn.Module):
    """What the other modules see of the motion (modules/movement_embedding.py): per keypoint
    (and a zero background if `add_bg`) its heat map, its displacement p_s - p_d and the
    source warped by that translation, channels grouped per keypoint."""

    def __init__(self, num_kp: int, num_channels: int, kp_variance: str, params: MonkeyNetEmbeddingParams,
                 align_corners: bool, add_bg: bool = False):
        super().__init__()
        self.params, self.kp_variance, self.add_bg, self.align_corners = params, kp_variance, add_bg, align_corners
        per_kp = params.use_heatmap + 2 * params.use_difference + num_channels * params.use_deformed_source_image
        self.out_channels = per_kp * (num_kp + add_bg)

    def normalise(self, heat: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) maps / norm_const, or with 'sum' each map / its sum over the pixels."""
        if self.params.norm_const == "sum":
            return heat / heat.sum(dim=(2, 3), keepdim=True)
        return heat / self.params.norm_const

    def heatmap(self, kp_driving: Motion, kp_source: Motion, size: tuple[int, int]) -> torch.Tensor:
        heat = self.normalise(keypoint_gaussians(kp_driving, size, self.kp_variance))
        if self.params.heatmap_type == "difference":
            heat = heat - self.normalise(keypoint_gaussians(kp_source, size, self.kp_variance))
        return heat  # (B, K, h, w)

    def forward(self, source: torch.Tensor, kp_driving: Motion, kp_source: Motion) -> torch.Tensor:
        source = downscale(source, self.params.scale_factor)
        batch, _, height, width = source.shape
        inputs = []
        if self.params.use_heatmap:
            heat = self.heatmap(kp_driving, kp_source, (height, width))
            if self.add_bg:
                heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1)
            inputs.append(heat.unsqueeze(2))  # (B, K', 1, h, w)
        if self.params.use_difference or self.params.use_deformed_source_image:
            shift = full(kp_source["value"]) - full(kp_driving["value"])  # (B, K, 2)
            if self.add_bg:
                shift = torch.cat([torch.zeros_like(shift[:, :1]), shift], dim=1)
            num_maps = shift.shape[1]
        if self.params.use_difference:
            inputs.append(shift[..., None, None].expand(-1, -1, -1, height, width))  # (B, K', 2, h, w)
        if self.params.use_deformed_source_image:
            grid = make_coordinate_grid((height, width), shift.dtype, shift.device)
            grids = grid + shift[:, :, None, None, :]  # (B, K', h, w, 2)
            repeated = source.unsqueeze(1).expand(-1, num_maps, -1, -1, -1).flatten(0, 1)
            deformed = warp(repeated, grids.flatten(0, 1), self.align_corners)
            inputs.append(deformed.view(batch, num_maps, -1, height, width))  # (B, K', C, h, w)
        dtype = torch.promote_types(inputs[0].dtype, inputs[-1].dtype)
        return torch.cat([x.to(dtype) for x in inputs], dim=2).flatten(1, 2)  # (B, out_channels, h, w)


class Decoder(nn.Module):
    """The hourglass decoder of modules/util.py: `additional_features` more input channels per
    block (the keypoint embedding joined to every skip) and an optional last 3x3 conv."""

    def __init__(self, block_expansion: int, in_features: int, out_features: int, num_blocks: int,
                 max_features: int, additional_features: int = 0, use_last_conv: bool = True):
        super().__init__()
        width = lambda i: min(max_features, block_expansion * 2 ** i)  # noqa: E731
        self.up_blocks = nn.ModuleList(
            UpBlock2d((1 if i == num_blocks - 1 else 2) * width(i + 1) + additional_features, width(i))
            for i in reversed(range(num_blocks)))
        self.out_filters = block_expansion + in_features + additional_features
        self.conv = nn.Conv2d(self.out_filters, out_features, 3, padding=1) if use_last_conv else None

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return out if self.conv is None else self.conv(out)


class Hourglass(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, out_features: int, num_blocks: int,
                 max_features: int):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, out_features, num_blocks, max_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class KPDetector(nn.Module):
    """Heat maps from the hourglass's own last conv, softmax(h / temperature) over space, then
    moments (Monkey-Net Eq. 1-2) -> {'value': (B, K, 2), 'var': (B, K, 2, 2)}."""

    def __init__(self, num_kp: int, num_channels: int, kp_variance: str, params: MonkeyNetKpDetectorParams):
        super().__init__()
        self.predictor = Hourglass(params.block_expansion, num_channels, num_kp, params.num_blocks,
                                   params.max_features)
        self.params, self.kp_variance = params, kp_variance

    def forward(self, frames: torch.Tensor) -> Motion:
        logits = self.predictor(downscale(frames, self.params.scale_factor))  # (B, K, h, w)
        with full_precision(logits):
            flat = full(logits).flatten(2) / self.params.temperature
            heatmap = F.softmax(flat, dim=2).view(logits.shape)  # sums to one over space
            return heatmap_moments(heatmap, self.kp_variance, self.params.clip_variance)


class DenseMotion(nn.Module):
    """Masks over the K+1 translations (background first) plus a correction (Eq. 5):
    returns 'deformation' (B, h, w, 2), the grid that grid_sample reads, at scale_factor."""

    def __init__(self, num_kp: int, num_channels: int, kp_variance: str, params: MonkeyNetDenseMotionParams,
                 align_corners: bool):
        super().__init__()
        self.mask_embedding = MovementEmbedding(num_kp, num_channels, kp_variance, params.mask_embedding_params,
                                                align_corners, add_bg=True)
        self.difference_embedding = MovementEmbedding(
            num_kp, num_channels, kp_variance,
            MonkeyNetEmbeddingParams(use_heatmap=False, use_difference=True), align_corners, add_bg=True)
        channels = self.mask_embedding.out_channels
        self.group_blocks = nn.ModuleList(
            SameBlock2d(channels, channels, kernel_size=1, padding=0, groups=num_kp + 1)
            for _ in range(params.num_group_blocks))
        outputs = (num_kp + 1) * params.use_mask + 2 * params.use_correction
        self.hourglass = Hourglass(params.block_expansion, channels, outputs, params.num_blocks,
                                   params.max_features)
        head = self.hourglass.decoder.conv
        # Start as "every pixel follows the background": zero weights, background logit bg_init.
        nn.init.zeros_(head.weight)
        bias = [params.bg_init] + [0.0] * num_kp if params.use_mask else []
        head.bias.data.copy_(torch.tensor(bias + [0.0, 0.0] * params.use_correction))
        self.num_kp, self.params = num_kp, params

    def forward(self, source: torch.Tensor, kp_driving: Motion, kp_source: Motion) -> dict[str, torch.Tensor]:
        source = downscale(source, self.params.scale_factor)
        batch, _, height, width = source.shape
        prediction = self.mask_embedding(source, kp_driving, kp_source)
        for block in self.group_blocks:
            prediction = F.leaky_relu(block(prediction), 0.2)
        prediction = self.hourglass(prediction)  # (B, (K+1) + 2, h, w)
        out = {}
        with full_precision(prediction):
            relative = torch.zeros(batch, 2, height, width, dtype=full(prediction).dtype, device=source.device)
            if self.params.use_mask:
                mask = F.softmax(full(prediction[:, :self.num_kp + 1]), dim=1)  # (B, K+1, h, w)
                shifts = self.difference_embedding(source, kp_driving, kp_source)
                shifts = shifts.view(batch, self.num_kp + 1, 2, height, width)
                relative = relative + (shifts * mask.unsqueeze(2)).sum(dim=1)
                out["mask"] = mask
            if self.params.use_correction:
                out["correction"] = full(prediction[:, -2:])
                relative = relative + out["correction"]
            grid = make_coordinate_grid((height, width), relative.dtype, relative.device)
            out["deformation"] = relative.permute(0, 2, 3, 1) + grid  # (B, h, w, 2)
        return out


class Generator(nn.Module):
    """modules/generator.py's MotionTransferGenerator on frames (see the module docstring)."""

    def __init__(self, num_kp: int, num_channels: int, kp_variance: str, params: MonkeyNetGeneratorParams,
                 align_corners: bool):
        super().__init__()
        self.appearance_encoder = Encoder(params.block_expansion, num_channels, params.num_blocks,
                                          params.max_features)
        if params.kp_embedding_params is not None:
            self.kp_embedding_module = MovementEmbedding(num_kp, num_channels, kp_variance,
                                                         params.kp_embedding_params, align_corners)
            embedding = self.kp_embedding_module.out_channels
        else:
            self.kp_embedding_module, embedding = None, 0
        self.dense_motion_module = DenseMotion(num_kp, num_channels, kp_variance, params.dense_motion_params,
                                               align_corners)
        self.video_decoder = Decoder(params.block_expansion, num_channels, num_channels, params.num_blocks,
                                     params.max_features, embedding, use_last_conv=False)
        features = self.video_decoder.out_filters
        self.refinement_module = nn.Sequential()
        for i in range(params.num_refinement_blocks):
            self.refinement_module.add_module(f"r{i}", ResBlock2d(features, kernel_size=3, padding=1))
        self.refinement_module.add_module("conv-last", nn.Conv2d(features, num_channels, kernel_size=1))
        self.mode, self.align_corners = params.interpolation_mode, align_corners

    def deform(self, features: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
        """`features` warped by the dense motion resized to their size (generator.deform_input)."""
        grid = resize_map(deformation.permute(0, 3, 1, 2), features.shape[2:], self.mode)
        return warp(features, grid.permute(0, 2, 3, 1), self.align_corners)

    def forward(self, source: torch.Tensor, kp_source: Motion, kp_driving: Motion) -> dict[str, torch.Tensor]:
        skips = self.appearance_encoder(source)  # [frame, down_1, ..., down_n]
        out = self.dense_motion_module(source, kp_driving, kp_source)
        skips = [self.deform(skip, out["deformation"]).to(skip.dtype) for skip in skips]
        if self.kp_embedding_module is not None:
            embedding = self.kp_embedding_module(source, kp_driving, kp_source)  # (B, K, h, w)
            skips = [torch.cat([skip, resize_map(embedding, skip.shape[2:], self.mode).to(skip.dtype)], dim=1)
                     for skip in skips]
        out["deformed"] = self.deform(source, out["deformation"])  # the source moved by the motion alone
        out["prediction"] = torch.sigmoid(self.refinement_module(self.video_decoder(skips)))
        return out


class DiscriminatorBlock(nn.Module):
    """4x4 unpadded conv, InstanceNorm3d over each video's (T, H, W), leaky ReLU, 2x2 average pool."""

    def __init__(self, in_features: int, out_features: int, norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=4)
        self.norm = nn.InstanceNorm3d(out_features, affine=True) if norm else None

    def forward(self, x: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        out = self.conv(x)  # (B*T, C, h, w)
        if self.norm is not None:
            videos = out.view(-1, frames_per_video, *out.shape[1:]).transpose(1, 2)  # (B, C, T, h, w)
            out = self.norm(videos).transpose(1, 2).reshape(out.shape)
        return F.avg_pool2d(F.leaky_relu(out, 0.2), 2)


class Discriminator(nn.Module):
    """modules/discriminator.py: returns [frame, block_1, ..., block_n, prediction map]."""

    def __init__(self, num_kp: int, num_channels: int, kp_variance: str, params: MonkeyNetDiscriminatorParams,
                 align_corners: bool):
        super().__init__()
        if params.kp_embedding_params is not None:
            self.kp_embedding = MovementEmbedding(num_kp, num_channels, kp_variance, params.kp_embedding_params,
                                                  align_corners)
            embedding = self.kp_embedding.out_channels
        else:
            self.kp_embedding, embedding = None, 0
        width = lambda i: min(params.max_features, params.block_expansion * 2 ** i)  # noqa: E731
        self.down_blocks = nn.ModuleList(
            DiscriminatorBlock(num_channels + embedding if i == 0 else width(i), width(i + 1), norm=i != 0)
            for i in range(params.num_blocks))
        self.conv = nn.Conv2d(width(params.num_blocks), 1, kernel_size=1)
        self.scale_factor = params.scale_factor

    def forward(self, frames: torch.Tensor, kp_driving: Motion, kp_source: Motion,
                frames_per_video: int = 1) -> list[torch.Tensor]:
        """`frames` (B*T, C, H, W), video-major; `frames_per_video` T as the original's
        InstanceNorm3d sees it (training compares single frames: T = 1)."""
        maps = [frames]
        x = downscale(frames, self.scale_factor)
        if self.kp_embedding is not None:
            x = torch.cat([x, self.kp_embedding(x, kp_driving, kp_source).to(x.dtype)], dim=1)
        for block in self.down_blocks:
            x = block(x, frames_per_video)
            maps.append(x)
        maps.append(self.conv(x))
        return maps
