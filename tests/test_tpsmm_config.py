"""TPSMM's configs: the authors' four yaml files load unchanged, configs/tpsmm-*.yaml carry their
values, and the modules built from them have the released checkpoints' tensors
(../shared/reference/tpsmm-checkpoint-layout.tsv).

`original_yaml` holds the values of config/vox-256.yaml, taichi-256.yaml, ted-384.yaml and
mgif-256.yaml of github.com/yoyo-nb/Thin-Plate-Spline-Motion-Model (as of the golden file's
commit c616878), written out here by hand: the tests read no network and no other copy.
"""
from __future__ import annotations

import ast
import copy
import csv

import pytest
import torch
import yaml


def _vox() -> dict:
    return {
        "dataset_params": {
            "root_dir": "../vox", "frame_shape": None, "id_sampling": True,
            "augmentation_params": {"flip_param": {"horizontal_flip": True, "time_flip": True},
                                    "jitter_param": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1,
                                                     "hue": 0.1}}},
        "model_params": {
            "common_params": {"num_tps": 10, "num_channels": 3, "bg": True, "multi_mask": True},
            "generator_params": {"block_expansion": 64, "max_features": 512, "num_down_blocks": 3},
            "dense_motion_params": {"block_expansion": 64, "max_features": 1024, "num_blocks": 5,
                                    "scale_factor": 0.25},
            "avd_network_params": {"id_bottle_size": 128, "pose_bottle_size": 128}},
        "train_params": {
            "num_epochs": 100, "num_repeats": 75, "epoch_milestones": [70, 90], "lr_generator": 2.0e-4,
            "batch_size": 28, "scales": [1, 0.5, 0.25, 0.125], "dataloader_workers": 12, "checkpoint_freq": 50,
            "dropout_epoch": 35, "dropout_maxp": 0.3, "dropout_startp": 0.1, "dropout_inc_epoch": 10,
            "bg_start": 10, "transform_params": {"sigma_affine": 0.05, "sigma_tps": 0.005, "points_tps": 5},
            "loss_weights": {"perceptual": [10, 10, 10, 10, 10], "equivariance_value": 10, "warp_loss": 10,
                             "bg": 10}},
        "train_avd_params": {
            "num_epochs": 200, "num_repeats": 300, "batch_size": 256, "dataloader_workers": 24,
            "checkpoint_freq": 50, "epoch_milestones": [140, 180], "lr": 1.0e-3, "lambda_shift": 1,
            "random_scale": 0.25},
        "visualizer_params": {"kp_size": 5, "draw_border": True, "colormap": "gist_rainbow"},
    }


def original_yaml(name: str) -> dict:
    """The tree of config/<name>.yaml (vox-256, taichi-256, ted-384 or mgif-256)."""
    tree = _vox()
    data, model, train, avd = (tree["dataset_params"], tree["model_params"], tree["train_params"],
                               tree["train_avd_params"])
    if name == "taichi-256":
        data["root_dir"] = "../taichi"
        train.update(num_repeats=150, dropout_maxp=0.7, dropout_startp=0.0, bg_start=0)
        avd.update(num_epochs=100, num_repeats=150, checkpoint_freq=10, epoch_milestones=[70, 90])
    elif name == "ted-384":
        data["root_dir"] = "../TED384-v2"
        train.update(num_repeats=150, batch_size=12, dataloader_workers=6, dropout_maxp=0.5, dropout_startp=0.0,
                     bg_start=0)
        avd.update(num_epochs=30, num_repeats=500, checkpoint_freq=10, epoch_milestones=[20, 25])
    elif name == "mgif-256":
        data.update(root_dir="../moving-gif", id_sampling=False)
        data["augmentation_params"] = {"flip_param": {"horizontal_flip": True, "time_flip": True},
                                       "crop_param": {"size": [256, 256]}, "resize_param": {"ratio": [0.9, 1.1]},
                                       "jitter_param": {"hue": 0.5}}
        model["common_params"]["bg"] = False
        train.update(num_repeats=50, dropout_maxp=0.5, dropout_startp=0.2, bg_start=0)
        avd.update(num_epochs=100, num_repeats=50, checkpoint_freq=10, epoch_milestones=[70, 90],
                   lambda_affine=1)
    elif name != "vox-256":
        raise KeyError(name)
    return copy.deepcopy(tree)


ORIGINAL_CONFIGS = ("vox-256", "taichi-256", "ted-384", "mgif-256")


# --------------------------------------------------------------------------- loading
@pytest.mark.parametrize("name", ORIGINAL_CONFIGS)
def test_original_yaml_loads_unchanged_and_equals_the_project_config(name, tmp_path):
    """The original file, as a yaml on disk, loads with no option; configs/tpsmm-<name>.yaml
    has the same values in the same layout (frame_shape written out for the null)."""
    from core.config import CONFIG_DIR
    from fomm.config import load_config
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(original_yaml(name)))
    original = load_config(path)
    ours = yaml.safe_load((CONFIG_DIR / f"tpsmm-{name}.yaml").read_text())
    side = 384 if name == "ted-384" else 256
    assert ours["dataset_params"].pop("frame_shape") == [side, side, 3]
    expected = original_yaml(name)
    assert expected["dataset_params"].pop("frame_shape") is None
    assert ours == expected
    project = load_config(f"tpsmm-{name}")
    assert project.model_params == original.model_params and project.train_params == original.train_params
    assert project.dataset_params.frame_shape == (side, side, 3)
    assert original.dataset_params.frame_shape == (256, 256, 3)  # null: the default size


def test_original_values_land_where_the_project_reads_them(tmp_path):
    from fomm.config import load_config
    path = tmp_path / "mgif-256.yaml"
    path.write_text(yaml.safe_dump(original_yaml("mgif-256")))
    config = load_config(path)
    mp, tp = config.model_params, config.train_params
    params = mp.tpsmm_params
    assert mp.name == "tpsmm" and mp.align_corners is True and mp.common_params.num_channels == 3
    assert (params.num_tps, params.bg, params.multi_mask) == (10, False, True)
    assert params.dense_motion_params.kp_variance == 0.01  # the constructor's default
    assert params.avd_network_params.id_bottle_size == 128
    assert (params.dropout_epoch, params.dropout_maxp, params.dropout_startp, params.dropout_inc_epoch,
            params.bg_start) == (35, 0.5, 0.2, 10, 0)
    assert (params.loss_weights.warp_loss, params.loss_weights.bg) == (10, 10)
    avd = params.train_avd_params
    assert (avd.num_epochs, avd.num_repeats, avd.batch_size, avd.epoch_milestones, avd.lr, avd.lambda_affine) == (
        100, 50, 256, (70, 90), 1e-3, 1)
    assert (tp.num_repeats, tp.batch_size, tp.lr_generator, tp.epoch_milestones) == (50, 28, 2e-4, (70, 90))
    assert tp.loss_weights.perceptual == (10,) * 5 and tp.loss_weights.equivariance_value == 10
    assert tp.loss_weights.equivariance_jacobian == 0 and tp.loss_weights.generator_gan == 0
    assert config.dataset_params.augmentation_params.crop_param.size == (256, 256)
    assert config.animate_params.normalization_params.adapt_movement_scale is True  # demo.py's relative_kp


def test_tiny_config_is_the_original_at_cpu_size():
    from fomm.config import load_config
    tiny, vox = load_config("tpsmm-tiny"), load_config("tpsmm-vox-256")
    assert tiny.dataset_params.frame_shape == (64, 64, 3)
    small, full = tiny.model_params.tpsmm_params, vox.model_params.tpsmm_params
    assert (small.num_tps, small.bg, small.multi_mask) == (full.num_tps, full.bg, full.multi_mask)
    assert small.dense_motion_params.scale_factor == full.dense_motion_params.scale_factor
    for key in ("dropout_epoch", "dropout_maxp", "dropout_startp", "dropout_inc_epoch", "loss_weights"):
        assert getattr(small, key) == getattr(full, key), key
    assert tiny.train_params.loss_weights == vox.train_params.loss_weights
    assert tiny.train_params.transform_params == vox.train_params.transform_params


# --------------------------------------------------------------------------- released layout
def released_layout(reference, config: str) -> dict[str, list[tuple[str, tuple[int, ...], str]]]:
    with open(reference / "tpsmm-checkpoint-layout.tsv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle, delimiter="\t") if row["config"] == config]
    modules: dict[str, list] = {}
    for row in rows:
        modules.setdefault(row["module"], []).append((row["key"], ast.literal_eval(row["shape"]), row["dtype"]))
    return modules


@pytest.mark.parametrize("name", ORIGINAL_CONFIGS)
def test_modules_have_the_released_checkpoint_tensors(name, shared_reference, tmp_path):
    """Built from the full original config (meta device: no weights allocated), every
    sub-network's state dict has exactly the released names, order, shapes and dtypes."""
    from fomm.config import load_config
    from fomm.registry import build_model
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(original_yaml(name)))
    with torch.device("meta"):
        model = build_model(load_config(path))
    expected = released_layout(shared_reference, name)
    got = {module: [(key, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for key, t in state.items()]
           for module, state in model.checkpoint_state().items()}
    assert list(got) == [m for m in ("inpainting_network", "dense_motion_network", "kp_detector", "bg_predictor",
                                     "avd_network") if m in expected]
    assert got == expected
    assert ("bg_predictor" in got) == (name != "mgif-256")
