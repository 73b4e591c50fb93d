"""`--workers 2`: the loop under Ray Train's TorchTrainer (DDP, gloo) on CPU.

"Within noise", defined: the seed changes a single-process curve (initial weights, pairs,
augmentations, equivariance transforms). Over the last 8 of 16 steps, the 2-worker run's
mean loss must be as close to the seed-0 single-process run (same initial weights and
the same pairs per step, split between workers) as a seed-1 run is, with a floor of 5 % of
the seed-0 mean for when two seeds happen to land close. Its first step, before any update,
sees the same weights and pairs, so its photometric loss must match seed 0's within 10 %
(BatchNorm statistics are synchronised over the workers, as the original's; equivariance
transforms are drawn per worker).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fomm.distributed import GlooSyncBatchNorm, synchronize_batch_norm, train_distributed
from fomm.registry import build_model
from fomm.train import resolve_run_config, train

STEPS, LAST = 16, 8
OVERRIDES = ["train_params.loss_weights.perceptual=[0,0,0,0,0]", "train_params.loss_weights.reconstruction_l1=10",
             f"train_params.max_steps={STEPS}", "train_params.num_repeats=40", "train_params.num_epochs=10",
             "train_params.checkpoint_every=1000", "train_params.image_every=1000", "train_params.log_every=10"]


def _curve(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_ray_workers_match_single_process_within_noise(taichi_root, tmp_path):
    config = resolve_run_config("tiny", OVERRIDES, None)
    train_distributed(train, config, taichi_root, tmp_path / "ray", num_workers=2)
    train(config, taichi_root, tmp_path / "seed0")
    train(resolve_run_config("tiny", OVERRIDES + ["train_params.seed=1"], None), taichi_root, tmp_path / "seed1")

    ray_curve, seed0, seed1 = (_curve(tmp_path / name) for name in ("ray", "seed0", "seed1"))
    assert [r["step"] for r in ray_curve] == list(range(1, STEPS + 1))
    assert (tmp_path / "ray" / "checkpoints" / f"step-{STEPS:07d}.pt").is_file()
    assert all(np.isfinite(r["loss"]) for r in ray_curve)

    tail = lambda curve: float(np.mean([r["loss"] for r in curve[-LAST:]]))
    ray_tail, tail0, tail1 = tail(ray_curve), tail(seed0), tail(seed1)
    noise = max(abs(tail1 - tail0), 0.05 * tail0)
    print(f"last-{LAST} mean loss: ray {ray_tail:.4f}, seed0 {tail0:.4f}, seed1 {tail1:.4f}, noise {noise:.4f}")
    assert abs(ray_tail - tail0) <= noise
    first_ray, first0 = ray_curve[0]["reconstruction_l1"], seed0[0]["reconstruction_l1"]
    assert abs(first_ray - first0) <= 0.1 * first0
    # and it learned: the last steps' photometric loss is below the first steps'
    assert np.mean([r["reconstruction_l1"] for r in ray_curve[-5:]]) < np.mean([r["reconstruction_l1"] for r in ray_curve[:5]])


def _sync_bn_worker(rank: int, world: int, init_file: str, batch: torch.Tensor, upstream: torch.Tensor,
                    result_dir: str) -> None:
    """One gloo worker: its share of the batch through a synchronised BatchNorm, then backward."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        norm = synchronize_batch_norm(_reference_norm(), "cpu")
        x = batch.chunk(world)[rank].clone().requires_grad_(True)
        out = norm(x)
        (out * upstream.chunk(world)[rank]).sum().backward()
        torch.save({"out": out.detach(), "x_grad": x.grad, "weight_grad": norm.weight.grad,
                    "bias_grad": norm.bias.grad, "running_mean": norm.running_mean,
                    "running_var": norm.running_var}, f"{result_dir}/{rank}.pt")
        # both ranks done before either tears its group down: gloo aborts a process whose peer
        # leaves while its threads still wait ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _reference_norm() -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 0.5, 2.0]))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return norm.train()


def test_two_gloo_workers_normalise_with_the_whole_batch(tmp_path):
    """Two CPU workers holding half a batch each get exactly what one BatchNorm over the whole
    batch gives: outputs, input and parameter gradients (summed over workers, which DDP then
    averages) and running statistics, as the original's synchronised BatchNorm."""
    generator = torch.Generator().manual_seed(3)
    batch = 2 + 3 * torch.randn(4, 3, 5, 6, generator=generator, dtype=torch.float64)
    batch[:2] += 5  # the two halves have different statistics: per-worker BN would differ
    upstream = torch.randn(4, 3, 5, 6, generator=generator, dtype=torch.float64)
    torch.multiprocessing.spawn(_sync_bn_worker, args=(2, str(tmp_path / "init"), batch, upstream, str(tmp_path)),
                                nprocs=2)
    parts = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(2)]

    reference = _reference_norm()
    x = batch.clone().requires_grad_(True)
    out = reference(x)
    (out * upstream).sum().backward()
    close = lambda a, b: torch.allclose(a, b, atol=1e-10, rtol=1e-10)
    assert close(torch.cat([p["out"] for p in parts]), out.detach())
    assert close(torch.cat([p["x_grad"] for p in parts]), x.grad)
    assert close(parts[0]["weight_grad"] + parts[1]["weight_grad"], reference.weight.grad)
    assert close(parts[0]["bias_grad"] + parts[1]["bias_grad"], reference.bias.grad)
    for p in parts:
        assert close(p["running_mean"], reference.running_mean) and close(p["running_var"], reference.running_var)
    alone = _reference_norm()(batch[:2])  # what an unsynchronised worker would compute
    assert not close(parts[0]["out"], alone.detach())


def test_workers_convert_every_batch_norm_and_keep_the_checkpoint_layout():
    model = build_model(resolve_run_config("tiny", [], None))
    keys = list(model.state_dict())
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    synchronize_batch_norm(model, "cpu")
    assert count > 0 and sum(isinstance(m, GlooSyncBatchNorm) for m in model.modules()) == count
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    assert list(model.state_dict()) == keys
    cuda_model = synchronize_batch_norm(build_model(resolve_run_config("tiny", [], None)), "cuda")
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in cuda_model.modules()) == count
    # one process (no process group): exactly plain BatchNorm
    frames = torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    plain = build_model(resolve_run_config("tiny", [], None)).kp_detector.train()
    torch.manual_seed(0)
    synced = synchronize_batch_norm(build_model(resolve_run_config("tiny", [], None)), "cpu").kp_detector.train()
    assert torch.equal(plain(frames)["value"], synced(frames)["value"])
