"""Training losses of FOMM (§3.4) as one kit the training loop and every model family share.

Interface (what models and the loop call):

    kit = LossKit(config.train_params, align_corners=config.model_params.align_corners)
    kit.to(device)                                   # an nn.Module: VGG19 and pyramid filters move
    kit.weights                                      # LossWeights (train_params.loss_weights)
    kit.pyramid(image)                               # {'prediction_<s>': image at scale s} for train_params.scales
    kit.perceptual(prediction, target)               # weighted scalar: sum_s sum_i w_i |VGG_i(pred_s) - VGG_i(tgt_s)|
    transform = kit.random_transform(batch_size, device)   # Transform: random affine + TPS (Eq. 11-12)
    transform.transform_frame(frames)                # (B, C, H, W) frames warped by the transform
    transform.warp_coordinates(coords)               # (B, N, 2) -> (B, N, 2)
    transform.jacobian(coords)                       # (B, N, 2, 2) d warp / d coords (coords need grad)
    kit.equivariance(kp_driving, kp_transformed, transform)   # {'equivariance_value', 'equivariance_jacobian'}
    kit.gan_generator_loss(disc_generated)           # weighted LSGAN: w_gan * sum_s mean((1 - D_s(G))^2)
    kit.feature_matching(disc_real, disc_generated)  # weighted L1 between discriminator feature maps
    kit.gan_discriminator_loss(disc_real, disc_generated)   # w_disc * sum_s mean((1 - D_s(x))^2 + D_s(G)^2)
    kit.reconstruction_l1(prediction, target)        # weighted plain L1 (X2Face's loss)

`disc_*` are the dicts a `MultiScaleDiscriminator` returns (`prediction_map_<s>`,
`feature_maps_<s>`). Each loss returns an unweighted zero when its weight is 0, so the
loop can sum whatever a family returns.
"""
from __future__ import annotations

import torch
from torch import nn

from core.config import LossWeights, TrainParams, TransformParams
from fomm.blocks import ImagePyramid, at_least_fp32, full_precision, identity_grid, make_coordinate_grid, warp
from fomm.vgg import Vgg19


class Transform:
    """Random thin-plate-spline warp for the equivariance constraint (FOMM Eq. 11-12).

    T(z) = A z + b + sum_i w_i phi(|z - c_i|_1), phi(r) = r^2 log r, with A = I + N(0, sigma_affine),
    b ~ N(0, sigma_affine), control points c_i on a points_tps^2 grid and w_i ~ N(0, sigma_tps).
    Parameters are drawn from torch's global generator on the CPU (so a seeded run draws
    the same transforms on any device) and then moved to `device`.

    One deliberate difference from the original: `transform_frame` starts from the grid
    that is the identity for the configured `align_corners` (the original always used the
    corner grid, which with align_corners=False resamples the frame even for T = identity),
    so the identity transform returns the frame exactly and the equivariance loss is 0.
    """

    def __init__(self, batch_size: int, params: TransformParams, device=None,
                 align_corners: bool = False, identity: bool = False):
        scale = 0.0 if identity else 1.0
        noise = torch.normal(mean=0.0, std=params.sigma_affine * scale * torch.ones(batch_size, 2, 3))
        self.theta = (noise + torch.eye(2, 3).view(1, 2, 3)).to(device)  # (B, 2, 3)
        self.batch_size = batch_size
        self.align_corners = align_corners
        self.tps = params.points_tps > 0 and params.sigma_tps >= 0
        if self.tps:
            n = params.points_tps
            self.control_points = make_coordinate_grid((n, n)).view(1, n * n, 2).to(device)  # (1, P, 2)
            self.control_params = torch.normal(
                mean=0.0, std=params.sigma_tps * scale * torch.ones(batch_size, 1, n * n)).to(device)  # (B, 1, P)

    def transform_frame(self, frames: torch.Tensor) -> torch.Tensor:
        """Warp (B, C, H, W) frames: out(z) = frames(T(z)), reflection padding as the original."""
        h, w = frames.shape[2:]
        grid = identity_grid((h, w), self.align_corners, at_least_fp32(frames).dtype, frames.device).view(1, h * w, 2)
        grid = self.warp_coordinates(grid.expand(self.batch_size, h * w, 2)).view(self.batch_size, h, w, 2)
        return warp(frames, grid, self.align_corners, padding_mode="reflection")

    def warp_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) points -> T(points) (B, N, 2), in fp32 even under autocast."""
        with full_precision(coordinates):
            return self._warp_coordinates(at_least_fp32(coordinates))

    def _warp_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        theta = self.theta.to(coordinates.device, coordinates.dtype).unsqueeze(1)  # (B, 1, 2, 3)
        out = torch.matmul(theta[..., :2], coordinates.unsqueeze(-1)) + theta[..., 2:]
        out = out.squeeze(-1)  # (B, N, 2)
        if self.tps:
            points = self.control_points.to(coordinates.device, coordinates.dtype)
            dist = (coordinates.view(coordinates.shape[0], -1, 1, 2) - points.view(1, 1, -1, 2)).abs().sum(-1)
            radial = dist ** 2 * torch.log(dist + 1e-6) * self.control_params.to(coordinates.device, coordinates.dtype)
            out = out + radial.sum(dim=2).view(self.batch_size, coordinates.shape[1], 1)
        return out

    def jacobian(self, coordinates: torch.Tensor) -> torch.Tensor:
        """(B, N, 2, 2) jacobian of T at `coordinates` (which must require grad)."""
        if not coordinates.requires_grad:
            coordinates = coordinates.detach().requires_grad_(True)
        warped = self.warp_coordinates(coordinates)
        grad_x = torch.autograd.grad(warped[..., 0].sum(), coordinates, create_graph=True)[0]
        grad_y = torch.autograd.grad(warped[..., 1].sum(), coordinates, create_graph=True)[0]
        return torch.stack([grad_x, grad_y], dim=-2)  # (B, N, 2, 2)


class LossKit(nn.Module):
    def __init__(self, train_params: TrainParams, align_corners: bool = False, num_channels: int = 3):
        super().__init__()
        self.weights: LossWeights = train_params.loss_weights
        self.transform_params = train_params.transform_params
        self.align_corners = bool(align_corners)  # None: a config not yet resolved, a new model's False
        self.image_pyramid = ImagePyramid(tuple(train_params.scales), num_channels)
        used = [i for i, w in enumerate(self.weights.perceptual) if w]
        self.vgg = Vgg19(train_params.vgg19_weights, num_outputs=used[-1] + 1) if used else None

    def pyramid(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.image_pyramid(image)

    def perceptual(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Multi-scale perceptual loss (§3.4): sum over pyramid scales and VGG layers of w_i * mean L1."""
        if self.vgg is None:
            return prediction.new_zeros(())
        pred_pyr, real_pyr = self.pyramid(prediction), self.pyramid(target)
        total = prediction.new_zeros((), dtype=at_least_fp32(prediction).dtype)
        for key in pred_pyr:
            pred_feats, real_feats = self.vgg(pred_pyr[key]), self.vgg(real_pyr[key])
            for weight, a, b in zip(self.weights.perceptual, pred_feats, real_feats):
                if weight:
                    total = total + weight * at_least_fp32((a - b.detach()).abs()).mean()
        return total

    def random_transform(self, batch_size: int, device=None, identity: bool = False) -> Transform:
        return Transform(batch_size, self.transform_params, device, self.align_corners, identity)

    def equivariance(self, kp_driving: dict, kp_transformed: dict, transform: Transform) -> dict[str, torch.Tensor]:
        """Equivariance losses (Eq. 11-12): p^D vs T(p^T), and I vs (J^D)^-1 dT(p^T) J^T."""
        with full_precision(kp_driving["value"]):
            return self._equivariance(kp_driving, kp_transformed, transform)

    def _equivariance(self, kp_driving: dict, kp_transformed: dict, transform: Transform) -> dict[str, torch.Tensor]:
        losses = {}
        if self.weights.equivariance_value:
            value = (at_least_fp32(kp_driving["value"]) - transform.warp_coordinates(kp_transformed["value"])).abs().mean()
            losses["equivariance_value"] = self.weights.equivariance_value * value
        if self.weights.equivariance_jacobian and "jacobian" in kp_driving:
            transformed = torch.matmul(transform.jacobian(kp_transformed["value"]), at_least_fp32(kp_transformed["jacobian"]))
            product = torch.matmul(torch.inverse(at_least_fp32(kp_driving["jacobian"])), transformed)
            eye = torch.eye(2, device=product.device, dtype=product.dtype).view(1, 1, 2, 2)
            losses["equivariance_jacobian"] = self.weights.equivariance_jacobian * (eye - product).abs().mean()
        return losses

    @staticmethod
    def _scales(disc_out: dict) -> list[str]:
        return [key[len("prediction_map_"):] for key in disc_out if key.startswith("prediction_map_")]

    def gan_generator_loss(self, disc_generated: dict) -> torch.Tensor:
        """LSGAN generator term: w_gan * sum_s mean((1 - D_s(x_hat))^2)."""
        total = 0.0
        for scale in self._scales(disc_generated):
            total = total + ((1 - at_least_fp32(disc_generated["prediction_map_" + scale])) ** 2).mean()
        return self.weights.generator_gan * total

    def feature_matching(self, disc_real: dict, disc_generated: dict) -> torch.Tensor:
        """sum_s sum_i w_i mean |D_s^i(x) - D_s^i(x_hat)| over discriminator feature maps."""
        total = 0.0
        for scale in self._scales(disc_generated):
            pairs = zip(disc_real["feature_maps_" + scale], disc_generated["feature_maps_" + scale])
            for weight, (real, fake) in zip(self.weights.feature_matching, pairs):
                if weight:
                    total = total + weight * (at_least_fp32(real) - at_least_fp32(fake)).abs().mean()
        return torch.as_tensor(total) if not torch.is_tensor(total) else total

    def gan_discriminator_loss(self, disc_real: dict, disc_generated: dict) -> torch.Tensor:
        """LSGAN discriminator term: w_disc * sum_s mean((1 - D_s(x))^2 + D_s(x_hat)^2)."""
        total = 0.0
        for scale in self._scales(disc_real):
            real = at_least_fp32(disc_real["prediction_map_" + scale])
            fake = at_least_fp32(disc_generated["prediction_map_" + scale])
            total = total + ((1 - real) ** 2 + fake ** 2).mean()
        return self.weights.discriminator_gan * total

    def reconstruction_l1(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.weights.reconstruction_l1 * (at_least_fp32(prediction) - at_least_fp32(target)).abs().mean()
