"""Multi-scale patch discriminator (FOMM §3.4; pix2pixHD-style, LSGAN).

Per scale: conv4x4 blocks without padding (instance norm on all but the first, LeakyReLU
0.2, 2x2 average pooling on all but the last), then a 1x1 conv to the patch scores.
Optional spectral norm on every conv and optional keypoint heatmaps as extra input
channels. Keys of `discs` spell the scale as the original does ('1', '0-5').
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fomm.blocks import kp2gaussian, scale_key
from fomm.config import DiscriminatorParams


def _conv(cin: int, cout: int, kernel_size: int, sn: bool) -> nn.Module:
    conv = nn.Conv2d(cin, cout, kernel_size=kernel_size)
    return nn.utils.spectral_norm(conv) if sn else conv


class DiscriminatorBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: bool, pool: bool, sn: bool):
        super().__init__()
        self.conv = _conv(cin, cout, 4, sn)
        self.norm = nn.InstanceNorm2d(cout, affine=True) if norm else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        return F.avg_pool2d(out, (2, 2)) if self.pool else out


class Discriminator(nn.Module):
    """One scale: returns (feature maps of every block, patch prediction map)."""

    def __init__(self, params: DiscriminatorParams, num_channels: int, num_kp: int):
        super().__init__()
        be, mf, n = params.block_expansion, params.max_features, params.num_blocks
        self.use_kp = params.use_kp
        self.kp_variance = params.kp_variance
        blocks = []
        for i in range(n):
            cin = num_channels + num_kp * int(params.use_kp) if i == 0 else min(mf, be * 2 ** i)
            blocks.append(DiscriminatorBlock(cin, min(mf, be * 2 ** (i + 1)), norm=i != 0,
                                             pool=i != n - 1, sn=params.sn))
        self.down_blocks = nn.ModuleList(blocks)
        self.conv = _conv(min(mf, be * 2 ** n), 1, 1, params.sn)

    def forward(self, x: torch.Tensor, kp_value: torch.Tensor | None = None):
        out = x
        if self.use_kp:
            if kp_value is None:
                raise ValueError("discriminator_params.use_kp is true: keypoints are required")
            out = torch.cat([out, kp2gaussian(kp_value, x.shape[2:], self.kp_variance).to(x.dtype)], dim=1)
        feature_maps = []
        for block in self.down_blocks:
            out = block(out)
            feature_maps.append(out)
        return feature_maps, self.conv(out)


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, params: DiscriminatorParams, num_channels: int, num_kp: int):
        super().__init__()
        self.discs = nn.ModuleDict({scale_key(s): Discriminator(params, num_channels, num_kp)
                                    for s in params.scales})

    def forward(self, pyramid: dict[str, torch.Tensor], kp_value: torch.Tensor | None = None
                ) -> dict[str, object]:
        """pyramid: {'prediction_<s>': (B, C, H*s, W*s)} -> feature_maps_<s>, prediction_map_<s>."""
        out = {}
        for key, disc in self.discs.items():
            scale = key.replace("-", ".")
            feature_maps, prediction = disc(pyramid["prediction_" + scale], kp_value)
            out["feature_maps_" + scale] = feature_maps
            out["prediction_map_" + scale] = prediction
        return out
