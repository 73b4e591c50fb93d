"""Monkey-Net (Siarohin et al., "Animating Arbitrary Objects via Deep Motion Transfer",
CVPR 2019), in the framework of the First Order Motion Model.

Motion is zeroth order: each keypoint k moves by a translation only, so the backward
motion near keypoint k is T_k(z) = z - (p_d^k - p_s^k) (Monkey-Net Eq. 4). A dense motion
network mixes the K translations and the identity (background) with softmax masks and
adds a residual flow (Eq. 5). A U-Net generator warps its encoder's skip features by that
motion and joins them with keypoint heatmap differences (Sec. 3.4). A discriminator
conditioned on the driving keypoints gives the GAN and feature-matching losses (Sec. 3.5).

Deviations from the 2019 code, on purpose: frames, not video volumes (2-D convolutions);
keypoints and grids share one coordinate frame, `fomm.blocks.identity_grid` for the
config's `align_corners`, so 'deformation' is exactly the grid `grid_sample` reads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fomm.api import MotionTransferModel, Motion
from fomm.baselines.common import heatmap_moments, keypoint_gaussians
from fomm.blocks import (AntiAliasInterpolation2d, Encoder, Hourglass, SameBlock2d, UpBlock2d,
                         identity_grid, resize_grid, scale_key, warp)
from fomm.discriminator import Discriminator
from fomm.model import movement_scale
from pipeline.config import Config, ConfigError, MonkeyNetParams, replace


def check_discriminator_scales(config: Config, use_gan: bool) -> None:
    """The discriminator reads LossKit's image pyramid: its scales must be train_params.scales."""
    keys = {scale_key(s) for s in config.train_params.scales}
    missing = [s for s in config.model_params.discriminator_params.scales if scale_key(s) not in keys]
    if use_gan and missing:
        raise ConfigError(f"model_params.discriminator_params.scales {missing} are not in "
                          f"train_params.scales {list(config.train_params.scales)}")


def gaussians(kp: Motion, size: tuple[int, int], params: MonkeyNetParams, align_corners: bool
              ) -> torch.Tensor:
    """(B, K, h, w) keypoint Gaussians: with the detected covariance (plus a floor) or the
    fixed isotropic `kp_variance` (Monkey-Net Eq. 3)."""
    eye = torch.eye(2, device=kp["value"].device, dtype=torch.float32)
    if params.use_covariance:
        covariance = kp["covariance"].float() + params.kp_variance_floor * eye
    else:
        covariance = params.kp_variance * eye.expand(*kp["value"].shape[:2], 2, 2)
    return keypoint_gaussians(kp["value"], covariance, size[0], size[1], align_corners)


class KeypointDetector(nn.Module):
    """Hourglass -> K heatmaps, softmax over space with a temperature -> mean and
    covariance of each (Monkey-Net Eq. 1-2)."""

    def __init__(self, num_kp: int, num_channels: int, params: MonkeyNetParams, align_corners: bool):
        super().__init__()
        self.down = AntiAliasInterpolation2d(num_channels, params.scale_factor)
        self.predictor = Hourglass(params.block_expansion, num_channels, params.num_blocks,
                                   params.max_features)
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, kernel_size=7, padding=3)
        self.temperature = params.temperature
        self.align_corners = align_corners

    def forward(self, frames: torch.Tensor) -> Motion:
        logits = self.kp(self.predictor(self.down(frames)))  # (B, K, h, w)
        batch, num_kp, height, width = logits.shape
        heatmap = F.softmax(logits.float().reshape(batch, num_kp, -1) / self.temperature, dim=2)
        heatmap = heatmap.view(batch, num_kp, height, width)  # sums to 1 over space
        return heatmap_moments(heatmap, self.align_corners)  # value (B, K, 2), covariance (B, K, 2, 2)


def sparse_motions(kp_source: Motion, kp_driving: Motion, size: tuple[int, int],
                   align_corners: bool) -> torch.Tensor:
    """(B, K+1, h, w, 2) backward grids: identity (background) then, per keypoint, the pure
    translation T_k(z) = z - (p_d^k - p_s^k) (Monkey-Net Eq. 4, zeroth order)."""
    value_source, value_driving = kp_source["value"], kp_driving["value"]
    grid = identity_grid(size, align_corners, value_source.dtype, value_source.device)  # (h, w, 2)
    shift = (value_driving - value_source)[:, :, None, None, :]  # (B, K, 1, 1, 2)
    translated = grid - shift  # (B, K, h, w, 2)
    background = grid.expand(value_source.shape[0], 1, *grid.shape)  # (B, 1, h, w, 2)
    return torch.cat([background, translated], dim=1)


class DenseMotion(nn.Module):
    """Softmax masks over the K+1 sparse motions plus a residual flow (Monkey-Net Eq. 5):
    F(z) = sum_k M_k(z) T_k(z) + R(z). Input: heatmap differences and the source warped by
    each T_k, at `scale_factor` of the frame."""

    def __init__(self, num_kp: int, num_channels: int, params: MonkeyNetParams, align_corners: bool):
        super().__init__()
        self.down = AntiAliasInterpolation2d(num_channels, params.scale_factor)
        in_features = (num_kp + 1) * (num_channels + 1)
        self.hourglass = Hourglass(params.dense_motion_block_expansion, in_features,
                                   params.dense_motion_num_blocks, params.dense_motion_max_features)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.residual = nn.Conv2d(self.hourglass.out_filters, 2, kernel_size=7, padding=3)
        # The residual starts at zero: at first the motion is the pure mask mixture.
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        self.params, self.align_corners = params, align_corners
        self.use_residual_flow = params.use_residual_flow

    def inputs(self, source: torch.Tensor, kp_source: Motion, kp_driving: Motion,
               motions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hourglass input (B, (K+1)(C+1), h, w): per motion its heatmap difference and the
        source warped by it; and those warped sources (B, K+1, C, h, w)."""
        batch, num_motions, height, width, _ = motions.shape
        size = (height, width)
        heat = (gaussians(kp_driving, size, self.params, self.align_corners)
                - gaussians(kp_source, size, self.params, self.align_corners))  # (B, K, h, w)
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1)  # (B, K+1, h, w)
        repeated = source.unsqueeze(1).expand(-1, num_motions, -1, -1, -1).flatten(0, 1)
        deformed = warp(repeated, motions.flatten(0, 1), self.align_corners)  # (B(K+1), C, h, w)
        deformed = deformed.reshape(batch, num_motions, -1, height, width)
        return torch.cat([heat.unsqueeze(2).to(deformed.dtype), deformed], dim=2).flatten(1, 2), deformed

    def forward(self, source: torch.Tensor, kp_source: Motion, kp_driving: Motion,
                mask_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`mask_logits` (B, K+1, h, w), if given, replaces the predicted ones (diagnostics)."""
        source = self.down(source)  # (B, C, h, w)
        motions = sparse_motions(kp_source, kp_driving, source.shape[2:], self.align_corners)
        features_in, deformed = self.inputs(source, kp_source, kp_driving, motions)
        features = self.hourglass(features_in)
        logits = self.mask(features) if mask_logits is None else mask_logits
        mask = F.softmax(logits.float(), dim=1)  # (B, K+1, h, w)
        mixed = (mask.unsqueeze(-1) * motions.float()).sum(dim=1)  # (B, h, w, 2)
        residual = self.residual(features).permute(0, 2, 3, 1).float()  # (B, h, w, 2)
        deformation = mixed + residual if self.use_residual_flow else mixed
        return {"mask": mask, "sparse_deformed": deformed, "residual_flow": residual,
                "deformation_no_residual": mixed, "deformation": deformation}


class Generator(nn.Module):
    """U-Net on the source whose skip features are warped by the dense motion and joined
    with the keypoint heatmap differences at every level (Monkey-Net Sec. 3.4)."""

    def __init__(self, num_kp: int, num_channels: int, params: MonkeyNetParams, align_corners: bool):
        super().__init__()
        expansion, most, blocks = (params.generator_block_expansion, params.generator_max_features,
                                   params.generator_num_blocks)
        widths = [min(most, expansion * 2 ** i) for i in range(blocks + 1)]  # per level, full res first
        self.first = SameBlock2d(num_channels, expansion, kernel_size=7, padding=3)
        self.encoder = Encoder(expansion, expansion, blocks, most)
        self.up_blocks = nn.ModuleList()
        channels = widths[blocks] + num_kp
        for level in reversed(range(blocks)):
            self.up_blocks.append(UpBlock2d(channels, widths[level]))
            channels = 2 * widths[level] + num_kp
        self.final = nn.Conv2d(channels, num_channels, kernel_size=7, padding=3)
        self.dense_motion = DenseMotion(num_kp, num_channels, params, align_corners)
        self.params, self.align_corners = params, align_corners

    def skip(self, features: torch.Tensor, deformation: torch.Tensor, kp_source: Motion,
             kp_driving: Motion) -> torch.Tensor:
        size = tuple(features.shape[2:])
        warped = warp(features, resize_grid(deformation, size, self.align_corners), self.align_corners)
        heat = (gaussians(kp_driving, size, self.params, self.align_corners)
                - gaussians(kp_source, size, self.params, self.align_corners))  # (B, K, h, w)
        return torch.cat([warped, heat.to(warped.dtype)], dim=1)

    def forward(self, source: torch.Tensor, kp_source: Motion, kp_driving: Motion,
                mask_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.dense_motion(source, kp_source, kp_driving, mask_logits)
        features = self.encoder(self.first(source))  # [(B, w_0, H, W), (B, w_1, H/2, W/2), ...]
        x = self.skip(features[-1], out["deformation"], kp_source, kp_driving)
        for block, level_features in zip(self.up_blocks, reversed(features[:-1])):
            x = torch.cat([block(x), self.skip(level_features, out["deformation"], kp_source,
                                                kp_driving)], dim=1)
        out["prediction"] = torch.sigmoid(self.final(x))  # (B, C, H, W)
        full = resize_grid(out["deformation"], tuple(source.shape[2:]), self.align_corners)
        out["deformed"] = warp(source, full, self.align_corners)  # the source moved by the motion alone
        return out


class KeypointDiscriminator(nn.Module):
    """FOMM's multi-scale patch discriminator fed the frame joined with the driving
    keypoints' Gaussians with their covariances (Monkey-Net Sec. 3.5). Returns the
    `MultiScaleDiscriminator` dict (`feature_maps_<s>`, `prediction_map_<s>`) that
    `LossKit`'s GAN and feature-matching losses read."""

    def __init__(self, config: Config):
        super().__init__()
        model = config.model_params
        params, num_kp = model.discriminator_params, model.common_params.num_kp
        channels = model.common_params.num_channels + (num_kp if params.use_kp else 0)
        # The Gaussians are joined here, so the inner discriminators take them as channels.
        inner = replace(params, use_kp=False)
        self.discs = nn.ModuleDict({scale_key(s): Discriminator(inner, channels, num_kp)
                                    for s in params.scales})
        self.use_kp, self.params, self.align_corners = params.use_kp, model.monkey_net_params, model.align_corners

    def forward(self, pyramid: dict[str, torch.Tensor], kp: Motion) -> dict[str, object]:
        out = {}
        for key, disc in self.discs.items():
            scale = key.replace("-", ".")
            frames = pyramid["prediction_" + scale]  # (B, C, H*s, W*s)
            if self.use_kp:
                detached = {name: value.detach() for name, value in kp.items()}
                heat = gaussians(detached, tuple(frames.shape[2:]), self.params, self.align_corners)
                frames = torch.cat([frames, heat.to(frames.dtype)], dim=1)
            out["feature_maps_" + scale], out["prediction_map_" + scale] = disc(frames)
        return out


class MonkeyNet(MotionTransferModel):
    """Monkey-Net under the `fomm.api` contract; motion = {'value': (B, K, 2),
    'covariance': (B, K, 2, 2)}."""
    name = "monkey-net"

    def __init__(self, config: Config):
        super().__init__()
        model = config.model_params
        params, num_kp = model.monkey_net_params, model.common_params.num_kp
        channels, align = model.common_params.num_channels, model.align_corners
        self.kp_detector = KeypointDetector(num_kp, channels, params, align)
        self.generator = Generator(num_kp, channels, params, align)
        self.discriminator = KeypointDiscriminator(config)
        self.use_gan = config.train_params.loss_weights.generator_gan > 0
        check_discriminator_scales(config, self.use_gan)

    # ------------------------------------------------------------------ inference
    def detect(self, frames: torch.Tensor) -> Motion:
        return self.kp_detector(frames)

    def generate(self, source: torch.Tensor, motion_source: Motion, motion_driving: Motion
                 ) -> dict[str, torch.Tensor]:
        return self.generator(source, motion_source, motion_driving)

    def transfer(self, motion_source: Motion, motion_driving: Motion, motion_initial: Motion,
                 relative: bool = True, relative_jacobian: bool = True,
                 adapt_movement_scale: bool = False) -> Motion:
        """Relative transfer h_s + (h_t - h_1) (Monkey-Net Sec. 3.6), scaled by the FOMM
        convex-hull factor if asked. Zeroth-order motion has no jacobian; its analogue, the
        covariance, stays the source's with `relative_jacobian` and is the driving's without."""
        if not relative:
            return dict(motion_driving)
        displacement = motion_driving["value"] - motion_initial["value"]  # (B, K, 2)
        if adapt_movement_scale:
            displacement = displacement * movement_scale(motion_source, motion_initial)
        covariance = motion_source["covariance"] if relative_jacobian else motion_driving["covariance"]
        return {"value": motion_source["value"] + displacement,
                "covariance": covariance.expand_as(motion_driving["covariance"])}

    # ------------------------------------------------------------------ training
    def generator_losses(self, source, driving, kit):
        """L1 reconstruction and perceptual (each if weighted), LSGAN generator loss and
        discriminator feature matching (Monkey-Net Eq. 7-8), through `kit` like FOMM."""
        weights = kit.weights
        kp_source, kp_driving = self.detect(source), self.detect(driving)
        generated = self.generate(source, kp_source, kp_driving)
        generated.update(kp_source=kp_source, kp_driving=kp_driving)
        prediction = generated["prediction"]
        losses = {}
        if weights.reconstruction_l1:
            losses["reconstruction_l1"] = kit.reconstruction_l1(prediction, driving)
        if sum(weights.perceptual) != 0:
            losses["perceptual"] = kit.perceptual(prediction, driving)
        if self.use_gan:
            disc_fake = self.discriminator(kit.pyramid(prediction), kp_driving)
            disc_real = self.discriminator(kit.pyramid(driving), kp_driving)
            losses["gen_gan"] = kit.gan_generator_loss(disc_fake)
            if sum(weights.feature_matching) != 0:
                losses["feature_matching"] = kit.feature_matching(disc_real, disc_fake)
        return losses, generated

    def discriminator_losses(self, source, driving, generated, kit):
        """LSGAN: (1 - D(real))^2 + D(fake)^2, both conditioned on the driving keypoints."""
        if not self.use_gan:
            return {}
        kp_driving = generated["kp_driving"]
        disc_fake = self.discriminator(kit.pyramid(generated["prediction"].detach()), kp_driving)
        disc_real = self.discriminator(kit.pyramid(driving), kp_driving)
        return {"disc_gan": kit.gan_discriminator_loss(disc_real, disc_fake)}

    def optimizer_groups(self):
        return {"generator": list(self.generator.parameters()),
                "kp_detector": list(self.kp_detector.parameters()),
                "discriminator": list(self.discriminator.parameters())}
