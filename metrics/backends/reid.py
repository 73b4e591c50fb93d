"""The person re-identification embedding behind the paper's body AED (REFERENCE §8).

pose-evaluation's `extract_body_id` builds layumi/Person_reID_baseline_pytorch's `ft_net(751)`
(the commit it pins, 2a5a656), loads `reid_model.pth`, removes the head (`model.fc` and
`classifier` become empty) and embeds every whole frame (reference/README.md, `body_id`):

- PIL bicubic resize of the uint8 RGB frame to 288x144 (torchvision's `Resize((288, 144),
  interpolation=3)`), `ToTensor` (/255), then `Normalize([0, 0, 0], [255, 255, 255])` (/255
  again) and ImageNet's `Normalize`: the pixels are divided by 255 twice, so the inputs lie in
  [-2.118, -1.787]. Kept, since the paper's numbers were measured that way.
- The network is never put in eval mode, so each BatchNorm normalises with the statistics of
  the frame it sees (training mode, batch 1: per-channel mean and biased variance over the
  frame, eps 1e-5); the stored running statistics are never used. `FrameBatchNorm2d` does
  exactly that, for each frame of a batch on its own, and leaves the running statistics as
  loaded. `frame_statistics=False` gives the eval-mode network instead (not the paper's).
- The embedding is the 2048-d global average of ResNet-50's layer4 (no normalisation).

The ResNet-50 is fomm.backbones' (torchvision's names and arithmetic), so the checkpoint's
`model.*` keys load unchanged; its `model.fc.*` (the ClassBlock's Linear 2048->512 and
BatchNorm1d) and `classifier.*` keys must be there too (the original loads the full ft_net
before removing them) and are then unused. Runs in float32 as the original (torchvision's
ToTensor makes float32); `dtype=torch.float64` reproduces the golden file.

Pillow caveat: the golden file's inputs come from Pillow 13's bicubic resampling; the original
ran Pillow 5.2.0, whose bicubic filter may round differently, so bit-exactness is claimed for
Pillow 13 (the project's), not for the numbers of 2019.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fomm.backbones import resnet50
from metrics.backends import (WEIGHTS_DIR, BackendUnavailable, IdentityBackend, check_frames, find_weights,
                              load_weights)

log = logging.getLogger(__name__)

WEIGHTS_ENV = "REID_WEIGHTS"
WEIGHTS_NAMES = ("reid_model.pth",)
INPUT_SIZE = (288, 144)  # (height, width)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASSES = 751  # Market-1501's training identities: ft_net(751)


class FrameBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d as the training-mode layer computes it on a batch of one frame: each
    frame's own per-channel mean and biased variance; running statistics neither used nor
    updated."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, None, None, self.weight, self.bias, use_input_stats=True, eps=self.eps)


def _frame_statistics(module: nn.Module) -> None:
    """Swap every BatchNorm2d under `module` for a FrameBatchNorm2d with the same tensors."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                swapped = FrameBatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum)
                swapped.load_state_dict(child.state_dict())
                setattr(parent, name, swapped)


class FtNet(nn.Module):
    """ft_net(classes) with reid_baseline's parameter names: `model` a ResNet-50 whose `fc`
    is the ClassBlock's Linear 2048->512 + BatchNorm1d, `classifier` a Linear 512->classes.

    forward: (B, 3, 288, 144) normalised frames -> (B, 2048), the network of extract_body_id
    (head removed). `frame_statistics`: BatchNorm on each frame's statistics, as the original.
    """

    def __init__(self, classes: int = CLASSES, frame_statistics: bool = True):
        super().__init__()
        self.model = resnet50()
        self.model.fc = nn.Sequential(nn.Linear(2048, 512), nn.BatchNorm1d(512))
        self.classifier = nn.Sequential(nn.Linear(512, classes))
        if frame_statistics:
            _frame_statistics(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)  # (B, 2048)


def preprocess(frames: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB -> (T, 3, 288, 144): extract_body_id's `data_transforms`, the
    operations in its order (PIL bicubic, /255, /255, minus mean, over std) in `dtype`."""
    from PIL import Image
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=dtype)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, dtype=dtype)[:, None, None]
    out = []
    for frame in frames:
        image = Image.fromarray(np.ascontiguousarray(frame)).resize(INPUT_SIZE[::-1], Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (3, 288, 144) uint8
        tensor = pixels.to(dtype).div(255)  # ToTensor
        tensor = tensor.sub(0.0).div(255.0)  # Normalize([0, 0, 0], [255, 255, 255])
        out.append(tensor.sub(mean).div(std))  # Normalize(ImageNet)
    return torch.stack(out)


def load_ft_net(state: dict, dtype: torch.dtype = torch.float32, frame_statistics: bool = True) -> FtNet:
    """ft_net in `dtype` from a reid_model.pth state dict (its class count read from the file)."""
    head = state.get("classifier.0.weight")
    classes = int(head.shape[0]) if isinstance(head, torch.Tensor) and head.ndim == 2 else CLASSES
    net = FtNet(classes, frame_statistics).to(dtype)
    result = net.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise BackendUnavailable(f"reid weights do not match ft_net(751): missing {missing[:3]}, unexpected "
                                 f"{result.unexpected_keys[:3]}; expected reid_baseline's reid_model.pth")
    return net


def weights_path(path: str | os.PathLike | None = None):
    """`path`, else $REID_WEIGHTS, else ~/.cache/motion-transfer/reid_model.pth; None if none exists."""
    return find_weights(path, WEIGHTS_ENV, WEIGHTS_DIR, WEIGHTS_NAMES)


class ReidIdentity(IdentityBackend):
    """ft_net's 2048-d embedding of every whole frame, as extract_body_id; never missing.

    `dtype`: float32 (the original's) or float64 (the golden tests); `frame_statistics`:
    True is the original (see the module docstring).
    """

    name = "reid"
    scheme = "reid-ft_net-resnet50"
    dim = 2048
    paper_equivalent = True  # tests/test_metrics_pose_evaluation.py against the original's golden file

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, batch_size: int = 16, frame_statistics: bool = True):
        path = weights_path(weights)
        if path is None:
            where = weights or f"${WEIGHTS_ENV} or {WEIGHTS_DIR / WEIGHTS_NAMES[0]}"
            raise BackendUnavailable(f"reid weights not found: put pose-evaluation's reid_model.pth at {where} "
                                     "(layumi/Person_reID_baseline_pytorch's ft_net(751))")
        self.model = load_ft_net(load_weights(path), dtype, frame_statistics).to(device).eval()
        self.device, self.dtype, self.batch_size, self.path = device, dtype, int(batch_size), path
        self.paper_equivalent = bool(frame_statistics)
        log.info("reid weights from %s", path)

    def embed(self, frames: np.ndarray) -> np.ndarray:
        frames = check_frames(frames)
        out = np.empty((len(frames), self.dim))
        with torch.no_grad():
            for start in range(0, len(frames), self.batch_size):
                batch = preprocess(frames[start:start + self.batch_size], self.dtype).to(self.device)
                out[start:start + len(batch)] = self.model(batch).double().cpu().numpy()
        return out
