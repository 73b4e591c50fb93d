"""Checkpoint files: written atomically, read in both the released and the project's format,
and only ever through torch's restricted unpickler.

Released FOMM checkpoints (`vox-cpk.pth.tar`, `taichi-cpk.pth.tar`, ...) are a dict
`{'generator': sd, 'kp_detector': sd, 'discriminator': sd, 'optimizer_generator': ...,
'epoch': n}`. The project's training loop writes the same layout plus `'config'` (the
resolved config dict), scheduler, step and RNG states, all as tensors and plain Python
values; a `{'model': {sub-network: sd}, 'config': ...}` nesting is accepted too.
`load_model` reads all of them.

Safety: a pickle can name any Python callable, and unpickling calls it, so a crafted
`.pth` file runs code when loaded with `weights_only=False`. Every file is read with
`weights_only=True` (tensors, dicts, lists, numbers, strings; plus the numpy RNG arrays of
checkpoints the project wrote before its RNG states became tensors). A file that needs
anything else is refused with a UserError naming it and the Python object it asks for. The
one opt-in: the environment variable FOMM_TRUST_PICKLE naming that exact file (several
joined by the path separator, ':' on Linux) lets the full unpickler read it; never a
silent fallback.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import resolve_align_corners
from core.errors import UserError
from core.media import atomic_path
from fomm.config import Config, config_from_dict

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "motion-transfer/1"
TRUST_PICKLE_ENV = "FOMM_TRUST_PICKLE"
# Sub-networks needed to run a model; others (the discriminator) may be absent for inference.
_INFERENCE_OPTIONAL = {"discriminator"}
# What numpy's legacy RNG state (the project's checkpoints before RNG states became tensors)
# needs beyond torch's allowlist: a uint32 array. ndarray reconstruction builds an array
# and fills it from bytes or from objects the same restricted unpickler produced, so it
# runs no code of the file's choosing. numpy 1.x pickles name numpy.core.*.
_reconstruct = (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct  # numpy 2 / 1.x
_NUMPY_RNG_GLOBALS = [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"),
                      (_reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype,
                      type(np.dtype(np.uint32))]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save `state` to `path` through a temporary file: `path` is complete or absent."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def _trusted(path: Path) -> bool:
    """Whether the user named `path` in FOMM_TRUST_PICKLE (the documented opt-in)."""
    named = [p for p in os.environ.get(TRUST_PICKLE_ENV, "").split(os.pathsep) if p.strip()]
    return any(Path(p).expanduser().resolve() == path.resolve() for p in named)


def _refusal_reason(err: Exception) -> str | None:
    """The Python object a file asks the unpickler for, or None when it is no pickle at all."""
    match = re.search(r"GLOBAL ([\w.]+)", str(err))
    return match.group(1) if match else None


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint dict with torch's restricted unpickler (weights_only=True).

    UserError when the file is missing, not a checkpoint, or needs the full unpickler (it
    names a Python object to call) and is not named in FOMM_TRUST_PICKLE.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; expected a .pth/.pth.tar file")
    try:
        with torch.serialization.safe_globals(_NUMPY_RNG_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        needs = _refusal_reason(err)
        if needs is None:
            raise UserError(f"checkpoint {path} could not be read as a torch file: {_summary(err)}") from None
        if not _trusted(path):
            raise UserError(f"checkpoint {path} refused: it asks the unpickler for the Python object {needs}, "
                            f"which a checkpoint of tensors never needs and which could run code; if you trust "
                            f"this file, set {TRUST_PICKLE_ENV}={path} to load it") from None
        log.warning("%s needs the full unpickler (%s); loading it because %s names it", path, needs,
                    TRUST_PICKLE_ENV)
        state = _load_trusted_pickle(path, map_location)
    except Exception as err:
        raise UserError(f"checkpoint {path} could not be read as a torch file: {_summary(err)}") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds a {type(state).__name__}; expected a dict of state dicts")
    _check_config_entry(state, path)
    return state


def _check_config_entry(state: dict[str, Any], path: Path) -> None:
    """A checkpoint's `config`, when it has one, is the mapping `pipeline run train` writes:
    its size and depth are bounded before anything copies it (core.config.check_tree: a
    pickle may share one list many times) and it builds as a config; UserError naming the
    file otherwise. A file without one is a release (released_config)."""
    from core.config import ConfigError
    if "config" not in state or state["config"] is None:
        return
    data = state["config"]
    if not isinstance(data, dict):
        raise UserError(f"checkpoint {path}: its 'config' entry is a {type(data).__name__}; expected the mapping "
                        "`pipeline run train` writes (a released checkpoint has no 'config' entry)")
    try:
        config_from_dict(data, recorded=True)
    except ConfigError as err:
        raise UserError(f"checkpoint {path}: its config is not usable: {err}") from None


def _load_trusted_pickle(path: Path, map_location: Any) -> Any:
    """The full unpickler, only ever for a file the user named in FOMM_TRUST_PICKLE."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise UserError(f"checkpoint {path} could not be read as a torch file: {_summary(err)}") from None


def _summary(err: Exception) -> str:
    """One line of a torch.load error: its last line that is not the pointer to the docs."""
    lines = [line.strip() for line in str(err).splitlines()
             if line.strip() and not line.strip().startswith("Check the documentation")]
    return (lines[-1] if lines else type(err).__name__)[:200]


def model_state(checkpoint: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """The per-sub-network state dicts of a released or project checkpoint."""
    state = checkpoint.get("model", checkpoint)
    return {name: _strip_module_prefix(sd) for name, sd in state.items()
            if isinstance(sd, dict) and sd and all(torch.is_tensor(v) for v in sd.values())}


def checkpoint_config(checkpoint: dict[str, Any]) -> Config | None:
    """The resolved config a project checkpoint carries (None for released checkpoints)."""
    data = checkpoint.get("config")
    if data is not None and not isinstance(data, dict):
        raise UserError(f"the checkpoint's 'config' entry is a {type(data).__name__}; expected the mapping "
                        "`pipeline run train` writes")
    return config_from_dict(data, recorded=True) if isinstance(data, dict) else None


def checkpoint_align_corners(saved: Config | None) -> bool:
    """The grid convention a checkpoint's weights were trained with: its recorded value for a
    project checkpoint (False where it recorded none: the project trains with False), True
    for a file without the project's config (the released checkpoints predate torch 1.3,
    whose grid_sample behaved as align_corners=True)."""
    if saved is None:
        return True
    return bool(saved.model_params.align_corners)


def _strip_module_prefix(state: dict) -> dict:
    # Checkpoints saved from DataParallel/DDP wrappers prefix every key with "module.".
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def released_family(checkpoint: dict[str, Any]) -> str | None:
    """The family whose released layout a checkpoint without the project's config has
    (`MotionTransferModel.recognises`), or None."""
    from fomm.families import FAMILIES
    from fomm.registry import model_class
    found = [name for name in FAMILIES if model_class(name).recognises(checkpoint)]
    return found[0] if len(found) == 1 else None


def released_config(checkpoint: dict[str, Any], path: str | Path) -> Config:
    """The config a released file runs with when no --config is given: its family's
    default (fomm/families.py), named in the log; UserError when no family recognises it."""
    from fomm.config import load_config
    from fomm.families import FAMILIES
    family = released_family(checkpoint)
    if family is None:
        raise UserError(f"checkpoint {path} carries no config and is no family's released layout (top-level "
                        f"entries {sorted(checkpoint)[:8]}); pass --config with the yaml it was trained with")
    name = FAMILIES[family].default_config
    log.info("%s is a released %s checkpoint without a config: running it with configs/%s.yaml (pass --config "
             "for another dataset's)", path, family, name)
    return load_config(name)


def load_model(config: Config | None, path: str | Path, device: Any = None, strict: bool = True):
    """Build the model the config describes, load the checkpoint at `path`, return it in eval mode.

    `config` None uses the config a project checkpoint carries, or for a released file its
    family's default config (released_config). `model_params.align_corners`
    left automatic (None) takes the checkpoint's convention (checkpoint_align_corners); an
    explicit value wins. Raises UserError naming the first tensor that is missing,
    unexpected or of another shape than the config builds.
    """
    from fomm.registry import build_model

    checkpoint = load_checkpoint_file(path)
    saved = checkpoint_config(checkpoint)
    if config is None:
        config = saved if saved is not None else released_config(checkpoint, path)
    config = resolve_align_corners(config, checkpoint_align_corners(saved))
    if saved is None and not config.model_params.align_corners:
        log.info("%s has no config of its own (a released checkpoint?) and runs with "
                 "model_params.align_corners=false as configured; released checkpoints were trained "
                 "with align_corners=True", path)
    model = build_model(config)
    if saved is None and not model.recognises(checkpoint) and released_family(checkpoint):
        raise UserError(f"checkpoint {path} is a released {released_family(checkpoint)} checkpoint, not "
                        f"{model.name}; expected --model {released_family(checkpoint)} (or its config)")
    load_state_dicts(model, model.state_from_checkpoint(checkpoint), strict,
                     optional=_INFERENCE_OPTIONAL, source=f"checkpoint {path}")
    model.weights_source = f"checkpoint {path}"  # named when its outputs are not finite
    if device is not None:
        model.to(device)
    return model.eval()


def check_finite_output(prediction: torch.Tensor, model, where: str) -> None:
    """UserError naming the model's weights (its `weights_source`, set by load_model) when a
    prediction holds NaN or infinite values: finite weights can still overflow (huge values),
    and a NaN frame written as black would pass for a result."""
    if bool(torch.isfinite(prediction).all()):
        return
    bad = int((~torch.isfinite(prediction)).sum())
    source = getattr(model, "weights_source", None) or "the model's weights"
    raise UserError(f"{source} gives non-finite predictions ({bad} NaN or infinite values of "
                    f"{prediction.numel()} in {where}); expected finite frames: the weights are broken")


def load_state_dicts(model, state: dict[str, dict], strict: bool = True, optional=frozenset(),
                     source: str = "checkpoint") -> None:
    """Load each of `model`'s sub-networks from the state dict of its name in `state`.

    The one check behind `load_model` and `MotionTransferModel.load_checkpoint_state`: a
    sub-network absent from `state` raises unless named in `optional` (it then keeps its
    weights); entries that are no sub-network of `model` are ignored. Before anything loads,
    UserError names the first tensor that is missing or unexpected (only when `strict`, as
    torch's `load_state_dict`) or of another shape than the model's; `source` opens the message.
    """
    children = dict(model.named_children())
    absent = sorted(set(children) - set(state) - set(optional))
    if absent:
        raise UserError(f"{source} has no {absent} state dict; it holds {sorted(state)}")
    present = {name: sd for name, sd in state.items() if name in children}
    for name, given in present.items():
        expected = children[name].state_dict()
        mismatch = _tensor_mismatch(name, expected, given, strict)
        if mismatch:
            raise UserError(f"{source} does not match config {model.name}: {mismatch}")
        broken = _tensor_problem(name, expected, given)
        if broken:
            raise UserError(f"{source} is broken: {broken}; expected finite floating-point weights")
    for name, given in present.items():
        children[name].load_state_dict(given, strict=strict)


def _tensor_problem(name: str, expected: dict, given: dict) -> str | None:
    """The first tensor that would load as nonsense: an integer or boolean tensor where the
    model holds floats (load_state_dict would cast 0.3 to 0: a flat grey video), or a
    floating-point tensor with NaN or infinite values."""
    for key, tensor in given.items():
        if key not in expected or not torch.is_tensor(tensor):
            continue
        if expected[key].is_floating_point() and not tensor.is_floating_point():
            return f"tensor {name}.{key} is {str(tensor.dtype).removeprefix('torch.')}, the model's is floating point"
        if tensor.is_floating_point() and not tensor.is_meta and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
            return f"tensor {name}.{key} holds {bad} {kind} value(s) of {tensor.numel()}"
    return None


def _tensor_mismatch(name: str, expected: dict, given: dict, strict: bool) -> str | None:
    """The first tensor of sub-network `name` that the checkpoint lacks, adds or shapes otherwise."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if strict and missing:
        return f"tensor {name}.{missing[0]} is missing from the checkpoint ({len(missing)} missing in all)"
    if strict and unexpected:
        return (f"tensor {name}.{unexpected[0]} in the checkpoint is not built by the config "
                f"({len(unexpected)} unexpected in all)")
    for key, tensor in given.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            return (f"tensor {name}.{key} has shape {tuple(tensor.shape)} in the checkpoint, "
                    f"the config builds {tuple(expected[key].shape)}")
    return None
