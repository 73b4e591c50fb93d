"""Models picked by name (`model_params.name` or `--model`) from one registry."""
from __future__ import annotations

import importlib

from pipeline.config import Config, replace
from pipeline.errors import UserError

# name -> "module:Class"; imported on use so a run loads only its own family.
MODELS = {
    "fomm": "fomm.model:FirstOrderModel",
    "monkey-net": "fomm.baselines.monkey_net:MonkeyNet",
    "x2face": "fomm.baselines.x2face:X2Face",
}


def build_model(config: Config, name: str | None = None):
    """Build the model family `name` (default: the config's) from the config's model_params.

    Families read `config.model_params` for their architecture and
    `config.train_params.loss_weights` to decide which heads train (e.g. the discriminator).
    """
    name = name or config.model_params.name
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    module_name, class_name = MODELS[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if name != config.model_params.name:
        config = replace(config, model_params=replace(config.model_params, name=name))
    return cls(config)
