"""Frames between their two forms: uint8 RGB arrays (H, W, 3) for files and people, float
tensors (B, 3, H, W) in [0, 1] for the networks. Each conversion is written once, here.

Rounding: float -> uint8 is clamp to [0, 1], times 255, round half up.
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
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device is not None:
        tensor = tensor.to(device)
    if tensor.dtype == torch.uint8:
        tensor = tensor.float().div_(255)
    else:
        tensor = tensor.float().clone() if tensor.dtype == torch.float32 else tensor.float()
    return tensor.permute(0, 3, 1, 2).contiguous()


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8 RGB: (B, 3, H, W) -> (B, H, W, 3) and (3, H, W) or
    (H, W, 3) -> (H, W, 3); tensors or arrays. One channel is repeated to three; uint8 input
    is returned as it is (channels last)."""
    if isinstance(images, torch.Tensor):
        tensor = images.detach()
        if tensor.dtype != torch.uint8:
            tensor = tensor.float().clamp(0, 1).mul_(255).add_(0.5).to(torch.uint8)
        array = tensor.cpu().numpy()
    else:
        array = np.asarray(images)
        if array.dtype != np.uint8:
            array = (np.clip(array.astype(np.float32, copy=False), 0, 1) * 255 + 0.5).astype(np.uint8)
    channel_axis = array.ndim - 3  # (3, H, W) or (B, 3, H, W): channels first
    if array.ndim in (3, 4) and array.shape[channel_axis] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, channel_axis, -1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array)
