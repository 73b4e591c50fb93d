"""`pipeline run train --workers N [--ray-address ADDR]`: the same loop, `fomm.train.train`,
on N Ray Train workers under DistributedDataParallel.

Ray Train's TorchTrainer starts the workers and the process group (gloo on CPU, nccl on
GPU, one GPU per worker). Each worker runs `train()` with its rank: it draws its share
`rank::N` of the same per-epoch permutation one process would draw (fomm.data.EpochSampler)
with a batch of `batch_size / N`, so N workers see the same pairs per step as one process
with `batch_size`. DDP averages generator-side gradients; the loop all-reduces the
discriminator's itself (its backward runs outside the DDP forward). Rank 0 writes the
run directory, so on several nodes `--out` must be storage every node sees.

BatchNorm statistics are per worker (as the original's DataParallel), so a 2-worker curve
matches a 1-process curve within noise, not bit for bit.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config, config_from_dict, config_to_dict

log = logging.getLogger(__name__)


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: rebuild the config, find rank and device, train."""
    import ray.train
    import ray.train.torch

    from fomm.train import DistContext, train

    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    dist_ctx = DistContext(rank=context.get_world_rank(), world_size=context.get_world_size(),
                           device=str(device) if device.type == "cuda" else "cpu")
    if dist_ctx.device == "cpu":
        torch.set_num_threads(loop_config["threads_per_worker"])
    config = config_from_dict(loop_config["config"])
    # train_distributed cleared an --overwrite'd folder before the workers started.
    last = train(config, loop_config["data"], loop_config["out"], resume=loop_config["resume"], dist_ctx=dist_ctx)
    ray.train.report({f"final_{k}": v for k, v in last.items()})


def train_distributed(config: Config, data_root: str | Path, out_dir: str | Path, num_workers: int,
                      ray_address: str | None = None, resume: bool = False,
                      threads_per_worker: int = 1, overwrite: bool = False) -> Path:
    """Train on `num_workers` Ray Train workers (DDP); returns `out_dir`.

    The run folder is checked here, before any worker starts, so another run in `out_dir`
    is refused (or replaced with `overwrite`) with one line rather than a worker's traceback.
    """
    from fomm.train import check_run_folder
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.ray_runner import init_ray, shutdown_ray

    use_gpu = torch.cuda.is_available()
    out_dir = Path(out_dir).resolve()
    check_run_folder(out_dir, resume, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    started_here = ray_address is None
    init_ray(address=ray_address, num_cpus=None if ray_address else max(num_workers, os.cpu_count() or 1))
    try:
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"config": config_to_dict(config), "data": str(Path(data_root).resolve()),
                               "out": str(out_dir), "resume": resume, "threads_per_worker": threads_per_worker},
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
