"""FOMM modules reproduce the original implementation's outputs (reference/fomm-golden-tiny.pt).

The golden file holds a reduced config, random weights and buffers, 128x128 inputs, and
every intermediate output of the original code in eval mode with align_corners=False.
"""
from __future__ import annotations

import pytest
import torch

from fomm.model import FirstOrderModel
from pipeline.config import config_from_dict, config_to_dict

TOL = 1e-5


@pytest.fixture(scope="module")
def golden(shared_reference):
    return torch.load(shared_reference / "fomm-golden-tiny.pt", map_location="cpu", weights_only=False)


def golden_config(golden_cfg: dict):
    """The golden file's reduced hyper-parameters as the project's Config."""
    return config_from_dict({
        "model_params": {
            "align_corners": False,
            "common_params": golden_cfg["common"],
            "kp_detector_params": golden_cfg["kp_detector"],
            "generator_params": golden_cfg["generator"],
            "discriminator_params": golden_cfg["discriminator"],
        },
        "train_params": {"vgg19_weights": "random"},
    })


@pytest.fixture(scope="module")
def model(golden):
    torch.manual_seed(0)
    model = FirstOrderModel(golden_config(golden["config"]))
    model.load_checkpoint_state(golden["state_dict"], strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def computed(golden, model):
    source, driving = golden["inputs"]["source"], golden["inputs"]["driving"]
    with torch.no_grad():
        kp_source, kp_driving = model.detect(source), model.detect(driving)
        absolute = model.generate(source, kp_source, kp_driving)
        relative = model.transfer(kp_source, kp_driving, {k: v[:1] for k, v in kp_driving.items()},
                                  relative=True, relative_jacobian=True, adapt_movement_scale=True)
        generated_relative = model.generate(source, kp_source, relative)
        feature_maps, prediction = model.discriminator.discs["1"](driving)
    return {"kp_source": kp_source, "kp_driving": kp_driving, "generator_absolute": absolute,
            "kp_driving_relative_adapt_scale": relative,
            "generator_relative_adapt_scale": generated_relative,
            "discriminator_feature_maps": feature_maps, "discriminator_prediction": prediction}


def assert_close(name, actual, expected):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= TOL, f"{name}: max abs error {err:.3g} > {TOL}"


def test_golden_config_is_the_sn_discriminator_without_kp(golden):
    cfg = golden_config(golden["config"])
    assert cfg.model_params.discriminator_params.sn and not cfg.model_params.discriminator_params.use_kp
    assert golden["config"]["input_size"] == 128


@pytest.mark.parametrize("key", ["kp_source", "kp_driving", "kp_driving_relative_adapt_scale"])
def test_keypoints_and_jacobians(golden, computed, key):
    for part in ("value", "jacobian"):
        assert_close(f"{key}.{part}", computed[key][part], golden["outputs"][key][part])


@pytest.mark.parametrize("key", ["generator_absolute", "generator_relative_adapt_scale"])
def test_generator_outputs(golden, computed, key):
    expected = golden["outputs"][key]
    assert set(expected) == {"mask", "sparse_deformed", "occlusion_map", "deformed", "prediction"}
    for part, tensor in expected.items():
        assert_close(f"{key}.{part}", computed[key][part], tensor)


def test_discriminator_maps(golden, computed):
    expected = golden["outputs"]["discriminator_feature_maps"]
    assert len(computed["discriminator_feature_maps"]) == len(expected) == 4
    for i, (actual, want) in enumerate(zip(computed["discriminator_feature_maps"], expected)):
        assert_close(f"discriminator_feature_maps[{i}]", actual, want)
    assert_close("discriminator_prediction", computed["discriminator_prediction"],
                 golden["outputs"]["discriminator_prediction"])


def test_adapt_scale_changes_the_motion(golden, computed):
    """The relative outputs are not the absolute ones: the test above checks a distinct path."""
    diff = (computed["kp_driving_relative_adapt_scale"]["value"] - computed["kp_driving"]["value"]).abs().max()
    assert diff > 1e-3


def test_align_corners_switch_changes_the_generator(golden):
    """align_corners=True (how the released checkpoints were trained) is a different sampling."""
    data = config_to_dict(golden_config(golden["config"]))
    data["model_params"]["align_corners"] = True
    cfg_true = config_from_dict(data)
    model = FirstOrderModel(cfg_true)
    model.load_checkpoint_state(golden["state_dict"])
    model.eval()
    source, driving = golden["inputs"]["source"], golden["inputs"]["driving"]
    with torch.no_grad():
        out = model.reconstruct(source.expand_as(driving), driving)
    err = (out["deformed"] - golden["outputs"]["generator_absolute"]["deformed"]).abs().max().item()
    assert err > 1e-4


def test_released_format_file_through_load_model(golden, tmp_path, caplog):
    """The golden state dicts saved as a released checkpoint (plus optimizer, epoch) load by
    fomm.checkpoint.load_model and reproduce the prediction; the align_corners hint is logged."""
    from fomm.checkpoint import load_model, save_checkpoint
    path = save_checkpoint(tmp_path / "golden-cpk.pth.tar",
                           {**golden["state_dict"], "optimizer_generator": {}, "epoch": 0})
    model = load_model(golden_config(golden["config"]), path)
    assert "align_corners=true" in caplog.text
    source, driving = golden["inputs"]["source"], golden["inputs"]["driving"]
    with torch.no_grad():
        out = model.reconstruct(source, driving)
    assert_close("prediction", out["prediction"], golden["outputs"]["generator_absolute"]["prediction"])
