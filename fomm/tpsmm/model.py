"""TPSMM (Zhao and Zhang, CVPR 2022) behind the project's model contract (fomm.api).

Sub-networks, under the released checkpoints' names and in their order: `inpainting_network`,
`dense_motion_network`, `kp_detector`, `bg_predictor` (only with `bg`) and `avd_network`.
Motion is `{'fg_kp': (B, 5K, 2)}`.

- inference: `generate` is demo.py's (dense motion without background motion, then the
  inpainting network); `reconstruct` is reconstruction.py's, with the background affine of
  the bg predictor on (source, driving); `transfer` gives the modes of demo.py: standard
  (the driving keypoints), relative (`relative_kp`: kp_source + (kp_driving - kp_initial) *
  sqrt(hull area(kp_source) / hull area(kp_initial)), the scale when adapt_movement_scale,
  which TPSMM's configs set, as demo.py always scales) and avd (the AVD network).
- training, stage "reconstruction" (train.py, GeneratorFullModel): perceptual pyramid,
  equivariance, warp and background losses; TPS dropout before `dropout_epoch`; background
  motion from `bg_start` (`set_epoch`); two Adam optimisers (betas 0.5, 0.999, weight decay
  1e-4, lr_generator), `generator` for the inpainting, dense motion and keypoint networks
  and `bg_predictor`; gradients of the keypoint detector, the dense motion network and
  (from bg_start) the bg predictor clipped to max-norm 10 (inf-norm) as train.py does.
- stage "avd" (train_avd.py): only the AVD network trains, on train_avd_params' schedule;
  the other networks are frozen but stay in training mode, as the original leaves them (its
  keypoint detector's BatchNorm normalises with batch statistics and updates its running
  statistics during this stage).

Grids: TPSMM writes align_corners=True into every grid_sample and bilinear interpolate, so
the family has that one convention whatever `model_params.align_corners` says (its configs
and translated original yamls say true).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_

from core.errors import UserError
from fomm.api import Motion, MotionTransferModel
from fomm.blocks import at_least_fp32, full_precision
from fomm.tpsmm import losses
from fomm.tpsmm.avd_network import AVDNetwork
from fomm.tpsmm.bg_motion_predictor import BGMotionPredictor
from fomm.tpsmm.config import Params
from fomm.tpsmm.dense_motion import DenseMotionNetwork
from fomm.tpsmm.inpainting import InpaintingNetwork
from fomm.tpsmm.keypoint_detector import KPDetector
from fomm.tpsmm.tps import RandomTPS
from fomm.tpsmm.transfer import relative_motion

log = logging.getLogger(__name__)

ALIGN_CORNERS = True
# train.py: Adam(betas=(0.5, 0.999), weight_decay=1e-4); clip_grad_norm_(max_norm=10, inf)
WEIGHT_DECAY = 1e-4
CLIP_MAX_NORM = 10.0
STAGES = ("reconstruction", "avd")
# What a released file must hold (demo.py loads these three) and what it may lack.
RELEASED_REQUIRED = ("inpainting_network", "dense_motion_network", "kp_detector")
RELEASED_OPTIONAL = ("bg_predictor", "avd_network")
# Rows of the training images (fomm.train.training_image shows 4).
IMAGE_ROWS = 4


def build_networks(params: Params, num_channels: int) -> dict[str, nn.Module]:
    """The five networks as demo.py / run.py construct them, in the released layout's order."""
    nets: dict[str, nn.Module] = {
        "inpainting_network": InpaintingNetwork(num_channels, multi_mask=params.multi_mask,
                                                **asdict(params.generator_params)),
        "dense_motion_network": DenseMotionNetwork(num_tps=params.num_tps, num_channels=num_channels,
                                                   bg=params.bg, multi_mask=params.multi_mask,
                                                   **asdict(params.dense_motion_params)),
        "kp_detector": KPDetector(params.num_tps, num_channels),
    }
    if params.bg:
        nets["bg_predictor"] = BGMotionPredictor(num_channels)
    nets["avd_network"] = AVDNetwork(params.num_tps, **asdict(params.avd_network_params))
    return nets


def dropout_probability(params: Params, epoch: int) -> float | None:
    """TPS dropout's p at `epoch` (GeneratorFullModel.forward), None from dropout_epoch on:
    min(epoch / dropout_inc_epoch * dropout_maxp + dropout_startp, dropout_maxp)."""
    if epoch >= params.dropout_epoch:
        return None
    return min(epoch / params.dropout_inc_epoch * params.dropout_maxp + params.dropout_startp, params.dropout_maxp)


def unused(module: nn.Module) -> torch.Tensor:
    """0 with a (zero) gradient path to every trainable parameter of `module`: a sub-network
    that sits out a step (the bg predictor before bg_start) still takes part in DDP's gradient
    all-reduce, and the loss keys stay the same every step."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return torch.zeros(())
    return sum(p.sum() for p in params) * 0.0


class TPSMM(MotionTransferModel):
    name = "tpsmm"
    stages = STAGES

    def __init__(self, config):
        super().__init__()
        mp = config.model_params
        self.params: Params = mp.tpsmm_params
        self.transform_params = config.train_params.transform_params
        self.align_corners = ALIGN_CORNERS
        if mp.align_corners is False:
            log.debug("tpsmm runs with align_corners=True, the convention written into its code; "
                      "model_params.align_corners=false does not apply to it")
        for name, module in build_networks(self.params, mp.common_params.num_channels).items():
            self.add_module(name, module)
        self.epoch = 0
        self.stage = "reconstruction"

    @property
    def has_bg(self) -> bool:
        return self.params.bg

    # ------------------------------------------------------------------ inference
    def detect(self, frames: torch.Tensor) -> Motion:
        """{'fg_kp': (B, 5K, 2)} in [-1, 1], in at least fp32 even under bf16 autocast (training on
        a GPU): the TPS solves amplify keypoint rounding (condition numbers ~20), as the
        Animator's keypoint_context keeps detection fp32 too."""
        with full_precision(frames):
            return self.kp_detector(at_least_fp32(frames))

    def keypoints(self, motion: Motion) -> torch.Tensor | None:
        return motion.get("fg_kp")

    def generate(self, source: torch.Tensor, motion_source: Motion, motion_driving: Motion,
                 bg_param: torch.Tensor | None = None, dropout_p: float | None = None) -> dict[str, Any]:
        """prediction (B, 3, H, W), deformed, deformation (B, h, w, 2), occlusion_map (the finest
        mask, (B, 1, H, W)), occlusion_maps (all four, coarse to fine), contribution_maps,
        deformed_source, warped_encoder_maps. `bg_param` (B, 3, 3): the background affine
        (None: no background motion, as demo.py); `dropout_p`: TPS dropout (training)."""
        dense = self.dense_motion_network(source_image=source, kp_driving=motion_driving, kp_source=motion_source,
                                          bg_param=bg_param, dropout_flag=dropout_p is not None,
                                          dropout_p=dropout_p or 0.0)
        out = self.inpainting_network(source, dense)
        out["occlusion_maps"] = out["occlusion_map"]
        out["occlusion_map"] = out["occlusion_maps"][-1]
        out["deformation"] = dense["deformation"]
        return out

    def background(self, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor | None:
        """The background affine (B, 3, 3) of BGMotionPredictor(source, driving), or None without one."""
        if not self.has_bg:
            return None
        with full_precision(source):  # an affine of the whole frame: fp32, as the keypoints
            return self.bg_predictor(at_least_fp32(source), at_least_fp32(driving))

    def reconstruct(self, source: torch.Tensor, driving: torch.Tensor) -> dict[str, Any]:
        """reconstruction.py: the driving keypoints and the background motion of (source, driving)."""
        return self.generate(source, self.detect(source), self.detect(driving),
                             bg_param=self.background(source, driving))

    def transfer(self, motion_source: Motion, motion_driving: Motion, motion_initial: Motion,
                 relative: bool = True, relative_jacobian: bool = True, adapt_movement_scale: bool = False,
                 avd: bool = False) -> Motion:
        """demo.py's modes: avd (the AVD network), relative (relative_kp), else standard.
        TPSMM has no jacobians: `relative_jacobian` does not apply."""
        if avd:
            with full_precision(motion_driving["fg_kp"]):
                return self.avd_network({"fg_kp": at_least_fp32(motion_source["fg_kp"])},
                                        {"fg_kp": at_least_fp32(motion_driving["fg_kp"])})
        if not relative:
            return dict(motion_driving)
        return relative_motion(motion_source, motion_driving, motion_initial, adapt_movement_scale)

    # ------------------------------------------------------------------ training
    def set_epoch(self, epoch: int) -> None:
        """The loop's epoch: TPS dropout before dropout_epoch, background motion from bg_start."""
        self.epoch = int(epoch)

    @property
    def bg_active(self) -> bool:
        return self.has_bg and self.epoch >= self.params.bg_start

    def set_stage(self, stage: str) -> None:
        if stage not in STAGES:
            raise UserError(f"tpsmm training stage {stage!r}: expected one of {list(STAGES)}")
        self.stage = stage

    @classmethod
    def stage_config(cls, config, stage: str):
        """The config the loop runs `stage` with: for "avd", train_avd_params' epochs, repeats,
        batch size, workers, checkpoint_freq and milestones. The milestones are one later than
        the yaml's: train_avd.py steps its MultiStepLR with scheduler.step(epoch) after each
        epoch, which applies a decay one epoch after the milestone."""
        if stage not in STAGES:
            raise UserError(f"tpsmm training stage {stage!r}: expected one of {list(STAGES)}")
        from dataclasses import replace
        if stage == "reconstruction":
            return replace(config, train_params=replace(config.train_params, stage=stage))
        avd = config.model_params.tpsmm_params.train_avd_params
        train = replace(config.train_params, stage=stage, num_epochs=avd.num_epochs, num_repeats=avd.num_repeats,
                        batch_size=avd.batch_size, dataloader_workers=avd.dataloader_workers,
                        checkpoint_freq=avd.checkpoint_freq,
                        epoch_milestones=tuple(m + 1 for m in avd.epoch_milestones))
        return replace(config, train_params=train)

    def generator_losses(self, source: torch.Tensor, driving: torch.Tensor, kit
                         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self.stage == "avd":
            return self.avd_losses(source, driving)
        return self.reconstruction_losses(source, driving, kit)

    def reconstruction_losses(self, source: torch.Tensor, driving: torch.Tensor, kit,
                              transform: RandomTPS | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """GeneratorFullModel.forward at the current epoch: perceptual (Eq. 9), equivariance
        (Eq. 10), warp (Eq. 11) and background (Eq. 12) losses, weighted. `transform` replaces
        the random TPS the equivariance loss draws (tests feed a stored one)."""
        params, weights = self.params, kit.weights
        kp_source, kp_driving = self.detect(source), self.detect(driving)
        bg_param = self.background(source, driving) if self.bg_active else None
        generated = self.generate(source, kp_source, kp_driving, bg_param=bg_param,
                                  dropout_p=dropout_probability(params, self.epoch))
        generated.update(kp_source=kp_source, kp_driving=kp_driving)
        out: dict[str, torch.Tensor] = {}
        if sum(weights.perceptual) != 0:
            out["perceptual"] = kit.perceptual(generated["prediction"], driving)
        if weights.equivariance_value != 0:
            tp = self.transform_params
            if transform is None:
                transform = RandomTPS(driving.shape[0], tp.sigma_affine, tp.sigma_tps, tp.points_tps,
                                      dtype=at_least_fp32(driving).dtype, device=driving.device)
            frame = losses.transformed_frame(driving, transform)
            kp_transformed = self.detect(frame.to(driving.dtype))
            generated.update(transformed_frame=frame, transformed_kp=kp_transformed)
            out["equivariance_value"] = losses.equivariance_value(weights.equivariance_value, kp_driving,
                                                                  kp_transformed, transform)
        if params.loss_weights.warp_loss != 0:
            encoded = self.inpainting_network.encode(driving, generated["occlusion_maps"])
            out["warp_loss"] = losses.warp_loss(params.loss_weights.warp_loss, encoded,
                                                generated["warped_encoder_maps"])
        if self.has_bg:
            if self.bg_active and params.loss_weights.bg != 0:
                out["bg"] = losses.bg_loss(params.loss_weights.bg, bg_param, self.background(driving, source))
            else:
                out["bg"] = unused(self.bg_predictor)
        return out, generated

    def avd_losses(self, source: torch.Tensor, driving: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]:
        """train_avd.py: the AVD network rebuilds the driving keypoints from the source's and a
        randomly rescaled copy of the driving's (the keypoints without gradients). The
        generated outputs, for the training images only, are the first IMAGE_ROWS sources
        driven by the AVD's keypoints (train_avd.py draws its epoch images the same way)."""
        avd = self.params.train_avd_params
        with torch.no_grad():
            kp_source, kp_driving = self.detect(source), self.detect(driving)
            kp_random = losses.random_scale(kp_driving, avd.random_scale)
        reconstructed = self.avd_network(kp_source, kp_random)
        loss = losses.avd_reconstruction(avd.lambda_shift, kp_driving, reconstructed)
        rows = slice(0, IMAGE_ROWS)
        with torch.no_grad():
            shown = {"fg_kp": reconstructed["fg_kp"][rows].detach()}
            generated = self.generate(source[rows], {"fg_kp": kp_source["fg_kp"][rows]}, shown)
        generated.update(kp_source=kp_source, kp_driving=shown)
        return {"rec_kp": loss}, generated

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        if self.stage == "avd":
            return {"avd": list(self.avd_network.parameters())}
        groups = {"generator": [*self.inpainting_network.parameters(), *self.dense_motion_network.parameters(),
                                *self.kp_detector.parameters()]}
        if self.has_bg:
            groups["bg_predictor"] = list(self.bg_predictor.parameters())
        return groups

    def optimizer_lr(self, group: str, train_params) -> float:
        """lr_generator for both reconstruction optimisers (train.py), train_avd_params.lr for avd."""
        if group == "avd":
            return self.params.train_avd_params.lr
        return train_params.lr_generator

    def optimizer_weight_decay(self, group: str, train_params) -> float:
        """train.py's Adam weight decay (1e-4) for the reconstruction stage; train_avd.py's Adam has none."""
        return 0.0 if group == "avd" else WEIGHT_DECAY

    def clip_gradients(self) -> None:
        """train.py: inf-norm clipping at 10 of the keypoint detector's and dense motion
        network's gradients, and the bg predictor's from bg_start (not the inpainting network's).
        Before bg_start the bg predictor's (zero) gradients are dropped, so its optimiser
        leaves it untouched (Adam skips parameters without gradients), as in train.py, where
        it is not stepped."""
        if self.stage == "avd":
            return
        clip_grad_norm_(self.kp_detector.parameters(), max_norm=CLIP_MAX_NORM, norm_type=math.inf)
        clip_grad_norm_(self.dense_motion_network.parameters(), max_norm=CLIP_MAX_NORM, norm_type=math.inf)
        if self.bg_active:
            clip_grad_norm_(self.bg_predictor.parameters(), max_norm=CLIP_MAX_NORM, norm_type=math.inf)
        elif self.has_bg:
            for param in self.bg_predictor.parameters():
                param.grad = None

    # ------------------------------------------------------------------ ONNX (fomm/export.py)
    def write_onnx(self, staging, frames) -> dict[str, float]:
        """fomm/tpsmm/onnx.py's three graphs in `staging` and their parity, for `pipeline run export`."""
        import copy

        from fomm.export import _export
        from fomm.tpsmm import onnx
        onnx.export_graphs(self, staging, frames, _export)
        return onnx.check_parity(staging, copy.deepcopy(self), frames)

    @classmethod
    def onnx_runner(cls, folder, threads=None):
        """The onnxruntime runner of a TPSMM export folder (`animate --backend onnxruntime`)."""
        from fomm.tpsmm.onnx import OnnxTPSMM
        return OnnxTPSMM(folder, threads)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def recognises(cls, checkpoint) -> bool:
        """A released TPSMM file: the state dicts of its three inference networks at the top
        level (demo.py loads exactly these), the detector a ResNet (`fg_encoder`), beside
        optimiser states and the epoch."""
        detector = checkpoint.get("kp_detector")
        return (all(isinstance(checkpoint.get(name), dict) for name in RELEASED_REQUIRED)
                and torch.is_tensor(detector.get("fg_encoder.fc.weight")))

    def state_from_checkpoint(self, checkpoint: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """The sub-network state dicts of a released file ({inpainting_network, dense_motion_network,
        kp_detector, bg_predictor, avd_network, optimizer..., epoch}) or a project checkpoint;
        optimiser states and the epoch are not model weights and are left out.

        Files of the original's train.py have no `avd_network` (train_avd.py adds it) and,
        before bg_start, no `bg_predictor`; logger.py's load_cpk skips what is absent, so those
        networks keep their initialisation here too (named in the log)."""
        from fomm.checkpoint import model_state
        children = dict(self.named_children())
        state = {name: sd for name, sd in model_state(checkpoint).items() if name in children}
        for name in RELEASED_OPTIONAL:
            if name in children and name not in state:
                log.info("checkpoint has no %s: it keeps its initialisation (as the original's load_cpk)", name)
                state[name] = children[name].state_dict()
        return state
