"""The run config: core/config.py's shared sections, FOMM's model sections, and one section per
model family in the registry (fomm/families.py), as one typed, frozen tree.

`model_params` holds what every family reads (`name`, `align_corners`, `common_params`:
keypoints and channels), FOMM's own sections in the original first-order-model layout
(`kp_detector_params`, `generator_params`, `discriminator_params`), and each other family's
section under its own key (`monkey_net_params`, `x2face_params`, ...), defined in that
family's package (fomm/<pkg>/config.py). A family's `translate` maps its original
repository's yaml layout onto this tree, so those files load unchanged.

    from fomm.config import load_config
    cfg = load_config("configs/vox-256.yaml", ["train_params.batch_size=8"])
    cfg.model_params.kp_detector_params.num_blocks   # 5
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from core.config import (AnimateParams, DatasetParams, ReconstructionParams, Schema, TrainParams,
                         VisualizerParams, build_config, read_config)
from fomm.families import FAMILIES, NAMES


# --------------------------------------------------------------------------- FOMM's sections
@dataclass(frozen=True)
class CommonParams:
    num_kp: int = 10
    num_channels: int = 3
    estimate_jacobian: bool = True


@dataclass(frozen=True)
class KpDetectorParams:
    temperature: float = 0.1
    block_expansion: int = 32
    max_features: int = 1024
    scale_factor: float = 0.25
    num_blocks: int = 5
    single_jacobian_map: bool = False
    pad: int = 0


@dataclass(frozen=True)
class DenseMotionParams:
    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    scale_factor: float = 0.25
    kp_variance: float = 0.01


@dataclass(frozen=True)
class GeneratorParams:
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    num_bottleneck_blocks: int = 6
    estimate_occlusion_map: bool = True
    dense_motion_params: DenseMotionParams = DenseMotionParams()


@dataclass(frozen=True)
class DiscriminatorParams:
    scales: tuple[float, ...] = (1.0,)
    block_expansion: int = 32
    max_features: int = 512
    num_blocks: int = 4
    sn: bool = False
    use_kp: bool = False
    kp_variance: float = 0.01


# --------------------------------------------------------------------------- the tree
def _family_configs() -> dict[str, object]:
    """family name -> its config module (SECTION, Params, optional translate / MINIMUMS)."""
    return {name: importlib.import_module(family.config) for name, family in FAMILIES.items() if family.config}


_FAMILY_CONFIGS = _family_configs()

# The grid-sampling convention, for every grid_sample/interpolate in every family. None (the
# default) decides by where the weights come from (core.config.resolve_align_corners): True
# for a released checkpoint (trained on torch 0.2-1.0, when grid_sample behaved as
# align_corners=True), False for a new training run (torch's current default; the golden
# files use it). An explicit true/false, in a yaml or as an override, wins. A family whose
# authors fixed the convention in their code (TPSMM) documents how it reads this.
ModelParams = dataclasses.make_dataclass(
    "ModelParams",
    [("name", Literal[NAMES], dataclasses.field(default="fomm")),
     ("align_corners", Optional[bool], dataclasses.field(default=None)),
     ("common_params", CommonParams, dataclasses.field(default=CommonParams())),
     ("kp_detector_params", KpDetectorParams, dataclasses.field(default=KpDetectorParams())),
     ("generator_params", GeneratorParams, dataclasses.field(default=GeneratorParams())),
     ("discriminator_params", DiscriminatorParams, dataclasses.field(default=DiscriminatorParams()))]
    + [(module.SECTION, module.Params, dataclasses.field(default=module.Params()))
       for module in _FAMILY_CONFIGS.values()],
    frozen=True)
ModelParams.__module__ = __name__  # pickles and prints as fomm.config.ModelParams
ModelParams.__doc__ = ("Which family a run builds (`name`), the grid convention, the shared common_params, "
                       "FOMM's sections and one section per family (fomm/families.py).")


@dataclass(frozen=True)
class Config:
    dataset_params: DatasetParams = DatasetParams()
    model_params: ModelParams = ModelParams()
    train_params: TrainParams = TrainParams()
    reconstruction_params: ReconstructionParams = ReconstructionParams()
    animate_params: AnimateParams = AnimateParams()
    visualizer_params: VisualizerParams = VisualizerParams()


SCHEMA = Schema(
    Config,
    translations=tuple(module.translate for module in _FAMILY_CONFIGS.values() if hasattr(module, "translate")),
    minimums=(("model_params.common_params.num_kp", 1), ("model_params.common_params.num_channels", 1))
    + tuple(item for module in _FAMILY_CONFIGS.values() for item in getattr(module, "MINIMUMS", ())))


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = (), recorded: bool = False) -> Config:
    """The Config of a plain tree (a yaml's, or a checkpoint's resolved config) and overrides
    (core.config.build_config: translations, overrides, types, counts)."""
    return build_config(SCHEMA, data, overrides, recorded)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a yaml config (ours, or an original repository's of any family) and apply overrides."""
    return read_config(SCHEMA, path, overrides)
