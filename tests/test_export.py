"""`pipeline run export --format onnx` and `animate --backend onnxruntime`: the tiny FOMM's
graphs agree with torch on real frames at batch sizes other than the traced one."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from core.errors import UserError
from core.outputs import MARKER
from core.frames import to_tensor
from core.media import iter_frames, probe
from fomm import export
from fomm.animation import animate
from fomm.animation import AnimateOptions, Animator, load_animation_model
from fomm.config import load_config
from stages import cli


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """The tiny FOMM with its jacobian head and BatchNorm statistics away from their
    initial values (identity jacobians would leave the inverse untested), as a checkpoint."""
    from fomm.registry import build_model
    torch.manual_seed(0)
    config = load_config("tiny")
    model = build_model(config)
    with torch.no_grad():
        model.kp_detector.jacobian.weight.normal_(0, 0.02)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(model.checkpoint_state(), path)
    return config, path


@pytest.fixture(scope="module")
def exported(trained_like, shared_data, tmp_path_factory):
    config, checkpoint = trained_like
    out = tmp_path_factory.mktemp("export") / "tiny-onnx"
    code = cli.main(["run", "export", "--config", "tiny", "--checkpoint", str(checkpoint), "--format", "onnx",
                     "--out", str(out), "--check-frames", str(shared_data / "faces/fomm-demo/04.mp4")])
    assert code == 0
    return out


def real_frames(shared_data, count: int, size=(64, 64)) -> np.ndarray:
    from fomm.source_crop import resize
    return np.stack([resize(f, size) for f in iter_frames(shared_data / "faces/fomm-demo/08.mp4", 0, count)])


def test_export_writes_graphs_config_and_parity_report(exported):
    import json
    report = json.loads((exported / export.REPORT_FILE).read_text())
    assert sorted(p.name for p in exported.iterdir()) == sorted(
        [export.KP_FILE, export.GENERATOR_FILE, export.CONFIG_FILE, export.REPORT_FILE, MARKER])
    assert max(report["max_abs_diff"].values()) <= 1e-4 and report["batches"] == [1, 4]
    assert load_config(exported / export.CONFIG_FILE) == load_config("tiny")


def test_onnxruntime_matches_torch_on_real_frames(trained_like, exported, shared_data):
    """Another clip and batch 3 (the graphs were traced at batch 4): keypoints, jacobians
    and the animated frames agree within 1e-4, jacobians far from the identity included."""
    config, checkpoint = trained_like
    model = load_animation_model(config, checkpoint, torch.device("cpu"))
    runner = export.OnnxFomm(exported)
    frames = to_tensor(real_frames(shared_data, 4), torch.device("cpu"))  # (4, 3, 64, 64)
    source, driving = frames[:1], frames[1:]
    fp32 = AnimateOptions(precision="fp32")
    want = Animator(model, source, driving[:1], fp32, torch.device("cpu"))(driving)
    got = Animator(runner, source, driving[:1], fp32, torch.device("cpu"))(driving)
    jacobian = want["motion_driving"]["jacobian"]
    assert (jacobian - torch.eye(2)).abs().max() > 0.05  # not the identity
    for key in ("value", "jacobian"):
        assert (got["motion_driving"][key] - want["motion_driving"][key]).abs().max() <= 1e-4
        assert (got["motion_transferred"][key] - want["motion_transferred"][key]).abs().max() <= 1e-4
    assert (got["prediction"] - want["prediction"]).abs().max() <= 1e-4


def test_animate_cli_with_onnxruntime_backend(trained_like, exported, shared_data, tmp_path):
    config, checkpoint = trained_like
    out = tmp_path / "ort.mp4"
    source, driving = shared_data / "faces/sadtalker/happy.png", shared_data / "faces/fomm-demo/08.mp4"
    # unmarked both: the watermark spreads each run's id over every cell (core/watermark.py), and
    # the two runs have different ids, so marked files differ by design
    assert cli.main(["run", "animate", "--backend", "onnxruntime", str(exported), "--source", str(source),
                     "--driving", str(driving), "--out", str(out), "--max-frames", "6", "--device", "cpu",
                     "--no-provenance"]) == 0
    reference = animate(load_animation_model(config, checkpoint, torch.device("cpu")), config, source, driving,
                        tmp_path / "torch.mp4", AnimateOptions(max_frames=6, precision="fp32", provenance=False))
    assert probe(out).num_frames == reference.num_frames == 6
    ours = np.stack(list(iter_frames(out, 0, 6))).astype(float)
    theirs = np.stack(list(iter_frames(tmp_path / "torch.mp4", 0, 6))).astype(float)
    assert np.abs(ours - theirs).mean() < 0.5  # same pixels up to the encoder's rounding


def test_export_refuses_other_families_and_bad_folders(tmp_path):
    from fomm.registry import build_model
    with pytest.raises(UserError, match="export supports the fomm, mraa and tpsmm families; .x2face. is not exported"):
        export.export_onnx(build_model(load_config("x2face-tiny")), load_config("x2face-tiny"), tmp_path / "x",
                           np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(UserError, match="pipeline run export"):
        export.OnnxFomm(tmp_path)
    assert not (tmp_path / "x").exists()


def test_options_resolve_the_export_and_refuse_a_bad_value_before_writing(shared_data, tmp_path):
    """stages.export.options: a loaded Config with its --set overrides, Paths, random weights
    as no checkpoint; a bad value is one UserError and nothing appears under --out."""
    from pathlib import Path

    from fomm.config import Config
    from stages import export as stage
    out = tmp_path / "onnx"
    frames = shared_data / "faces/fomm-demo/04.mp4"

    def parse(*extra):
        return cli.build_parser("export").parse_args(["run", "export", "--config", "tiny", "--out", str(out), *extra])

    opts = stage.options(parse("--random-weights", "--check-frames", str(frames),
                               "--set", "model_params.common_params.num_kp=5"))
    assert isinstance(opts, stage.ExportOptions) and isinstance(opts.config, Config)
    assert opts.config.model_params.common_params.num_kp == 5 and opts.checkpoint is None
    assert (opts.out, opts.check_frames, opts.format) == (out, frames, "onnx") and isinstance(opts.out, Path)
    assert opts.inputs == {"--checkpoint": None, "--check-frames": str(frames), "--config": "tiny"}
    with_weights = stage.options(parse("--checkpoint", str(tmp_path / "k.pth")))
    assert with_weights.checkpoint == tmp_path / "k.pth" and with_weights.check_frames is None
    for bad, message in ((["--random-weights", "--format", "tflite"], "--format 'tflite': expected onnx"),
                         ([], "--checkpoint is required (or --random-weights for a smoke test)"),
                         (["--random-weights", "--set", "model_params.common_params.num_kp=x"], "num_kp")):
        with pytest.raises(UserError, match=re.escape(message)):
            stage.options(parse(*bad))
        assert not out.exists()
