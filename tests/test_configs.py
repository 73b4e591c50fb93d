"""FOMM configs: every dataset of the paper, the original yaml format, the tiny CPU config."""
from __future__ import annotations

import pytest
import torch

from core.config import CONFIG_DIR, ConfigError, config_to_dict
from fomm.config import config_from_dict, load_config
from fomm.model import FirstOrderModel

FOMM_CONFIGS = ["vox-256", "vox-adv-256", "taichi-256", "taichi-adv-256", "mgif-256", "fashion-256",
                "nemo-256", "bair-256", "vox-512", "tiny"]
ORIGINAL_SECTIONS = {"dataset_params", "model_params", "train_params", "reconstruction_params",
                     "animate_params", "visualizer_params"}


@pytest.mark.parametrize("name", FOMM_CONFIGS)
def test_config_loads_and_builds(name):
    config = load_config(name)
    assert config.model_params.name == "fomm"
    size = config.dataset_params.frame_shape[0]
    with torch.device("meta"):  # shapes only: no weight initialisation cost
        model = FirstOrderModel(config)
    with_gan = {"discriminator"} if config.train_params.loss_weights.generator_gan > 0 else set()
    assert set(dict(model.named_children())) == {"kp_detector", "generator"} | with_gan
    # the keypoint detector's 7x7 head needs at least 7 pixels left after downscaling
    assert size * config.model_params.kp_detector_params.scale_factor >= 2 ** config.model_params.kp_detector_params.num_blocks
    assert all(s in config.train_params.scales for s in config.model_params.discriminator_params.scales)


@pytest.mark.parametrize("name", [n for n in FOMM_CONFIGS if n != "tiny"])
def test_dataset_configs_are_in_the_original_format(name):
    """Only keys the original first-order-model yaml has: the files work with the original code too."""
    import yaml
    data = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert set(data) == ORIGINAL_SECTIONS
    assert "name" not in data["model_params"] and "align_corners" not in data["model_params"]
    project_only = {"max_steps", "vgg19_weights", "log_every", "image_every", "checkpoint_every", "precision",
                    "channels_last", "dataloader_workers", "seed"}
    assert not project_only & set(data["train_params"])


def test_paper_hyper_parameters():
    vox, taichi, adv = load_config("vox-256"), load_config("taichi-256"), load_config("vox-adv-256")
    assert vox.model_params.discriminator_params.sn and not taichi.model_params.discriminator_params.sn
    assert vox.model_params.common_params.num_kp == 10 and vox.dataset_params.id_sampling
    assert vox.train_params.batch_size == 40 and vox.train_params.epoch_milestones == (60, 90)
    assert taichi.train_params.num_repeats == 150 and taichi.train_params.batch_size == 30
    assert vox.train_params.loss_weights.generator_gan == 0 and adv.train_params.loss_weights.generator_gan > 0
    assert vox.train_params.loss_weights.perceptual == (10.0,) * 5
    assert vox.model_params.align_corners is None  # automatic: False to train, True for a released file
    assert adv.model_params.discriminator_params.use_kp and not adv.model_params.discriminator_params.sn
    assert taichi.dataset_params.id_sampling
    assert load_config("taichi-adv-256").train_params.lr_kp_detector == 0
    assert load_config("mgif-256").model_params.kp_detector_params.single_jacobian_map
    assert load_config("vox-512").dataset_params.frame_shape == (512, 512, 3)


def test_tiny_config_is_cpu_sized():
    tiny = load_config("tiny")
    assert tiny.dataset_params.frame_shape == (64, 64, 3)
    assert tiny.train_params.vgg19_weights == "random"
    assert tiny.train_params.batch_size <= 4
    with torch.device("meta"):
        model = FirstOrderModel(tiny)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_original_yaml_with_overrides_and_aliases(tmp_path):
    """A user's original yaml (older files say image_shape) loads; overrides apply; bad keys raise."""
    text = (CONFIG_DIR / "vox-256.yaml").read_text().replace("frame_shape:", "image_shape:")
    path = tmp_path / "vox-256.yaml"
    path.write_text(text)
    config = load_config(path, ["model_params.align_corners=true", "train_params.batch_size=8"])
    assert config.model_params.align_corners and config.train_params.batch_size == 8
    assert config_from_dict(config_to_dict(config)) == config
    with pytest.raises(ConfigError, match="kp_detector_params"):
        load_config(path, ["model_params.kp_detector_params.num_kps=3"])
