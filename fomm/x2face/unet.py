"""X2Face's pix2pix U-Nets (github.com/oawiles/X2Face: SkipNet.py, NoSkipNet_X2Face.py) with the
authors' parameter names: 8 stride-2 levels, BatchNorm, bias-free convolutions, bilinear x2
upsampling + 3x3 conv on the way up; with skips (the embedding network) or without (the
driving network, a 1x1 bottleneck)."""
from __future__ import annotations

import torch
from torch import nn

# pix2pix 'unet_256': 8 stride-2 levels take 256x256 to 1x1.
NUM_LEVELS = 8
FRAME_MULTIPLE = 2 ** NUM_LEVELS


class UNetLevel(nn.Module):
    """One level of the U-Net, outside in (SkipNet.py UnetSkipConnectionBlockBetterUpsampler).

    down: LeakyReLU(0.2), Conv 4x4 stride 2, BatchNorm(inner): the outermost level keeps
          only the conv, the innermost drops the BatchNorm.
    up:   ReLU, bilinear x2, Conv 3x3, BatchNorm(outer): the outermost level has no
          BatchNorm, and ends in tanh in the driving network.
    With `skip`, every level but the outermost returns cat([up, activated input]): the
    original's LeakyReLU works in place, so its skip carries the activated input.
    The layer indices and the registration order (up before down) are the original's.
    """

    def __init__(self, outer: int, inner: int, submodule: "UNetLevel | None", skip: bool,
                 align_corners: bool, in_channels: int | None = None, final_tanh: bool = False):
        super().__init__()
        self.outermost, self.skip = in_channels is not None, skip
        innermost = submodule is None
        up_in = 2 * inner if skip and not innermost else inner
        up = [nn.ReLU(), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align_corners),
              nn.Conv2d(up_in, outer, kernel_size=3, padding=1, bias=False)]
        down_conv = nn.Conv2d(in_channels or outer, inner, kernel_size=4, stride=2, padding=1, bias=False)
        if self.outermost:
            down = [down_conv]
            up += [nn.Tanh()] if final_tanh else []
        else:
            down = [nn.LeakyReLU(0.2), down_conv] + ([] if innermost else [nn.BatchNorm2d(inner)])
            up += [nn.BatchNorm2d(outer)]
        self.up = nn.Sequential(*up)
        self.down = nn.Sequential(*down)
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.outermost:
            x = self.down[0](x)  # LeakyReLU: what the skip carries
            inner = self.down[1:](x)  # (B, inner, H/2, W/2)
        else:
            inner = self.down(x)
        if self.submodule is not None:
            inner = self.submodule(inner)
        out = self.up(inner)  # (B, outer, H, W)
        return torch.cat([out, x], dim=1) if self.skip and not self.outermost else out


class UNet(nn.Module):
    """pix2pix 'unet_256' with the bilinear upsampler: widths ngf, 2ngf, 4ngf, then 8ngf down
    to a `bottleneck`-channel 1x1 map (SkipNet.py / NoSkipNet_X2Face.py
    UnetGeneratorBetterUpsampler). `model` is the outermost level, as in the original."""

    def __init__(self, in_channels: int, out_channels: int, ngf: int, bottleneck: int, skip: bool,
                 align_corners: bool, final_tanh: bool = False):
        super().__init__()
        level = UNetLevel(8 * ngf, bottleneck, None, skip, align_corners)
        for _ in range(NUM_LEVELS - 5):
            level = UNetLevel(8 * ngf, 8 * ngf, level, skip, align_corners)
        for outer in (4 * ngf, 2 * ngf, ngf):
            level = UNetLevel(outer, 2 * outer, level, skip, align_corners)
        self.model = UNetLevel(out_channels, ngf, level, skip, align_corners, in_channels=in_channels,
                               final_tanh=final_tanh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def xavier_init(module: nn.Module) -> None:
    """The original's 'xavier' initialisation (SkipNet.py weights_init_xavier): conv weights
    Xavier-normal with gain 1; BatchNorm weights uniform on [0.02, 1] (its
    `init.uniform(w, 1.0, 0.02)` on pytorch 0.2) and biases 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_normal_(module.weight, gain=1.0)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.uniform_(module.weight, 0.02, 1.0)
        nn.init.zeros_(module.bias)
