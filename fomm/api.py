"""The contract between a model family (FOMM, Monkey-Net, X2Face) and everything that
uses it: the training loop, `reconstruct`, `animate` and `benchmark`.

A model is an `nn.Module` holding its sub-networks under the names its checkpoints use
(`kp_detector`, `generator`, `discriminator` for FOMM and Monkey-Net). "Motion" is
whatever the model extracts from a frame to drive the generator: for FOMM the keypoints
and jacobians (`{'value': (B, K, 2), 'jacobian': (B, K, 2, 2)}`), for Monkey-Net the
keypoint means and covariances, for X2Face the driving frame itself.

Images are float tensors (B, 3, H, W) in [0, 1]. Models never move themselves to a
device: the caller places modules and tensors.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from core.errors import UserError

Motion = dict[str, torch.Tensor]

#: The largest side of a per-keypoint parameter (`parameter_entries`): (2,), (2, 2), (1, 1) and
#: (3, 3) are parameters; anything wider is a map (a heatmap, a frame).
MAX_PARAMETER_SIDE = 4


def parameter_entries(motion: Motion) -> tuple[str, ...]:
    """The keys of float tensors (B, K, ...) whose every axis after K is at most
    MAX_PARAMETER_SIDE long: parameters per keypoint or region, not dense maps."""
    return tuple(key for key, value in motion.items()
                 if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 2
                 and all(side <= MAX_PARAMETER_SIDE for side in value.shape[2:]))


class MotionTransferModel(nn.Module, ABC):
    #: The `model_params.name` that builds this family.
    name: ClassVar[str]
    #: The training stages the family has, in order (`train_params.stage`, `train --stage`):
    #: every family reconstructs; MRAA and TPSMM also train an AVD network from a finished run.
    stages: ClassVar[tuple[str, ...]] = ("reconstruction",)
    #: Sub-networks that estimate motion inside `generate` and so stay float on the int8 path
    #: (core/quantize.py; motion detection in `detect` and `transfer` stays float anyway).
    float_modules: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ inference
    @abstractmethod
    def detect(self, frames: torch.Tensor) -> Motion:
        """Motion descriptors of `frames` (B, 3, H, W)."""

    @abstractmethod
    def generate(self, source: torch.Tensor, motion_source: Motion, motion_driving: Motion
                 ) -> dict[str, torch.Tensor]:
        """Render `source` moved as `motion_driving` says; must hold 'prediction' (B, 3, H, W)."""

    def transfer(self, motion_source: Motion, motion_driving: Motion, motion_initial: Motion,
                 relative: bool = True, relative_jacobian: bool = True,
                 adapt_movement_scale: bool = False, avd: bool = False) -> Motion:
        """Motion to give the generator when animating `source` with a driving video.

        The originals' animation modes: relative (the default) applies the driving frame's
        displacement from the driving video's initial frame to the source's motion;
        standard (`relative=False`) returns `motion_driving` as it is; `avd` asks the
        family's animation-via-disentanglement network (MRAA, TPSMM) for the source's shape
        in the driving frame's pose. Families override this with their own rule.
        """
        if avd:
            self.refuse_avd()
        return motion_driving

    def refuse_avd(self) -> None:
        """The UserError for `--mode avd` on a family without an AVD network."""
        raise UserError(f"--mode avd: {self.name} has no AVD network; expected --mode standard or relative")

    def keypoints(self, motion: Motion) -> torch.Tensor | None:
        """(B, K, 2) keypoints in [-1, 1] (x, y) for drawing, or None if the family has none."""
        return motion.get("value")

    def smoothable(self, motion: Motion) -> tuple[str, ...]:
        """The entries of a motion dict (B, ...) that `animate --smooth` may filter over time
        (fomm/smoothing.py): float tensors of shape (B, K, ...) whose every axis after K is at
        most MAX_PARAMETER_SIDE long, i.e. parameters per keypoint or region (FOMM's value and
        jacobian, Monkey-Net's value and var, MRAA's shift, covar and affine, TPSMM's fg_kp),
        never a dense map (X2Face's driving frame, MRAA's heatmap). Families override this
        when a parameter must not be smoothed."""
        return parameter_entries(motion)

    # ------------------------------------------------------------------ training
    @abstractmethod
    def generator_losses(self, source: torch.Tensor, driving: torch.Tensor, kit: Any
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Weighted scalar losses to minimise for the generator side (summed by the loop),
        and the generated outputs (at least 'prediction'). `kit` is a `fomm.losses.LossKit`."""

    def discriminator_losses(self, source: torch.Tensor, driving: torch.Tensor,
                             generated: dict[str, torch.Tensor], kit: Any
                             ) -> dict[str, torch.Tensor]:
        """Weighted scalar losses for the discriminator step; {} when the family or the
        config (generator_gan == 0) trains none."""
        return {}

    @abstractmethod
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per optimiser, for the current stage. The discriminator group is
        stepped after `discriminator_losses`, every other group after `generator_losses`."""

    def optimizer_lr(self, group: str, train_params: Any) -> float:
        """The learning rate of optimiser `group`: `train_params.lr_<group>` (generator,
        kp_detector, discriminator). Families whose original trains other groups map them."""
        lr = getattr(train_params, f"lr_{group}", None)
        if lr is None:
            raise UserError(f"model group {group!r} has no train_params.lr_{group}; expected generator, "
                            "kp_detector or discriminator")
        return lr

    def optimizer_weight_decay(self, group: str, train_params: Any) -> float:
        """The weight decay of optimiser `group` (0: none, as FOMM; TPSMM's train.py uses 1e-4)."""
        return 0.0

    def clip_gradients(self) -> None:
        """Called by the loop after the generator-side backward, before the optimisers step:
        where the original clips gradients (TPSMM), the family does it here."""

    def set_epoch(self, epoch: int) -> None:
        """Called by the loop at the start of every epoch (0-based; a resumed run too), for
        behaviour that depends on it (TPSMM's keypoint dropout, background motion from
        `bg_start`). The default keeps none."""

    # ------------------------------------------------------------------ stages
    @classmethod
    def stage_config(cls, config: Any, stage: str) -> Any:
        """The config the loop runs `stage` with (`train_params` for that stage, and
        `train_params.stage` set to it). UserError for a stage the family does not have."""
        if stage not in cls.stages:
            raise UserError(f"--stage {stage!r}: {cls.name} trains {list(cls.stages)}")
        return config

    def set_stage(self, stage: str) -> None:
        """Switch `generator_losses` and `optimizer_groups` to `stage`'s (the loop calls this
        after building or loading the model). Families with one stage need nothing."""
        if stage not in self.stages:
            raise UserError(f"--stage {stage!r}: {self.name} trains {list(self.stages)}")

    # ------------------------------------------------------------------ released files
    @classmethod
    def recognises(cls, checkpoint: Mapping[str, Any]) -> bool:
        """Whether a checkpoint dict WITHOUT the project's config (a released file) is this
        family's, by its layout; lets `--checkpoint` load a released file with no --config
        (fomm.checkpoint.released_family). Families with released files override it."""
        return False

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """State dicts per sub-network, in the layout the original checkpoints use."""
        return {name: module.state_dict() for name, module in self.named_children()}

    def state_from_checkpoint(self, checkpoint: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Per-sub-network state dicts, named as `checkpoint_state()` names them, from a loaded
        checkpoint dict: the project's format or the family's original release format.

        The default reads the project's and FOMM's released layout; a family whose authors
        released files in another layout (X2Face's `{'state_dict': ...}`, Monkey-Net's 5-D
        convolution weights) overrides this to convert them. Tensors are returned as the
        family's modules expect them; `fomm.checkpoint.load_model` then checks names and shapes.
        """
        from fomm.checkpoint import model_state
        return model_state(checkpoint)

    def load_checkpoint_state(self, state: dict[str, Any], strict: bool = True) -> None:
        """Load `checkpoint_state()`-shaped dicts (a released checkpoint for FOMM): every
        sub-network must be there; UserError names the first missing/unexpected tensor or
        shape mismatch (fomm.checkpoint.load_state_dicts, the same check `load_model` makes)."""
        from fomm.checkpoint import load_state_dicts
        load_state_dicts(self, state, strict)

    # ------------------------------------------------------------------ convenience
    def reconstruct(self, source: torch.Tensor, driving: torch.Tensor) -> dict[str, torch.Tensor]:
        """The paper's reconstruction protocol for one batch: absolute motion of `driving`."""
        return self.generate(source, self.detect(source), self.detect(driving))
