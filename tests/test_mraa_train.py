"""MRAA in the shared training loop on real frames: 50 reconstruction steps at the original's
settings (configs/mraa-tiny.yaml: tiny widths) and 50 AVD-stage steps from that run's
checkpoint, each against an lr-0 control on the same batches; then `pipeline run animate`
in the three modes with the checkpoints the two stages wrote."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fomm.config import load_config
from fomm.mraa.model import MRAA

STEPS = 50


@pytest.fixture(scope="module")
def face_root(shared_data, tmp_path_factory) -> Path:
    """One real talking-head clip (fomm-demo/08.mp4, frames 0, 10, ..., 150) as PNG frames of the
    original layout's train split; the loop resizes them to 64x64."""
    from PIL import Image

    from core.media import read_frames
    root = tmp_path_factory.mktemp("faces")
    clip = root / "train" / "face08"
    clip.mkdir(parents=True)
    for index, frame in enumerate(read_frames(shared_data / "faces" / "fomm-demo" / "08.mp4", 0, 160)[::10]):
        Image.fromarray(frame).save(clip / f"{index:07d}.png")
    return root


def curve(run: Path, *keys: str) -> np.ndarray:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == STEPS
    return np.array([sum(r[k] for k in keys) for r in records])


def run_pair(config_name: str, overrides: list[str], lr_key: str, root: Path, out: Path, stage: str = "reconstruction",
             init: Path | None = None) -> dict[str, Path]:
    """The same run at the config's learning rate and at 0 (same seed, hence the same batches)."""
    from fomm.train import seed_everything, train
    runs = {}
    for name, lr in (("trained", None), ("control", 0.0)):
        extra = [] if lr is None else [f"{lr_key}={lr}"]
        config = MRAA.stage_config(load_config(config_name, overrides + extra), stage)
        seed_everything(config.train_params.seed)
        runs[name] = out / f"{stage}-{name}"
        train(config, root, runs[name], init_checkpoint=init)
    return runs


@pytest.fixture(scope="module")
def reconstruction_runs(face_root, tmp_path_factory) -> dict:
    """50 steps of the reconstruction stage at batch 2, recording each step's batch."""
    from fomm.train import seed_everything, train
    batches = []
    original = MRAA.reconstruction_losses

    def recording(self, source, driving, kit):
        batches.append((source.clone(), driving.clone()))
        return original(self, source, driving, kit)

    config = load_config("mraa-tiny", ["train_params.num_repeats=400", "train_params.batch_size=2",
                                       "train_params.checkpoint_every=50", "train_params.image_every=50"])
    out = tmp_path_factory.mktemp("mraa-runs") / "reconstruction"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MRAA, "reconstruction_losses", recording)
        seed_everything(config.train_params.seed)
        train(config, face_root, out)
    return {"trained": out, "config": config, "batches": batches}


def test_fifty_reconstruction_steps_lower_the_loss(reconstruction_runs):
    """train.py's settings (one Adam at lr 2e-4, betas 0.5 / 0.999, over generator, region and
    background predictors; perceptual pyramid + equivariance on shifts and affines): the
    perceptual loss of the last 10 steps is below that of the same initial model at lr 0 on the
    same batches (train mode, so exactly an lr-0 run's), and step 1, before any update, agrees.
    The checkpoint has the released layout."""
    from fomm.checkpoint import load_checkpoint_file
    from fomm.registry import build_model
    from fomm.train import build_kit, seed_everything
    config, batches = reconstruction_runs["config"], reconstruction_runs["batches"]
    trained = curve(reconstruction_runs["trained"], "perceptual")
    assert len(batches) == STEPS
    seed_everything(config.train_params.seed)  # train() seeds the same way before it builds the model
    control_model = build_model(config).train()
    kit = build_kit(config, "cpu")
    with torch.no_grad():
        def control(i):
            source, driving = batches[i]
            return float(kit.perceptual(control_model.reconstruct(source, driving)["prediction"], driving))
        first, last = control(0), np.mean([control(i) for i in range(STEPS - 10, STEPS)])
    print(f"mraa tiny: last-10-step perceptual trained {trained[-10:].mean():.4f}, lr-0 control {last:.4f}")
    assert np.isclose(trained[0], first, rtol=1e-5), (trained[0], first)
    assert trained[-10:].mean() < 0.9 * last, (trained[-10:].mean(), last)
    checkpoint = load_checkpoint_file(reconstruction_runs["trained"] / "checkpoints" / f"step-{STEPS:07d}.pt")
    assert {"generator", "bg_predictor", "region_predictor", "optimizer_reconstruction"} <= set(checkpoint)
    assert "avd_network" not in checkpoint  # not trained yet, as the original's reconstruction checkpoints
    assert checkpoint["optimizer_reconstruction"]["param_groups"][0]["betas"] == (0.5, 0.999)


@pytest.fixture(scope="module")
def avd_runs(face_root, reconstruction_runs, tmp_path_factory) -> dict[str, Path]:
    """50 AVD-stage steps from the trained reconstruction checkpoint, batch 4: trained and lr-0."""
    init = reconstruction_runs["trained"] / "checkpoints" / f"step-{STEPS:07d}.pt"
    overrides = ["model_params.mraa_params.train_avd_params.num_repeats=400",
                 "model_params.mraa_params.train_avd_params.batch_size=4",
                 "train_params.max_steps=50", "train_params.checkpoint_every=50", "train_params.image_every=50"]
    return run_pair("mraa-tiny", overrides, "model_params.mraa_params.train_avd_params.lr", face_root,
                    tmp_path_factory.mktemp("mraa-avd"), stage="avd", init=init)


def test_fifty_avd_steps_lower_the_loss(avd_runs, reconstruction_runs):
    """train_avd.py's settings (Adam at 1e-3 on the AVD network alone, driving regions scaled by
    U[0.75, 1.25] per axis, L1 on shift and affine): the loss of the last 10 steps is below the
    lr-0 control's; the generator is the reconstruction run's, unchanged, and the checkpoint
    adds avd_network and optimizer_avd."""
    from fomm.checkpoint import load_checkpoint_file
    trained = curve(avd_runs["trained"], "rec_shift", "rec_affine")
    control = curve(avd_runs["control"], "rec_shift", "rec_affine")
    print(f"mraa tiny AVD: last-10-step loss trained {trained[-10:].mean():.4f}, lr-0 control "
          f"{control[-10:].mean():.4f}")
    assert np.isclose(trained[0], control[0], rtol=1e-5)
    assert trained[-10:].mean() < 0.8 * control[-10:].mean(), (trained[-10:].mean(), control[-10:].mean())
    after = load_checkpoint_file(avd_runs["trained"] / "checkpoints" / f"step-{STEPS:07d}.pt")
    before = load_checkpoint_file(reconstruction_runs["trained"] / "checkpoints" / f"step-{STEPS:07d}.pt")
    assert {"avd_network", "optimizer_avd"} <= set(after) and "optimizer_reconstruction" not in after
    assert after["config"]["train_params"]["stage"] == "avd"
    assert all(torch.equal(after["generator"][k], v) for k, v in before["generator"].items())


@pytest.mark.parametrize("stage,mode", [("avd", "avd"), ("reconstruction", "relative")])
def test_animate_modes(stage, mode, avd_runs, reconstruction_runs, shared_data, tmp_path):
    """`pipeline run animate --model mraa --mode ...` through the Animator (batches, the
    inference copy) with the checkpoints the loop wrote; --mode avd needs the AVD stage's.
    (--mode standard is the driving regions as they are: test_transfer_modes_and_region_properties.)"""
    from core.media import probe
    from stages.cli import main
    runs = avd_runs if stage == "avd" else reconstruction_runs
    checkpoint = runs["trained"] / "checkpoints" / f"step-{STEPS:07d}.pt"
    out = tmp_path / "animated.mp4"
    args = ["run", "animate", "--model", "mraa", "--config", "mraa-tiny", "--checkpoint", str(checkpoint),
            "--source", str(shared_data / "faces" / "fomm-demo" / "02.png"),
            "--driving", str(shared_data / "faces" / "fomm-demo" / "04.mp4"),
            "--out", str(out), "--max-frames", "5", "--device", "cpu", "--batch-size", "2", "--mode", mode]
    assert main(args) == 0
    assert probe(out).num_frames == 5
    if mode == "relative":
        assert main(args[:-1] + ["avd"]) == 2  # no AVD network in a reconstruction checkpoint: one line, exit 2
