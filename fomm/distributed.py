"""`pipeline run train --workers N [--ray-address ADDR]`: the same loop, `fomm.train.train`,
on N Ray Train workers under DistributedDataParallel, and the pieces the loop needs when it
runs on several workers (DistContext, synchronised BatchNorm, gradient and loss averaging).

The dependency points one way: fomm/train.py imports this module; this module never
imports the loop's, which `train_distributed` receives as an argument.

Ray Train's TorchTrainer starts the workers and the process group (gloo on CPU, nccl on
GPU, one GPU per worker). Each worker runs `train()` with its rank: it draws its share
`rank::N` of the same per-epoch permutation one process would draw (fomm.data.EpochSampler)
with a batch of `batch_size / N`, so N workers see the same pairs per step as one process
with `batch_size`. DDP averages generator-side gradients; the loop all-reduces the
discriminator's itself (its backward runs outside the DDP forward). Rank 0 writes the
run directory, so on several nodes `--out` must be storage every node sees.

BatchNorm statistics are synchronised across workers, as the original trains with
`SynchronizedBatchNorm2d` over its GPUs: every worker normalises with the mean and variance
of the whole batch (synchronize_batch_norm). On CUDA that is torch's SyncBatchNorm; torch's
refuses CPU tensors, so CPU workers (gloo) use GlooSyncBatchNorm, the same statistics
all-reduced through torch.distributed.nn's differentiable all_reduce. A 2-worker curve still
matches a 1-process curve only within noise (equivariance transforms are drawn per worker).
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from core.config import config_to_dict
from core.errors import UserError
from fomm.config import Config, config_from_dict

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this copy of the loop runs: rank among world_size, and its device."""
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the batch of every worker in the default process group, for any device
    and backend (torch.nn.SyncBatchNorm accepts GPU tensors only).

    As the original's SynchronizedBatchNorm2d: each worker all-reduces its per-channel sum,
    sum of squares and count; mean and biased variance normalise, the unbiased variance
    feeds the running statistics. The all_reduce is differentiable, so gradients through the
    statistics are summed over workers as well. Outside training, or in one process, it is
    plain BatchNorm. Tensors and state dict keys are BatchNorm's.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (B, C, ...), got {input.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        channels, dims = x.shape[1], [0, *range(2, x.dim())]
        count = x.new_full((1,), x.numel() / channels)
        totals = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))  # (2C + 1,)
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels:2 * channels] / n - mean * mean).clamp_min(0)  # biased, (C,)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n.detach() / (n.detach() - 1).clamp_min(1))
        shape = (1, channels) + (1,) * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - momentum).add_(momentum * mean)
        self.running_var.mul_(1 - momentum).add_(momentum * unbiased_var)


def _to_gloo_sync(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm replaced by GlooSyncBatchNorm sharing its parameters and buffers."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        sync = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        if module.track_running_stats:
            sync.running_mean, sync.running_var = module.running_mean, module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        module.add_module(name, _to_gloo_sync(child))
    return module


def synchronize_batch_norm(model: nn.Module, device: str) -> nn.Module:
    """Make every BatchNorm of `model` normalise over all workers' batches (in place; returned).

    CUDA workers get torch.nn.SyncBatchNorm; CPU workers GlooSyncBatchNorm. The state dict
    keeps its keys, so checkpoints are unchanged.
    """
    if device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_gloo_sync(model)


def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """All-reduce mean of gradients outside a DDP forward (the discriminator step)."""
    import torch.distributed as dist
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)
        param.grad /= world_size


def mean_over_workers(values: torch.Tensor, dist_ctx: DistContext) -> torch.Tensor:
    """`values` averaged over all workers (a collective: every rank calls it at the same step)."""
    if dist_ctx.world_size == 1:
        return values
    import torch.distributed as dist
    values = values.clone()
    dist.all_reduce(values)
    return values / dist_ctx.world_size


def _worker_loop(loop: Callable[..., dict[str, float]], loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: rebuild the config, find rank and device, run the loop."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    dist_ctx = DistContext(rank=context.get_world_rank(), world_size=context.get_world_size(),
                           device=str(device) if device.type == "cuda" else "cpu")
    if dist_ctx.device == "cpu":
        torch.set_num_threads(loop_config["threads_per_worker"])
    config = config_from_dict(loop_config["config"])
    last = loop(config, loop_config["data"], loop_config["out"], resume=loop_config["resume"], dist_ctx=dist_ctx,
                init_checkpoint=loop_config["init_checkpoint"])
    ray.train.report({f"final_{k}": v for k, v in last.items()})


def local_slots() -> tuple[int, str]:
    """(workers this machine can run at once, what each takes): a GPU each, else a CPU each."""
    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPU"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus, "CPU"


def check_workers(num_workers: int, ray_address: str | None = None) -> None:
    """UserError unless `num_workers` workers fit at once: on this machine (a GPU or a CPU
    each), or on the cluster at `ray_address` (its total resources). Ray would otherwise
    wait forever for slots that never come (`--workers 1000`)."""
    if num_workers < 1:
        raise UserError(f"--workers must be at least 1, got {num_workers}")
    if ray_address is None:
        have, kind = local_slots()
        where = "this machine has"
    else:
        import ray

        from core.ray_runner import init_ray
        init_ray(address=ray_address)
        kind = "GPU" if torch.cuda.is_available() else "CPU"
        have = int(ray.cluster_resources().get(kind, 0))
        where = f"the Ray cluster at {ray_address} has"
    if num_workers > have:
        raise UserError(f"--workers {num_workers}: {where} {have} {kind}(s) and each worker takes one; "
                        f"expected at most {have}")


def train_distributed(loop: Callable[..., dict[str, float]], config: Config, data_root: str | Path,
                      out_dir: str | Path, num_workers: int, ray_address: str | None = None,
                      resume: bool = False, threads_per_worker: int = 1,
                      init_checkpoint: str | Path | None = None) -> Path:
    """Run `loop(config, data_root, out_dir, resume=, dist_ctx=, init_checkpoint=)` on `num_workers` Ray Train
    workers (DDP); returns `out_dir`. `loop` is fomm.train.train, passed in so that this module
    needs nothing from the loop's (the loop imports this one).

    The caller checks the run folder first (fomm.train.check_run_folder), so another run in
    `out_dir` is refused with one line before any worker starts.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from core.ray_runner import init_ray, shutdown_ray

    check_workers(num_workers, ray_address)
    use_gpu = torch.cuda.is_available()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started_here = ray_address is None
    init_ray(address=ray_address, num_cpus=None if ray_address else max(num_workers, os.cpu_count() or 1))
    try:
        trainer = TorchTrainer(
            functools.partial(_worker_loop, loop),
            train_loop_config={"config": config_to_dict(config),
                               "data": str(Path(data_root).resolve()), "out": str(out_dir), "resume": resume,
                               "threads_per_worker": threads_per_worker,
                               "init_checkpoint": str(Path(init_checkpoint).resolve()) if init_checkpoint else None},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         resources_per_worker=None if use_gpu else {"CPU": 1}),
            run_config=RunConfig(name="train", storage_path=str(out_dir / "ray")),
        )
        result = trainer.fit()
        log.info("Ray Train finished: %s", getattr(result, "metrics", None))
    finally:
        if started_here:
            shutdown_ray()
    return out_dir
