"""TPSMM training in the shared loop (fomm/train.py) at the original's settings (tiny widths,
64 px, real Tai-Chi frames): 50 steps of the reconstruction stage and 50 of the AVD stage
against lr-0 controls on the same batches, resume, Ray Train DDP, and the schedule hooks
(TPS dropout, bg_start, gradient clipping, the optimisers of train.py and train_avd.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import config_to_dict
from fomm.checkpoint import load_checkpoint_file, save_checkpoint
from fomm.registry import build_model
from fomm.tpsmm.model import TPSMM, dropout_probability
from fomm.train import build_kit, build_optimizers, resolve_run_config, seed_everything, train


def tiny(*overrides: str, stage: str = "reconstruction"):
    return resolve_run_config("tpsmm-tiny", list(overrides), None, stage=stage)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def recorded(monkeypatch):
    """Every generator_losses call's batch, epoch, stage and torch RNG state (the TPS dropout,
    the random TPS and random_scale draw from it), to replay them on an lr-0 control."""
    calls = []
    original = TPSMM.generator_losses

    def recording(self, source, driving, kit):
        calls.append({"source": source.clone(), "driving": driving.clone(), "epoch": self.epoch,
                      "stage": self.stage, "rng": torch.get_rng_state()})
        return original(self, source, driving, kit)

    monkeypatch.setattr(TPSMM, "generator_losses", recording)
    return calls


def control_losses(config, calls: list[dict], indices, init: Path | None = None) -> list[float]:
    """The summed losses of the untrained model (lr 0: train() builds it from the same seed, or
    loads `init`) on the recorded calls, in training mode, with their epoch and RNG state."""
    seed_everything(config.train_params.seed)
    model = build_model(config)
    if init is not None:
        model.load_checkpoint_state(model.state_from_checkpoint(load_checkpoint_file(init)))
    kit = build_kit(config, "cpu")
    out = []
    with torch.no_grad():
        for i in indices:
            call = calls[i]
            model.set_stage(call["stage"])
            model.set_epoch(call["epoch"])
            model.train()
            torch.set_rng_state(call["rng"])
            if call["stage"] == "avd":  # the stages' own methods: generator_losses is the recorder here
                losses, _ = model.avd_losses(call["source"], call["driving"])
            else:
                losses, _ = model.reconstruction_losses(call["source"], call["driving"], kit)
            out.append(float(sum(losses.values())))
    return out


# Two 50-step runs' worth: ~35 s of the 2-core machine (the 50 trained steps; the control is
# 11 forward passes).
def test_fifty_steps_at_the_original_settings_lower_the_loss(taichi_root, tmp_path, recorded):
    """fomm.train.train with tpsmm-tiny (train.py's losses, Adam with weight decay, clipping,
    TPS dropout rising over 10 epochs of 5 steps, background motion from epoch 0), batch 2:
    step 1 (before any update) equals the control's loss on the same batch and draws, and the
    last 10 steps' loss is below the lr-0 control's on those batches."""
    config = tiny("train_params.batch_size=2", "train_params.num_repeats=5", "train_params.num_epochs=100")
    train(config, taichi_root, tmp_path / "run")
    trained = [r["loss"] for r in metrics(tmp_path / "run")]
    assert len(trained) == len(recorded) == 50
    assert [c["epoch"] for c in recorded[::5]] == list(range(10))
    assert set(metrics(tmp_path / "run")[0]) >= {"perceptual", "equivariance_value", "warp_loss", "bg"}
    control = control_losses(config, recorded, [0, *range(40, 50)])
    assert math.isclose(control[0], trained[0], rel_tol=1e-5), (control[0], trained[0])
    last, last_control = np.mean(trained[-10:]), np.mean(control[1:])
    print(f"tpsmm tiny: last-10-step loss {last:.4f} trained, {last_control:.4f} at lr 0 (step 1: {trained[0]:.4f})")
    assert last < 0.8 * last_control, (last, last_control)  # measured: 6.23 against 13.42


def save_untrained(config, path: Path) -> Path:
    """A reconstruction-stage checkpoint as the loop writes it (config inside), untrained."""
    seed_everything(config.train_params.seed)
    save_checkpoint(path, {"config": config_to_dict(config), **build_model(config).checkpoint_state()})
    return path


def test_avd_stage_fifty_steps_train_only_the_avd_network(taichi_root, tmp_path, recorded):
    """`train --stage avd --checkpoint K` (train_avd.py): 50 steps of the AVD network at
    train_avd_params' settings (Adam lr 1e-3, no weight decay, random_scale 0.25); its
    keypoint loss falls below the lr-0 control's on the same batches and draws; every other
    network's weights are the checkpoint's (their BatchNorm statistics move, as the original
    leaves them in training mode)."""
    first = tiny()
    init = save_untrained(first, tmp_path / "reconstruction.pt")
    config = tiny("model_params.tpsmm_params.train_avd_params.num_repeats=100", "train_params.max_steps=50",
                  stage="avd")
    assert (config.train_params.stage, config.train_params.batch_size) == ("avd", 4)
    train(config, taichi_root, tmp_path / "avd", init_checkpoint=init)
    trained = [r["rec_kp"] for r in metrics(tmp_path / "avd")]
    assert len(trained) == 50 and all(c["stage"] == "avd" for c in recorded)
    control = control_losses(config, recorded, [0, *range(40, 50)], init=init)
    assert math.isclose(control[0], trained[0], rel_tol=1e-5), (control[0], trained[0])
    print(f"tpsmm tiny avd: last-10-step rec_kp {np.mean(trained[-10:]):.4f} trained, "
          f"{np.mean(control[1:]):.4f} at lr 0")
    assert np.mean(trained[-10:]) < 0.8 * np.mean(control[1:])

    before, after = load_checkpoint_file(init), load_checkpoint_file(tmp_path / "avd" / "checkpoints" / "step-0000050.pt")
    assert set(after) >= {"optimizer_avd", "avd_network", "kp_detector", "inpainting_network"}
    assert after["optimizer_avd"]["param_groups"][0]["weight_decay"] == 0
    for name in ("inpainting_network", "dense_motion_network", "kp_detector", "bg_predictor"):
        for key, value in before[name].items():
            if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert torch.equal(value, after[name][key]), f"{name}.{key}"
    assert not torch.equal(before["avd_network"]["decoder.9.weight"], after["avd_network"]["decoder.9.weight"])


def test_stopped_and_resumed_run_equals_unbroken_run(taichi_root, tmp_path):
    """3 steps an epoch; stopped at step 2 (mid-epoch 0) and resumed to step 4 (epoch 1, whose
    TPS dropout probability differs): bit-identical to the unbroken run."""
    common = ["train_params.batch_size=2", "train_params.num_repeats=3", "train_params.num_epochs=10",
              "train_params.checkpoint_every=2", "train_params.epoch_milestones=[1]"]
    unbroken, stopped = tmp_path / "unbroken", tmp_path / "stopped"
    train(tiny(*common, "train_params.max_steps=4"), taichi_root, unbroken)
    train(tiny(*common, "train_params.max_steps=2"), taichi_root, stopped)
    train(tiny(*common, "train_params.max_steps=4"), taichi_root, stopped, resume=True)
    a = load_checkpoint_file(unbroken / "checkpoints" / "step-0000004.pt")
    b = load_checkpoint_file(stopped / "checkpoints" / "step-0000004.pt")
    assert a["epoch"] == b["epoch"] == 1 and a["batch_in_epoch"] == b["batch_in_epoch"] == 1
    for part in ("inpainting_network", "dense_motion_network", "kp_detector", "bg_predictor", "avd_network"):
        assert all(torch.equal(value, b[part][key]) for key, value in a[part].items()), part
    for name in ("optimizer_generator", "optimizer_bg_predictor"):
        group = a[name]["param_groups"][0]
        assert group["lr"] == pytest.approx(2e-5) and group["weight_decay"] == 1e-4  # one milestone passed
        for key, state in a[name]["state"].items():
            assert all(torch.equal(state[k], b[name]["state"][key][k]) for k in ("exp_avg", "exp_avg_sq")), name
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert [r["loss"] for r in metrics(unbroken)] == [r["loss"] for r in metrics(stopped)]


# --------------------------------------------------------------------------- the schedule hooks
def test_dropout_schedule_and_bg_start_follow_the_original():
    """GeneratorFullModel: p = min(epoch / dropout_inc_epoch * dropout_maxp + dropout_startp,
    dropout_maxp) before dropout_epoch, none after; the background affine, its loss and its
    optimiser from bg_start (vox-256: 10)."""
    params = tiny().model_params.tpsmm_params
    assert [dropout_probability(params, e) for e in (0, 5, 7, 34, 35)] == pytest.approx([0.1, 0.25, 0.3, 0.3, None])
    model = build_model(tiny("model_params.tpsmm_params.bg_start=1")).train()
    kit = build_kit(tiny(), "cpu")
    optimizers = build_optimizers(model, tiny())
    assert set(optimizers) == {"generator", "bg_predictor"}
    for opt in optimizers.values():
        assert opt.defaults["lr"] == 2e-4 and opt.defaults["weight_decay"] == 1e-4 and opt.defaults["betas"] == (0.5, 0.999)
    frames = torch.rand(4, 3, 64, 64)
    before = {k: v.clone() for k, v in model.bg_predictor.state_dict().items()}
    model.set_epoch(0)
    losses, generated = model.generator_losses(frames[:2], frames[2:], kit)
    assert losses["bg"].item() == 0 and losses["bg"].requires_grad  # a gradient path for DDP
    with torch.no_grad():  # no background motion yet: transformation 0 is the identity grid
        assert torch.allclose(generated["deformed_source"][:, 0], model.dense_motion_network.down(frames[:2]),
                              atol=1e-5)
    sum(losses.values()).backward()
    model.clip_gradients()
    assert all(p.grad is None for p in model.bg_predictor.parameters())
    for opt in optimizers.values():
        opt.step()
    after = model.bg_predictor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith(("running_mean", "running_var",
                                                                                  "num_batches_tracked")))
    model.set_epoch(1)
    for opt in optimizers.values():
        opt.zero_grad()
    losses, _ = model.generator_losses(frames[:2], frames[2:], kit)
    sum(losses.values()).backward()
    model.clip_gradients()
    assert losses["bg"].item() == 0  # its fc starts at the identity affine: the two directions compose to I
    grads = [p.grad for p in model.bg_predictor.parameters()]
    assert all(g is not None for g in grads) and max(float(g.abs().max()) for g in grads) <= 10
    assert float(model.bg_predictor.bg_encoder.fc.weight.grad.abs().max()) > 0  # through the flow
    for net in (model.kp_detector, model.dense_motion_network):
        assert max(float(p.grad.abs().max()) for p in net.parameters() if p.grad is not None) <= 10


def test_clipping_is_train_py_s_inf_norm_at_10_on_two_networks():
    model = build_model(tiny())
    for param in model.parameters():
        param.grad = torch.full_like(param, 50.0)
    model.set_epoch(0)
    model.clip_gradients()
    assert all(float(p.grad.abs().max()) == pytest.approx(10) for p in model.kp_detector.parameters())
    assert all(float(p.grad.abs().max()) == pytest.approx(10) for p in model.dense_motion_network.parameters())
    assert all(float(p.grad.abs().max()) == 50 for p in model.inpainting_network.parameters())


def test_avd_stage_schedule_reproduces_train_avd_s_scheduler():
    """train_avd.py steps MultiStepLR(milestones) with scheduler.step(epoch) after each epoch,
    which decays one epoch late; the stage config's milestones + 1 with the loop's plain
    step() give the same learning rate in every epoch."""
    config = tiny(stage="avd")
    avd = config.model_params.tpsmm_params.train_avd_params
    assert config.train_params.epoch_milestones == tuple(m + 1 for m in avd.epoch_milestones)
    assert (config.train_params.num_epochs, config.train_params.batch_size) == (avd.num_epochs, avd.batch_size)
    milestones = [3, 6]

    def lrs(steps, schedule_milestones, with_epoch):
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, schedule_milestones, gamma=0.1)
        out = []
        for epoch in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            with pytest.warns(UserWarning) if with_epoch else _nothing():
                scheduler.step(epoch) if with_epoch else scheduler.step()
        return out

    assert lrs(9, milestones, True) == pytest.approx(lrs(9, [m + 1 for m in milestones], False))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


# --------------------------------------------------------------------------- DDP
def test_two_ray_workers_train_tpsmm_with_synchronised_batchnorm(taichi_root, tmp_path):
    """`--workers 2` (Ray Train, DDP over gloo, one frame per worker): every BatchNorm of the
    two ResNet-18s and the AVD network is synchronised, and the bg predictor, idle before
    bg_start (epoch 1 here), stays in DDP's gradient all-reduce through its zero-loss path:
    untouched by step 1, trained by step 2."""
    from torch import nn

    from fomm.distributed import GlooSyncBatchNorm, synchronize_batch_norm, train_distributed
    config = tiny("train_params.batch_size=2", "train_params.num_repeats=1", "train_params.num_epochs=10",
                  "train_params.max_steps=2", "train_params.checkpoint_every=1", "model_params.tpsmm_params.bg_start=1")
    model = synchronize_batch_norm(build_model(config), "cpu")
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, GlooSyncBatchNorm) for m in model.modules()) == 40 + 9
    seed_everything(config.train_params.seed)
    initial = build_model(config).bg_predictor.state_dict()
    train_distributed(train, config, taichi_root, tmp_path / "ray", num_workers=2)
    curve = metrics(tmp_path / "ray")
    assert [r["step"] for r in curve] == [1, 2] and [r["epoch"] for r in curve] == [1, 2]
    assert all(np.isfinite(r["loss"]) and "bg" in r for r in curve)
    steps = [load_checkpoint_file(tmp_path / "ray" / "checkpoints" / f"step-{s:07d}.pt") for s in (1, 2)]
    weights = [k for k in initial if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(steps[0]["bg_predictor"][k], initial[k]) for k in weights)
    assert not all(torch.equal(steps[1]["bg_predictor"][k], initial[k]) for k in weights)


def test_bf16_autocast_and_channels_last_training_step():
    """The GPU training path (bf16 autocast, channels_last) with CPU autocast as a stand-in:
    keypoints, the background affine, TPS grids and the flow stay float32; losses and
    gradients are finite."""
    config = tiny()
    model = build_model(config).to(memory_format=torch.channels_last).train()
    kit = build_kit(config, "cpu")
    frames = torch.rand(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, generated = model.generator_losses(frames[:2], frames[2:], kit)
    sum(losses.values()).backward()
    assert generated["kp_driving"]["fg_kp"].dtype == torch.float32
    assert generated["deformation"].dtype == torch.float32 and generated["contribution_maps"].dtype == torch.float32
    assert all(torch.isfinite(v) for v in losses.values())
    grads = [p.grad for p in model.optimizer_groups()["generator"] if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
