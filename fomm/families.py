"""The model families, one line each: where a family's model class and config section live.

Adding a family adds its package (fomm/<pkg>/: config.py with its section, its modules, and
model.py with its `fomm.api.MotionTransferModel`) and one line here; nothing in core/.
fomm/config.py composes the run config's `model_params` from these lines, fomm/registry.py
builds models from them, and every stage's `--model` takes its choices from them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    model: str                  # "module:Class" of its MotionTransferModel, imported on use
    config: str | None          # its config module (SECTION, Params, optional translate), None for FOMM
    default_config: str         # configs/<name>.yaml for a released checkpoint given without --config


FAMILIES: dict[str, Family] = {
    "fomm": Family("fomm.model:FirstOrderModel", None, "vox-256"),
    "monkey-net": Family("fomm.monkey_net.model:MonkeyNet", "fomm.monkey_net.config", "monkey-net-vox-256"),
    "x2face": Family("fomm.x2face.model:X2Face", "fomm.x2face.config", "x2face-vox-256"),
}

NAMES = tuple(FAMILIES)
