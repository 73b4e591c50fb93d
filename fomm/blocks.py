"""Building blocks shared by the FOMM networks (and the baselines built on them).

Module and attribute names (`conv`, `norm`, `down_blocks`, `up_blocks`, `encoder`,
`decoder`, `weight` of the anti-alias filter) follow the original implementation so that
released checkpoints load by name.

Coordinates: `make_coordinate_grid` is the original's grid, x and y spaced evenly in
[-1, 1] with -1 and 1 at the centres of the first and last pixels. Keypoints are
expressed in it. `identity_grid(size, align_corners)` is the grid that `grid_sample`
with that `align_corners` maps to the input unchanged (the two agree when True).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------- coordinates
def make_coordinate_grid(spatial_size: tuple[int, int], dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W, 2) grid of (x, y) in [-1, 1], corners at the extreme pixel centres (the original's;
    the identity grid under align_corners=True)."""
    return identity_grid(spatial_size, True, dtype, device)


def identity_grid(spatial_size: tuple[int, int], align_corners: bool,
                  dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W, 2) grid that `grid_sample(x, grid, align_corners=...)` maps to `x` itself: pixel
    centres at 2i/(n-1) - 1 (True) or (2i+1)/n - 1 (False)."""
    h, w = int(spatial_size[0]), int(spatial_size[1])
    x, y = _pixel_centres(w, align_corners, dtype, device), _pixel_centres(h, align_corners, dtype, device)
    return torch.stack([x.view(1, w).expand(h, w), y.view(h, 1).expand(h, w)], dim=-1)  # (H, W, 2)


def _pixel_centres(n: int, align_corners: bool, dtype: torch.dtype, device) -> torch.Tensor:
    index = torch.arange(n, dtype=dtype, device=device)
    return 2 * (index / (n - 1)) - 1 if align_corners else (2 * index + 1) / n - 1


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in fp32 if it is a half type (bf16/fp16 under autocast), else unchanged: float64
    runs (the golden tests) must stay float64 all the way through."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def full_precision(tensor: torch.Tensor):
    """Context that turns autocast off on `tensor`'s device: coordinates, jacobian inverses and
    sampling grids stay fp32 under bf16 autocast (bf16 would move points by ~0.5 px at 256)."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def inverse_2x2(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 2, 2) inverse as adj(M) / det(M): traceable into plain ONNX arithmetic."""
    a, b = matrix[..., 0, 0], matrix[..., 0, 1]
    c, d = matrix[..., 1, 0], matrix[..., 1, 1]
    adjugate = torch.stack([torch.stack([d, -b], dim=-1), torch.stack([-c, a], dim=-1)], dim=-2)
    return adjugate / (a * d - b * c)[..., None, None]


def warp(image: torch.Tensor, grid: torch.Tensor, align_corners: bool,
         padding_mode: str = "zeros") -> torch.Tensor:
    """Backward warp: out[b, :, i, j] = image[b] sampled at grid[b, i, j] (normalised x, y).

    Samples in the wider of the two dtypes (as CUDA autocast does for grid_sample), so a
    bf16 feature map is warped by an fp32 grid without rounding the grid.
    """
    dtype = torch.promote_types(image.dtype, grid.dtype)
    return F.grid_sample(image.to(dtype), grid.to(dtype), mode="bilinear",
                         padding_mode=padding_mode, align_corners=align_corners)


def resize_grid(grid: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """(B, h, w, 2) sampling grid bilinearly resized to (B, H, W, 2)."""
    if tuple(grid.shape[1:3]) == tuple(size):
        return grid
    grid = grid.permute(0, 3, 1, 2)  # (B, 2, h, w)
    grid = F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=align_corners)
    return grid.permute(0, 2, 3, 1)  # (B, H, W, 2)


def kp2gaussian(kp_value: torch.Tensor, spatial_size: tuple[int, int],
                kp_variance: float) -> torch.Tensor:
    """(B, K, H, W) unnormalised Gaussians exp(-|z - p_k|^2 / (2 var)) around keypoints (B, K, 2)."""
    grid = make_coordinate_grid(spatial_size, kp_value.dtype, kp_value.device)  # (H, W, 2)
    lead = kp_value.shape[:-1]
    grid = grid.view((1,) * len(lead) + grid.shape)  # (1, 1, H, W, 2)
    mean = kp_value.view(lead + (1, 1, 2))  # (B, K, 1, 1, 2)
    return torch.exp(-0.5 * ((grid - mean) ** 2).sum(-1) / kp_variance)  # (B, K, H, W)


def scale_key(scale: float) -> str:
    """Module-dict key of a pyramid scale as the original spells it: 1 -> '1', 0.5 -> '0-5'."""
    return f"{float(scale):g}".replace(".", "-")


# --------------------------------------------------------------------------- blocks
class ResBlock2d(nn.Module):
    """Pre-activation residual block: x + conv(relu(bn(conv(relu(bn(x))))))."""

    def __init__(self, in_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, in_features, kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(in_features, in_features, kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm2d(in_features, affine=True)
        self.norm2 = nn.BatchNorm2d(in_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class UpBlock2d(nn.Module):
    """Nearest x2 upsampling, conv, BatchNorm, ReLU (hourglass decoder)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3,
                 padding: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nearest mode takes no align_corners (torch rejects it); x2 nearest is exact.
        out = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.relu(self.norm(self.conv(out)))


class DownBlock2d(nn.Module):
    """Conv, BatchNorm, ReLU, 2x2 average pooling (hourglass encoder)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3,
                 padding: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class SameBlock2d(nn.Module):
    """Conv, BatchNorm, ReLU at the same resolution."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3,
                 padding: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


def _hourglass_width(block_expansion: int, max_features: int, i: int) -> int:
    return min(max_features, block_expansion * (2 ** i))


class Encoder(nn.Module):
    """Hourglass encoder: returns [x, down_1(x), down_2(down_1(x)), ...]."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3,
                 max_features: int = 256):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            cin = in_features if i == 0 else _hourglass_width(block_expansion, max_features, i)
            cout = _hourglass_width(block_expansion, max_features, i + 1)
            blocks.append(DownBlock2d(cin, cout, kernel_size=3, padding=1))
        self.down_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder: upsample, concatenate the encoder's skip, repeat."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3,
                 max_features: int = 256):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            mult = 1 if i == num_blocks - 1 else 2
            cin = mult * _hourglass_width(block_expansion, max_features, i + 1)
            cout = _hourglass_width(block_expansion, max_features, i)
            blocks.append(UpBlock2d(cin, cout, kernel_size=3, padding=1))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return out  # (B, block_expansion + in_features, H, W)


class Hourglass(nn.Module):
    """U-Net style hourglass (REFERENCE §4): encoder, decoder with skip connections."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3,
                 max_features: int = 256):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class AntiAliasInterpolation2d(nn.Module):
    """Gaussian blur then subsample by `scale` (sigma = (1/s - 1)/2, kernel 2 round(4 sigma) + 1).

    The kernel is a buffer named `weight`, as in released checkpoints.
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        kernel_size = 2 * round(sigma * 4) + 1
        self.ka = kernel_size // 2
        self.kb = self.ka - 1 if kernel_size % 2 == 0 else self.ka
        coords = torch.arange(kernel_size, dtype=torch.float32)
        mean = (kernel_size - 1) / 2
        gauss = torch.exp(-((coords - mean) ** 2) / (2 * sigma ** 2)) if sigma > 0 else (coords == mean).float()
        kernel = gauss.view(-1, 1) * gauss.view(1, -1)
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.view(1, 1, kernel_size, kernel_size).repeat(channels, 1, 1, 1))
        self.groups = channels
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return x
        out = F.pad(x, (self.ka, self.kb, self.ka, self.kb))
        out = F.conv2d(out, weight=self.weight.to(out.dtype), groups=self.groups)
        inv = 1 / self.scale
        if abs(inv - round(inv)) < 1e-6:
            # Nearest subsampling by an integer factor picks every inv-th pixel from 0,
            # exactly what the original's F.interpolate(scale_factor=s) (nearest) does.
            step = int(round(inv))
            return out[:, :, ::step, ::step]
        size = (int(math.floor(out.shape[2] * self.scale)), int(math.floor(out.shape[3] * self.scale)))
        return F.interpolate(out, size=size, mode="nearest")


class ImagePyramid(nn.Module):
    """{'prediction_<s>': image blurred and subsampled by s} for each scale (the original's ImagePyramide)."""

    def __init__(self, scales: tuple[float, ...], num_channels: int):
        super().__init__()
        self.downs = nn.ModuleDict({scale_key(s): AntiAliasInterpolation2d(num_channels, s) for s in scales})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prediction_" + key.replace("-", "."): down(x) for key, down in self.downs.items()}
