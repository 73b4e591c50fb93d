"""Models picked by name (`model_params.name` or `--model`) from the family registry
(fomm/families.py)."""
from __future__ import annotations

import importlib

from core.config import CONFIG_DIR, replace, resolve_align_corners
from core.errors import UserError
from fomm.config import Config
from fomm.families import FAMILIES

# name -> "module:Class"; imported on use so a run loads only its own family.
MODELS = {name: family.model for name, family in FAMILIES.items()}


def model_class(name: str) -> type:
    """The MotionTransferModel class of family `name`; UserError for an unknown name."""
    if name not in FAMILIES:
        raise UserError(f"unknown model {name!r}; expected one of {sorted(FAMILIES)}")
    module_name, class_name = FAMILIES[name].model.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_model(config: Config, name: str | None = None):
    """Build the model family `name` (default: the config's) from the config's model_params.

    Families read `config.model_params` for their architecture and
    `config.train_params.loss_weights` to decide which heads train (e.g. the discriminator).
    `model_params.align_corners` left automatic (None) means a new model: False; loading a
    released checkpoint decides it before this (fomm.checkpoint.load_model).
    """
    config = resolve_align_corners(config, None)
    name = name or config.model_params.name
    cls = model_class(name)
    if name != config.model_params.name:
        config = replace(config, model_params=replace(config.model_params, name=name))
    return cls(config)


def family_config(config_name: str, model: str | None) -> str:
    """The config a family trains with for a dataset config: `--model monkey-net --config
    vox-256` means configs/monkey-net-vox-256.yaml (the baseline's own architecture and
    losses on vox-256's data and schedule) where that file exists; a path, FOMM, or a
    dataset without a family-specific file keeps `config_name` as given."""
    if not model or model == "fomm" or model not in MODELS or "/" in config_name or config_name.endswith(".yaml"):
        return config_name
    if config_name.startswith(f"{model}-"):
        return config_name
    specific = CONFIG_DIR / f"{model}-{config_name}.yaml"
    return specific.stem if specific.is_file() else config_name
