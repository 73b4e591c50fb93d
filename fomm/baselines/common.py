"""Pieces the baselines share that fomm/blocks.py does not hold: keypoint moments with
covariance and anisotropic keypoint Gaussians.

The baselines express keypoints and grids in one frame: `fomm.blocks.identity_grid` for
the config's `align_corners`, i.e. the (x, y) that `grid_sample` reads with that flag.
"""
from __future__ import annotations

import torch

from fomm.blocks import identity_grid


def heatmap_moments(heatmap: torch.Tensor, align_corners: bool) -> dict[str, torch.Tensor]:
    """Mean and 2x2 covariance of each spatial distribution in `heatmap` (B, K, h, w),
    which must sum to one over space (Monkey-Net Eq. 1: p_k = sum_z H_k(z) z,
    Sigma_k = sum_z H_k(z) (z - p_k)(z - p_k)^T). Computed in float32."""
    heatmap = heatmap.float()
    grid = identity_grid(heatmap.shape[2:], align_corners, heatmap.dtype, heatmap.device)  # (h, w, 2)
    weights = heatmap.unsqueeze(-1)  # (B, K, h, w, 1)
    mean = (weights * grid).sum(dim=(2, 3))  # (B, K, 2)
    centred = grid - mean[:, :, None, None, :]  # (B, K, h, w, 2)
    outer = centred.unsqueeze(-1) * centred.unsqueeze(-2)  # (B, K, h, w, 2, 2)
    covariance = (weights.unsqueeze(-1) * outer).sum(dim=(2, 3))  # (B, K, 2, 2)
    return {"value": mean, "covariance": covariance}


def inverse_2x2(matrix: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of (..., 2, 2) matrices (works under autocast, unlike linalg.inv)."""
    a, b = matrix[..., 0, 0], matrix[..., 0, 1]
    c, d = matrix[..., 1, 0], matrix[..., 1, 1]
    det = (a * d - b * c).unsqueeze(-1).unsqueeze(-1)
    adjugate = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
    return adjugate / det


def keypoint_gaussians(mean: torch.Tensor, covariance: torch.Tensor, height: int, width: int,
                       align_corners: bool) -> torch.Tensor:
    """(B, K, h, w) unnormalised Gaussians exp(-1/2 (z - p)^T Sigma^-1 (z - p)) around each
    keypoint `mean` (B, K, 2) with `covariance` (B, K, 2, 2) (Monkey-Net Eq. 3)."""
    grid = identity_grid((height, width), align_corners, torch.float32, mean.device)  # (h, w, 2)
    centred = grid - mean.float()[:, :, None, None, :]  # (B, K, h, w, 2)
    dx, dy = centred[..., 0], centred[..., 1]  # (B, K, h, w) each
    precision = inverse_2x2(covariance.float())[:, :, None, None]  # (B, K, 1, 1, 2, 2)
    # Written out: batched 2x2 matmuls per pixel are far slower than these products.
    mahalanobis = (precision[..., 0, 0] * dx * dx + precision[..., 1, 1] * dy * dy
                   + (precision[..., 0, 1] + precision[..., 1, 0]) * dx * dy)
    return torch.exp(-0.5 * mahalanobis).to(mean.dtype)  # (B, K, h, w)
