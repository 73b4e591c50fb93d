"""Starting or joining Ray, the one way every stage does it.

A local Ray starts with the CPUs asked for, no dashboard and token auth disabled (these
machines run no auth server); `address` joins an existing cluster instead.
"""
from __future__ import annotations

import logging
import os

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
