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

from core.config import resolve_align_corners
from core.errors import UserError
from fomm.api import Motion, MotionTransferModel
from fomm.blocks import full_precision
from fomm.config import Config
from fomm.model import movement_scale
from fomm.monkey_net.keypoints import full
from fomm.monkey_net.modules import Discriminator, Generator, KPDetector, detach_motion


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
                 adapt_movement_scale: bool = False, avd: bool = False) -> Motion:
        """transfer.py's normalize_kp: `relative` (move_location) p_s + (p_t - p_1) times the
        hull-area factor if `adapt_movement_scale` (movement_mult); `relative_jacobian`
        (adapt_variance) Sigma_t Sigma_1^-1 Sigma_s made symmetric positive definite
        (eigenvalues <= 0 set to 1e-6); otherwise the driving covariance is kept."""
        if avd:
            self.refuse_avd()
        out = dict(motion_driving)
        if relative:
            scale = movement_scale(motion_source, motion_initial) if adapt_movement_scale else 1
            out["value"] = (motion_driving["value"] - motion_initial["value"]) * scale + motion_source["value"]
        if relative_jacobian and "var" in motion_driving and motion_driving["var"].shape[-1] == 2:
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
        and the LSGAN term w (1 - D(x_hat))^2. The keypoints the discriminator sees here are
        never detached (train.py's `split_kp(kp_joined, False)`): its maps pass the feature-
        matching and GAN gradients to the detector; detach_kp_discriminator acts only in the
        discriminator step."""
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
            fake = self.discriminator(prediction, kp_driving, kp_source)
            real = self.discriminator(driving, kp_driving, kp_source)
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
    @classmethod
    def recognises(cls, checkpoint) -> bool:
        """A released Monkey-Net file: FOMM's top-level names, but 5-D (out, in, 1, k, k)
        convolution weights (the original's videos are (B, C, T, H, W))."""
        detector = checkpoint.get("kp_detector")
        return (isinstance(detector, dict) and isinstance(checkpoint.get("generator"), dict)
                and any(torch.is_tensor(t) and t.dim() == 5 for t in detector.values()))

    def state_from_checkpoint(self, checkpoint: dict) -> dict[str, dict[str, torch.Tensor]]:
        """The project's checkpoints, or a released Monkey-Net file (logger.py save_cpk:
        {generator, kp_detector, discriminator, optimizer_*, epoch, it} with 5-D weights)."""
        state = super().state_from_checkpoint(checkpoint)
        return {name: original_to_2d(sd) for name, sd in state.items()}
