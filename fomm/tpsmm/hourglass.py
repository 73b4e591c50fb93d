"""TPSMM's convolution blocks and hourglass (modules/util.py of the original).

They are FOMM's blocks (fomm/blocks.py) with two differences, so they live here:
- every normalisation is an affine InstanceNorm2d (FOMM: BatchNorm2d), hence no running
  statistics in the checkpoints and nothing for the inference copy to fold;
- the hourglass can return every decoder level (`Hourglass.forward(x, all_levels=True)`,
  the original's `mode=1`), which the dense motion network's multi-resolution occlusion
  masks read, and `out_channels` lists the channels of those levels.
Names (`conv`, `norm`, `down_blocks`, `up_blocks`, `encoder`, `decoder`) are the original's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True)


class ResBlock2d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(norm2(conv1(relu(norm1(x))))))."""

    def __init__(self, in_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, in_features, kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(in_features, in_features, kernel_size, padding=padding)
        self.norm1 = norm(in_features)
        self.norm2 = norm(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(out))) + x


class UpBlock2d(nn.Module):
    """Nearest x2 upsampling, conv, InstanceNorm, ReLU."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = norm(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nearest takes no align_corners; x2 nearest copies each pixel to a 2x2 block exactly.
        return F.relu(self.norm(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))))


class DownBlock2d(nn.Module):
    """Conv, InstanceNorm, ReLU, 2x2 average pooling."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = norm(out_features)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class SameBlock2d(nn.Module):
    """Conv, InstanceNorm, ReLU at the same resolution."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = norm(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


def width(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * 2 ** level)


class Encoder(nn.Module):
    """[x, down_1(x), down_2(down_1(x)), ...]."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(in_features if i == 0 else width(block_expansion, max_features, i),
                        width(block_expansion, max_features, i + 1))
            for i in range(num_blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Upsample, concatenate the encoder's skip, repeat; every level's output is kept.

    `out_channels[j]` is the channel count of level j's output for j >= 1 (level j - 1's
    output feeds up block j), and `out_channels[-1]` that of the last level; as the original,
    `out_channels[0]` is up block 0's input width.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks, self.out_channels = [], []
        for i in reversed(range(num_blocks)):
            cin = (1 if i == num_blocks - 1 else 2) * width(block_expansion, max_features, i + 1)
            self.out_channels.append(cin)
            blocks.append(UpBlock2d(cin, width(block_expansion, max_features, i)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_channels.append(block_expansion + in_features)

    def forward(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        skips = list(skips)
        out, levels = skips.pop(), []
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
            levels.append(out)
        return levels  # coarse to fine; levels[-1] (B, block_expansion + in_features, H, W)


class Hourglass(nn.Module):
    """U-Net hourglass (encoder, decoder with skips) of InstanceNorm blocks."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_channels = self.decoder.out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every decoder level, coarse to fine (the original's mode=1)."""
        return self.decoder(self.encoder(x))
