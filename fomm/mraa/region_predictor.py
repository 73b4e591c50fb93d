"""MRAA's region predictor (paper Sec. 3.1; modules/region_predictor.py): an hourglass, one heat
map per region, and each region's parameters from its heat map.

For region k with heat map H_k (a softmax over the h x w positions z, logits divided by the
temperature): shift p_k = sum_z H_k(z) z and covariance Sigma_k = sum_z H_k(z) (z - p_k)(z - p_k)^T
(paper Eq. 1-2); the affine A_k = U_k S_k^(1/2) from the SVD Sigma_k = U_k S_k U_k^T (pca_based,
Eq. 3), with torch.svd's signs (fomm/mraa/linalg.py). Without pca_based but with
estimate_affine, A_k is regressed as FOMM's jacobians (a 4-channel 7x7 conv starting at the
identity, pooled by H_k) and Sigma_k = A_k A_k^T.

Coordinates are the original's grid (fomm.blocks.make_coordinate_grid: -1 and +1 on the
centres of the border pixels). Outputs: shift (B, K, 2), covar (B, K, 2, 2), heatmap
(B, K, h, w), affine (B, K, 2, 2), and with pca_based u and d = diag(sqrt(s)) as the original
returns them, (B * K, 2, 2). The moments and the SVD run in float32 at least (bf16 autocast
would move a region by ~0.5 px at 256).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from fomm.blocks import AntiAliasInterpolation2d, Hourglass, at_least_fp32, full_precision, make_coordinate_grid
from fomm.mraa.config import RegionPredictorParams
from fomm.mraa.linalg import symmetric_svd

FAST_SVD_REFUSED = ("model_params.mraa_params.region_predictor_params.fast_svd: true asks for torch-batch-svd "
                    "(cuSOLVER's batched Jacobi SVD), whose singular-vector signs are not torch.svd's and which no "
                    "original config uses; expected false (the closed-form 2x2 SVD here is batched on any device)")


class RegionPredictor(nn.Module):
    def __init__(self, params: RegionPredictorParams, num_regions: int, num_channels: int,
                 estimate_affine: bool):
        super().__init__()
        if params.fast_svd:
            raise UserError(FAST_SVD_REFUSED)
        self.predictor = Hourglass(params.block_expansion, in_features=num_channels,
                                   max_features=params.max_features, num_blocks=params.num_blocks)
        self.regions = nn.Conv2d(self.predictor.out_filters, num_regions, kernel_size=(7, 7), padding=params.pad)
        if estimate_affine and not params.pca_based:
            # FOMM-style regression, starting at the identity.
            self.jacobian = nn.Conv2d(self.predictor.out_filters, 4, kernel_size=(7, 7), padding=params.pad)
            self.jacobian.weight.data.zero_()
            self.jacobian.bias.data.copy_(torch.tensor([1, 0, 0, 1], dtype=torch.float))
        else:
            self.jacobian = None
        self.temperature = params.temperature
        self.scale_factor = params.scale_factor
        self.pca_based = params.pca_based
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, self.scale_factor)

    @staticmethod
    def heatmap_moments(heatmap: torch.Tensor) -> dict[str, torch.Tensor]:
        """shift (B, K, 2) and covar (B, K, 2, 2) of heat maps (B, K, h, w) summing to 1 (Eq. 1-2)."""
        grid = make_coordinate_grid(heatmap.shape[2:], heatmap.dtype, heatmap.device)  # (h, w, 2)
        weights = heatmap.unsqueeze(-1)  # (B, K, h, w, 1)
        shift = (weights * grid).sum(dim=(2, 3))  # (B, K, 2)
        centred = grid - shift[:, :, None, None, :]  # (B, K, h, w, 2)
        outer = centred.unsqueeze(-1) * centred.unsqueeze(-2)  # (B, K, h, w, 2, 2)
        covar = (outer * weights.unsqueeze(-1)).sum(dim=(2, 3))  # (B, K, 2, 2)
        return {"shift": shift, "covar": covar}

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.down(frames) if self.scale_factor != 1 else frames
        feature_map = self.predictor(x)
        logits = self.regions(feature_map)  # (B, K, h, w)
        jacobian_map = self.jacobian(feature_map) if self.jacobian is not None else None  # (B, 4, h, w)
        batch, regions, h, w = logits.shape
        with full_precision(logits):
            logits = at_least_fp32(logits)
            heatmap = F.softmax(logits.view(batch, regions, -1) / self.temperature, dim=2).view(batch, regions, h, w)
            params = self.heatmap_moments(heatmap)
            params["heatmap"] = heatmap
            if jacobian_map is not None:
                jacobian_map = at_least_fp32(jacobian_map).view(batch, 1, 4, h, w)
                affine = (heatmap.unsqueeze(2) * jacobian_map).view(batch, regions, 4, -1).sum(-1)
                affine = affine.view(batch, regions, 2, 2)
                params["affine"] = affine
                params["covar"] = affine @ affine.transpose(-1, -2)
            elif self.pca_based:
                u, s = symmetric_svd(params["covar"].view(-1, 2, 2))  # (B * K, 2, 2), (B * K, 2)
                root = s.sqrt()
                zero = torch.zeros_like(root[:, 0])
                d = torch.stack([torch.stack([root[:, 0], zero], -1), torch.stack([zero, root[:, 1]], -1)], -2)
                params["affine"] = (u * root.unsqueeze(-2)).view(batch, regions, 2, 2)  # u diag(sqrt(s))
                params.update(u=u, d=d)
        return params
