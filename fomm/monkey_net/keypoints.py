"""Monkey-Net's keypoint maths (Siarohin et al., "Animating Arbitrary Objects via Deep Motion
Transfer", CVPR 2019, Sec. 3.2; modules/keypoint_detector.py of github.com/
AliaksandrSiarohin/monkey-net): keypoint moments of a heat map with clipped covariance, and
keypoint Gaussians.

Keypoints live on Monkey-Net's coordinate grid (`fomm.blocks.make_coordinate_grid`: -1 and +1
on the centres of the border pixels) whatever the grid-sampling convention, as in the
original. Motion dicts: {'value': (B, K, 2) means (x, y), 'var': (B, K, 2, 2) covariances
('matrix') or (B, K, 1, 1) variances ('single')}; a numeric kp_variance (one fixed variance
for every keypoint, as the original's kp2gaussian / gaussian2kp accept) gives means only.
"""
from __future__ import annotations

import torch

from fomm.blocks import full_precision, make_coordinate_grid

# Added to the softmax heat map before the moments, as the original does, so that a
# one-hot map still gives a covariance with no exact zero.
HEATMAP_EPS = 1e-7


def full(tensor: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32 (coordinates and covariances never go below fp32); others unchanged."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def smallest_singular_value(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 1, 1) smallest singular value of (..., 2, 2) matrices, in closed form:
    sigma_min^2 = (|M|_F^2 - sqrt((a^2 + b^2 - c^2 - d^2)^2 + 4 (ac + bd)^2)) / 2."""
    a, b = matrix[..., 0:1, 0:1], matrix[..., 0:1, 1:2]
    c, d = matrix[..., 1:2, 0:1], matrix[..., 1:2, 1:2]
    frobenius = a ** 2 + b ** 2 + c ** 2 + d ** 2
    spread = torch.sqrt((a ** 2 + b ** 2 - c ** 2 - d ** 2) ** 2 + 4 * (a * c + b * d) ** 2)
    return torch.sqrt((frobenius - spread) / 2)


def heatmap_moments(heatmap: torch.Tensor, kp_variance: str = "matrix",
                    clip_variance: float | None = None) -> dict[str, torch.Tensor]:
    """Mean and covariance of each softmax heat map (B, K, h, w) (Monkey-Net Eq. 1-2:
    p_k = sum_z H_k(z) z, Sigma_k = sum_z H_k(z) (z - p_k)(z - p_k)^T). With `clip_variance`
    the covariance is rescaled so that its smallest singular value is at least that:
    Sigma * max(clip, s_min) / s_min. 'single' gives the mean of the two axis variances."""
    with full_precision(heatmap):
        heat = full(heatmap).unsqueeze(-1) + HEATMAP_EPS  # (B, K, h, w, 1)
        grid = make_coordinate_grid(heatmap.shape[2:], heat.dtype, heat.device)  # (h, w, 2)
        mean = (heat * grid).sum(dim=(2, 3))  # (B, K, 2)
        if not isinstance(kp_variance, str):  # a fixed variance: nothing to estimate
            return {"value": mean}
        centred = grid - mean[:, :, None, None, :]  # (B, K, h, w, 2)
        if kp_variance == "single":
            var = (centred ** 2 * heat).sum(dim=(2, 3)).mean(dim=-1, keepdim=True)  # (B, K, 1)
            return {"value": mean, "var": var.unsqueeze(-1)}  # var (B, K, 1, 1)
        outer = centred.unsqueeze(-1) * centred.unsqueeze(-2)  # (B, K, h, w, 2, 2)
        var = (outer * heat.unsqueeze(-1)).sum(dim=(2, 3))  # (B, K, 2, 2)
        if clip_variance:
            smallest = smallest_singular_value(var)  # (B, K, 1, 1)
            var = torch.clamp(smallest, min=clip_variance) * var / smallest
        return {"value": mean, "var": var}


def keypoint_gaussians(kp: dict[str, torch.Tensor], size: tuple[int, int],
                       kp_variance: str = "matrix") -> torch.Tensor:
    """(B, K, h, w) unnormalised Gaussians exp(-1/2 (z - p)^T Sigma^-1 (z - p)) around each
    keypoint (Monkey-Net Eq. 3); 'single' uses the isotropic variance kp['var'] (B, K, 1, 1)."""
    mean = kp["value"]
    with full_precision(mean):
        mean = full(mean)
        grid = make_coordinate_grid(size, mean.dtype, mean.device)  # (h, w, 2)
        centred = grid - mean[:, :, None, None, :]  # (B, K, h, w, 2)
        dx, dy = centred[..., 0], centred[..., 1]  # (B, K, h, w) each
        if not isinstance(kp_variance, str):  # one fixed variance for every keypoint
            return torch.exp(-0.5 * (dx * dx + dy * dy) / kp_variance)
        var = full(kp["var"]).to(mean.dtype)
        if kp_variance == "single":
            return torch.exp(-0.5 * (dx * dx + dy * dy) / var)
        precision = torch.linalg.inv(var)[:, :, None, None]  # (B, K, 1, 1, 2, 2)
        # Written out: per-pixel 2x2 matmuls are far slower than these products.
        mahalanobis = (precision[..., 0, 0] * dx * dx + precision[..., 0, 1] * dx * dy
                       + precision[..., 1, 0] * dy * dx + precision[..., 1, 1] * dy * dy)
        return torch.exp(-0.5 * mahalanobis)
