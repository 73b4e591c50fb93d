"""Monkey-Net (Siarohin et al., "Animating Arbitrary Objects via Deep Motion Transfer",
CVPR 2019), re-implemented to the maths and parameter layout of the authors' code
(github.com/AliaksandrSiarohin/monkey-net, commit 0c8aa4ea: modules/*.py, train.py,
reconstruction.py, transfer.py).

- Keypoint detector (Sec. 3.2): the frame downscaled by nearest neighbour, an hourglass whose
  last conv gives K heat maps, softmax with a temperature, mean and covariance of each map
  (covariance rescaled to a smallest singular value of at least `clip_variance`).
- Dense motion (Sec. 3.3, Eq. 4-5): a movement embedding (heat-map differences / norm_const
  and the source warped by each keypoint's translation), grouped 1x1 blocks (one group per
  keypoint and the background), an hourglass giving K+1 mask logits (zero weights,
  background bias `bg_init`) and a 2-channel correction; F(z) = z + sum_k M_k(z)(p_s^k -
  p_d^k) + R(z).
- Generator (Sec. 3.4): an encoder of `num_blocks` blocks on the raw frame; every skip (the
  frame itself included) is warped by the dense motion and joined with the keypoint
  embedding; a decoder without last conv; `num_refinement_blocks` residual blocks, a 1x1
  conv and a sigmoid.
- Discriminator (Sec. 3.5): the frame joined with the driving keypoints' Gaussians
  (/ norm_const); 4x4 unpadded convs, InstanceNorm after the first, leaky ReLU, 2x2 average
  pooling after every block, max `max_features`; its maps feed the feature-matching loss.

The original works on videos (B, C, T, H, W) with (1, k, k) 3-D convolutions; here frames
(B*T, C, H, W) go through 2-D convolutions, which compute the same. The parameter names are
the original's; the one mapping is shape: 5-D weights (out, in, 1, k, k) are (out, in, k, k)
here (`state_from_checkpoint` converts released files). Two places see the time axis: the
discriminator's InstanceNorm3d normalises over (T, H, W) together (`frames_per_video`), and
the original's BatchNorm statistics over (B, T, H, W), which folding T into the batch keeps.

Grids: keypoints and identity grids are Monkey-Net's `make_coordinate_grid` (-1/+1 on the
border pixels' centres). `model_params.align_corners` only sets grid_sample's flag: True is
how the released checkpoints ran (torch 0.4.1), False is torch's current default (the golden
file). Resizing a deformation is bilinear with align_corners=False either way, as on 0.4.1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.config import (Config, MonkeyNetDenseMotionParams, MonkeyNetDiscriminatorParams,
                         MonkeyNetEmbeddingParams, MonkeyNetGeneratorParams, MonkeyNetKpDetectorParams,
                         resolve_align_corners)
from core.errors import UserError
from fomm.api import Motion, MotionTransferModel
from fomm.baselines.common import full, heatmap_moments, keypoint_gaussians
from fomm.blocks import (Encoder, ResBlock2d, SameBlock2d, UpBlock2d, full_precision, make_coordinate_grid,
                         warp)
from fomm.model import movement_scale


def downscale(frames: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """Nearest-neighbour resize by `scale_factor`, as the original's F.interpolate default."""
    if scale_factor == 1:
        return frames
    return F.interpolate(frames, scale_factor=scale_factor, mode="nearest")


def resize_map(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W): nearest, or (tri/bi)linear with align_corners=False (the
    default of torch 0.4.1 and now; a T->T trilinear resize is bilinear per frame)."""
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    if mode == "nearest":
        return F.interpolate(maps, size=tuple(size), mode="nearest")
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def detach_motion(motion: Motion) -> Motion:
    return {key: value.detach() for key, value in motion.items()}


class MovementEmbedding(nn.Module):
    """What the other modules see of the motion (modules/movement_embedding.py): per keypoint
    (and a zero background if `add_bg`) its heat map, its displacement p_s - p_d and the
    source warped by that translation, channels grouped per keypoint."""

    def __init__(self, num_kp: int, num_channels: int, kp_variance: str, params: MonkeyNetEmbeddingParams,
                 align_corners: bool, add_bg: bool = False):
        super().__init__()
        self.params, self.kp_variance, self.add_bg, self.align_corners = params, kp_variance, add_bg, align_corners
        per_kp = params.use_heatmap + 2 * params.use_difference + num_channels * params.use_deformed_source_image
        self.out_channels = per_kp * (num_kp + add_bg)

    def heatmap(self, kp_driving: Motion, kp_source: Motion, size: tuple[int, int]) -> torch.Tensor:
        heat = keypoint_gaussians(kp_driving, size, self.kp_variance) / self.params.norm_const
        if self.params.heatmap_type == "difference":
            heat = heat - keypoint_gaussians(kp_source, size, self.kp_variance) / self.params.norm_const
        return heat  # (B, K, h, w)

    def forward(self, source: torch.Tensor, kp_driving: Motion, kp_source: Motion) -> torch.Tensor:
        source = downscale(source, self.params.scale_factor)
        batch, _, height, width = source.shape
        inputs = []
        if self.params.use_heatmap:
            heat = self.heatmap(kp_driving, kp_source, (height, width))
            if self.add_bg:
                heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1)
            inputs.append(heat.unsqueeze(2))  # (B, K', 1, h, w)
        if self.params.use_difference or self.params.use_deformed_source_image:
            shift = full(kp_source["value"]) - full(kp_driving["value"])  # (B, K, 2)
            if self.add_bg:
                shift = torch.cat([torch.zeros_like(shift[:, :1]), shift], dim=1)
            num_maps = shift.shape[1]
        if self.params.use_difference:
            inputs.append(shift[..., None, None].expand(-1, -1, -1, height, width))  # (B, K', 2, h, w)
        if self.params.use_deformed_source_image:
            grid = make_coordinate_grid((height, width), shift.dtype, shift.device)
            grids = grid + shift[:, :, None, None, :]  # (B, K', h, w, 2)
            repeated = source.unsqueeze(1).expand(-1, num_maps, -1, -1, -1).flatten(0, 1)
            deformed = warp(repeated, grids.flatten(0, 1), self.align_corners)
            inputs.append(deformed.view(batch, num_maps, -1, height, width))  # (B, K', C, h, w)
        dtype = torch.promote_types(inputs[0].dtype, inputs[-1].dtype)
        return torch.cat([x.to(dtype) for x in inputs], dim=2).flatten(1, 2)  # (B, out_channels, h, w)


class Decoder(nn.Module):
    """The hourglass decoder of modules/util.py: `additional_features` more input channels per
    block (the keypoint embedding joined to every skip) and an optional last 3x3 conv."""

    def __init__(self, block_expansion: int, in_features: int, out_features: int, num_blocks: int,
                 max_features: int, additional_features: int = 0, use_last_conv: bool = True):
        super().__init__()
        width = lambda i: min(max_features, block_expansion * 2 ** i)  # noqa: E731
        self.up_blocks = nn.ModuleList(
            UpBlock2d((1 if i == num_blocks - 1 else 2) * width(i + 1) + additional_features, width(i))
            for i in reversed(range(num_blocks)))
        self.out_filters = block_expansion + in_features + additional_features
        self.conv = nn.Conv2d(self.out_filters, out_features, 3, padding=1) if use_last_conv else None

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return out if self.conv is None else self.conv(out)


class Hourglass(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, out_features: int, num_blocks: int,
                 max_features: int):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, out_features, num_blocks, max_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class KPDetector(nn.Module):
    """Heat maps from the hourglass's own last conv, softmax(h / temperature) over space, then
    moments (Monkey-Net Eq. 1-2) -> {'value': (B, K, 2), 'var': (B, K, 2, 2)}."""

    def __init__(self, num_kp: int, num_channels: int, kp_variance: str, params: MonkeyNetKpDetectorParams):
        super().__init__()
        self.predictor = Hourglass(params.block_expansion, num_channels, num_kp, params.num_blocks,
                                   params.max_features)
        self.params, self.kp_variance = params, kp_variance

    def forward(self, frames: torch.Tensor) -> Motion:
        logits = self.predictor(downscale(frames, self.params.scale_factor))  # (B, K, h, w)
        with full_precision(logits):
            flat = full(logits).flatten(2) / self.params.temperature
            heatmap = F.softmax(flat, dim=2).view(logits.shape)  # sums to one over space
            return heatmap_moments(heatmap, self.kp_variance, self.params.clip_variance)


class DenseMotion(nn.Module):
    """Masks over the K+1 translations (background first) plus a correction (Eq. 5):
    returns 'deformation' (B, h, w, 2), the grid that grid_sample reads, at scale_factor."""

    def __init__(self, num_kp: int, num_channels: int, kp_variance: str, params: MonkeyNetDenseMotionParams,
                 align_corners: bool):
        super().__init__()
        self.mask_embedding = MovementEmbedding(num_kp, num_channels, kp_variance, params.mask_embedding_params,
                                                align_corners, add_bg=True)
        self.difference_embedding = MovementEmbedding(
            num_kp, num_channels, kp_variance,
            MonkeyNetEmbeddingParams(use_heatmap=False, use_difference=True), align_corners, add_bg=True)
        channels = self.mask_embedding.out_channels
        self.group_blocks = nn.ModuleList(
            SameBlock2d(channels, channels, kernel_size=1, padding=0, groups=num_kp + 1)
            for _ in range(params.num_group_blocks))
        outputs = (num_kp + 1) * params.use_mask + 2 * params.use_correction
        self.hourglass = Hourglass(params.block_expansion, channels, outputs, params.num_blocks,
                                   params.max_features)
        head = self.hourglass.decoder.conv
        # Start as "every pixel follows the background": zero weights, background logit bg_init.
        nn.init.zeros_(head.weight)
        bias = [params.bg_init] + [0.0] * num_kp if params.use_mask else []
        head.bias.data.copy_(torch.tensor(bias + [0.0, 0.0] * params.use_correction))
        self.num_kp, self.params = num_kp, params

    def forward(self, source: torch.Tensor, kp_driving: Motion, kp_source: Motion) -> dict[str, torch.Tensor]:
        source = downscale(source, self.params.scale_factor)
        batch, _, height, width = source.shape
        prediction = self.mask_embedding(source, kp_driving, kp_source)
        for block in self.group_blocks:
            prediction = F.leaky_relu(block(prediction), 0.2)
        prediction = self.hourglass(prediction)  # (B, (K+1) + 2, h, w)
        out = {}
        with full_precision(prediction):
            relative = torch.zeros(batch, 2, height, width, dtype=full(prediction).dtype, device=source.device)
            if self.params.use_mask:
                mask = F.softmax(full(prediction[:, :self.num_kp + 1]), dim=1)  # (B, K+1, h, w)
                shifts = self.difference_embedding(source, kp_driving, kp_source)
                shifts = shifts.view(batch, self.num_kp + 1, 2, height, width)
                relative = relative + (shifts * mask.unsqueeze(2)).sum(dim=1)
                out["mask"] = mask
            if self.params.use_correction:
                out["correction"] = full(prediction[:, -2:])
                relative = relative + out["correction"]
            grid = make_coordinate_grid((height, width), relative.dtype, relative.device)
            out["deformation"] = relative.permute(0, 2, 3, 1) + grid  # (B, h, w, 2)
        return out


class Generator(nn.Module):
    """modules/generator.py's MotionTransferGenerator on frames (see the module docstring)."""

    def __init__(self, num_kp: int, num_channels: int, kp_variance: str, params: MonkeyNetGeneratorParams,
                 align_corners: bool):
        super().__init__()
        self.appearance_encoder = Encoder(params.block_expansion, num_channels, params.num_blocks,
                                          params.max_features)
        if params.kp_embedding_params is not None:
            self.kp_embedding_module = MovementEmbedding(num_kp, num_channels, kp_variance,
                                                         params.kp_embedding_params, align_corners)
            embedding = self.kp_embedding_module.out_channels
        else:
            self.kp_embedding_module, embedding = None, 0
        self.dense_motion_module = DenseMotion(num_kp, num_channels, kp_variance, params.dense_motion_params,
                                               align_corners)
        self.video_decoder = Decoder(params.block_expansion, num_channels, num_channels, params.num_blocks,
                                     params.max_features, embedding, use_last_conv=False)
        features = self.video_decoder.out_filters
        self.refinement_module = nn.Sequential()
        for i in range(params.num_refinement_blocks):
            self.refinement_module.add_module(f"r{i}", ResBlock2d(features, kernel_size=3, padding=1))
        self.refinement_module.add_module("conv-last", nn.Conv2d(features, num_channels, kernel_size=1))
        self.mode, self.align_corners = params.interpolation_mode, align_corners

    def deform(self, features: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
        """`features` warped by the dense motion resized to their size (generator.deform_input)."""
        grid = resize_map(deformation.permute(0, 3, 1, 2), features.shape[2:], self.mode)
        return warp(features, grid.permute(0, 2, 3, 1), self.align_corners)

    def forward(self, source: torch.Tensor, kp_source: Motion, kp_driving: Motion) -> dict[str, torch.Tensor]:
        skips = self.appearance_encoder(source)  # [frame, down_1, ..., down_n]
        out = self.dense_motion_module(source, kp_driving, kp_source)
        skips = [self.deform(skip, out["deformation"]).to(skip.dtype) for skip in skips]
        if self.kp_embedding_module is not None:
            embedding = self.kp_embedding_module(source, kp_driving, kp_source)  # (B, K, h, w)
            skips = [torch.cat([skip, resize_map(embedding, skip.shape[2:], self.mode).to(skip.dtype)], dim=1)
                     for skip in skips]
        out["deformed"] = self.deform(source, out["deformation"])  # the source moved by the motion alone
        out["prediction"] = torch.sigmoid(self.refinement_module(self.video_decoder(skips)))
        return out


class DiscriminatorBlock(nn.Module):
    """4x4 unpadded conv, InstanceNorm3d over each video's (T, H, W), leaky ReLU, 2x2 average pool."""

    def __init__(self, in_features: int, out_features: int, norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=4)
        self.norm = nn.InstanceNorm3d(out_features, affine=True) if norm else None

    def forward(self, x: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        out = self.conv(x)  # (B*T, C, h, w)
        if self.norm is not None:
            videos = out.view(-1, frames_per_video, *out.shape[1:]).transpose(1, 2)  # (B, C, T, h, w)
            out = self.norm(videos).transpose(1, 2).reshape(out.shape)
        return F.avg_pool2d(F.leaky_relu(out, 0.2), 2)


class Discriminator(nn.Module):
    """modules/discriminator.py: returns [frame, block_1, ..., block_n, prediction map]."""

    def __init__(self, num_kp: int, num_channels: int, kp_variance: str, params: MonkeyNetDiscriminatorParams,
                 align_corners: bool):
        super().__init__()
        if params.kp_embedding_params is not None:
            self.kp_embedding = MovementEmbedding(num_kp, num_channels, kp_variance, params.kp_embedding_params,
                                                  align_corners)
            embedding = self.kp_embedding.out_channels
        else:
            self.kp_embedding, embedding = None, 0
        width = lambda i: min(params.max_features, params.block_expansion * 2 ** i)  # noqa: E731
        self.down_blocks = nn.ModuleList(
            DiscriminatorBlock(num_channels + embedding if i == 0 else width(i), width(i + 1), norm=i != 0)
            for i in range(params.num_blocks))
        self.conv = nn.Conv2d(width(params.num_blocks), 1, kernel_size=1)
        self.scale_factor = params.scale_factor

    def forward(self, frames: torch.Tensor, kp_driving: Motion, kp_source: Motion,
                frames_per_video: int = 1) -> list[torch.Tensor]:
        """`frames` (B*T, C, H, W), video-major; `frames_per_video` T as the original's
        InstanceNorm3d sees it (training compares single frames: T = 1)."""
        maps = [frames]
        x = downscale(frames, self.scale_factor)
        if self.kp_embedding is not None:
            x = torch.cat([x, self.kp_embedding(x, kp_driving, kp_source).to(x.dtype)], dim=1)
        for block in self.down_blocks:
            x = block(x, frames_per_video)
            maps.append(x)
        maps.append(self.conv(x))
        return maps


def original_to_2d(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A released sub-network state dict with 5-D (out, in, 1, k, k) conv weights as 2-D
    (out, in, k, k); BatchNorm's num_batches_tracked (absent before torch 0.4.1) filled with 0."""
    converted = {}
    for key, tensor in state.items():
        if tensor.dim() == 5:
            if tensor.shape[2] != 1:
                raise UserError(f"tensor {key} has shape {tuple(tensor.shape)}; expected a (out, in, 1, k, k) "
                                f"Monkey-Net convolution (temporal kernels are not supported)")
            tensor = tensor[:, :, 0]
        converted[key] = tensor
        if key.endswith(".running_var"):
            converted.setdefault(key[:-len("running_var")] + "num_batches_tracked", torch.tensor(0))
    return converted


class MonkeyNet(MotionTransferModel):
    """Monkey-Net under the `fomm.api` contract; motion = {'value': (B, K, 2), 'var'}."""
    name = "monkey-net"

    def __init__(self, config: Config):
        super().__init__()
        config = resolve_align_corners(config, None)  # built directly: a new model (False)
        model = config.model_params
        params, num_kp, channels = model.monkey_net_params, model.common_params.num_kp, model.common_params.num_channels
        align = self.align_corners = model.align_corners  # grid_sample's convention (module doc)
        self.kp_detector = KPDetector(num_kp, channels, params.kp_variance, params.kp_detector_params)
        self.generator = Generator(num_kp, channels, params.kp_variance, params.generator_params, align)
        self.discriminator = Discriminator(num_kp, channels, params.kp_variance, params.discriminator_params, align)
        self.params, self.loss_weights = params, config.train_params.loss_weights

    # ------------------------------------------------------------------ inference
    def detect(self, frames: torch.Tensor) -> Motion:
        return self.kp_detector(frames)

    def generate(self, source: torch.Tensor, motion_source: Motion, motion_driving: Motion) -> dict[str, torch.Tensor]:
        return self.generator(source, motion_source, motion_driving)

    def transfer(self, motion_source: Motion, motion_driving: Motion, motion_initial: Motion,
                 relative: bool = True, relative_jacobian: bool = True,
                 adapt_movement_scale: bool = False) -> Motion:
        """transfer.py's normalize_kp: `relative` (move_location) p_s + (p_t - p_1) times the
        hull-area factor if `adapt_movement_scale` (movement_mult); `relative_jacobian`
        (adapt_variance) Sigma_t Sigma_1^-1 Sigma_s made symmetric positive definite
        (eigenvalues <= 0 set to 1e-6); otherwise the driving covariance is kept."""
        out = dict(motion_driving)
        if relative:
            scale = movement_scale(motion_source, motion_initial) if adapt_movement_scale else 1
            out["value"] = (motion_driving["value"] - motion_initial["value"]) * scale + motion_source["value"]
        if relative_jacobian and motion_driving["var"].shape[-1] == 2:
            with full_precision(motion_driving["var"]):
                var = full(motion_driving["var"]) @ torch.linalg.inv(full(motion_initial["var"]))
                var = var @ full(motion_source["var"])
                eigenvalues, vectors = torch.linalg.eigh((var + var.transpose(-1, -2)) / 2)
                eigenvalues = torch.where(eigenvalues <= 0, torch.full_like(eigenvalues, 1e-6), eigenvalues)
                out["var"] = vectors @ torch.diag_embed(eigenvalues) @ vectors.transpose(-1, -2)
        return out

    # ------------------------------------------------------------------ training
    def generator_losses(self, source, driving, kit):
        """train.py's generator step: both frames through the detector in one call (its
        BatchNorm statistics cover both), the generator, then L1 between the discriminator's
        maps of the driving frame and of the prediction: weight reconstruction_l1 on the
        frame itself, feature_matching on each block (the original's `reconstruction` list),
        and the LSGAN term w (1 - D(x_hat))^2."""
        weights = self.loss_weights
        kp_joined = self.kp_detector(torch.cat([source, driving]))
        batch = source.shape[0]
        kp_source = {k: v[:batch] for k, v in kp_joined.items()}
        kp_driving = {k: v[batch:] for k, v in kp_joined.items()}
        detach_gen = detach_motion if self.params.detach_kp_generator else dict
        generated = self.generator(source, detach_gen(kp_source), detach_gen(kp_driving))
        generated.update(kp_source=kp_source, kp_driving=kp_driving)
        prediction = generated["prediction"]
        losses = {}
        if weights.reconstruction_l1:
            losses["reconstruction_l1"] = weights.reconstruction_l1 * (prediction - driving).abs().float().mean()
        if self.params.reconstruction_deformed:
            losses["reconstruction_deformed"] = (self.params.reconstruction_deformed
                                                 * (generated["deformed"] - driving).abs().float().mean())
        if any(weights.feature_matching) or weights.generator_gan:
            detach_disc = detach_motion if self.params.detach_kp_discriminator else dict
            kp = (detach_disc(kp_driving), detach_disc(kp_source))
            fake = self.discriminator(prediction, *kp)
            real = self.discriminator(driving, *kp)
            matching = [w * (a - b).abs().float().mean()
                        for w, a, b in zip(weights.feature_matching, real[1:-1], fake[1:-1]) if w]
            if matching:
                losses["feature_matching"] = sum(matching)
            if weights.generator_gan:
                losses["gen_gan"] = weights.generator_gan * ((1 - fake[-1].float()) ** 2).mean()
        return losses, generated

    def discriminator_losses(self, source, driving, generated, kit):
        """LSGAN w ((1 - D(x))^2 + D(x_hat)^2) with the keypoints detached. (With
        detach_kp_discriminator false the original also steps the keypoint detector on this
        loss; the shared loop steps only the discriminator here.)"""
        if not self.loss_weights.discriminator_gan:
            return {}
        kp = (detach_motion(generated["kp_driving"]), detach_motion(generated["kp_source"]))
        fake = self.discriminator(generated["prediction"].detach(), *kp)[-1].float()
        real = self.discriminator(driving, *kp)[-1].float()
        return {"disc_gan": self.loss_weights.discriminator_gan * ((1 - real) ** 2 + fake ** 2).mean()}

    def optimizer_groups(self):
        groups = {"generator": list(self.generator.parameters()), "kp_detector": list(self.kp_detector.parameters())}
        if self.loss_weights.discriminator_gan:  # else only its feature maps serve, untrained
            groups["discriminator"] = list(self.discriminator.parameters())
        return groups

    # ------------------------------------------------------------------ checkpoints
    def state_from_checkpoint(self, checkpoint: dict) -> dict[str, dict[str, torch.Tensor]]:
        """The project's checkpoints, or a released Monkey-Net file (logger.py save_cpk:
        {generator, kp_detector, discriminator, optimizer_*, epoch, it} with 5-D weights)."""
        state = super().state_from_checkpoint(checkpoint)
        return {name: original_to_2d(sd) for name, sd in state.items()}
