"""The bf16 fast path's error against fp32 on real face frames, with a tiny FOMM that has
learnt something (30 steps on real face frames; random weights exaggerate): per frame mean
|bf16 - fp32| <= 1/255 and 99th percentile <= 4/255 (issue 12). Runs on any CPU: where bf16
is emulated it is slow but the numbers are the same kind."""
from __future__ import annotations

import subprocess

import pytest
import torch

from benchmarks.animate import clip_frames, error_budget
from core.media import ffmpeg_exe
from fomm.animation import load_animation_model
from fomm.train import resolve_run_config, train


@pytest.mark.slow
def test_bf16_error_budget_on_real_frames_with_a_trained_tiny_model(shared_data, tmp_path):
    data = tmp_path / "faces"
    for name in ("00", "08", "10"):
        folder = data / "train" / f"demo{name}"
        folder.mkdir(parents=True)
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(shared_data / f"faces/fomm-demo/{name}.mp4"),
                        "-frames:v", "60", "-vf", "scale=64:64", str(folder / "%05d.png")], check=True)
    config = resolve_run_config("tiny", ["train_params.max_steps=30", "train_params.num_repeats=100",
                                         "train_params.checkpoint_every=30", "train_params.image_every=1000"], None)
    train(config, data, tmp_path / "run")
    model = load_animation_model(config, tmp_path / "run" / "checkpoints" / "step-0000030.pt", torch.device("cpu"))
    result = error_budget(model, clip_frames(shared_data / "faces/liveportrait/d12.mp4", 25, (64, 64)), "tiny")
    assert result["worst mean (/255)"] <= 1 and result["worst p99 (/255)"] <= 4, result
    assert result["max (/255)"] > 0  # the two paths really differ: bf16 ran
