"""OpenFace nn4.small2.v1, the identity network behind the paper's face AED (REFERENCE §8).

pose-evaluation's `extract_face_id` runs thnkim/OpenFacePytorch's port of nn4.small2.v1 on
the whole 256x256 frame: BGR channel order, `skimage.transform.resize` to 96x96 (values in
[0, 1]), no face detection, every frame; the 128-d output is L2-normalised with an epsilon
(x / sqrt(|x|^2 + 1e-6)). The resize is the one of the scikit-image pose-evaluation pins
(0.14), whose defaults were bilinear, zero padding and no anti-aliasing (today's defaults
anti-alias: up to 0.16 apart); `RESIZE_0_14` passes them explicitly (reference/README.md,
`face_id`). This module rebuilds that network layer by layer with the port's state_dict names
(`layer1.weight` ... `layer25.bias`), so the user's converted weights (`openface.pth`) load
as they are. It runs in float32 as the original (`torch.Tensor(frame)`); `dtype=torch.float64`
reproduces the golden files. The weights are not shipped: without them the backend raises
`BackendUnavailable` with one line saying where to put them.

The port's LRN (layers 5 and 12) comes from torch.legacy's CPU `SpatialCrossMapLRN`, whose
running window sum never drops channel 0; `CrossMapLRN` reproduces that window, since the
golden vectors (reference/openface-golden.pt) come from the port as pose-evaluation ran it.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metrics.backends import (WEIGHTS_DIR, BackendUnavailable, IdentityBackend, check_frames, find_weights,
                              load_weights)

log = logging.getLogger(__name__)

WEIGHTS_ENV = "OPENFACE_WEIGHTS"
WEIGHTS_NAMES = ("openface.pth", "openface_nn4_small2_v1.pth")
INPUT_SIZE = 96
# scikit-image 0.14's resize defaults, which extract_face_id ran with (pose-evaluation pins it)
RESIZE_0_14 = dict(order=1, mode="constant", cval=0, clip=True, preserve_range=False, anti_aliasing=False,
                   anti_aliasing_sigma=None)


class CrossMapLRN(nn.Module):
    """Local response normalisation across channels, with the port's window.

    out_c = x_c * (k + alpha / size * S_c) ** -beta, S_c a sum of x_j^2 over a window of
    channels. The legacy CPU code keeps a running sum that adds channel c + 2 and removes
    channel c - 3 only for c > 3, so channel 0 is never removed: S_c = sum_{j <= c+2} for
    c <= 3 and s_0 + sum_{c-2 <= j <= c+2} for c >= 4 (reference/README.md, LRN note).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def window(self, channels: int, dtype: torch.dtype) -> torch.Tensor:
        """(C, C) 0/1 matrix: row c marks the channels summed for output channel c."""
        half = (self.size - 1) // 2
        index = torch.arange(channels)
        rows, cols = index[:, None], index[None, :]
        inside = (cols <= rows + half) & ((cols >= rows - half) | (rows <= half + 1))
        inside |= (cols == 0) & (rows > half + 1)  # the channel the running sum never drops
        return inside.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squares = x * x  # (B, C, H, W)
        window_sum = torch.einsum("dc,bchw->bdhw", self.window(x.shape[1], x.dtype), squares)
        return x * (self.k + self.alpha / self.size * window_sum) ** -self.beta


def _conv_bn_relu(names: tuple[str, str, str], inputs: int, outputs: int, kernel: int,
                  stride: int = 1, padding: int = 0) -> list[tuple[str, nn.Module]]:
    conv, bn, relu = names
    return [(conv, nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=padding)),
            (bn, nn.BatchNorm2d(outputs)), (relu, nn.ReLU())]


class Inception(nn.Module):
    """One inception block of nn4.small2 as the port builds it (`seq_list` of branches).

    Branches: for each kernel n, 1x1 reduce -> n x n conv; then pool (-> 1x1 conv when a
    reduce size is given); then an optional plain 1x1 conv. Outputs are zero-padded,
    centred, to the largest branch's size and concatenated along channels.
    """

    def __init__(self, inputs: int, kernels: tuple, strides: tuple, outputs: tuple, reduces: tuple,
                 pool: nn.Module):
        super().__init__()
        branches = []
        for kernel, stride, output, reduce in zip(kernels, strides, outputs, reduces):
            layers = _conv_bn_relu(("1_conv", "2_bn", "3_relu"), inputs, reduce, 1)
            layers += _conv_bn_relu(("4_conv", "5_bn", "6_relu"), reduce, output, kernel, stride, kernel // 2)
            branches.append(nn.Sequential(OrderedDict(layers)))
        rest = list(reduces[len(kernels):])
        pool_layers = [("1_pool", pool)]
        if rest and rest[0] is not None:
            pool_layers += _conv_bn_relu(("2_conv", "3_bn", "4_relu"), inputs, rest[0], 1)
        branches.append(nn.Sequential(OrderedDict(pool_layers)))
        if len(rest) > 1 and rest[1] is not None:
            branches.append(nn.Sequential(OrderedDict(_conv_bn_relu(("1_conv", "2_bn", "3_relu"),
                                                                    inputs, rest[1], 1))))
        self.seq_list = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.seq_list]
        height = max(out.shape[2] for out in outs)
        width = max(out.shape[3] for out in outs)
        padded = []
        for out in outs:
            left, top = (width - out.shape[3]) // 2, (height - out.shape[2]) // 2
            padded.append(F.pad(out, (left, width - out.shape[3] - left, top, height - out.shape[2] - top)))
        return torch.cat(padded, 1)  # (B, sum of branch channels, H, W)


def _max_pool() -> nn.Module:
    return nn.MaxPool2d(3, stride=2, padding=0)


def _lp_pool() -> nn.Module:
    return nn.LPPool2d(2, 3, stride=3)


class OpenFaceNet(nn.Module):
    """nn4.small2.v1: (B, 3, 96, 96) BGR in [0, 1] -> (embedding (B, 128), features (B, 736)).

    Attribute names follow the port (`layer1` ... `layer25`; layers 20, 23 and 24 do not
    exist there either), so its state_dict loads unchanged.
    """

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.layer2 = nn.BatchNorm2d(64)
        self.layer3 = nn.ReLU()
        self.layer4 = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer5 = CrossMapLRN(5, 1e-4, 0.75)
        self.layer6 = nn.Conv2d(64, 64, 1)
        self.layer7 = nn.BatchNorm2d(64)
        self.layer8 = nn.ReLU()
        self.layer9 = nn.Conv2d(64, 192, 3, padding=1)
        self.layer10 = nn.BatchNorm2d(192)
        self.layer11 = nn.ReLU()
        self.layer12 = CrossMapLRN(5, 1e-4, 0.75)
        self.layer13 = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer14 = Inception(192, (3, 5), (1, 1), (128, 32), (96, 16, 32, 64), _max_pool())
        self.layer15 = Inception(256, (3, 5), (1, 1), (128, 64), (96, 32, 64, 64), _lp_pool())
        self.layer16 = Inception(320, (3, 5), (2, 2), (256, 64), (128, 32, None, None), _max_pool())
        self.layer17 = Inception(640, (3, 5), (1, 1), (192, 64), (96, 32, 128, 256), _lp_pool())
        self.layer18 = Inception(640, (3, 5), (2, 2), (256, 128), (160, 64, None, None), _max_pool())
        self.layer19 = Inception(1024, (3,), (1,), (384,), (96, 96, 256), _lp_pool())
        self.layer21 = Inception(736, (3,), (1,), (384,), (96, 96, 256), _max_pool())
        self.layer22 = nn.AvgPool2d(3, stride=1, padding=0)
        self.layer25 = nn.Linear(736, 128)

    STEM = ("layer1", "layer2", "layer3", "layer4", "layer5", "layer6", "layer7", "layer8", "layer9",
            "layer10", "layer11", "layer12", "layer13", "layer14", "layer15", "layer16", "layer17",
            "layer18", "layer19", "layer21", "layer22")

    def forward(self, x: torch.Tensor, keep: tuple[str, ...] = ()):
        """Embedding and 736-d features; with `keep`, also {name: output} of those layers."""
        kept = {}
        for name in self.STEM:
            x = getattr(self, name)(x)
            if name in keep:
                kept[name] = x
        features = x.reshape(-1, 736)  # (B, 736)
        embedding = self.layer25(features)  # (B, 128)
        # the port's normalisation: an epsilon under the root, so norms are just under 1
        embedding = embedding / torch.sqrt((embedding ** 2).sum(1, keepdim=True) + 1e-6)
        return (embedding, features, kept) if keep else (embedding, features)


def load_openface_state(model: OpenFaceNet, state: dict) -> OpenFaceNet:
    """Load a port state_dict; weights converted before torch 0.4.1 lack the BatchNorm
    `num_batches_tracked` counters, which inference never reads, so only they may be absent."""
    result = model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise BackendUnavailable(f"OpenFace weights do not match nn4.small2.v1: missing {missing[:3]}, "
                                 f"unexpected {result.unexpected_keys[:3]}; expected thnkim/OpenFacePytorch's "
                                 "openface.pth")
    return model


def weights_path(path: str | os.PathLike | None = None) -> Path | None:
    """The weights file: `path`, else $OPENFACE_WEIGHTS, else openface.pth /
    openface_nn4_small2_v1.pth in ~/.cache/motion-transfer; None when none exists."""
    return find_weights(path, WEIGHTS_ENV, WEIGHTS_DIR, WEIGHTS_NAMES)


def resize_bgr(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, 96, 96, 3) float64 BGR in [0, 1], as extract_face_id:
    `frame[..., ::-1]`, then scikit-image's resize with 0.14's defaults (bilinear sampling at
    (i + 0.5) * H / 96 - 0.5, zero outside, no smoothing)."""
    from skimage.transform import resize
    out = np.empty((len(frames), INPUT_SIZE, INPUT_SIZE, 3))
    for index, frame in enumerate(frames):
        out[index] = resize(frame[..., ::-1], (INPUT_SIZE, INPUT_SIZE), **RESIZE_0_14)
    return out


def preprocess(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, 3, 96, 96) float64, the tensors extract_face_id feeds
    the network (before its float32 cast)."""
    return np.ascontiguousarray(resize_bgr(frames).transpose(0, 3, 1, 2))


class OpenFaceIdentity(IdentityBackend):
    """OpenFace embedding (128,) of every whole frame; never missing (no detection).

    `dtype`: float32 (the original's `torch.Tensor(frame)`) or float64 (the golden tests).
    """

    name = "openface"
    scheme = "openface-nn4.small2.v1"
    dim = 128
    paper_equivalent = True  # tests/test_metrics_pose_evaluation.py against the original's golden file

    def __init__(self, weights: str | os.PathLike | None = None, batch_size: int = 64,
                 dtype: torch.dtype = torch.float32):
        path = weights_path(weights)
        if path is None:
            where = weights or f"${WEIGHTS_ENV} or {WEIGHTS_DIR}/{WEIGHTS_NAMES[0]}"
            raise BackendUnavailable(f"OpenFace weights not found: put thnkim/OpenFacePytorch's "
                                     f"openface.pth at {where}")
        # built in `dtype` before loading, so float64 weights keep every bit
        self.model = load_openface_state(OpenFaceNet().to(dtype), load_weights(path)).eval()
        self.batch_size, self.dtype, self.path = int(batch_size), dtype, path
        log.info("OpenFace weights from %s", path)

    def embed(self, frames: np.ndarray) -> np.ndarray:
        frames = check_frames(frames)
        out = np.empty((len(frames), self.dim))
        with torch.no_grad():
            for start in range(0, len(frames), self.batch_size):
                batch = preprocess(frames[start:start + self.batch_size])
                embedding, _ = self.model(torch.from_numpy(batch).to(self.dtype))
                out[start:start + len(batch)] = embedding.double().numpy()
        return out
