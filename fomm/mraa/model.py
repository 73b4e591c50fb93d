"""MRAA (Siarohin, Woodford, Ren, Chai and Tulyakov, "Motion Representations for Articulated
Animation", CVPR 2021) behind the project's model contract, re-implemented to the maths and
parameter layout of the authors' code (github.com/snap-research/articulated-animation, commit
03f1968: modules/*.py, train.py, train_avd.py, reconstruction.py, animate.py, run.py).

- Motion (`detect`) is a frame's region parameters: shift (B, K, 2), covar and affine
  (B, K, 2, 2), heatmap (B, K, h, w) (fomm/mraa/region_predictor.py).
- `generate` renders the source with the regions' motion and no background motion, as
  animate.py and demo.py; `reconstruct` adds the background motion predicted from source and
  driving, as reconstruction.py (the paper's protocol).
- `transfer` is animate.py's get_animation_region_params: standard (the driving regions),
  relative (shift p_S + (p_D - p_D0) sqrt(area_S / area_D0), the areas of the convex hulls of
  the source's and the initial driving frame's shifts, always, as the original; affine
  A_D A_D0^-1 A_S) and avd (the AVD network's source shape in the driving pose).
- Training, reconstruction stage (train.py, model.py): one Adam (betas 0.5, 0.999, lr
  `train_params.lr_generator`) over the generator, region and background predictors; the
  perceptual pyramid loss (fomm/losses.py: the same maths) and equivariance on the shifts and
  the affines (with the revert_axis_swap sign); no GAN. AVD stage (train_avd.py): Adam on the
  AVD network alone, the regions of source and driving from the frozen region predictor (in
  training mode, as the original, which never switches it to eval), the driving's randomly
  rescaled, L1 on shift and affine.
- Checkpoints have the released layout: `generator`, `bg_predictor`, `region_predictor`, and
  `avd_network` once it is trained or loaded (a reconstruction-stage checkpoint, released or
  ours, has none; `--mode avd` then refuses rather than animate with a random network). The
  loop saves the optimiser as `optimizer_reconstruction` / `optimizer_avd`, the released names.

Grid convention: MRAA calls grid_sample and bilinear interpolate without align_corners, on
torch 1.4, so always False; `model_params.align_corners` is not read (the released models
were trained so, unlike FOMM's). Region parameters, their inverses and every coordinate stay
float32 at least under bf16 autocast.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from core.config import replace
from core.errors import UserError
from fomm.api import Motion, MotionTransferModel
from fomm.blocks import at_least_fp32, full_precision, inverse_2x2
from fomm.mraa.avd_network import AVDNetwork
from fomm.mraa.bg_motion_predictor import BGMotionPredictor
from fomm.mraa.config import SECTION
from fomm.mraa.generator import Generator
from fomm.mraa.pixelwise_flow_predictor import ALIGN_CORNERS
from fomm.mraa.region_predictor import RegionPredictor
from fomm.mraa.transfer import relative_motion

log = logging.getLogger(__name__)

# Region parameters the generator and the AVD network read (the SVD's u and d are not motion).
MOTION_KEYS = ("shift", "covar", "affine", "heatmap")
# Rows of the training image (fomm/train.py training_image) the AVD stage renders a prediction for.
AVD_IMAGE_ROWS = 4


def random_scale(region_params: Motion, scale: float) -> Motion:
    """train_avd.py's augmentation: shift and affine multiplied by diag(t_x, t_y), t uniform in
    [1 - scale, 1 + scale] per sample and axis (torch's global generator, on the CPU)."""
    shift = region_params["shift"]
    theta = torch.rand(shift.shape[0], 2) * (2 * scale) + (1 - scale)
    theta = torch.diag_embed(theta).unsqueeze(1).to(shift.device, shift.dtype)  # (B, 1, 2, 2)
    return {"shift": (theta @ shift.unsqueeze(-1)).squeeze(-1), "affine": theta @ region_params["affine"]}


class MRAA(MotionTransferModel):
    name = "mraa"
    stages = ("reconstruction", "avd")

    def __init__(self, config):
        super().__init__()
        model = config.model_params
        params, common = getattr(model, SECTION), model.common_params
        regions, channels = common.num_kp, common.num_channels
        flow = params.generator_params.pixelwise_flow_predictor_params
        region = params.region_predictor_params
        has_covar = region.pca_based or params.estimate_affine
        if flow is not None and flow.use_covar_heatmap and not has_covar:
            raise UserError("model_params.mraa_params: use_covar_heatmap needs region covariances; expected "
                            "region_predictor_params.pca_based or estimate_affine true")
        self.align_corners = ALIGN_CORNERS
        self.region_predictor = RegionPredictor(region, regions, channels, params.estimate_affine)
        self.generator = Generator(params.generator_params, regions, channels, params.revert_axis_swap)
        self.bg_predictor = BGMotionPredictor(params.bg_predictor_params, channels)
        self.avd_network = AVDNetwork(params.avd_network_params, regions)
        self.revert_axis_swap = params.revert_axis_swap
        self.has_affine = has_covar
        self.train_avd = params.train_avd_params
        self.stage = "reconstruction"
        # "random" (built here), "absent" (loaded from a checkpoint without one), "loaded", "trained".
        self.avd_weights = "random"

    # ------------------------------------------------------------------ inference
    def detect(self, frames: torch.Tensor) -> Motion:
        """Region parameters of `frames` (B, 3, H, W): shift, covar, affine, heatmap (Sec. 3.1)."""
        regions = self.region_predictor(frames)
        return {key: regions[key] for key in MOTION_KEYS if key in regions}

    def keypoints(self, motion: Motion) -> torch.Tensor:
        return motion["shift"]

    def generate(self, source: torch.Tensor, motion_source: Motion, motion_driving: Motion
                 ) -> dict[str, torch.Tensor]:
        """prediction, deformed, optical_flow / deformation (B, h, w, 2), occlusion_map, mask,
        sparse_deformed; no background motion (animate.py)."""
        return self.generator(source, driving_region_params=motion_driving, source_region_params=motion_source)

    def reconstruct(self, source: torch.Tensor, driving: torch.Tensor) -> dict[str, torch.Tensor]:
        """reconstruction.py: the driving frame's regions and the background motion predicted
        from source and driving."""
        bg_params = self.bg_predictor(source, driving)
        return self.generator(source, driving_region_params=self.detect(driving),
                              source_region_params=self.detect(source), bg_params=bg_params)

    def transfer(self, motion_source: Motion, motion_driving: Motion, motion_initial: Motion,
                 relative: bool = True, relative_jacobian: bool = True,
                 adapt_movement_scale: bool = False, avd: bool = False) -> Motion:
        """animate.py's modes: standard, relative, avd (see the module docstring). The relative
        mode always adapts the movement scale and the affines, as the original: the
        relative_jacobian and adapt_movement_scale options have no effect here."""
        if avd:
            return self.animate_avd(motion_source, motion_driving)
        if not relative:
            return dict(motion_driving)
        return relative_motion(motion_source, motion_driving, motion_initial)

    def animate_avd(self, motion_source: Motion, motion_driving: Motion) -> Motion:
        """The AVD network's region parameters: the source's shape in the driving frame's pose."""
        if self.avd_weights == "absent":
            raise UserError("--mode avd: this MRAA checkpoint has no avd_network (a reconstruction-stage checkpoint); "
                            "train one with `pipeline run train --stage avd --checkpoint K`, or use --mode "
                            "relative or standard")
        if not self.has_affine:
            raise UserError("--mode avd needs region affines; expected region_predictor_params.pca_based or "
                            "estimate_affine true")
        return self.avd_network(motion_source, motion_driving)

    # ------------------------------------------------------------------ training
    def generator_losses(self, source: torch.Tensor, driving: torch.Tensor, kit
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self.stage == "avd":
            return self.avd_losses(source, driving)
        return self.reconstruction_losses(source, driving, kit)

    def reconstruction_losses(self, source, driving, kit):
        """modules/model.py ReconstructionModel: perceptual pyramid (Sec. 3.5), equivariance of
        the shifts |p_D - T(p_T)| and of the affines |I - A_D^-1 J_T(p_T) A_T| (the product
        multiplied by the sign of its top-left entry with revert_axis_swap), T a random TPS warp."""
        source_params = self.region_predictor(source)
        driving_params = self.region_predictor(driving)
        bg_params = self.bg_predictor(source, driving)
        generated = self.generator(source, driving_region_params=driving_params,
                                   source_region_params=source_params, bg_params=bg_params)
        generated.update(kp_source=source_params, kp_driving=driving_params)
        weights = kit.weights
        losses: dict[str, torch.Tensor] = {}
        if sum(weights.perceptual) != 0:
            losses["perceptual"] = kit.perceptual(generated["prediction"], driving)
        if weights.equivariance_value + weights.equivariance_jacobian != 0:
            transform = kit.random_transform(driving.shape[0], driving.device)
            transformed_frame = transform.transform_frame(driving)
            transformed = self.region_predictor(transformed_frame)
            generated.update(transformed_frame=transformed_frame, kp_transformed=transformed)
            if weights.equivariance_value:
                shifts = kit.equivariance({"value": driving_params["shift"]}, {"value": transformed["shift"]},
                                          transform)
                losses["equivariance_shift"] = shifts["equivariance_value"]
            if weights.equivariance_jacobian:
                losses["equivariance_affine"] = weights.equivariance_jacobian * self.equivariance_affine(
                    driving_params["affine"], transformed, transform)
        return losses, generated

    def equivariance_affine(self, driving_affine: torch.Tensor, transformed: Motion, transform) -> torch.Tensor:
        """mean |I - A_D^-1 (J_T(p_T) A_T)|, the product times sign of its [0, 0] entry with revert_axis_swap."""
        with full_precision(driving_affine):
            jacobian = transform.jacobian(transformed["shift"])  # (B, K, 2, 2)
            product = inverse_2x2(at_least_fp32(driving_affine)) @ (jacobian @ at_least_fp32(transformed["affine"]))
            if self.revert_axis_swap:
                product = product * torch.sign(product[:, :, 0:1, 0:1])
            eye = torch.eye(2, dtype=product.dtype, device=product.device).view(1, 1, 2, 2)
            return (eye - product).abs().mean()

    def avd_losses(self, source, driving):
        """train_avd.py: the AVD network reconstructs the driving frame's regions from the
        source's (identity) and the driving's randomly rescaled (pose):
        lambda_shift |p - p_hat| + lambda_affine |A - A_hat| (means)."""
        settings = self.train_avd
        with torch.no_grad():
            identity = self.region_predictor(source)
            pose = self.region_predictor(driving)
            scaled = random_scale(pose, settings.random_scale)
        rec = self.avd_network(identity, scaled)
        losses = {"rec_shift": settings.lambda_shift * (pose["shift"] - rec["shift"]).abs().mean(),
                  "rec_affine": settings.lambda_affine * (pose["affine"] - rec["affine"]).abs().mean()}
        # The training image's rows: the source moved by the reconstructed regions, with the
        # generator in eval mode so that its BatchNorm statistics stay the reconstruction run's.
        rows = min(AVD_IMAGE_ROWS, source.shape[0])
        part = lambda params: {k: v[:rows].detach() for k, v in params.items() if k in MOTION_KEYS}  # noqa: E731
        training = self.generator.training
        with torch.no_grad():
            self.generator.eval()
            generated = self.generator(source[:rows], driving_region_params=part(rec),
                                       source_region_params=part(identity))
            self.generator.train(training)
        generated.update(kp_source=identity, kp_driving=rec)
        return losses, generated

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """One Adam per stage, as train.py and train_avd.py (`optimizer_reconstruction`, `optimizer_avd`)."""
        if self.stage == "avd":
            return {"avd": list(self.avd_network.parameters())}
        return {"reconstruction": list(self.generator.parameters()) + list(self.region_predictor.parameters())
                + list(self.bg_predictor.parameters())}

    def optimizer_lr(self, group: str, train_params: Any) -> float:
        """Both stages' one learning rate: train_params.lr_generator (the original's `lr`; in the
        AVD stage train_avd_params.lr, put there by stage_config)."""
        if group not in ("reconstruction", "avd"):
            return super().optimizer_lr(group, train_params)
        return train_params.lr_generator

    # ------------------------------------------------------------------ stages
    @classmethod
    def stage_config(cls, config, stage: str):
        """The AVD stage trains with train_avd_params: epochs, repeats, batch, workers, lr,
        checkpoint_freq, and the milestones one epoch later than written, as train_avd.py's
        `scheduler.step(epoch)` decays them; no perceptual or equivariance loss."""
        config = super().stage_config(config, stage)
        train = config.train_params
        if stage == "avd":
            avd = getattr(config.model_params, SECTION).train_avd_params
            train = replace(train, num_epochs=avd.num_epochs, num_repeats=avd.num_repeats,
                            batch_size=avd.batch_size, dataloader_workers=avd.dataloader_workers,
                            checkpoint_freq=avd.checkpoint_freq, lr_generator=avd.lr,
                            epoch_milestones=tuple(m + 1 for m in avd.epoch_milestones),
                            loss_weights=replace(train.loss_weights, perceptual=(0.0,) * len(train.loss_weights.perceptual),
                                                 equivariance_value=0.0, equivariance_jacobian=0.0))
        return replace(config, train_params=replace(train, stage=stage))

    def set_stage(self, stage: str) -> None:
        super().set_stage(stage)
        self.stage = stage
        if stage == "avd":
            self.avd_weights = "trained"

    # ------------------------------------------------------------------ ONNX (fomm/export.py)
    def write_onnx(self, staging, frames) -> dict[str, float]:
        """fomm/mraa/export.py's graphs in `staging` and their parity, for `pipeline run export`."""
        from fomm.mraa.export import write_graphs
        return write_graphs(self, staging, frames)

    @classmethod
    def onnx_runner(cls, folder, threads=None):
        """The onnxruntime runner of an MRAA export folder (`animate --backend onnxruntime`)."""
        from fomm.mraa.export import OnnxMraa
        return OnnxMraa(folder, threads)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, dict[str, torch.Tensor]]:
        state = {"generator": self.generator.state_dict(), "bg_predictor": self.bg_predictor.state_dict(),
                 "region_predictor": self.region_predictor.state_dict()}
        if self.avd_weights in ("loaded", "trained"):
            state["avd_network"] = self.avd_network.state_dict()
        return state

    @classmethod
    def recognises(cls, checkpoint: Mapping[str, Any]) -> bool:
        """A released MRAA file (vox256.pth, taichi256.pth, ted384.pth, ...): generator and
        region_predictor state dicts."""
        return isinstance(checkpoint.get("generator"), dict) and isinstance(checkpoint.get("region_predictor"), dict)

    def state_from_checkpoint(self, checkpoint: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """The sub-networks of a released or project checkpoint. Optimizer states and the
        epoch entries are not weights; an empty state dict (mgif's bg_predictor with bg_type
        'zero') is kept where this config's sub-network has no tensors either; without an
        avd_network the model keeps its own and refuses --mode avd."""
        from fomm.checkpoint import model_state
        state = model_state(checkpoint)
        for name, child in self.named_children():
            if name not in state and not child.state_dict() and isinstance(checkpoint.get(name), dict):
                state[name] = {}
        if checkpoint.get("bg_predictor") == {} and self.bg_predictor.state_dict():
            raise UserError(f"the checkpoint's bg_predictor is empty (bg_type 'zero', as mgif256's) but this config "
                            f"has bg_type {self.bg_predictor.bg_type!r}; expected its own config "
                            f"(configs/mraa-mgif-256.yaml for mgif256.pth)")
        self.avd_weights = "loaded" if "avd_network" in state else "absent"
        if "avd_network" not in state:
            state["avd_network"] = self.avd_network.state_dict()
        return state

    def load_checkpoint_state(self, state: dict[str, Any], strict: bool = True) -> None:
        from fomm.checkpoint import load_state_dicts
        load_state_dicts(self, self.state_from_checkpoint(state), strict)
