"""Frames between their two forms: uint8 RGB arrays (H, W, 3) for files and people, float
tensors (B, 3, H, W) in [0, 1] for the networks. Each conversion is written once, here.

Rounding: float -> uint8 is clamp to [0, 1], times 255, round half up; `truncate=True` drops
the fraction instead, as the original FOMM reconstruction.py wrote its PNGs
(`(255 * prediction).astype(np.uint8)`), which pose-evaluation's metrics then read.
Resizing: `resize`, one function with a named filter per use (see RESIZE_FILTERS).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def to_tensor(frames: np.ndarray | Sequence[np.ndarray], device: torch.device | str | None = None
              ) -> torch.Tensor:
    """(H, W, 3) or (B, H, W, 3) uint8, or float in [0, 1] -> (B, 3, H, W) float32 in [0, 1].

    The result never shares memory with `frames`."""
    array = np.stack(frames) if isinstance(frames, (list, tuple)) else np.asarray(frames)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"frames of shape {array.shape}: expected (H, W, 3) or (B, H, W, 3)")
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # e.g. a PIL image's buffer: torch.from_numpy warns on those
        array = array.copy()
    tensor = torch.from_numpy(array)
    if device is not None:
        tensor = tensor.to(device)
    if tensor.dtype == torch.uint8:
        tensor = tensor.float().div_(255)
    else:
        tensor = tensor.float().clone() if tensor.dtype == torch.float32 else tensor.float()
    return tensor.permute(0, 3, 1, 2).contiguous()


def to_uint8(images: torch.Tensor | np.ndarray, truncate: bool = False) -> np.ndarray:
    """Float images in [0, 1] -> uint8 RGB: (B, 3, H, W) -> (B, H, W, 3) and (3, H, W) or
    (H, W, 3) -> (H, W, 3); tensors or arrays. One channel is repeated to three; uint8 input
    is returned as it is (channels last). Float32 x 255 is rounded half up, or truncated
    with `truncate` (the original reconstruction.py's PNGs)."""
    half = 0.0 if truncate else 0.5
    if isinstance(images, torch.Tensor):
        tensor = images.detach()
        if tensor.dtype != torch.uint8:
            tensor = tensor.float().clamp(0, 1).mul_(255).add_(half).to(torch.uint8)
        array = tensor.cpu().numpy()
    else:
        array = np.asarray(images)
        if array.dtype != np.uint8:
            array = (np.clip(array.astype(np.float32, copy=False), 0, 1) * 255 + half).astype(np.uint8)
    channel_axis = array.ndim - 3  # (3, H, W) or (B, 3, H, W): channels first
    if array.ndim in (3, 4) and array.shape[channel_axis] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, channel_axis, -1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array)


# The filters callers use, each for a reason that fixes its numbers:
RESIZE_FILTERS = {
    # torch bilinear with anti-aliasing (align_corners=False): training frames, augmentation
    # and the reconstruction protocol, so a model is scored on frames made as it was trained on
    "bilinear": "torch",
    # PIL bicubic, exact (anti-aliased): the metrics' keypoints and embeddings at 256x256, the
    # resize every AKD and AED number depends on
    "bicubic": None,
    # PIL bicubic after an integer box reduction to no less than 2x the target (reducing_gap=2.0):
    # the animation pipeline's source and driving frames; equal to "bicubic" under a 4x
    # reduction and 1.4-3x faster above it (a 1080p webcam frame to 256 px)
    "bicubic-reduced": 2.0,
}


def resize(frames: np.ndarray, size: Sequence[int], filter: str = "bilinear") -> np.ndarray:
    """(H, W, 3) or (T, H, W, 3) frames -> the same at `size` (H, W), same dtype.

    `filter` is a key of RESIZE_FILTERS. "bilinear" takes uint8 or float in [0, 1] (uint8 is
    resized as float and rounded back as `to_uint8` rounds); the bicubic filters take uint8.
    Frames already at `size`, or no frames, come back unchanged (contiguous).
    """
    if filter not in RESIZE_FILTERS:
        raise ValueError(f"resize filter {filter!r}: expected one of {sorted(RESIZE_FILTERS)}")
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4):
        raise ValueError(f"frames of shape {frames.shape}: expected (H, W, 3) or (T, H, W, 3)")
    height, width = int(size[0]), int(size[1])
    if frames.shape[-3:-1] == (height, width) or frames.size == 0:
        return np.ascontiguousarray(frames)
    if frames.ndim == 3:
        return resize(frames[None], size, filter)[0]
    if RESIZE_FILTERS[filter] == "torch":
        return _resize_torch(frames, (height, width))
    if frames.dtype != np.uint8:
        raise ValueError(f"resize filter {filter!r} takes uint8 frames, got {frames.dtype}")
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize(
        (width, height), Image.Resampling.BICUBIC, reducing_gap=RESIZE_FILTERS[filter])) for frame in frames])


def _resize_torch(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch.nn.functional as F
    video = to_tensor(frames)  # (T, 3, H, W) float32 in [0, 1]
    video = F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=True)
    if frames.dtype == np.uint8:
        return to_uint8(video)
    return video.clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(frames.dtype)
