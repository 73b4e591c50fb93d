"""X2Face (Wiles, Koepke and Zisserman, "X2Face: A network for controlling face generation
using images, audio, and pose codes", ECCV 2018), in the framework of the First Order
Motion Model.

Two networks and no keypoints. The embedding network (a U-Net) predicts from the source a
sampling grid G_e that maps it to a pose-free "embedded face" E = S(G_e); the driving
network (the same encoder-decoder template without skips) predicts from the driving frame
the grid G_d that samples E into the output, Y = E(G_d) (X2Face Sec. 3.1). Both grids are
the identity plus `max_offset * tanh(offsets)`, and the heads start near zero, so an
untrained model returns nearly its source. Training is the L1 photometric loss ||Y - D||_1
(Sec. 3.2). The composed backward grid G_e(G_d(z)) is the model's 'deformation'.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from fomm.api import MotionTransferModel, Motion
from fomm.blocks import Encoder, Hourglass, UpBlock2d, identity_grid, warp
from pipeline.config import Config, X2FaceParams
from pipeline.errors import UserError

log = logging.getLogger(__name__)


class GridHead(nn.Module):
    """3x3 conv to 2 channels -> identity grid + max_offset * tanh(offsets) (B, H, W, 2).
    Weights start at `init_scale` times torch's default, bias at zero: near identity."""

    def __init__(self, in_features: int, params: X2FaceParams, align_corners: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_features, 2, kernel_size=3, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(params.init_scale)
            self.conv.bias.zero_()
        self.max_offset, self.align_corners = params.max_offset, align_corners

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        offsets = self.max_offset * torch.tanh(self.conv(features).float())  # (B, 2, H, W)
        grid = identity_grid(features.shape[2:], self.align_corners, offsets.dtype, offsets.device)
        return grid + offsets.permute(0, 2, 3, 1)  # (B, H, W, 2)


class EmbeddingNetwork(nn.Module):
    """U-Net (encoder-decoder with skips) from the source to the grid G_e (X2Face Sec. 3.1)."""

    def __init__(self, num_channels: int, params: X2FaceParams, align_corners: bool):
        super().__init__()
        self.hourglass = Hourglass(params.block_expansion, num_channels, params.num_blocks,
                                   params.max_features)
        self.head = GridHead(self.hourglass.out_filters, params, align_corners)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return self.head(self.hourglass(source))  # (B, H, W, 2)


class DrivingNetwork(nn.Module):
    """Encoder-decoder without skips from the driving frame to the grid G_d: everything it
    knows of the driving frame passes through the bottleneck (X2Face Sec. 3.1)."""

    def __init__(self, num_channels: int, params: X2FaceParams, align_corners: bool):
        super().__init__()
        expansion, most, blocks = params.block_expansion, params.max_features, params.num_blocks
        widths = [min(most, expansion * 2 ** i) for i in range(blocks + 1)]
        self.encoder = Encoder(expansion, num_channels, blocks, most)
        self.up_blocks = nn.ModuleList(
            UpBlock2d(widths[level + 1], widths[level]) for level in reversed(range(blocks)))
        self.head = GridHead(widths[0], params, align_corners)

    def forward(self, driving: torch.Tensor) -> torch.Tensor:
        x = self.encoder(driving)[-1]  # (B, w_n, H / 2^n, W / 2^n): the bottleneck only
        for block in self.up_blocks:
            x = block(x)
        return self.head(x)  # (B, H, W, 2)


def use_instance_norm(module: nn.Module) -> None:
    """Replace every BatchNorm2d below `module` by an affine InstanceNorm2d of the same width
    (`x2face_params.norm: instance`); the shared blocks are built with BatchNorm."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.InstanceNorm2d(child.num_features, affine=True))
        else:
            use_instance_norm(child)


class X2Face(MotionTransferModel):
    """X2Face under the `fomm.api` contract; motion = {'frame': the driving frame}."""
    name = "x2face"

    def __init__(self, config: Config):
        super().__init__()
        model = config.model_params
        params, channels = model.x2face_params, model.common_params.num_channels
        self.embedding_network = EmbeddingNetwork(channels, params, model.align_corners)
        self.driving_network = DrivingNetwork(channels, params, model.align_corners)
        self.align_corners = model.align_corners
        if params.norm == "instance":
            use_instance_norm(self)

    def detect(self, frames: torch.Tensor) -> Motion:
        """X2Face has no motion descriptor: its driving network reads the frame itself."""
        return {"frame": frames}

    def keypoints(self, motion: Motion) -> None:
        return None

    def generate(self, source: torch.Tensor, motion_source: Motion, motion_driving: Motion
                 ) -> dict[str, torch.Tensor]:
        embedding_grid = self.embedding_network(source)  # (B, H, W, 2): G_e
        driving_grid = self.driving_network(motion_driving["frame"])  # (B, H, W, 2): G_d
        embedded = warp(source, embedding_grid, self.align_corners, padding_mode="border")
        prediction = warp(embedded, driving_grid, self.align_corners, padding_mode="border")
        # G_e(G_d(z)): where in the source each output pixel comes from.
        deformation = warp(embedding_grid.permute(0, 3, 1, 2), driving_grid, self.align_corners,
                           padding_mode="border").permute(0, 2, 3, 1)  # (B, H, W, 2)
        deformed = warp(source, deformation, self.align_corners, padding_mode="border")
        return {"prediction": prediction, "embedded": embedded, "embedding_grid": embedding_grid,
                "driving_grid": driving_grid, "deformation": deformation, "deformed": deformed}

    def transfer(self, motion_source: Motion, motion_driving: Motion, motion_initial: Motion,
                 relative: bool = True, relative_jacobian: bool = True,
                 adapt_movement_scale: bool = False) -> Motion:
        """X2Face drives with the frame itself; there is no relative form of its motion, so
        every option gives the driving frame (as X2Face itself animates)."""
        if relative or adapt_movement_scale:
            log.debug("x2face has no relative motion; driving with the frames as they are")
        return dict(motion_driving)

    def generator_losses(self, source, driving, kit):
        """L1 photometric loss ||Y - D||_1 (X2Face Sec. 3.2), plus perceptual if weighted."""
        generated = self.generate(source, self.detect(source), self.detect(driving))
        losses = {}
        weights = kit.weights
        if weights.reconstruction_l1:
            losses["reconstruction_l1"] = kit.reconstruction_l1(generated["prediction"], driving)
        if sum(weights.perceptual) != 0:
            losses["perceptual"] = kit.perceptual(generated["prediction"], driving)
        if not losses:
            raise UserError("x2face trains on loss_weights.reconstruction_l1 or perceptual; "
                             "both are zero in this config")
        return losses, generated

    def optimizer_groups(self):
        return {"generator": list(self.parameters())}
