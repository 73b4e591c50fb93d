"""Thin-plate-spline transformations (TPSMM Sec. 3.1, Eq. 1-2; modules/util.py `TPS`).

A TPS maps a point p to  T(p) = A [p; 1] + sum_i w_i U(|p - c_i|),  U(r) = r^2 log r^2,
with affine A (2x3), control points c_i and weights w_i. Two kinds, as the original's modes:

- keypoint TPS (`KeypointTPS`, mode 'kp'): for each of the K groups of 5 keypoints, the TPS
  that maps the driving keypoints (control points) onto the source keypoints, from the
  regularised system (L + 0.01 I) [w; A^T] = [kp_source; 0] with
  L = [[U(|c_i - c_j|), [c_i 1]], [[c_j 1]^T, 0]] (Eq. 2). Solved with torch.linalg.solve;
  the original multiplies by torch.inverse(L + 0.01 I), which agrees to rounding (the
  systems' condition numbers are ~20). ONNX has neither operator: while a graph is exported
  the solve is `pivoted_solve` (`traceable_solve()`), Gauss-Jordan elimination in plain
  tensor arithmetic.
- random TPS (`RandomTPS`, mode 'random'): the equivariance loss's random warp, affine
  I + N(0, sigma_affine) and weights N(0, sigma_tps) on a points_tps^2 grid of control
  points. Its radial term, summed over control points, is added to both coordinates (as
  in the original and FOMM's).

U is written r2 * log(r2 + 1e-9) of the squared distance r2, the original's epsilon.
Coordinates are the original's grid (fomm.blocks.make_coordinate_grid: -1 and 1 on the
centres of the border pixels), the identity of grid_sample with align_corners=True.
Everything here runs in at least fp32 (autocast off): a bf16 solve would move points by
pixels.
"""
from __future__ import annotations

import contextlib

import torch

from fomm.blocks import at_least_fp32, full_precision, make_coordinate_grid

EPS = 1e-9
REGULARISATION = 0.01
POINTS_PER_TPS = 5


def pivoted_solve(system: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """X with system @ X = target, (..., n, n) and (..., n, m): Gauss-Jordan elimination with
    partial pivoting, unrolled over the static n, in operations every exporter has (no
    torch.linalg). Agrees with torch.linalg.solve to rounding (3e-14 in float64 on random
    8x8 systems)."""
    n = system.shape[-1]
    rows = torch.cat([system, target], dim=-1)  # (..., n, n + m)
    index = torch.arange(n, device=system.device)
    for k in range(n):
        candidates = rows[..., :, k].abs().masked_fill(index < k, -1.0)  # rows above k are done
        pivot = (index == candidates.argmax(dim=-1, keepdim=True)).to(rows.dtype)  # (..., n) one-hot
        current = (index == k).to(rows.dtype)
        pivot_row = (pivot.unsqueeze(-1) * rows).sum(dim=-2, keepdim=True)  # (..., 1, n + m)
        rows = rows + (current - pivot).unsqueeze(-1) * (pivot_row - rows[..., k:k + 1, :])  # swap k, pivot
        normalised = rows[..., k:k + 1, :] / rows[..., k:k + 1, k:k + 1]
        # row k becomes `normalised`, every other row loses its column-k multiple of it
        rows = rows - (rows[..., :, k:k + 1] - current.unsqueeze(-1)) * normalised
    return rows[..., n:]


_solve = torch.linalg.solve


@contextlib.contextmanager
def traceable_solve():
    """KeypointTPS solves with `pivoted_solve` inside this context (ONNX export)."""
    global _solve
    previous, _solve = _solve, pivoted_solve
    try:
        yield
    finally:
        _solve = previous


def radial(squared_distance: torch.Tensor) -> torch.Tensor:
    """U = r^2 log r^2 of squared distances r^2 (with the original's 1e-9 inside the log)."""
    return squared_distance * torch.log(squared_distance + EPS)


class KeypointTPS:
    """K TPS warps, driving keypoints -> source keypoints (Eq. 2).

    kp_driving, kp_source: (B, K, N, 2) (N = 5 in TPSMM). `theta` (B, K, 2, 3) is the affine
    part, `control_points` (B, K, N, 2) the driving keypoints and `control_params`
    (B, K, N, 2) the weights w_i.
    """

    def __init__(self, kp_driving: torch.Tensor, kp_source: torch.Tensor):
        with full_precision(kp_driving):
            kp_driving, kp_source = at_least_fp32(kp_driving), at_least_fp32(kp_source).to(kp_driving.dtype)
            batch, groups, n, _ = kp_driving.shape
            diff = kp_driving[:, :, :, None] - kp_driving[:, :, None, :]  # (B, K, N, N, 2)
            kernel = radial(torch.linalg.vector_norm(diff, dim=-1) ** 2)  # (B, K, N, N)
            ones = torch.ones(batch, groups, n, 1, dtype=kp_driving.dtype, device=kp_driving.device)
            affine = torch.cat([kp_driving, ones], dim=3)  # (B, K, N, 3)
            zeros = kp_driving.new_zeros(batch, groups, 3, 3)
            system = torch.cat([torch.cat([kernel, affine], dim=3),
                                torch.cat([affine.transpose(2, 3), zeros], dim=3)], dim=2)  # (B, K, N+3, N+3)
            system = system + REGULARISATION * torch.eye(n + 3, dtype=system.dtype, device=system.device)
            target = torch.cat([kp_source, kp_driving.new_zeros(batch, groups, 3, 2)], dim=2)  # (B, K, N+3, 2)
            params = _solve(system, target)  # (B, K, N+3, 2)
        self.theta = params[:, :, n:, :].transpose(2, 3)  # (B, K, 2, 3)
        self.control_points = kp_driving  # (B, K, N, 2)
        self.control_params = params[:, :, :n, :]  # (B, K, N, 2)

    def warp_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        """(1 or B, P, 2) points -> (B, K, P, 2): every group's TPS at every point."""
        with full_precision(coordinates):
            coordinates = at_least_fp32(coordinates).to(self.theta.dtype)
            affine = torch.matmul(self.theta[..., :2], coordinates.transpose(1, 2).unsqueeze(1)) \
                + self.theta[..., 2:]  # (B, K, 2, P)
            diff = coordinates[:, None, None] - self.control_points[:, :, :, None]  # (B, K, N, P, 2)
            basis = radial((diff ** 2).sum(-1))  # (B, K, N, P)
            bending = torch.matmul(basis.transpose(2, 3), self.control_params)  # (B, K, P, 2)
            return affine.transpose(2, 3) + bending

    def transform_grid(self, size: tuple[int, int]) -> torch.Tensor:
        """(B, K, H, W, 2): for each output pixel, where each TPS takes it (a sampling grid)."""
        h, w = size
        grid = make_coordinate_grid((h, w), self.theta.dtype, self.theta.device).view(1, h * w, 2)
        batch, groups = self.theta.shape[:2]
        return self.warp_coordinates(grid).view(batch, groups, h, w, 2)


class RandomTPS:
    """The equivariance loss's random TPS (mode 'random'), drawn from torch's global RNG on
    the CPU in `dtype` (the original draws in the default dtype, float32 in training): theta
    noise first, then the weights, as the original draws them, so a seeded run draws the same
    warp on any device. theta (B, 2, 3), control_points (1, P, 2), control_params (B, 1, P)."""

    def __init__(self, batch_size: int, sigma_affine: float, sigma_tps: float, points_tps: int,
                 dtype: torch.dtype = torch.float32, device=None):
        noise = torch.normal(mean=0.0, std=sigma_affine * torch.ones(batch_size, 2, 3, dtype=dtype))
        self.theta = (noise + torch.eye(2, 3, dtype=dtype).view(1, 2, 3)).to(device)
        grid = make_coordinate_grid((points_tps, points_tps), dtype)
        self.control_points = grid.view(1, points_tps * points_tps, 2).to(device)
        self.control_params = torch.normal(
            mean=0.0, std=sigma_tps * torch.ones(batch_size, 1, points_tps ** 2, dtype=dtype)).to(device)
        self.batch_size = batch_size

    @classmethod
    def from_tensors(cls, theta: torch.Tensor, control_points: torch.Tensor,
                     control_params: torch.Tensor) -> "RandomTPS":
        """A given warp (e.g. one stored with golden outputs) instead of a random draw."""
        tps = cls.__new__(cls)
        tps.theta, tps.control_params = theta, control_params
        tps.control_points = control_points.reshape(1, -1, 2)
        tps.batch_size = theta.shape[0]
        return tps

    def warp_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        """(1 or B, P, 2) points -> (B, P, 2)."""
        with full_precision(coordinates):
            coordinates = at_least_fp32(coordinates)
            theta = self.theta.to(coordinates.dtype).unsqueeze(1)  # (B, 1, 2, 3)
            affine = (torch.matmul(theta[..., :2], coordinates.unsqueeze(-1)) + theta[..., 2:]).squeeze(-1)
            points = self.control_points.to(coordinates.dtype)
            diff = coordinates.view(coordinates.shape[0], -1, 1, 2) - points.view(1, 1, -1, 2)  # (B, P, C, 2)
            bending = radial((diff ** 2).sum(-1)) * self.control_params.to(coordinates.dtype)  # (B, P, C)
            return affine + bending.sum(dim=2).view(self.batch_size, coordinates.shape[1], 1)

    def transform_grid(self, size: tuple[int, int], dtype: torch.dtype, device=None) -> torch.Tensor:
        """(B, H, W, 2) sampling grid of the warp at frame size `size`."""
        h, w = size
        grid = make_coordinate_grid((h, w), dtype, device).view(1, h * w, 2)
        return self.warp_coordinates(grid).view(self.batch_size, h, w, 2)
