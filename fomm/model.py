"""The First Order Motion Model (Siarohin et al., NeurIPS 2019) behind the project's model contract.

Sub-networks are held as `kp_detector`, `generator` and `discriminator`, so
`checkpoint_state()` has the released checkpoints' layout. The discriminator is built and
trained only when `train_params.loss_weights.generator_gan > 0` (as the original trains
it); otherwise the model has none, and the one a released or older checkpoint carries is
not loaded (fomm/checkpoint.py treats it as optional).

Conventions: keypoints and the identity/background motion use the original's coordinate
grid (-1 and 1 at the centres of the extreme pixels); `model_params.align_corners`
(False for a new model, which reproduces reference/fomm-golden-f64.pt; True when a
released checkpoint is loaded without an explicit value) is passed to every grid_sample
and interpolate. With False the background motion is thus a (W-1)/W zoom, exactly as in
the original run with current torch; True is how the released checkpoints were trained. `generate(...)['deformation']` is the dense backward grid (B, h, w, 2) at the
dense motion network's resolution (frame size x dense_motion_params.scale_factor), in the
grid_sample convention `align_corners` names: prediction ~ grid_sample(source, deformation).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.config import ConfigError, resolve_align_corners
from fomm.api import Motion, MotionTransferModel
from fomm.blocks import full_precision, scale_key
from fomm.config import Config
from fomm.discriminator import MultiScaleDiscriminator
from fomm.generator import OcclusionAwareGenerator
from fomm.keypoint_detector import KPDetector


def convex_hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (N, 2) points (Andrew's monotone chain, shoelace formula)."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(seq):
        chain = []
        for p in seq:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = np.array(half(pts) + half(reversed(pts)))
    x, y = hull[:, 0], hull[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def movement_scale(kp_source: Motion, kp_initial: Motion) -> float:
    """adapt_movement_scale = sqrt(hull area of source keypoints / that of the initial driving frame's)."""
    source_area = convex_hull_area(kp_source["value"][0].detach().double().cpu().numpy())
    initial_area = convex_hull_area(kp_initial["value"][0].detach().double().cpu().numpy())
    if initial_area <= 0:
        return 1.0
    return float(np.sqrt(source_area) / np.sqrt(initial_area))


def check_discriminator_scales(config: Config) -> None:
    """ConfigError unless every discriminator scale is one of train_params.scales: the
    discriminator reads the perceptual loss's image pyramid."""
    pyramid = {scale_key(t) for t in config.train_params.scales}
    missing = [s for s in config.model_params.discriminator_params.scales if scale_key(s) not in pyramid]
    if missing:
        raise ConfigError(f"model_params.discriminator_params.scales {missing} are not in "
                          f"train_params.scales {list(config.train_params.scales)}: the discriminator "
                          f"reads the perceptual loss's image pyramid")


class FirstOrderModel(MotionTransferModel):
    name = "fomm"

    def __init__(self, config: Config):
        super().__init__()
        config = resolve_align_corners(config, None)  # built directly: a new model
        mp = config.model_params
        self.align_corners = mp.align_corners
        self.kp_detector = KPDetector(mp.kp_detector_params, mp.common_params)
        self.generator = OcclusionAwareGenerator(mp.generator_params, mp.common_params, mp.align_corners)
        # As the original's train.py, the discriminator trains only when generator_gan > 0;
        # without it none is built (a released checkpoint's is then ignored on load).
        self.use_gan = config.train_params.loss_weights.generator_gan > 0
        if self.use_gan:
            check_discriminator_scales(config)
            self.discriminator = MultiScaleDiscriminator(mp.discriminator_params, mp.common_params.num_channels,
                                                         mp.common_params.num_kp)

    # ------------------------------------------------------------------ inference
    def detect(self, frames: torch.Tensor) -> Motion:
        """{'value': (B, K, 2) in [-1, 1], 'jacobian': (B, K, 2, 2)} (Eq. 4)."""
        return self.kp_detector(frames)

    def generate(self, source: torch.Tensor, motion_source: Motion, motion_driving: Motion
                 ) -> dict[str, torch.Tensor]:
        """prediction, deformed, deformation (B, h, w, 2), mask, sparse_deformed, occlusion_map."""
        return self.generator(source, kp_driving=motion_driving, kp_source=motion_source)

    def transfer(self, motion_source: Motion, motion_driving: Motion, motion_initial: Motion,
                 relative: bool = True, relative_jacobian: bool = True,
                 adapt_movement_scale: bool = False, avd: bool = False) -> Motion:
        """Relative motion transfer (§3.5): p = p_S + (p_D - p_D0) * scale, J = J_D J_D0^-1 J_S.

        `scale` is sqrt of the convex hull area ratio of source and initial driving
        keypoints when `adapt_movement_scale`, else 1. Absolute motion returns p_D, J_D.
        """
        if avd:
            self.refuse_avd()
        out = dict(motion_driving)
        if not relative:
            return out
        with full_precision(motion_driving["value"]):
            return self._relative(out, motion_source, motion_driving, motion_initial,
                                  relative_jacobian, adapt_movement_scale)

    @staticmethod
    def _relative(out, motion_source, motion_driving, motion_initial, relative_jacobian, adapt_movement_scale):
        scale = movement_scale(motion_source, motion_initial) if adapt_movement_scale else 1.0
        out["value"] = (motion_driving["value"] - motion_initial["value"]) * scale + motion_source["value"]
        if relative_jacobian and "jacobian" in motion_driving:
            jacobian_diff = torch.matmul(motion_driving["jacobian"], torch.inverse(motion_initial["jacobian"]))
            out["jacobian"] = torch.matmul(jacobian_diff, motion_source["jacobian"])
        return out

    # ------------------------------------------------------------------ training
    def generator_losses(self, source: torch.Tensor, driving: torch.Tensor, kit
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Perceptual (§3.4), LSGAN + feature matching (when generator_gan > 0), equivariance (Eq. 11-12)."""
        kp_source = self.detect(source)
        kp_driving = self.detect(driving)
        generated = self.generate(source, kp_source, kp_driving)
        generated.update(kp_source=kp_source, kp_driving=kp_driving)
        weights = kit.weights
        losses: dict[str, torch.Tensor] = {}
        if sum(weights.perceptual) != 0:
            losses["perceptual"] = kit.perceptual(generated["prediction"], driving)
        if weights.reconstruction_l1:
            losses["reconstruction_l1"] = kit.reconstruction_l1(generated["prediction"], driving)
        if self.use_gan:
            kp_value = kp_driving["value"].detach()
            disc_fake = self.discriminator(kit.pyramid(generated["prediction"]), kp_value)
            disc_real = self.discriminator(kit.pyramid(driving), kp_value)
            losses["gen_gan"] = kit.gan_generator_loss(disc_fake)
            if sum(weights.feature_matching) != 0:
                losses["feature_matching"] = kit.feature_matching(disc_real, disc_fake)
        if weights.equivariance_value + weights.equivariance_jacobian != 0:
            transform = kit.random_transform(driving.shape[0], driving.device)
            transformed_frame = transform.transform_frame(driving)
            kp_transformed = self.detect(transformed_frame)
            generated.update(transformed_frame=transformed_frame, kp_transformed=kp_transformed)
            losses.update(kit.equivariance(kp_driving, kp_transformed, transform))
        return losses, generated

    def discriminator_losses(self, source: torch.Tensor, driving: torch.Tensor,
                             generated: dict[str, torch.Tensor], kit) -> dict[str, torch.Tensor]:
        """LSGAN discriminator loss on real driving frames vs detached predictions."""
        if not self.use_gan:
            return {}
        kp_value = generated["kp_driving"]["value"].detach()
        disc_fake = self.discriminator(kit.pyramid(generated["prediction"].detach()), kp_value)
        disc_real = self.discriminator(kit.pyramid(driving), kp_value)
        return {"disc_gan": kit.gan_discriminator_loss(disc_real, disc_fake)}

    # ------------------------------------------------------------------ released files
    @classmethod
    def recognises(cls, checkpoint) -> bool:
        """vox-cpk.pth.tar and its siblings: generator and kp_detector state dicts, the
        detector with FOMM's keypoint head `kp.weight` as a 4-D convolution."""
        detector = checkpoint.get("kp_detector")
        weight = detector.get("kp.weight") if isinstance(detector, dict) else None
        return isinstance(checkpoint.get("generator"), dict) and torch.is_tensor(weight) and weight.dim() == 4

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"generator": list(self.generator.parameters()),
                  "kp_detector": list(self.kp_detector.parameters())}
        if self.use_gan:
            groups["discriminator"] = list(self.discriminator.parameters())
        return groups
