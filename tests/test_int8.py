"""`--precision int8` (core/quantize.py) on real face frames from ../shared/data, with a tiny
FOMM trained on real face frames: what runs in int8 and what stays float, the error budget
against fp32, the calibration stored beside the checkpoint and read back, and auto's
fallback to float when the budget does not hold.

The CPU flags are faked to name AVX512-VNNI (as tests/test_precision.py fakes them), so the
int8 path runs on every machine; onnxruntime's integer kernels run on any x86-64 CPU."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from core import devices, quantize
from core.config import config_to_yaml
from core.frames import to_tensor
from core.media import ffmpeg_exe, iter_frames
from fomm import source_crop
from fomm.animation import AnimateOptions, Animator, load_animation_model
from fomm.train import resolve_run_config, train

CPU = torch.device("cpu")
# The perceptual loss's VGG19 would triple each step on 2 shared cores: L1 + equivariance
# (as tests/test_train.py does) teach the tiny model enough to move real faces.
FAST = ["train_params.loss_weights.perceptual=[0,0,0,0,0]", "train_params.loss_weights.reconstruction_l1=10"]
STEPS = 24


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    """(config, checkpoint): the tiny FOMM after STEPS steps on three real face clips (64 px)."""
    root = tmp_path_factory.mktemp("faces")
    run = tmp_path_factory.mktemp("run")  # a run folder apart from its data
    for name in ("00", "08", "10"):
        folder = root / "train" / f"demo{name}"
        folder.mkdir(parents=True)
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(shared_data / f"faces/fomm-demo/{name}.mp4"),
                        "-frames:v", "40", "-vf", "scale=64:64", str(folder / "%05d.png")], check=True)
    config = resolve_run_config("tiny", FAST + [f"train_params.max_steps={STEPS}", "train_params.num_repeats=100",
                                                f"train_params.checkpoint_every={STEPS}",
                                                "train_params.image_every=1000"], None)
    train(config, root, run)
    return config, run / "checkpoints" / f"step-{STEPS:07d}.pt"


@pytest.fixture(scope="module")
def frames(shared_data) -> torch.Tensor:
    """(13, 3, 64, 64) frames of a real face clip the model did not train on: 0 is the source."""
    clip = shared_data / "faces" / "liveportrait" / "d12.mp4"
    return to_tensor(np.stack([source_crop.resize(f, (64, 64)) for f in iter_frames(clip, 0, 13)]), CPU)


@pytest.fixture
def vnni(monkeypatch):
    """A CPU with AVX512-VNNI and AVX512-BF16: auto means int8, its fallback bf16."""
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset(("avx2", "avx512f", "avx512_vnni", "avx512_bf16")))


@pytest.fixture
def checkpoint(trained, tmp_path):
    """A copy of the trained checkpoint in a fresh folder: its calibration starts absent."""
    config, path = trained
    copy = tmp_path / "tiny.pt"
    shutil.copy(path, copy)
    return config, copy


def animate(model, frames, precision: str) -> tuple[Animator, torch.Tensor]:
    """Relative motion with adapt scale, frame 1 the initial driving frame, one batch."""
    animator = Animator(model, frames[:1], frames[1:2], AnimateOptions(precision=precision, adapt_scale=True), CPU)
    return animator, animator(frames[1:])["prediction"]


def regions_of(model) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, quantize.OnnxRegion)]


def test_int8_calibrates_on_real_frames_within_the_budget(checkpoint, frames, vnni):
    config, path = checkpoint
    model = load_animation_model(config, path, CPU)
    animator, int8 = animate(model, frames, "int8")
    _, fp32 = animate(model, frames, "fp32")
    assert animator.precision.int8
    means, p99 = quantize.frame_errors(int8, fp32)
    assert means.max() <= 1 / 255 and p99.max() <= 4 / 255, (means.max() * 255, p99.max() * 255)
    assert (int8 - fp32).abs().max() > 1e-4  # the int8 kernels did run

    # motion detection stays float, the generating blocks run in int8, the narrow heads float
    regions = regions_of(animator.model)
    assert not any(name.startswith("kp_detector") for name in regions)
    assert {"generator.dense_motion_network.hourglass", "generator.bottleneck", "generator.first"} <= set(regions)
    for head in ("generator.final", "generator.dense_motion_network.mask", "generator.dense_motion_network.occlusion"):
        assert isinstance(animator.model.get_submodule(head), torch.nn.Conv2d), head
    assert model.generator.bottleneck.__class__ is torch.nn.Sequential  # the caller's model untouched

    # stored beside the checkpoint, keyed by its sha256 and the config's, as JSON and ONNX only
    key = f"{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}-" \
          f"{hashlib.sha256(config_to_yaml(config).encode()).hexdigest()[:12]}"
    folder = path.with_name(path.name + ".int8") / key
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [entry["module"] for entry in manifest["regions"]] == regions
    assert {p.suffix for p in folder.iterdir()} == {".json", ".onnx"}
    assert manifest["budget"]["worst_mean"] <= 1 / 255 and manifest["calibration_frames"] == 6

    # per output channel weight scales, one scale per activation tensor
    graph = onnx.load(folder / manifest["regions"][regions.index("generator.bottleneck")]["file"]).graph
    initial = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    weight_scales = {initial[p.input[1]].shape for n in convs for p in graph.node
                     if p.op_type == "DequantizeLinear" and p.output[0] == n.input[1]}
    width = model.generator.bottleneck[0].conv1.out_channels
    assert weight_scales == {(width,)}
    activation_scales = [initial[p.input[1]] for n in convs for p in graph.node
                         if p.op_type == "DequantizeLinear" and p.output[0] == n.input[0]]
    assert activation_scales and all(scale.shape == () and scale > 0 for scale in activation_scales)


def test_a_stored_calibration_is_read_back_not_redone(checkpoint, frames, vnni, monkeypatch, caplog):
    config, path = checkpoint
    model = load_animation_model(config, path, CPU)
    _, first = animate(model, frames, "auto")

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated again although a calibration is stored")
    with monkeypatch.context() as patch:
        patch.setattr(quantize, "calibrate", no_calibration)
        again, second = animate(load_animation_model(config, path, CPU), frames, "auto")
    assert again.precision.int8 and regions_of(again.model)
    torch.testing.assert_close(second, first, atol=1e-6, rtol=0)

    # a graph that is not the one the manifest names is not run: calibrated again, with a warning
    graph = next(path.with_name(path.name + ".int8").glob("*/region00.onnx"))
    graph.write_bytes(graph.read_bytes() + b"\0")
    calls = []
    real = quantize.calibrate
    monkeypatch.setattr(quantize, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level(logging.WARNING):
        redone, third = animate(load_animation_model(config, path, CPU), frames, "auto")
    assert calls == [1] and "unreadable" in caplog.text
    assert redone.precision.int8
    quantize.Calibration.read(graph.parent)  # the broken one replaced by the new calibration


def test_default_output_is_within_the_budget_of_fp32(trained, frames):
    """Whatever `auto` picks on this CPU (int8, bf16 or fp32)."""
    config, path = trained
    model = load_animation_model(config, None, CPU)
    model.load_state_dict(load_animation_model(config, path, CPU).state_dict())  # no stored calibration
    _, default = animate(model, frames, "auto")
    _, fp32 = animate(model, frames, "fp32")
    means, p99 = quantize.frame_errors(default, fp32)
    assert means.max() <= 1 / 255 and p99.max() <= 4 / 255, (means.max() * 255, p99.max() * 255)


def test_auto_falls_back_to_float_when_the_budget_breaks(trained, frames, vnni, monkeypatch, caplog):
    config, path = trained
    model = load_animation_model(config, None, CPU)
    model.load_state_dict(load_animation_model(config, path, CPU).state_dict())
    monkeypatch.setattr(quantize, "BUDGET_MEAN", 0.0)  # no int8 output can be that close
    with caplog.at_level(logging.WARNING, logger="core.devices"):
        auto, out = animate(model, frames, "auto")
    assert auto.precision == devices.resolve("bf16", "cpu") and not regions_of(auto.model)
    assert len([r for r in caplog.records if f"running {auto.precision} instead" in r.message]) == 1
    _, bf16 = animate(model, frames, "bf16")
    torch.testing.assert_close(out, bf16)
    asked, _ = animate(model, frames, "int8")  # asked for: int8 stays, with a warning
    assert asked.precision.int8 and regions_of(asked.model)
    assert "running int8 as asked" in caplog.text
