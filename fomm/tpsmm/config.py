"""TPSMM's config section (`model_params.tpsmm_params`) and the translation of its authors' yamls.

The original config/vox-256.yaml, taichi-256.yaml, ted-384.yaml and mgif-256.yaml (github.com/
yoyo-nb/Thin-Plate-Spline-Motion-Model) load unchanged: `translate` recognises one by
`model_params.common_params.num_tps` and maps it onto the project's tree.

- model: common_params `num_tps`, `bg`, `multi_mask` and the `generator_params`,
  `dense_motion_params` and `avd_network_params` sections go to `model_params.tpsmm_params`;
  `num_channels` stays in the shared common_params.
- training: the shared train_params keep what every family has (epochs, repeats, milestones,
  batch size, pyramid scales, transform_params, the perceptual and equivariance_value weights,
  `lr_generator`, which is also the background predictor's, as in train.py); the keypoint
  dropout (`dropout_epoch`, `dropout_maxp`, `dropout_startp`, `dropout_inc_epoch`),
  `bg_start`, the `warp_loss` and `bg` weights and `train_avd_params` go to the section.
- TPSMM has no jacobians: `equivariance_jacobian` is 0 and `estimate_jacobian` False.
- `model_params.align_corners` is True: TPSMM passes align_corners=True to every grid_sample
  and bilinear interpolate (dense_motion.py, inpainting_network.py, model.py).
- The relative mode of demo.py always scales the motion by the convex-hull areas
  (`relative_kp`): `animate_params.normalization_params.adapt_movement_scale` is True.
- `frame_shape: null` (the original reads frames at their stored size) becomes [256, 256, 3]:
  the project's loader resizes every frame, and the tree does not say the size (ted-384.yaml's
  frames are 384 px: configs/tpsmm-ted-384.yaml says so).

Only plain dataclasses and core.config here (importing this module imports no torch).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)

SECTION = "tpsmm_params"


@dataclass(frozen=True)
class GeneratorParams:
    """InpaintingNetwork (modules/inpainting_network.py): encoder widths block_expansion * 2^i
    capped at max_features, `num_down_blocks` levels (its decoder widths are written for 3)."""
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 3


@dataclass(frozen=True)
class DenseMotionParams:
    """DenseMotionNetwork (modules/dense_motion.py): the hourglass and the frame scale it
    runs at; `kp_variance` of the keypoint Gaussians (the constructor's default)."""
    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    scale_factor: float = 0.25
    kp_variance: float = 0.01


@dataclass(frozen=True)
class AvdNetworkParams:
    """AVDNetwork (modules/avd_network.py) bottlenecks; the constructor's defaults."""
    id_bottle_size: int = 64
    pose_bottle_size: int = 64


@dataclass(frozen=True)
class LossWeights:
    """TPSMM's own loss weights (the shared train_params.loss_weights hold perceptual and
    equivariance_value): the warp loss (Eq. 11) and the background loss (Eq. 12)."""
    warp_loss: float = 10.0
    bg: float = 10.0


@dataclass(frozen=True)
class TrainAvdParams:
    """train_avd.py's schedule of the animation-via-disentanglement stage. `lambda_affine`
    (mgif-256.yaml) is read by no code of the original; kept so the file loads."""
    num_epochs: int = 100
    num_repeats: int = 150
    batch_size: int = 256
    dataloader_workers: int = 24
    checkpoint_freq: int = 10
    epoch_milestones: tuple[int, ...] = (70, 90)
    lr: float = 1.0e-3
    lambda_shift: float = 1.0
    lambda_affine: Optional[float] = None
    random_scale: float = 0.25


@dataclass(frozen=True)
class Params:
    """TPSMM's model and training options. Defaults are the original constructors' where
    they have one (bg False, multi_mask True, kp_variance 0.01, scale_factor 0.25, AVD
    bottlenecks 64) and vox-256.yaml's elsewhere."""
    # K: K TPS transformations from 5K keypoints (Eq. 1-2), K + 1 with the background.
    num_tps: int = 10
    # Estimate the background affine (BGMotionPredictor) from bg_start on.
    bg: bool = False
    # Four occlusion masks at 1/8 to 1 of the frame (Sec. 3.3); False: one mask.
    multi_mask: bool = True
    generator_params: GeneratorParams = GeneratorParams()
    dense_motion_params: DenseMotionParams = DenseMotionParams()
    avd_network_params: AvdNetworkParams = AvdNetworkParams()
    # TPS dropout (Eq. 7-8) in the first dropout_epoch epochs, its probability rising from
    # dropout_startp by dropout_maxp / dropout_inc_epoch an epoch, up to dropout_maxp.
    dropout_epoch: int = 35
    dropout_maxp: float = 0.3
    dropout_startp: float = 0.1
    dropout_inc_epoch: int = 10
    # The epoch from which the background motion is estimated, trained and used.
    bg_start: int = 10
    loss_weights: LossWeights = LossWeights()
    train_avd_params: TrainAvdParams = TrainAvdParams()


# train_params keys of the original that belong to TPSMM's section.
_TRAIN_KEYS = ("dropout_epoch", "dropout_maxp", "dropout_startp", "dropout_inc_epoch", "bg_start")
_COMMON_KEYS = ("num_tps", "bg", "multi_mask")
_MODEL_SECTIONS = ("generator_params", "dense_motion_params", "avd_network_params")


def is_original(tree: dict) -> bool:
    """Whether `tree` has the shape of an original TPSMM yaml (common_params.num_tps)."""
    model = tree.get("model_params") if isinstance(tree, dict) else None
    common = model.get("common_params") if isinstance(model, dict) else None
    return isinstance(common, dict) and "num_tps" in common


def translate(tree: dict) -> dict:
    """An original TPSMM config tree as the project's (see the module docstring); any other
    tree is returned unchanged."""
    if not is_original(tree):
        return tree
    out = {key: value for key, value in tree.items() if key not in ("train_avd_params",)}
    model = tree["model_params"]
    common = dict(model["common_params"])
    section = {key: common.pop(key) for key in _COMMON_KEYS if key in common}
    for name in _MODEL_SECTIONS:
        if name in model:
            section[name] = dict(model[name] or {})
    out["model_params"] = {"name": "tpsmm", "align_corners": model.get("align_corners", True),
                           "common_params": {**common, "estimate_jacobian": False}, SECTION: section}
    train = dict(tree.get("train_params") or {})
    for key in _TRAIN_KEYS:
        if key in train:
            section[key] = train.pop(key)
    weights = dict(train.pop("loss_weights", None) or {})
    own = {key: weights.pop(key) for key in ("warp_loss", "bg") if key in weights}
    if own:
        section["loss_weights"] = own
    # Every TPSMM network trains at lr_generator (train.py): the kp detector is in the same
    # optimiser; no discriminator, no jacobians.
    weights.setdefault("equivariance_jacobian", 0)
    weights.setdefault("generator_gan", 0)
    train["loss_weights"] = weights
    out["train_params"] = train
    if "train_avd_params" in tree:
        section["train_avd_params"] = dict(tree["train_avd_params"] or {})
    dataset = dict(tree.get("dataset_params") or {})
    if dataset.get("frame_shape", 0) is None:
        dataset["frame_shape"] = [256, 256, int(common.get("num_channels", 3))]
        log.info("original TPSMM config: frame_shape null (frames as stored) read as %s", dataset["frame_shape"])
    out["dataset_params"] = dataset
    animate = dict(tree.get("animate_params") or {})
    normalization = dict(animate.get("normalization_params") or {})
    normalization.setdefault("adapt_movement_scale", True)  # demo.py relative_kp always scales
    normalization.setdefault("use_relative_jacobian", False)
    animate["normalization_params"] = normalization
    out["animate_params"] = animate
    return out
