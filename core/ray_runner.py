"""Starting or joining Ray, the one way every stage does it, and running per-item work on
Ray actors that each hold one loaded worker (`map_items`).

A local Ray starts with the CPUs asked for, no dashboard and token auth disabled (these
machines run no auth server); `address` joins an existing cluster instead.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

from core.errors import UserError

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start a local Ray with `num_cpus` CPUs, or join the cluster at `address`. Idempotent."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Workers must import the project from the same checkout as the driver.
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    import ray
    if ray.is_initialized():
        return
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=True, configure_logging=False)


def shutdown_ray() -> None:
    import ray
    if ray.is_initialized():
        ray.shutdown()


# --------------------------------------------------------------------------- per-item work
class _Host:
    """The Ray actor around one worker object (Ray Data's callable-class pattern): the worker
    is built once, in the actor (a loaded model stays loaded), and called once per item."""

    def __init__(self, factory: Callable, args: tuple, threads: int | None):
        if threads:
            import torch
            torch.set_num_threads(threads)  # a CPU slot each: workers must not oversubscribe the cores
        self.worker = factory(*args)

    def run(self, item):
        return self.worker(item)


def map_items(factory: Callable, args: tuple, items: Sequence, on_result: Callable[[object, object], None],
              workers: int = 1, address: str | None = None, gpus_per_worker: float = 0) -> None:
    """Call `factory(*args)(item)` for every item and `on_result(item, result)` in this process
    as each finishes (in completion order; items are submitted in order).

    One worker and no `address`: the worker runs here, no Ray at all. Otherwise `workers`
    Ray actors each build one worker (`gpus_per_worker` GPUs each, or an equal share of the
    CPUs) and take the next item as they finish one. Ray restarts an actor that dies and
    retries its item once. An exception from a worker or from `on_result` stops the run:
    results already handed to `on_result` stay handed, the actors are killed, and the error
    propagates. A Ray this call started is shut down again; a caller's stays up.
    """
    if workers < 1:
        raise UserError(f"--workers must be a positive number, got {workers}")
    if not items:
        return
    if workers == 1 and address is None:
        worker = factory(*args)
        for item in items:
            on_result(item, worker(item))
        return
    import ray
    started_here = not ray.is_initialized()
    init_ray(address)
    actors = []
    try:
        host, count, threads = _actor_class(ray, workers, len(items), gpus_per_worker)
        actors = [host.remote(factory, args, threads) for _ in range(count)]
        queue, running = list(items), {}
        for actor in actors:
            item = queue.pop(0)
            running[actor.run.remote(item)] = (actor, item)
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            actor, item = running.pop(done[0])
            on_result(item, ray.get(done[0]))
            if queue:
                item = queue.pop(0)
                running[actor.run.remote(item)] = (actor, item)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            shutdown_ray()


def _actor_class(ray, workers: int, num_items: int, gpus_per_worker: float):
    """(the actor class with its resources, how many actors, torch threads in each): no more
    actors than items, nor
    than the cluster can place at once (an actor that waits for resources would hold its
    item forever)."""
    resources = ray.cluster_resources()
    if gpus_per_worker:
        fit = int(resources.get("GPU", 0) // gpus_per_worker)
        if fit < 1:
            raise UserError(f"no GPU in the Ray cluster for a worker asking {gpus_per_worker}")
        host = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=1, max_task_retries=1)(_Host)
        threads = None
    else:
        total = int(resources.get("CPU", 1))
        cpus = max(1, total // workers)
        fit = max(1, total // cpus)
        host = ray.remote(num_cpus=cpus, max_restarts=1, max_task_retries=1)(_Host)
        threads = cpus
    count = min(workers, num_items, fit)
    if count < workers:
        log.info("%d workers asked, %d started (items: %d, room in the cluster: %d)", workers, count,
                 num_items, fit)
    return host, count, threads
