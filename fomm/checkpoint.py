"""Checkpoint files: written atomically, read in both the released and the project's format.

Released FOMM checkpoints (`vox-cpk.pth.tar`, `taichi-cpk.pth.tar`, ...) are a dict
`{'generator': sd, 'kp_detector': sd, 'discriminator': sd, 'optimizer_generator': ...,
'epoch': n}`. The project's training loop writes the same layout plus `'config'` (the
resolved config dict), scheduler, step and RNG states; a `{'model': {sub-network: sd},
'config': ...}` nesting is accepted too. `load_model` reads all of them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config, config_from_dict
from pipeline.errors import UserError
from pipeline.media import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "motion-transfer/1"
# Sub-networks needed to run a model; others (the discriminator) may be absent for inference.
_INFERENCE_OPTIONAL = {"discriminator"}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save `state` to `path` through a temporary file: `path` is complete or absent."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint dict; UserError when the file is missing or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; expected a .pth/.pth.tar file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as safe_err:  # numpy RNG states or old pickles need the full unpickler
        log.debug("weights_only load of %s failed (%s); using the full unpickler", path, safe_err)
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:
            raise UserError(f"checkpoint {path} could not be read as a torch file: {err}") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds a {type(state).__name__}; expected a dict of state dicts")
    return state


def model_state(checkpoint: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """The per-sub-network state dicts of a released or project checkpoint."""
    state = checkpoint.get("model", checkpoint)
    return {name: _strip_module_prefix(sd) for name, sd in state.items()
            if isinstance(sd, dict) and sd and all(torch.is_tensor(v) for v in sd.values())}


def checkpoint_config(checkpoint: dict[str, Any]) -> Config | None:
    """The resolved config a project checkpoint carries (None for released checkpoints)."""
    data = checkpoint.get("config")
    return config_from_dict(data) if isinstance(data, dict) else None


def _strip_module_prefix(state: dict) -> dict:
    # Checkpoints saved from DataParallel/DDP wrappers prefix every key with "module.".
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def load_model(config: Config | None, path: str | Path, device: Any = None, strict: bool = True):
    """Build the model the config describes, load the checkpoint at `path`, return it in eval mode.

    `config` None uses the config a project checkpoint carries. Raises UserError naming
    the first tensor that is missing, unexpected or of another shape than the config builds.
    """
    from fomm.registry import build_model

    checkpoint = load_checkpoint_file(path)
    if config is None:
        config = checkpoint_config(checkpoint)
        if config is None:
            raise UserError(f"checkpoint {path} carries no config (a released checkpoint); "
                            f"pass --config with the yaml it was trained with")
    elif checkpoint_config(checkpoint) is None and not config.model_params.align_corners:
        log.warning("%s has no config of its own (a released checkpoint?): those were trained when "
                    "grid_sample behaved as align_corners=True; pass model_params.align_corners=true to "
                    "run them exactly as trained", path)
    model = build_model(config)
    state = model.state_from_checkpoint(checkpoint)
    needed = {name for name, _ in model.named_children()} - _INFERENCE_OPTIONAL
    absent = sorted(needed - set(state))
    if absent:
        raise UserError(f"checkpoint {path} has no {absent} state dict; it holds {sorted(state)}")
    present = {name: sd for name, sd in state.items() if name in dict(model.named_children())}
    try:
        _load_parts(model, present, strict)
    except UserError as err:
        raise UserError(f"checkpoint {path} does not match config {config.model_params.name}: {err}") from None
    if device is not None:
        model.to(device)
    return model.eval()


def _load_parts(model, state: dict[str, dict], strict: bool) -> None:
    """Load each sub-network's state dict, naming the first mismatching tensor."""
    children = dict(model.named_children())
    for name, given in state.items():
        expected = children[name].state_dict()
        missing = [k for k in expected if k not in given]
        unexpected = [k for k in given if k not in expected]
        if strict and missing:
            raise UserError(f"tensor {name}.{missing[0]} is missing from the checkpoint "
                            f"({len(missing)} missing in all)")
        if strict and unexpected:
            raise UserError(f"tensor {name}.{unexpected[0]} in the checkpoint is not built by the config "
                            f"({len(unexpected)} unexpected in all)")
        for key, tensor in given.items():
            if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
                raise UserError(f"tensor {name}.{key} has shape {tuple(tensor.shape)} in the checkpoint, "
                                f"the config builds {tuple(expected[key].shape)}")
        children[name].load_state_dict(given, strict=strict)
