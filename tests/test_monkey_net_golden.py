"""Monkey-Net against the original code (github.com/AliaksandrSiarohin/monkey-net @ 0c8aa4ea):
golden outputs in float64, the released checkpoints' tensor layout, the original yaml files,
loading a checkpoint saved in the original format, and 50 training steps against an lr-0 control.

../shared/reference/README.md describes monkey-net-golden.pt and monkey-net-checkpoint-layout.tsv.
The original works on videos (B, C, T, H, W); the modules here take frames (B*T, C, H, W), so
the golden tensors are compared after moving T into the batch.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fomm.config import config_from_dict, load_config
from fomm.registry import build_model

ORIGINAL_SECTIONS = ("dataset_params", "model_params", "train_params", "reconstruction_params",
                     "transfer_params", "prediction_params", "visualizer_params")


@pytest.fixture(scope="module")
def golden(shared_reference) -> dict:
    return torch.load(shared_reference / "monkey-net-golden.pt", weights_only=True)


def original_yaml(golden) -> dict:
    """config/vox.yaml as the golden file stores it (reduced widths), without the file's notes."""
    return {key: copy.deepcopy(value) for key, value in golden["config"].items() if key in ORIGINAL_SECTIONS}


def full_original(golden, name: str) -> dict:
    """The original config/<name>.yaml (vox or taichi) rebuilt from the golden file's reduced
    vox.yaml: the README lists the reduced fields; taichi differs from vox as below."""
    tree = original_yaml(golden)
    model = tree["model_params"]
    model["common_params"]["num_kp"] = 10
    for section in (model["kp_detector_params"], model["generator_params"],
                    model["generator_params"]["dense_motion_params"]):
        section.update(block_expansion=32, max_features=1024)
    model["discriminator_params"].update(block_expansion=32, max_features=256)
    tree["dataset_params"]["image_shape"] = [256, 256, 3]
    if name == "taichi":  # 64x64 frames, no downscaling, 5 generator blocks, nearest resizing
        del tree["dataset_params"]["image_shape"], model["kp_detector_params"]["scale_factor"]
        generator = model["generator_params"]
        del generator["interpolation_mode"], generator["dense_motion_params"]["scale_factor"]
        del generator["kp_embedding_params"]["scale_factor"]
        generator["num_blocks"] = 5
        tree["train_params"].update(num_epochs=750, epoch_milestones=[500], batch_size=32)
        tree["train_params"]["log_params"]["cpk_freq_epoch"] = 100
    return tree


def golden_model(golden, dtype=torch.float64):
    """The golden config's model with the golden weights (converted from the original's 5-D layout)."""
    model = build_model(config_from_dict(original_yaml(golden))).to(dtype).eval()
    model.load_checkpoint_state(model.state_from_checkpoint(golden["state_dict"]))
    return model


def frames(video: torch.Tensor) -> torch.Tensor:
    """(1, C, T, H, W) -> (T, C, H, W)."""
    return video[0].transpose(0, 1)


def motion(kp: dict) -> dict:
    """The original's {'mean': (1, T, K, 2), 'var': (1, T, K, 2, 2)} as {'value': (T, K, 2), 'var'}."""
    return {"value": kp["mean"][0], "var": kp["var"][0]}


def assert_close(got: torch.Tensor, expected: torch.Tensor, name: str, atol: float = 1e-9, rtol: float = 1e-9):
    assert got.shape == expected.shape, (name, got.shape, expected.shape)
    error = float((got.double() - expected).abs().max())
    assert torch.allclose(got.double(), expected, atol=atol, rtol=rtol), (name, error)


def run_golden_calls(model, golden, dtype) -> dict[str, torch.Tensor]:
    """The golden file's calls (README) on `model`, outputs in the golden file's layout."""
    source = frames(golden["inputs"]["source"]).to(dtype)  # (1, 3, 128, 128)
    driving = frames(golden["inputs"]["driving"]).to(dtype)  # (3, 3, 128, 128)
    video = lambda x: x.transpose(0, 1).unsqueeze(0)  # noqa: E731  (T, C, H, W) -> (1, C, T, H, W)
    with torch.no_grad():
        kp_source, kp_driving = model.detect(source), model.detect(driving)
        sources = {key: value.expand(3, *value.shape[1:]) for key, value in kp_source.items()}
        reconstruction = model.generate(source.expand(3, -1, -1, -1), sources, kp_driving)
        initial = {key: value[:1].expand_as(value) for key, value in kp_driving.items()}
        normalised = model.transfer(sources, kp_driving, initial, relative=True, relative_jacobian=False,
                                    adapt_movement_scale=False)  # vox.yaml's normalization_params
        transfer = model.generate(source.expand(3, -1, -1, -1), sources, normalised)
        maps = model.discriminator(driving, kp_driving, sources, frames_per_video=3)
    deformation = reconstruction["deformation"]
    return {
        "kp_source.mean": kp_source["value"][None], "kp_source.var": kp_source["var"][None],
        "kp_driving.mean": kp_driving["value"][None], "kp_driving.var": kp_driving["var"][None],
        "generator_reconstruction.video_prediction": video(reconstruction["prediction"]),
        "generator_reconstruction.video_deformed": video(reconstruction["deformed"]),
        "dense_motion_deformation": torch.cat([deformation, torch.zeros_like(deformation[..., :1])], -1)[None],
        "kp_driving_transfer_norm.mean": normalised["value"][None],
        "kp_driving_transfer_norm.var": normalised["var"][None],
        "generator_transfer.video_prediction": video(transfer["prediction"]),
        "generator_transfer.video_deformed": video(transfer["deformed"]),
        **{f"discriminator_feature_maps.{i}": video(m) for i, m in enumerate(maps[1:-1])},
        "discriminator_prediction": video(maps[-1]),
    }


def golden_outputs(golden) -> dict[str, torch.Tensor]:
    flat = {}
    for key, value in golden["outputs"].items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": tensor for name, tensor in value.items()})
        elif isinstance(value, (list, tuple)):
            flat.update({f"{key}.{i}": tensor for i, tensor in enumerate(value)})
        else:
            flat[key] = value
    return flat


def test_golden_outputs_float64(golden):
    """Every output of monkey-net-golden.pt, float64, atol = rtol = 1e-9."""
    expected = golden_outputs(golden)
    got = run_golden_calls(golden_model(golden), golden, torch.float64)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert_close(got[name], expected[name], name)
    # The covariance clipping is exercised: one driving keypoint sits exactly at the floor.
    var = got["kp_driving.var"]
    smallest = torch.linalg.svdvals(var).amin(-1)
    assert torch.isclose(smallest.min(), torch.tensor(1e-3, dtype=var.dtype), rtol=1e-9)


def test_discriminator_norm_spans_the_video(golden):
    """InstanceNorm3d normalises over (T, H, W) together: frame by frame gives other maps
    (the golden file says by up to 0.1), so frames_per_video matters."""
    model = golden_model(golden)
    driving = frames(golden["inputs"]["driving"])
    with torch.no_grad():
        kp = model.detect(driving)
        per_frame = model.discriminator(driving, kp, kp, frames_per_video=1)[-1]
        joint = model.discriminator(driving, kp, kp, frames_per_video=3)[-1]
    assert float((per_frame - joint).abs().max()) > 1e-3


def _layout(shared_reference, config_name: str) -> dict[str, dict[str, tuple]]:
    rows = (shared_reference / "monkey-net-checkpoint-layout.tsv").read_text().splitlines()[1:]
    layout: dict[str, dict[str, tuple]] = {}
    for row in rows:
        config, module, key, shape, _ = row.split("\t")
        if config == config_name:
            layout.setdefault(module, {})[key] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    return layout


@pytest.mark.filterwarnings("ignore:.*meta parameter")  # loading onto the meta device copies nothing
@pytest.mark.parametrize("name", ["vox", "taichi"])
def test_layout_of_full_original_configs(golden, shared_reference, tmp_path, name):
    """Built from the full original config (its yaml as it is), every module has exactly the
    released tensor names, and their shapes after the one mapping (out, in, 1, k, k) -> (out, in, k, k);
    a released file of that layout loads (on the meta device: no 80 M random values to draw)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(full_original(golden, name)))
    with torch.device("meta"):
        model = build_model(load_config(path))
    expected = _layout(shared_reference, name)
    assert set(expected) == {"generator", "kp_detector", "discriminator"}
    for module, keys in expected.items():
        state = getattr(model, module).state_dict()
        assert list(state) == list(keys), module  # same names, same order
        for key, shape in keys.items():
            mapped = shape[:2] + shape[3:] if len(shape) == 5 and shape[2] == 1 else shape
            assert tuple(state[key].shape) == mapped, (module, key, shape, tuple(state[key].shape))
    # A released file of this layout (5-D weights, no num_batches_tracked) converts and loads strictly.
    released = {module: {key: torch.empty(shape, device="meta") for key, shape in keys.items()
                         if not key.endswith("num_batches_tracked")} for module, keys in expected.items()}
    released.update(optimizer_generator={"state": {}, "param_groups": []}, epoch=20, it=0)
    model.load_checkpoint_state(model.state_from_checkpoint(released))


@pytest.mark.parametrize("name", ["vox", "taichi"])
def test_project_configs_carry_the_original_values(golden, tmp_path, name):
    """configs/monkey-net-<name>-256.yaml has the original's model, losses and schedule."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(full_original(golden, name)))
    original, ours = load_config(path), load_config(f"monkey-net-{name}-256")
    assert ours.model_params.monkey_net_params == original.model_params.monkey_net_params
    assert ours.model_params.common_params == original.model_params.common_params
    assert ours.train_params.loss_weights == original.train_params.loss_weights
    for field in ("num_epochs", "epoch_milestones", "batch_size", "lr_generator", "lr_discriminator",
                  "lr_kp_detector", "checkpoint_freq", "num_repeats"):
        assert getattr(ours.train_params, field) == getattr(original.train_params, field), field
    assert ours.animate_params.normalization_params == original.animate_params.normalization_params


def test_original_yaml_translation(golden, tmp_path):
    """The original file's sections land where the project reads them."""
    tree = original_yaml(golden)
    tree["transfer_params"]["normalization_params"] = {"move_location": False}  # as moving-gif.yaml
    tree["model_params"]["generator_params"]["kp_embedding_params"] = None
    del tree["dataset_params"]["image_shape"]
    path = tmp_path / "original.yaml"
    path.write_text(yaml.safe_dump(tree))
    config = load_config(path, ["train_params.batch_size=4"])
    params = config.model_params.monkey_net_params
    assert config.model_params.name == "monkey-net" and params.kp_variance == "matrix"
    assert params.kp_detector_params.clip_variance == 1e-3 and params.generator_params.kp_embedding_params is None
    assert params.discriminator_params.kp_embedding_params.norm_const == 100
    assert config.dataset_params.frame_shape == (64, 64, 3)  # frames_dataset.py's default
    assert config.train_params.batch_size == 4 and config.train_params.lr_kp_detector == 2e-4
    weights = config.train_params.loss_weights
    assert (weights.reconstruction_l1, weights.feature_matching) == (10, (10, 10, 10, 1))
    assert not any(weights.perceptual)
    norm = config.animate_params.normalization_params
    assert (norm.use_relative_movement, norm.adapt_movement_scale, norm.use_relative_jacobian) == (False, False, False)


def _original_checkpoint(golden, path: Path) -> Path:
    """The golden weights saved as logger.py's save_cpk writes them: float32, 5-D convolutions,
    no num_batches_tracked (files from before torch 0.4.1), optimiser states, epoch and it."""
    modules = {name: {key: tensor.float() for key, tensor in state.items() if not key.endswith("num_batches_tracked")}
               for name, state in golden["state_dict"].items()}
    assert any(t.dim() == 5 for t in modules["generator"].values())
    optimizer = {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "params": [0]}]}
    torch.save({**modules, "optimizer_generator": optimizer, "optimizer_discriminator": optimizer,
                "optimizer_kp_detector": optimizer, "epoch": 19, "it": 1234}, path)
    return path


def test_original_checkpoint_loads_and_matches_golden_in_float32(golden, tmp_path):
    """fomm.checkpoint.load_model (what --checkpoint uses) reads the original format with no
    other option, and runs it as released (grid_sample as align_corners=True); with the golden
    file's convention named explicitly (align_corners=false wins), the float32 outputs stay
    within 2/255 of the float64 golden ones."""
    from core.config import replace
    from fomm.checkpoint import load_model
    config = config_from_dict(original_yaml(golden))
    path = _original_checkpoint(golden, tmp_path / "monkey-net.pth.tar")
    assert load_model(config, path).align_corners is True
    explicit = replace(config, model_params=replace(config.model_params, align_corners=False))
    model = load_model(explicit, path)
    assert model.align_corners is False
    got = run_golden_calls(model, golden, torch.float32)
    expected = golden_outputs(golden)
    for name in ("generator_reconstruction.video_prediction", "generator_reconstruction.video_deformed",
                 "generator_transfer.video_prediction", "generator_transfer.video_deformed"):
        assert got[name].dtype == torch.float32
        assert_close(got[name], expected[name], name, atol=2 / 255, rtol=0)


def test_reconstruct_stage_with_original_checkpoint(golden, shared_data, tmp_path):
    """`pipeline run reconstruct --config <original yaml> --checkpoint <original file>` on real frames."""
    from stages.cli import main
    clip = tmp_path / "data" / "test" / "taichi1"
    clip.mkdir(parents=True)
    for frame in sorted((shared_data / "bodies" / "dwnet-taichi" / "1").glob("*.png"))[:4]:
        (clip / frame.name).symlink_to(frame.resolve())
    config_path = tmp_path / "vox.yaml"
    config_path.write_text(yaml.safe_dump(original_yaml(golden)))
    checkpoint = _original_checkpoint(golden, tmp_path / "monkey-net.pth.tar")
    out = tmp_path / "recon"
    assert main(["run", "reconstruct", "--config", str(config_path), "--checkpoint", str(checkpoint),
                 "--data", str(tmp_path / "data"), "--out", str(out), "--batch-size", "2"]) == 0
    rows = (out / "l1.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("taichi1,4,")
    assert 0 < float(rows[1].split(",")[2]) < 1


# Two 50-step runs: about 15 s on an idle 2-core machine (far longer under load).
def test_training_beats_an_lr0_control(shared_data, tmp_path):
    """50 steps of fomm.train.train with the tiny config (the original's options and losses)
    on real Tai-Chi frames: the reconstruction L1 of the last 10 steps is lower than that of a
    run with every learning rate 0 on the same batches (same seed, same order)."""
    from fomm.train import seed_everything, train
    clip = tmp_path / "data" / "train" / "taichi1"
    clip.mkdir(parents=True)
    for frame in sorted((shared_data / "bodies" / "dwnet-taichi" / "1").glob("*.png"))[::8][:8]:
        (clip / frame.name).symlink_to(frame.resolve())
    curves = {}
    for name, lr in (("trained", 2e-4), ("control", 0.0)):
        config = load_config("monkey-net-tiny", [
            "train_params.num_repeats=200", "train_params.num_epochs=10", "train_params.max_steps=50",
            "train_params.checkpoint_every=50", "train_params.image_every=1000", "train_params.batch_size=2",
            f"train_params.lr_generator={lr}", f"train_params.lr_kp_detector={lr}",
            f"train_params.lr_discriminator={lr}"])
        seed_everything(config.train_params.seed)
        train(config, tmp_path / "data", tmp_path / name)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == 50
        curves[name] = np.array([r["reconstruction_l1"] for r in records])
    trained, control = curves["trained"][-10:].mean(), curves["control"][-10:].mean()
    print(f"monkey-net: last-10-step L1 trained {trained:.4f}, lr-0 control {control:.4f}")
    assert np.allclose(curves["trained"][0], curves["control"][0])  # the same first batch and weights
    assert trained < 0.8 * control, (trained, control)
