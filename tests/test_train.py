"""fomm/train.py: a tiny FOMM learns on real Tai-Chi frames, and the run writes what it promises."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core.frames import resize, to_tensor
from fomm.checkpoint import load_checkpoint_file, load_model
from fomm.config import config_from_dict
from fomm.data import open_clips
from fomm.registry import build_model
from fomm.train import resolve_run_config, seed_everything, train
from stages.cli import main as cli_main

# The perceptual loss's VGG19 costs ~3x the tiny model per step on these 2 shared cores, so
# the 50-step test trains on the L1 photometric term (plus equivariance) and measures L1
# on fixed pairs; the perceptual path runs in test_train_cli_writes_run_outputs.
FAST = ["train_params.loss_weights.perceptual=[0,0,0,0,0]", "train_params.loss_weights.reconstruction_l1=10"]


def fixed_pairs(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """8 pairs: source frame 0 of each clip, driving frames spread over the clip."""
    store = open_clips(root, "train")
    sources, drivings = [], []
    for clip in store.clips:
        n = store.num_frames(clip)
        frames = to_tensor(resize(store.read(clip, [0, n // 5, 2 * n // 5, 3 * n // 5, 4 * n // 5]), (64, 64)))
        sources.append(frames[:1].expand(4, -1, -1, -1))
        drivings.append(frames[1:])
    return torch.cat(sources), torch.cat(drivings)


@torch.no_grad()
def pair_l1(model, source, driving) -> float:
    model.train()  # batch statistics both before and after training: the same forward
    return float((model.reconstruct(source, driving)["prediction"] - driving).abs().mean())


def test_tiny_fomm_learns_on_real_frames(taichi_root, tmp_path, capsys):
    config = resolve_run_config("tiny", FAST + ["train_params.max_steps=50", "train_params.num_repeats=20", "train_params.num_epochs=100",
                                                "train_params.checkpoint_every=50", "train_params.image_every=50"], None)
    source, driving = fixed_pairs(taichi_root)
    seed_everything(config.train_params.seed)
    before = pair_l1(build_model(config), source, driving)  # the run's own initial weights

    out = tmp_path / "run"
    train(config, taichi_root, out)
    after = pair_l1(load_model(None, out / "checkpoints" / "step-0000050.pt"), source, driving)
    assert after <= 0.7 * before, f"L1 on fixed pairs fell only from {before:.4f} to {after:.4f}"

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 51))
    assert {"reconstruction_l1", "equivariance_value", "equivariance_jacobian", "loss"} <= set(records[0])
    first, last = np.mean([r["reconstruction_l1"] for r in records[:5]]), np.mean([r["reconstruction_l1"] for r in records[-5:]])
    assert last < first
    console = capsys.readouterr().out
    with capsys.disabled():
        print(f"\nfixed-pair L1 {before:.4f} -> {after:.4f} ({after / before:.0%})")
    lines = [l for l in console.splitlines() if l.startswith("step ")]
    assert len(lines) == 5  # log_every 10
    assert re.search(r"step 50/50 epoch \d+ reconstruction_l1 [\d.]+ equivariance_value [\d.]+ "
                     r"equivariance_jacobian [\d.]+ \| [\d.]+ it/s \| ETA 0.0 min", lines[-1])


def test_train_cli_writes_run_outputs(taichi_root, tmp_path):
    """`pipeline run train` with the default tiny losses (perceptual on the random VGG19 substitute)."""
    out = tmp_path / "cli"
    code = cli_main(["run", "train", "--config", "tiny", "--data", str(taichi_root), "--out", str(out),
                     "train_params.max_steps=2", "train_params.image_every=2", "train_params.num_repeats=4",
                     "train_params.epoch_milestones=[1]"])
    assert code == 0
    saved = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    assert saved == resolve_run_config("tiny", ["train_params.max_steps=2", "train_params.image_every=2",
                                                "train_params.num_repeats=4", "train_params.epoch_milestones=[1]"], None)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["perceptual"] > 0 and record["step"] == 2
    checkpoint = load_checkpoint_file(out / "checkpoints" / "step-0000002.pt")
    assert {"config", "generator", "kp_detector", "optimizer_generator",
            "optimizer_kp_detector", "schedulers", "step", "epoch", "rng"} <= set(checkpoint)
    # tiny has generator_gan 0: no discriminator is built, trained or saved
    assert "discriminator" not in checkpoint and "optimizer_discriminator" not in checkpoint
    assert {"python", "numpy", "torch"} <= set(checkpoint["rng"])
    assert checkpoint["config"]["train_params"]["max_steps"] == 2
    assert checkpoint["optimizer_generator"]["param_groups"][0]["betas"] == (0.5, 0.999)
    # 8 items / batch 4 = 2 steps per epoch: one epoch done, lr x0.1 at milestone 1
    assert checkpoint["epoch"] == 1 and checkpoint["optimizer_generator"]["param_groups"][0]["lr"] == pytest.approx(2e-5)
    from PIL import Image
    grid = np.asarray(Image.open(out / "images" / "step-0000002.png"))
    assert grid.shape == (4 * 66 + 2, 5 * 66 + 2, 3)  # 4 rows of source, driving+kp, deformed, occlusion, prediction
    cell = lambda r, c: grid[2 + 66 * r: 66 + 66 * r, 2 + 66 * c: 66 + 66 * c]
    assert not np.array_equal(cell(0, 0), cell(0, 3))


def test_train_rejects_bad_input(taichi_root, tmp_path):
    code = cli_main(["run", "train", "--config", "tiny", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert code == 2
    code = cli_main(["run", "train", "--config", "tiny", "--data", str(taichi_root), "--out", str(tmp_path / "o"),
                     "train_params.batch_size=64"])
    assert code == 2  # 2 clips make no batch of 64


def test_trains_from_parquet_shards_with_loader_workers(shared_data, tmp_path):
    """What `prepare` writes (shards + clips.parquet), read by a DataLoader worker process."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    root = tmp_path / "prepared"
    (root / "shards").mkdir(parents=True)
    files = sorted((shared_data / "bodies" / "dwnet-taichi" / "1").glob("*.png"))[:16]
    rows = [{"clip": f"taichi#c{c}#000000#000008", "frame_index": i, "png": f.read_bytes()}
            for c in range(2) for i, f in enumerate(files[8 * c: 8 * c + 8])]
    pq.write_table(pa.Table.from_pylist(rows), root / "shards" / "train-00000.parquet", row_group_size=5)
    out = tmp_path / "run"
    assert cli_main(["run", "train", "--config", "tiny", "--data", str(root), "--out", str(out), *FAST,
                     "train_params.max_steps=2", "train_params.num_repeats=4", "train_params.dataloader_workers=1"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)


@pytest.mark.slow
def test_tiny_fomm_perceptual_loss_falls(taichi_root, tmp_path):
    """The default tiny losses (perceptual on the random-VGG19 substitute): the perceptual
    term's mean over the last 10 of 50 steps is at least 30 % below the first 10's."""
    config = resolve_run_config("tiny", ["train_params.max_steps=50", "train_params.num_repeats=20",
                                         "train_params.num_epochs=100"], None)
    train(config, taichi_root, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = (np.mean([r["perceptual"] for r in part]) for part in (records[:10], records[-10:]))
    print(f"perceptual {first:.3f} -> {last:.3f}")
    assert last <= 0.7 * first


def test_no_discriminator_without_a_gan_loss():
    """FOMM builds and trains a discriminator only with generator_gan > 0; Monkey-Net keeps its
    discriminator (its feature matching reads it) but, without discriminator_gan, gives it
    no optimizer and no gradients."""
    from fomm.train import build_optimizers
    model = build_model(resolve_run_config("tiny", [], None))
    assert "discriminator" not in dict(model.named_children())
    assert not any("discriminator" in name for name, _ in model.named_parameters())
    assert set(build_optimizers(model, resolve_run_config("tiny", [], None))) == {"generator", "kp_detector"}
    with_gan = resolve_run_config("tiny", ["train_params.loss_weights.generator_gan=1"], None)
    assert set(build_optimizers(build_model(with_gan), with_gan)) == {"generator", "kp_detector", "discriminator"}

    config = resolve_run_config("monkey-net-tiny", ["train_params.loss_weights.discriminator_gan=0"], "monkey-net")
    monkey = build_model(config)
    assert set(build_optimizers(monkey, config)) == {"generator", "kp_detector"}
    assert not any(p.requires_grad for p in monkey.discriminator.parameters())
    assert all(p.requires_grad for p in monkey.generator.parameters())


def test_checkpoint_freq_and_losses_synced_only_at_log_steps(taichi_root, tmp_path, capsys, monkeypatch):
    """checkpoint_freq=3 writes a checkpoint at the end of epoch 3 (1 step per epoch here) as well
    as the last step's. Losses reach the host in two windows (steps 1-3 at the log step 3, step
    4 at the end), and metrics.jsonl holds every step's own values, and each optimizer's lr."""
    import fomm.train as loop
    per_step, windows = [], []

    def spy_step(*args, **kwargs):
        losses, generated = real_step(*args, **kwargs)
        per_step.append({k: float(v) for k, v in losses.items()})
        return losses, generated

    def spy_flush(window, dist_ctx):
        windows.append([entry["step"] for entry in window])
        return real_flush(window, dist_ctx)

    real_step, real_flush = loop.train_step, loop.flush_losses
    monkeypatch.setattr(loop, "train_step", spy_step)
    monkeypatch.setattr(loop, "flush_losses", spy_flush)
    out = tmp_path / "run"
    train(resolve_run_config("tiny", [*FAST, "train_params.batch_size=2", "train_params.max_steps=4",
                                      "train_params.num_epochs=10", "train_params.checkpoint_every=100",
                                      "train_params.image_every=100", "train_params.checkpoint_freq=3",
                                      "train_params.log_every=3"], None), taichi_root, out)
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000003.pt", "step-0000004.pt"]
    assert windows == [[1, 2, 3], [4]]
    printed = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert printed == ["3/4", "4/4"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record, values in zip(records, per_step):
        assert {k: record[k] for k in values} == values and record["loss"] == pytest.approx(sum(values.values()))
    assert len({r["reconstruction_l1"] for r in records}) == 4  # per-step values, not one repeated
    assert {"lr_generator", "lr_kp_detector"} <= set(records[0]) and "lr_discriminator" not in records[0]


def test_options_resolve_the_run_and_refuse_a_bad_value_before_writing(taichi_root, tmp_path):
    """stages.train.options: a resolved Config (overrides, family, stage applied), Paths, the
    checked worker count; a bad value is one UserError and nothing appears under --out."""
    from core.errors import UserError
    from fomm.config import Config
    from fomm.train import TrainOptions
    from stages import cli
    from stages import train as stage
    out = tmp_path / "run"

    def parse(*extra):
        return cli.build_parser("train").parse_args(["run", "train", "--config", "tiny", "--data", str(taichi_root),
                                                     "--out", str(out), *extra])

    opts = stage.options(parse("train_params.max_steps=3", "--resume"))
    assert isinstance(opts, TrainOptions) and isinstance(opts.config, Config)
    assert opts.config.train_params.max_steps == 3 and opts.stage == "reconstruction"
    assert opts.config == resolve_run_config("tiny", ["train_params.max_steps=3"], None)
    assert opts.data == taichi_root and opts.out == out and isinstance(opts.out, Path)
    assert (opts.init_checkpoint, opts.workers, opts.ray_address, opts.resume, opts.overwrite) == (None, 1, None,
                                                                                                  True, False)
    assert not opts.distributed and opts.config_source == "tiny"
    with pytest.raises(AttributeError):  # frozen: what `run` gets is what `options` checked
        opts.workers = 2
    start = tmp_path / "reconstruction.pt"
    start.write_bytes(b"")  # only checked to be a file here; the loop reads it
    avd = stage.options(cli.build_parser("train").parse_args(
        ["run", "train", "--config", "tpsmm-tiny", "--data", str(taichi_root), "--out", str(out), "--stage", "avd",
         "--checkpoint", str(start)]))
    assert avd.stage == "avd" == avd.config.train_params.stage and avd.init_checkpoint == start
    assert avd.config.model_params.name == "tpsmm"
    machine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for bad, message in ((["--workers", "0"], "--workers must be at least 1, got 0"),
                         (["--workers", str(10 * machine + 8)], "expected at most"),
                         (["--resume", "--overwrite"], "--resume and --overwrite contradict"),
                         (["train_params.max_steps=oops"], "max_steps")):
        with pytest.raises(UserError, match=re.escape(message)):
            stage.options(parse(*bad))
        assert not out.exists()
