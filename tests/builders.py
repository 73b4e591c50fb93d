"""Test data the suites share: the built-in sample dataset written as `prepare` writes it, and
checkpoints of randomly initialised models with their configs embedded."""
from __future__ import annotations

from pathlib import Path

import torch


def write_sample(root: Path, num_train: int, num_test: int, num_frames: int = 8, size: int = 64) -> Path:
    """`num_train` + `num_test` clips of pipeline/sample.py's dataset (with their true motion) under `root`."""
    from pipeline import sample
    for clip in sample.sample_clips(num_train=num_train, num_test=num_test, num_frames=num_frames, size=size):
        assert sample.prepare_clip(clip, root)["status"] == "done"
    return root


def random_checkpoints(folder: Path, configs: dict) -> str:
    """`--models NAME=FILE,...`: for each family name -> Config, its model built with seed 0 and
    saved with the config embedded (so no @CONFIG is needed)."""
    from core.config import config_to_dict
    from fomm.registry import build_model
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for name, config in configs.items():
        torch.manual_seed(0)
        path = folder / f"{name}.pt"
        torch.save({**build_model(config, name).checkpoint_state(), "config": config_to_dict(config)}, path)
        specs.append(f"{name}={path}")
    return ",".join(specs)
