"""Xception (Chollet, CVPR 2017) as FaceForensics++ (Rossler et al., ICCV 2019) uses it: the
standard frame-level deepfake detector of the literature (REFERENCE §10).

The module carries the parameter names of the reference implementation whose weights users
publish (Cadene's `pretrainedmodels` `xception`, which FaceForensics++ copies as
`network/xception.py`): `conv1`, `bn1`, `conv2`, `bn2`, `block1` ... `block12` (each with
`rep.<i>.conv1` / `rep.<i>.pointwise` separable convolutions and BatchNorms at the same
Sequential indices, and `skip` / `skipbn` where the shape changes), `conv3`, `bn3`, `conv4`,
`bn4` and the head `last_linear`. At `width=1` a state dict of that implementation loads
unchanged (`load_weights`: ImageNet's 1000-class file, whose 1x1 `pointwise` weights are 2-D
and whose head is `fc`, or a FaceForensics++ `TransferModel`, whose tensors sit under `model.`
and whose 2-class head may sit in a `Sequential` behind dropout). A fractional `width`
shrinks every channel count for CPU tests; the layout is the same.

    net = Xception()                  # 2 classes (real, generated), random initialisation
    net = Xception(width=1 / 16)      # the tests' tiny detector

Inputs are (B, 3, H, W) in [0, 1], normalised as the reference does (mean 0.5, std 0.5);
FaceForensics++ feeds 299x299 face crops, any size of at least 32 px works (global average
pooling before the head). The output is (B, classes) logits; `fake_probability` is the
softmax of class 1, FaceForensics++'s "fake".
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from core.errors import UserError

log = logging.getLogger(__name__)

# channel counts of the reference network, entry flow to exit flow
CHANNELS = (32, 64, 128, 256, 728, 1024, 1536, 2048)
MIDDLE_BLOCKS = 8     # block4 .. block11


class SeparableConv2d(nn.Module):
    """A depthwise k x k convolution (`conv1`) then a pointwise 1x1 one (`pointwise`), no bias."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, kernel_size, stride, padding, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    """`reps` (ReLU, separable 3x3, BatchNorm) units, then a 3x3 max pool of `stride`, plus the
    input (through a strided 1x1 `skip` and `skipbn` when the shape changes).

    `grow_first` widens in the first unit, else in the last; without `start_with_relu` the
    first ReLU is left out (block1 follows conv2's ReLU). The Sequential's indices are the
    reference's: a ReLU at every third position, so `rep.1` is the first separable
    convolution of a block that starts with a ReLU and `rep.0` of one that does not."""

    def __init__(self, cin: int, cout: int, reps: int, stride: int = 1, start_with_relu: bool = True,
                 grow_first: bool = True):
        super().__init__()
        self.skip = self.skipbn = None
        if cout != cin or stride != 1:
            self.skip = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(cout)
        widths = [(cin, cout)] + [(cout, cout)] * (reps - 1) if grow_first else \
            [(cin, cin)] * (reps - 1) + [(cin, cout)]
        layers: list[nn.Module] = []
        for index, (a, b) in enumerate(widths):
            # the reference shares one in-place ReLU between units; the first must not
            # overwrite the input the skip path still needs
            layers += [nn.ReLU(inplace=index > 0), SeparableConv2d(a, b), nn.BatchNorm2d(b)]
        if not start_with_relu:
            layers = layers[1:]
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + skip


class Xception(nn.Module):
    """Entry flow (conv1, conv2, block1-3), middle flow (block4-11), exit flow (block12,
    conv3, conv4), global average pooling and `last_linear`."""

    def __init__(self, num_classes: int = 2, width: float = 1.0):
        super().__init__()
        if not 0 < width <= 1:
            raise UserError(f"Xception width {width}: expected a fraction in (0, 1]")
        self.width = width
        c = [max(4, round(channels * width)) for channels in CHANNELS]
        self.conv1 = nn.Conv2d(3, c[0], 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(c[0])
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c[0], c[1], 3, bias=False)
        self.bn2 = nn.BatchNorm2d(c[1])
        self.block1 = Block(c[1], c[2], 2, 2, start_with_relu=False)
        self.block2 = Block(c[2], c[3], 2, 2)
        self.block3 = Block(c[3], c[4], 2, 2)
        for index in range(4, 4 + MIDDLE_BLOCKS):
            setattr(self, f"block{index}", Block(c[4], c[4], 3, 1))
        self.block12 = Block(c[4], c[5], 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(c[5], c[6])
        self.bn3 = nn.BatchNorm2d(c[6])
        self.conv4 = SeparableConv2d(c[6], c[7])
        self.bn4 = nn.BatchNorm2d(c[7])
        self.last_linear = nn.Linear(c[7], num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C, h, w) before the final ReLU, as the reference's."""
        x = images * 2 - 1                                           # mean 0.5, std 0.5
        x = self.relu(self.bn1(self.conv1(x)))                       # (B, 32, H/2, W/2)
        x = self.relu(self.bn2(self.conv2(x)))                       # (B, 64, ., .)
        for index in range(1, 13):
            x = getattr(self, f"block{index}")(x)                    # (B, 728 / 1024, ., .)
        x = self.relu(self.bn3(self.conv3(x)))                       # (B, 1536, ., .)
        return self.bn4(self.conv4(x))                               # (B, 2048, h, w)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(self.features(images)).mean(dim=(2, 3))  # (B, 2048)
        return self.last_linear(pooled)                              # (B, classes)


def fake_probability(logits: torch.Tensor) -> torch.Tensor:
    """(B,) probability of class 1 (generated) from (B, 2) logits."""
    return torch.softmax(logits.float(), dim=1)[:, 1]


def reference_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A published Xception state dict under this module's names: `model.` (FaceForensics++'s
    TransferModel) and `module.` (DataParallel) prefixes dropped, the ImageNet file's `fc` and
    a dropout head's `last_linear.1` renamed `last_linear`, 2-D pointwise weights (the
    Keras port) given their 1x1 kernel."""
    renamed = {}
    for name, tensor in state.items():
        for prefix in ("module.", "model."):
            name = name.removeprefix(prefix)
        if name.startswith("fc."):
            name = "last_linear." + name[3:]
        name = name.replace("last_linear.1.", "last_linear.")
        if name.endswith("pointwise.weight") and tensor.dim() == 2:
            tensor = tensor[:, :, None, None]
        renamed[name] = tensor
    return renamed


def load_weights(net: Xception, state: dict[str, torch.Tensor]) -> list[str]:
    """Load a published or project state dict into `net`; UserError names the first tensor
    that is missing or has another shape. A head of another size (ImageNet's 1000 classes)
    is left at its initialisation: returns the names so left."""
    state = reference_state(state)
    own = net.state_dict()
    kept = []
    for name, tensor in own.items():
        given = state.get(name)
        if given is None:
            raise UserError(f"Xception weights lack {name!r} (expected the pretrainedmodels / "
                            f"FaceForensics++ layout at width {net.width})")
        if given.shape != tensor.shape:
            if name.startswith("last_linear."):
                kept.append(name)
                continue
            raise UserError(f"Xception weights: {name!r} has shape {tuple(given.shape)}, expected "
                            f"{tuple(tensor.shape)} (width {net.width})")
    extra = sorted(set(state) - set(own))
    if extra:
        raise UserError(f"Xception weights hold {extra[0]!r} (and {len(extra) - 1} more) that the "
                        f"network has no place for")
    net.load_state_dict({name: state[name] for name in own if name not in kept}, strict=False)
    if kept:
        log.info("Xception head %s left at its initialisation (the weights' head has another size)", kept)
    return kept
