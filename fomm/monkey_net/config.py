"""Monkey-Net's section of the run config, `model_params.monkey_net_params`, and the
translation of the original repository's yaml files (config/vox.yaml, taichi.yaml, nemo.yaml,
bair.yaml, moving-gif.yaml of github.com/AliaksandrSiarohin/monkey-net) onto the project's tree.
The number of keypoints and channels are the shared `model_params.common_params`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Optional, Union

log = logging.getLogger(__name__)

SECTION = "monkey_net_params"


@dataclass(frozen=True)
class MonkeyNetEmbeddingParams:
    """Monkey-Net's MovementEmbeddingModule (modules/movement_embedding.py): per keypoint, its
    Gaussian heat map (`heatmap_type` gaussian: the driving one; difference: driving minus
    source) divided by `norm_const`, the displacement source - driving (`use_difference`)
    and the source warped by that displacement (`use_deformed_source_image`), computed at
    `scale_factor` of the frame. norm_const 'sum' divides each map by its own sum over the
    pixels instead (the original's normalize_heatmap)."""
    use_heatmap: bool = True
    use_deformed_source_image: bool = False
    use_difference: bool = False
    heatmap_type: Literal["gaussian", "difference"] = "gaussian"
    norm_const: Union[float, Literal["sum"]] = "sum"  # the original constructor's default
    scale_factor: float = 1.0


@dataclass(frozen=True)
class MonkeyNetKpDetectorParams:
    temperature: float = 0.1
    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    # Nearest-neighbour downscaling of the frame before the hourglass.
    scale_factor: float = 1.0
    # Smallest singular value the covariance is rescaled to (None: no clipping).
    clip_variance: Optional[float] = None


@dataclass(frozen=True)
class MonkeyNetDenseMotionParams:
    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    use_mask: bool = True
    use_correction: bool = True
    scale_factor: float = 1.0
    # Grouped 1x1 conv blocks (one group per keypoint and the background) before the hourglass.
    num_group_blocks: int = 0
    # Initial logit of the background mask (the mask head starts at zero weights).
    bg_init: float = 2.0
    mask_embedding_params: MonkeyNetEmbeddingParams = MonkeyNetEmbeddingParams(
        use_deformed_source_image=True, heatmap_type="difference")


@dataclass(frozen=True)
class MonkeyNetGeneratorParams:
    # How the dense motion is resized to each skip: nearest, or trilinear (bilinear per frame).
    interpolation_mode: Literal["nearest", "trilinear", "bilinear"] = "nearest"
    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 7
    num_refinement_blocks: int = 4
    dense_motion_params: MonkeyNetDenseMotionParams = MonkeyNetDenseMotionParams()
    kp_embedding_params: Optional[MonkeyNetEmbeddingParams] = MonkeyNetEmbeddingParams(
        heatmap_type="difference")


@dataclass(frozen=True)
class MonkeyNetDiscriminatorParams:
    block_expansion: int = 32
    max_features: int = 256
    num_blocks: int = 4
    scale_factor: float = 1.0
    kp_embedding_params: Optional[MonkeyNetEmbeddingParams] = MonkeyNetEmbeddingParams()


@dataclass(frozen=True)
class MonkeyNetParams:
    """Monkey-Net (Siarohin et al., CVPR 2019); see fomm/monkey_net/model.py.

    The sections mirror the original config/*.yaml's model_params (github.com/
    AliaksandrSiarohin/monkey-net), which `translate` maps here; defaults
    are the original constructors' where a yaml may leave a key out. The number of keypoints
    is common_params.num_kp. Loss weights: the original's `reconstruction` list [image,
    discriminator block 1..n] is train_params.loss_weights.reconstruction_l1 followed by
    .feature_matching; generator_gan and discriminator_gan are the shared ones.
    """
    # 'matrix': full 2x2 covariances; 'single': one isotropic variance per keypoint.
    # A number: a fixed isotropic variance for every keypoint (the detector then gives means only).
    kp_variance: Union[float, Literal["matrix", "single"]] = "matrix"
    kp_detector_params: MonkeyNetKpDetectorParams = MonkeyNetKpDetectorParams()
    generator_params: MonkeyNetGeneratorParams = MonkeyNetGeneratorParams()
    discriminator_params: MonkeyNetDiscriminatorParams = MonkeyNetDiscriminatorParams()
    # The original's train_params: stop gradients from the generator / discriminator into
    # the keypoint detector.
    detach_kp_generator: bool = False
    detach_kp_discriminator: bool = True
    # L1 between the source warped by the dense motion alone and the driving frame.
    reconstruction_deformed: float = 0.0


def translate(tree: dict) -> dict:
    """An original Monkey-Net config (config/vox.yaml, taichi.yaml, ...: `common_params` with
    `kp_variance`) as the project's config tree; any other tree is returned unchanged.

    Moves the model sections under model_params.monkey_net_params, the original's single
    `lr` to the three optimisers, its loss weights to train_params.loss_weights (see
    MonkeyNetParams), `log_params` to log_every/checkpoint_freq and `transfer_params` to
    animate_params (move_location -> use_relative_movement, movement_mult ->
    adapt_movement_scale, adapt_variance -> use_relative_jacobian). `prediction_params`
    (the original's RNN keypoint forecaster) and the `format` ('.gif') of its reconstruction
    and transfer outputs have no counterpart and are dropped, with a note in the log.
    """
    model = tree.get("model_params")
    if not isinstance(model, dict) or "kp_variance" not in (model.get("common_params") or {}):
        return tree
    common = dict(model["common_params"])
    family = {"kp_variance": common.pop("kp_variance")}
    for section in ("kp_detector_params", "generator_params", "discriminator_params"):
        if section in model:
            family[section] = dict(model[section] or {})
            if section != "kp_detector_params":  # the original builds no embedding without one
                family[section].setdefault("kp_embedding_params", None)
    out = {key: value for key, value in tree.items() if key not in ("prediction_params", "transfer_params")}
    out["model_params"] = {"name": "monkey-net", "common_params": {**common, "estimate_jacobian": False},
                           "monkey_net_params": family}
    dataset = dict(tree.get("dataset_params") or {})
    if "image_shape" not in dataset and "frame_shape" not in dataset:
        dataset["frame_shape"] = [64, 64, 3]  # frames_dataset.py's default
    out["dataset_params"] = dataset
    train = dict(tree.get("train_params") or {})
    for key in ("detach_kp_generator", "detach_kp_discriminator"):
        if key in train:
            family[key] = train.pop(key)
    if "lr" in train:
        lr = train.pop("lr")
        train.update(lr_generator=lr, lr_discriminator=lr, lr_kp_detector=lr)
    log_params = train.pop("log_params", None) or {}
    if "log_freq_iter" in log_params:
        train["log_every"] = log_params["log_freq_iter"]
    if "cpk_freq_epoch" in log_params:
        train["checkpoint_freq"] = log_params["cpk_freq_epoch"]
    weights = dict(train.pop("loss_weights", None) or {})
    reconstruction = list(weights.pop("reconstruction", [10, 10, 10, 10, 1]))
    family["reconstruction_deformed"] = weights.pop("reconstruction_deformed", 0)
    train["loss_weights"] = {**weights, "reconstruction_l1": reconstruction[0],
                             "feature_matching": reconstruction[1:], "perceptual": [0] * 5,
                             "equivariance_value": 0, "equivariance_jacobian": 0}
    out["train_params"] = train
    transfer = tree.get("transfer_params") or {}
    normalization = transfer.get("normalization_params") or {}
    animate = {key: transfer[key] for key in ("num_pairs",) if key in transfer}
    animate["normalization_params"] = {
        "use_relative_movement": normalization.get("move_location", False),
        "adapt_movement_scale": normalization.get("movement_mult", False),
        "use_relative_jacobian": normalization.get("adapt_variance", False)}
    out["animate_params"] = animate
    reconstruction = dict(tree.get("reconstruction_params") or {})
    dropped = [name for name, section in (("prediction_params", tree), ("transfer_params.format", transfer),
                                          ("reconstruction_params.format", reconstruction))
               if name.rpartition(".")[2] in section]
    reconstruction.pop("format", None)
    out["reconstruction_params"] = reconstruction
    if dropped:
        log.info("original Monkey-Net config: %s dropped (no counterpart here: the project writes .mp4 "
                 "and forecasts no keypoints)", ", ".join(dropped))
    return out


Params = MonkeyNetParams
