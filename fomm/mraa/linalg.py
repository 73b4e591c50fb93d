"""Closed-form 2x2 linear algebra for region parameters: the SVD of a covariance with the
singular-vector signs torch.svd (LAPACK) gives, and the inverse (fomm.blocks.inverse_2x2).

Why closed form: the golden outputs and the released models depend on torch.svd's signs (a
region's affine is u diag(sqrt(s)), and the AVD network reads it), which LAPACK fixes by its
algorithm, not by any rule of the SVD; a closed form gives the same numbers on every CPU and
GPU, batches without a loop or a host round trip (the original moves every covariance to the
CPU for torch.svd), exports to ONNX (which has no SVD and no inverse), and is differentiable
with the same derivative as torch.svd's wherever the eigenvalues differ.

The signs, derived from LAPACK's dgesdd path for a 2x2 matrix (dgebrd's Householder reflection
H of the first column, then dbdsqr's 2x2 step, dlasv2, on the bidiagonal H C) and checked against
torch.svd on 3 x 10^5 covariances, diagonal and rank-1 ones included: for C = [[a, b], [b, c]]
with b != 0, u = [[x, y], [y, -x]] (a reflection, det -1) where (x, y) is the unit eigenvector
of the larger eigenvalue with x < 0, except when det C > a^2 + b^2 (dlasv2 swaps the roles of
the diagonal entries), where y > 0. A diagonal C (b = 0) is already bidiagonal: u = I when
a >= c, else the column swap [[0, 1], [1, 0]].
"""
from __future__ import annotations

import torch


def symmetric_svd(covar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u (..., 2, 2) and s (..., 2), descending, of symmetric positive semi-definite 2x2
    matrices, with `u, s, _ = torch.svd(covar)`'s signs (see the module docstring)."""
    a, c = covar[..., 0, 0], covar[..., 1, 1]
    b = (covar[..., 0, 1] + covar[..., 1, 0]) / 2  # exact for a symmetric matrix
    half, mean = (a - c) / 2, (a + c) / 2
    radius = torch.sqrt(half * half + b * b)
    # Eigenvalues = singular values; the smaller as det / larger, which keeps its relative precision
    # for elongated regions, where mean - radius would cancel.
    largest = mean + radius
    smallest = (a * c - b * b).clamp(min=0) / torch.where(largest > 0, largest, torch.ones_like(largest))
    s = torch.stack([largest, smallest], dim=-1)
    # Eigenvector of the larger eigenvalue, from the row without cancellation.
    wide = a >= c
    vx = torch.where(wide, half + radius, b)
    vy = torch.where(wide, b, radius - half)
    norm = torch.sqrt(vx * vx + vy * vy)
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))  # 0 only where b == 0 and a == c (replaced below)
    x, y = vx / norm, vy / norm
    swapped = a * c - b * b > a * a + b * b
    flip = (swapped & (y < 0)) | (~swapped & (x > 0))  # logic, not where(): onnxruntime has no boolean Where
    x, y = torch.where(flip, -x, x), torch.where(flip, -y, y)
    u = torch.stack([torch.stack([x, y], dim=-1), torch.stack([y, -x], dim=-1)], dim=-2)
    identity = torch.eye(2, dtype=u.dtype, device=u.device).expand_as(u)
    u = torch.where(((b == 0) & wide)[..., None, None], identity, u)
    return u, s
