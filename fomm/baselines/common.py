"""Pieces the baselines share that fomm/blocks.py does not hold: keypoint moments with
covariance, anisotropic keypoint Gaussians, and the convex-hull movement scale used by
relative transfer.

The baselines express keypoints and grids in one frame: `fomm.blocks.identity_grid` for
the config's `align_corners`, i.e. the (x, y) that `grid_sample` reads with that flag.
"""
from __future__ import annotations

import numpy as np
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
    precision = inverse_2x2(covariance.float())[:, :, None, None]  # (B, K, 1, 1, 2, 2)
    mahalanobis = (centred.unsqueeze(-2) @ precision @ centred.unsqueeze(-1))[..., 0, 0]
    return torch.exp(-0.5 * mahalanobis).to(mean.dtype)  # (B, K, h, w)


def convex_hull_area(points: torch.Tensor) -> float:
    """Area of the convex hull of `points` (K, 2); 0 for fewer than three distinct points."""
    from scipy.spatial import ConvexHull
    from scipy.spatial import QhullError
    array = points.detach().float().cpu().numpy().astype(np.float64)
    try:
        return float(ConvexHull(array).volume)  # 2-D "volume" is the area
    except (QhullError, ValueError):
        return 0.0


def movement_scale(kp_source: torch.Tensor, kp_initial: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1) sqrt(hull area of source keypoints / hull area of the initial driving ones),
    the FOMM `adapt_movement_scale` factor; 1 where an area is degenerate."""
    scales = []
    for source, initial in zip(kp_source, kp_initial):
        area_source, area_initial = convex_hull_area(source), convex_hull_area(initial)
        ok = area_source > 0 and area_initial > 0
        scales.append(float(np.sqrt(area_source / area_initial)) if ok else 1.0)
    return torch.tensor(scales, dtype=kp_source.dtype, device=kp_source.device).view(-1, 1, 1)
