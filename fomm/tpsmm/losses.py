"""TPSMM's training losses (Sec. 3.4; modules/model.py GeneratorFullModel, train_avd.py).

The perceptual pyramid loss (Eq. 9) is the project's (fomm.losses.LossKit.perceptual: the
same VGG-19 layers, pyramid and L1 means, summed in the same order); the others are TPSMM's:

- equivariance (Eq. 10): w * mean |kp_driving - T(kp_transformed)|, T a random TPS
  (fomm.tpsmm.tps.RandomTPS) and kp_transformed the keypoints of the driving frame warped
  by T (grid_sample with reflection padding and align_corners=True);
- warp loss (Eq. 11): w * sum_i mean |E_i(driving) - warp(E_i(source))|, the encoder maps of
  the driving frame against the source's warped by the flow, both times the occlusion mask
  of their resolution; only the flow gets gradients;
- background loss (Eq. 12): w * mean |I - A_{S<-D} A_{D<-S}|, the two directions' affines
  composing to the identity;
- AVD reconstruction (train_avd.py): lambda_shift * mean |kp_driving - AVD(kp_source,
  random_scale(kp_driving))|.
Each returns the weighted 0-d tensor (in at least fp32).
"""
from __future__ import annotations

import torch

from fomm.blocks import at_least_fp32, full_precision, warp
from fomm.tpsmm.tps import RandomTPS


def transformed_frame(driving: torch.Tensor, transform: RandomTPS) -> torch.Tensor:
    """The driving frames warped by the random TPS (reflection padding, align_corners=True)."""
    grid = transform.transform_grid(tuple(driving.shape[2:]), at_least_fp32(driving).dtype, driving.device)
    return warp(driving, grid, align_corners=True, padding_mode="reflection")


def equivariance_value(weight: float, kp_driving: dict, kp_transformed: dict, transform: RandomTPS
                       ) -> torch.Tensor:
    with full_precision(kp_driving["fg_kp"]):
        warped = transform.warp_coordinates(kp_transformed["fg_kp"])
        return weight * (at_least_fp32(kp_driving["fg_kp"]) - warped).abs().mean()


def warp_loss(weight: float, encoded: list[torch.Tensor], warped_encoder_maps: list[torch.Tensor]
              ) -> torch.Tensor:
    """`encoded` fine to coarse (InpaintingNetwork.encode), `warped_encoder_maps` coarse to fine."""
    total = 0
    for i, target in enumerate(encoded):
        total = total + at_least_fp32(target - warped_encoder_maps[-i - 1]).abs().mean()
    return weight * total


def bg_loss(weight: float, bg_param: torch.Tensor, bg_param_reverse: torch.Tensor) -> torch.Tensor:
    with full_precision(bg_param):
        product = torch.matmul(at_least_fp32(bg_param), at_least_fp32(bg_param_reverse))  # (B, 3, 3)
        eye = torch.eye(3, dtype=product.dtype, device=product.device)
        return weight * (eye - product).abs().mean()


def random_scale(kp: dict, scale: float) -> dict:
    """train_avd.py's augmentation: each sample's keypoints scaled per axis by a factor drawn
    uniformly from [1 - scale, 1 + scale] (torch's global RNG, on the CPU)."""
    fg_kp = kp["fg_kp"]
    factors = torch.rand(fg_kp.shape[0], 2) * (2 * scale) + (1 - scale)  # (B, 2)
    theta = torch.diag_embed(factors).unsqueeze(1).to(fg_kp.device, fg_kp.dtype)  # (B, 1, 2, 2)
    return {"fg_kp": torch.matmul(theta, fg_kp.unsqueeze(-1)).squeeze(-1)}


def avd_reconstruction(lambda_shift: float, kp_driving: dict, reconstructed: dict) -> torch.Tensor:
    with full_precision(kp_driving["fg_kp"]):
        return lambda_shift * (at_least_fp32(kp_driving["fg_kp"]) - at_least_fp32(reconstructed["fg_kp"])).abs().mean()
