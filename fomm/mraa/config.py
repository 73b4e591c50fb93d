"""MRAA's section of the run config, `model_params.mraa_params`, and the translation of the
original repository's yaml files (config/vox256.yaml, taichi256.yaml, ted384.yaml,
ted-youtube384.yaml, mgif256.yaml of github.com/snap-research/articulated-animation) onto the
project's tree.

The number of regions and of channels are the shared `model_params.common_params` (`num_kp`,
`num_channels`). Defaults are the original constructors' where they have one, and vox256.yaml's
where the original requires the value. The original's single `train_params.lr` is
`train_params.lr_generator` (one Adam over the generator, region and background predictors, as
train.py), and its loss weights `equivariance_shift` / `equivariance_affine` are the shared
`equivariance_value` / `equivariance_jacobian`. The AVD stage's settings (train_avd.py's
`train_avd_params`) live here, in `train_avd_params`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Optional

from core.config import ConfigError

log = logging.getLogger(__name__)

SECTION = "mraa_params"


@dataclass(frozen=True)
class RegionPredictorParams:
    """modules/region_predictor.py RegionPredictor: an hourglass, a 7x7 conv to one heat map per
    region, softmax with `temperature`; each region's shift and covariance are the heat map's
    moments, its affine the covariance's square root by SVD (`pca_based`) or, with
    `estimate_affine` and not `pca_based`, regressed as FOMM's jacobians. `pad` is the 7x7 conv's
    padding (vox256.yaml leaves the default 3, the other configs set 0)."""
    temperature: float = 0.1
    block_expansion: int = 32
    max_features: int = 1024
    # The frame is blurred and subsampled by this before the hourglass (1: not at all).
    scale_factor: float = 1.0
    num_blocks: int = 5
    pca_based: bool = False
    # torch-batch-svd's batched CUDA SVD: refused (fomm/mraa/region_predictor.py says why).
    fast_svd: bool = False
    pad: int = 3


@dataclass(frozen=True)
class BgPredictorParams:
    """modules/bg_motion_predictor.py BGMotionPredictor: an encoder on source and driving
    stacked, pooled, and a linear layer to the background's 3x3 transformation."""
    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    bg_type: Literal["zero", "shift", "affine", "perspective"] = "zero"


@dataclass(frozen=True)
class PixelwiseFlowPredictorParams:
    """modules/pixelwise_flow_predictor.py PixelwiseFlowPredictor (paper Sec. 3.2): region
    Gaussians (their covariances with `use_covar_heatmap`, else the isotropic `region_var`) and
    the source deformed by each region's affine motion, an hourglass, a softmax over K + 1
    masks (the background first) and an occlusion map."""
    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    scale_factor: float = 1.0
    use_deformed_source: bool = True
    use_covar_heatmap: bool = False
    estimate_occlusion_map: bool = False
    region_var: float = 0.01


@dataclass(frozen=True)
class GeneratorParams:
    """modules/generator.py Generator: Johnson's encoder-bottleneck-decoder; with `skips`,
    every skip is warped by the optical flow and blended with the decoder's features by the
    occlusion map. Without a flow predictor (null) nothing is warped, as the original."""
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    num_bottleneck_blocks: int = 6
    skips: bool = False
    pixelwise_flow_predictor_params: Optional[PixelwiseFlowPredictorParams] = PixelwiseFlowPredictorParams()


@dataclass(frozen=True)
class AvdNetworkParams:
    """modules/avd_network.py AVDNetwork (paper Sec. 3.4): MLP encoders of identity and pose
    (shift and affine of every region) and a decoder back to region parameters. run.py does
    not pass model_params.revert_axis_swap to it: its own default (True) holds."""
    id_bottle_size: int = 64
    pose_bottle_size: int = 64
    revert_axis_swap: bool = True


@dataclass(frozen=True)
class TrainAvdParams:
    """train_avd.py's `train_avd_params` (vox256.yaml's values): Adam (betas 0.5, 0.999) on the
    AVD network alone, MultiStepLR x0.1 at `epoch_milestones`, the driving regions scaled by a
    random factor in [1 - random_scale, 1 + random_scale] per axis, L1 losses on the
    reconstructed shift and affine weighted by `lambda_shift` and `lambda_affine`."""
    num_epochs: int = 30
    num_repeats: int = 2000
    batch_size: int = 256
    dataloader_workers: int = 20
    checkpoint_freq: int = 50
    epoch_milestones: tuple[int, ...] = (20, 25)
    lr: float = 1.0e-3
    random_scale: float = 0.25
    lambda_shift: float = 1.0
    lambda_affine: float = 1.0


@dataclass(frozen=True)
class MraaParams:
    """MRAA (Siarohin et al., CVPR 2021); see fomm/mraa/model.py. The sections mirror the
    original config/*.yaml's model_params, which `translate` maps here."""
    # With pca_based False: regress the affines (FOMM's jacobians); with neither, regions are shifts.
    estimate_affine: bool = False
    # Multiply A_s A_d^-1 by the sign of its top-left entry, undoing SVD's axis flips.
    revert_axis_swap: bool = True
    region_predictor_params: RegionPredictorParams = RegionPredictorParams()
    bg_predictor_params: BgPredictorParams = BgPredictorParams()
    generator_params: GeneratorParams = GeneratorParams()
    avd_network_params: AvdNetworkParams = AvdNetworkParams()
    train_avd_params: TrainAvdParams = TrainAvdParams()


Params = MraaParams

MINIMUMS = tuple((f"model_params.{SECTION}.train_avd_params.{name}", minimum) for name, minimum in (
    ("num_epochs", 1), ("num_repeats", 1), ("checkpoint_freq", 1), ("dataloader_workers", 0),
    # BatchNorm1d in training mode needs two samples per batch.
    ("batch_size", 2)))

# frame_shape null in the originals means "frames as stored": the sizes the authors' datasets
# were prepared at, by the yamls' root_dir.
STORED_FRAME_SHAPES = {"data/vox-png": [256, 256, 3], "data/taichi-png": [256, 256, 3],
                       "data/TED384-v2": [384, 384, 3], "data/ted-youtube-384": [384, 384, 3],
                       "data/moving-gif": [256, 256, 3]}
ANIMATE_MODES = ("standard", "relative", "avd")
# region_bg_color: the background of the original's coloured region heat maps in its training
# images (the yamls' white, logger.py's default black).
REGION_BG_COLORS = ([1, 1, 1], [0, 0, 0])


def _section(tree: dict, key: str, path: str) -> dict:
    value = tree.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping, got {value!r}")
    return dict(value)


def translate(tree: dict) -> dict:
    """An original MRAA config (`model_params.num_regions`) as the project's config tree; any
    other tree is returned unchanged.

    Moves the model sections and train_avd_params under model_params.mraa_params, num_regions
    and num_channels to common_params, `lr` and the equivariance weights to their shared names
    (see the module docstring), and decides the originals' fields the project has no place for:
    `dataset_params.frame_shape: null` becomes the size the authors stored that root_dir's
    frames at; `train_params.use_sync_bn` is dropped (BatchNorm is synchronised over DDP workers
    whatever it says); `animate_params.mode` standard/relative sets
    normalization_params.use_relative_movement, and 'avd' (every original's) is `animate --mode
    avd`; `visualizer_params.region_bg_color` is dropped (training images draw region centres,
    not heat maps) where it has the originals' value. Each is named in the log.
    """
    model = tree.get("model_params")
    if not isinstance(model, dict) or "num_regions" not in model:
        return tree
    model = dict(model)
    out = dict(tree)
    notes = []
    common = {"num_kp": model.pop("num_regions")}
    if "num_channels" in model:
        common["num_channels"] = model.pop("num_channels")
    family = dict(model)  # every other key, unknown ones included (the typed build names them)
    if "train_avd_params" in tree:
        family["train_avd_params"] = _section(tree, "train_avd_params", "train_avd_params")
        del out["train_avd_params"]
    out["model_params"] = {"name": "mraa", "common_params": common, SECTION: family}

    dataset = _section(tree, "dataset_params", "dataset_params")
    if "frame_shape" in dataset and dataset["frame_shape"] is None:
        root = dataset.get("root_dir")
        if root not in STORED_FRAME_SHAPES:
            raise ConfigError(f"dataset_params.frame_shape: null (frames as stored) with root_dir {root!r}; expected "
                              f"an explicit [height, width, 3] (the originals' roots {sorted(STORED_FRAME_SHAPES)} "
                              f"are known)")
        dataset["frame_shape"] = STORED_FRAME_SHAPES[root]
        notes.append(f"dataset_params.frame_shape null -> {STORED_FRAME_SHAPES[root]} ({root}'s stored frames)")
    if "dataset_params" in tree:
        out["dataset_params"] = dataset

    train = _section(tree, "train_params", "train_params")
    if "lr" in train:
        train["lr_generator"] = train.pop("lr")
    if "use_sync_bn" in train:
        notes.append(f"train_params.use_sync_bn {train.pop('use_sync_bn')!r} dropped (BatchNorm is synchronised "
                     f"over DDP workers; one process has one batch)")
    weights = _section(train, "loss_weights", "train_params.loss_weights")
    for original, shared in (("equivariance_shift", "equivariance_value"),
                             ("equivariance_affine", "equivariance_jacobian")):
        if original in weights:
            weights[shared] = weights.pop(original)
    if "loss_weights" in train:
        train["loss_weights"] = weights
    if "train_params" in tree:
        out["train_params"] = train

    animate = _section(tree, "animate_params", "animate_params")
    if "mode" in animate:
        mode = animate.pop("mode")
        if mode not in ANIMATE_MODES:
            raise ConfigError(f"animate_params.mode: {mode!r} is not one of {list(ANIMATE_MODES)}")
        if mode == "avd":
            notes.append("animate_params.mode 'avd' is `animate --mode avd` (without --mode, animate_params."
                         "normalization_params decides between relative and standard)")
        else:
            normalization = _section(animate, "normalization_params", "animate_params.normalization_params")
            animate["normalization_params"] = {**normalization, "use_relative_movement": mode == "relative"}
            notes.append(f"animate_params.mode {mode!r} -> normalization_params.use_relative_movement "
                         f"{mode == 'relative'}")
    if "animate_params" in tree:
        out["animate_params"] = animate

    visualizer = _section(tree, "visualizer_params", "visualizer_params")
    if "region_bg_color" in visualizer:
        color = visualizer.pop("region_bg_color")
        if color not in REGION_BG_COLORS:
            raise ConfigError(f"visualizer_params.region_bg_color: {color!r} is not supported (training images draw "
                              f"region centres, not MRAA's coloured heat maps); expected [1, 1, 1] as in the original "
                              f"configs, or leave it out")
        notes.append("visualizer_params.region_bg_color dropped (training images draw region centres)")
    if "visualizer_params" in tree:
        out["visualizer_params"] = visualizer
    if notes:
        log.info("original MRAA config: %s", "; ".join(notes))
    return out
