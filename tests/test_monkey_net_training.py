"""Monkey-Net's training step and options as the original train.py and modules/*.py: the
keypoints the discriminator sees in the generator step keep their gradient (detached only in
the discriminator step), norm_const 'sum', a numeric kp_variance, and the original yaml files
loading. On real Tai-Chi frames from ../shared/data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from core.frames import resize, to_tensor
from fomm.config import load_config
from fomm.monkey_net.keypoints import heatmap_moments, keypoint_gaussians
from fomm.registry import build_model


@pytest.fixture(scope="module")
def frames(shared_data) -> torch.Tensor:
    """Frames 0, 16, 32, 48 of a real Tai-Chi-HD clip at 64x64, float64: (4, 3, 64, 64)."""
    from core.media import load_image
    files = sorted((shared_data / "bodies" / "dwnet-taichi" / "1").glob("*.png"))[::16][:4]
    return to_tensor(resize(np.stack([load_image(f) for f in files]), (64, 64))).double()


def _model(*overrides: str):
    torch.manual_seed(0)
    return build_model(load_config("monkey-net-tiny", list(overrides))).double().train()


def _kp_gradient(model, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.kp_detector.parameters()])


def original_generator_loss(model, source, driving, detach_kp_for_discriminator: bool):
    """train.py's generator step written out: one detector call on both frames, the
    generator, the discriminator on the prediction and on the driving frame, with the
    keypoints as they are (`split_kp(kp_joined, False)`) or, for contrast, detached;
    the losses of modules/losses.py's generator_loss with the tiny config's weights."""
    weights = model.loss_weights
    kp = model.kp_detector(torch.cat([source, driving]))
    batch = source.shape[0]
    kp_source = {k: v[:batch] for k, v in kp.items()}
    kp_driving = {k: v[batch:] for k, v in kp.items()}
    prediction = model.generator(source, kp_source, kp_driving)["prediction"]
    if detach_kp_for_discriminator:
        kp_source = {k: v.detach() for k, v in kp_source.items()}
        kp_driving = {k: v.detach() for k, v in kp_driving.items()}
    fake = model.discriminator(prediction, kp_driving, kp_source)
    real = model.discriminator(driving, kp_driving, kp_source)
    loss = weights.reconstruction_l1 * (prediction - driving).abs().mean()
    for weight, a, b in zip(weights.feature_matching, real[1:-1], fake[1:-1]):
        loss = loss + weight * (a - b).abs().mean()
    return loss + weights.generator_gan * ((1 - fake[-1]) ** 2).mean()


def test_generator_step_gradients_follow_the_original(frames):
    """The keypoint detector's gradient from a generator step equals the original rule's
    (keypoints not detached before the discriminator, though detach_kp_discriminator is
    true); detaching them there, as the project did, loses a measurable part of it."""
    model = _model()
    assert model.params.detach_kp_discriminator is True
    source, driving = frames[:2], frames[2:]
    losses, _ = model.generator_losses(source, driving, None)  # Monkey-Net needs no LossKit
    ours = _kp_gradient(model, sum(losses.values()))
    original = _kp_gradient(model, original_generator_loss(model, source, driving, False))
    detached = _kp_gradient(model, original_generator_loss(model, source, driving, True))
    # The step's losses are summed in float32 (.float(), for bf16 autocast): 1e-6 relative.
    assert (ours - original).norm() / original.norm() < 1e-5
    share = (original - detached).norm() / original.norm()
    assert share > 1e-2, share  # the discriminator's part of the detector's gradient
    print(f"discriminator path: {share:.1%} of the keypoint detector's gradient")


def test_norm_const_sum_divides_each_map_by_its_sum(frames):
    """norm_const 'sum' (the original's normalize_heatmap): each keypoint's Gaussian map,
    divided by its sum over the pixels, sums to 1; a number divides by that number."""
    from fomm.monkey_net.config import MonkeyNetEmbeddingParams
    from fomm.monkey_net.modules import MovementEmbedding
    model = _model()
    with torch.no_grad():
        kp = model.kp_detector(frames[:2])
    summed = MovementEmbedding(5, 3, "matrix", MonkeyNetEmbeddingParams(norm_const="sum"), False)
    divided = MovementEmbedding(5, 3, "matrix", MonkeyNetEmbeddingParams(norm_const=100.0), False)
    heat = summed(frames[:2], kp, kp)  # (B, K, 64, 64): gaussian heat maps only
    assert torch.allclose(heat.sum(dim=(2, 3)), torch.ones(2, 5, dtype=heat.dtype))
    gaussians = keypoint_gaussians(kp, (64, 64), "matrix")
    assert torch.allclose(divided(frames[:2], kp, kp), gaussians / 100)
    assert torch.allclose(heat, gaussians / gaussians.sum(dim=(2, 3), keepdim=True))


def test_numeric_kp_variance(frames):
    """A number as kp_variance (kp2gaussian / gaussian2kp of the original): the detector gives
    means only, the Gaussians are exp(-|z - p|^2 / (2 v)), and a whole model runs and trains."""
    heat = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    heat[0, 0, 1, 3] = 1
    moments = heatmap_moments(heat, 0.01)
    assert set(moments) == {"value"}
    assert torch.allclose(moments["value"], torch.tensor([[[0.5, -0.5]]], dtype=torch.float64), atol=1e-5)
    gauss = keypoint_gaussians({"value": torch.tensor([[[0.5, -0.5]]], dtype=torch.float64)}, (5, 5), 0.04)
    assert gauss[0, 0, 1, 3] == 1 and torch.isclose(gauss[0, 0, 1, 2], torch.tensor(np.exp(-0.25 / 0.08),
                                                                                     dtype=torch.float64))
    model = _model("model_params.monkey_net_params.kp_variance=0.01",
                   "model_params.monkey_net_params.generator_params.kp_embedding_params.norm_const=sum")
    assert model.params.kp_variance == 0.01
    losses, generated = model.generator_losses(frames[:2], frames[2:], None)
    assert set(generated["kp_driving"]) == {"value"} and generated["prediction"].shape == frames[:2].shape
    assert _kp_gradient(model, sum(losses.values())).abs().sum() > 0
    with torch.no_grad():
        motion = model.detect(frames[:1])
        assert set(model.transfer(motion, motion, motion)) == {"value"}


TAICHI_YAML = """
dataset_params:
  root_dir: data/taichi
  pairs_list: data/taichi.csv
  augmentation_params:
    flip_param: {horizontal_flip: True, time_flip: True}
    crop_param: {size: [64, 64]}
model_params:
  common_params: {num_kp: 10, kp_variance: 'matrix', num_channels: 3}
  kp_detector_params: {temperature: 0.1, block_expansion: 32, max_features: 1024, num_blocks: 5,
                       clip_variance: 0.001}
  generator_params:
    block_expansion: 32
    max_features: 1024
    num_blocks: 5
    num_refinement_blocks: 4
    dense_motion_params:
      block_expansion: 32
      max_features: 1024
      num_blocks: 5
      use_mask: True
      use_correction: True
      mask_embedding_params: {use_heatmap: True, use_deformed_source_image: True,
                              heatmap_type: 'difference', norm_const: 100}
      num_group_blocks: 2
    kp_embedding_params: {use_heatmap: True, norm_const: 100, heatmap_type: 'difference'}
  discriminator_params:
    kp_embedding_params: {norm_const: 100}
    block_expansion: 32
    max_features: 256
    num_blocks: 4
train_params:
  detach_kp_generator: False
  detach_kp_discriminator: True
  num_epochs: 750
  epoch_milestones: [500]
  lr: 2.0e-4
  batch_size: 32
  loss_weights:
    reconstruction: [10, 10, 10, 10, 1]
    reconstruction_deformed: 0
    generator_gan: 1
    discriminator_gan: 1
  log_params: {log_freq_iter: 200, cpk_freq_epoch: 100}
reconstruction_params: {num_videos: null, format: '.gif'}
transfer_params:
  num_pairs: 100
  format: '.gif'
  normalization_params: {movement_mult: False, move_location: True, adapt_variance: False}
prediction_params:
  rnn_params: {num_features: 1024, num_layers: 1, dropout: 0}
  predict_variance: False
  num_epochs: 1000
  lr: 0.001
  batch_size: 256
  num_frames: 32
  init_frames: 1
  train_size: null
  format: '.gif'
visualizer_params: {kp_size: 2, draw_border: False, colormap: 'gist_rainbow'}
"""


def test_original_taichi_yaml_loads(tmp_path):
    """monkey-net's config/taichi.yaml (the file's content, flow style) loads as it is: its
    pairs_list `data/taichi.csv` was refused before."""
    path = tmp_path / "taichi.yaml"
    path.write_text(TAICHI_YAML)
    config = load_config(path)
    params = config.model_params.monkey_net_params
    assert config.model_params.name == "monkey-net" and config.model_params.common_params.num_kp == 10
    assert params.generator_params.num_blocks == 5 and params.kp_detector_params.clip_variance == 1e-3
    assert params.generator_params.kp_embedding_params.norm_const == 100
    assert config.train_params.num_epochs == 750 and config.dataset_params.pairs_list == "data/taichi.csv"


def test_bair_options_load_and_the_project_config_carries_them(tmp_path):
    """bair.yaml's options (norm_const 'sum', reconstruction_deformed 10) load from an
    original-format file, also with a numeric kp_variance, and an embedding without
    norm_const takes the original constructor's 'sum'; configs/monkey-net-bair-256.yaml
    carries them."""
    tree = yaml.safe_load(TAICHI_YAML)
    model = tree["model_params"]
    model["common_params"]["kp_variance"] = 0.01
    model["generator_params"]["dense_motion_params"]["mask_embedding_params"]["norm_const"] = "sum"
    del model["generator_params"]["kp_embedding_params"]["norm_const"]
    tree["train_params"]["loss_weights"]["reconstruction_deformed"] = 10
    path = tmp_path / "bair-like.yaml"
    path.write_text(yaml.safe_dump(tree))
    params = load_config(path).model_params.monkey_net_params
    assert params.kp_variance == 0.01 and params.reconstruction_deformed == 10
    generator = params.generator_params
    assert generator.dense_motion_params.mask_embedding_params.norm_const == "sum"
    assert generator.kp_embedding_params.norm_const == "sum"
    bair = load_config("monkey-net-bair-256").model_params.monkey_net_params
    assert bair.reconstruction_deformed == 10
    assert {bair.generator_params.dense_motion_params.mask_embedding_params.norm_const,
            bair.generator_params.kp_embedding_params.norm_const,
            bair.discriminator_params.kp_embedding_params.norm_const} == {"sum"}
    from core.config import ConfigError
    tree["model_params"]["common_params"]["kp_variance"] = "diagonal"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match="kp_variance: 'diagonal' is not one of"):
        load_config(path)
