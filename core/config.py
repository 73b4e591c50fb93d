"""Typed, frozen configuration: the machinery and the sections every model family shares.

A run config mirrors the original first-order-model yaml files section for section
(`dataset_params`, `model_params`, `train_params`, ...), so the files users keep beside
their released checkpoints load unchanged, and adds the project's own options with
defaults. Unknown keys and values of the wrong type raise `ConfigError` at load time,
naming the key path and what was expected.

This module holds what all families share: the dataset, training, reconstruction, animation
and visualisation sections, and the loader (`Schema`, `build_config`, `read_config`,
`key=value` overrides). `model_params` differs per family; fomm/config.py composes the
whole tree from the family registry:

    from fomm.config import load_config
    cfg = load_config("configs/vox-256.yaml", ["train_params.batch_size=8"])
    cfg.model_params.kp_detector_params.num_blocks   # 5
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml

from core.errors import UserError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the schema."""


# --------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class FlipParams:
    horizontal_flip: bool = False
    time_flip: bool = False


@dataclass(frozen=True)
class JitterParams:
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0


@dataclass(frozen=True)
class CropParams:
    size: tuple[int, int] = (256, 256)


@dataclass(frozen=True)
class ResizeParams:
    ratio: tuple[float, float] = (1.0, 1.0)


@dataclass(frozen=True)
class RotationParams:
    degrees: float = 0.0


@dataclass(frozen=True)
class AugmentationParams:
    flip_param: Optional[FlipParams] = None
    jitter_param: Optional[JitterParams] = None
    crop_param: Optional[CropParams] = None
    resize_param: Optional[ResizeParams] = None
    rotation_param: Optional[RotationParams] = None


@dataclass(frozen=True)
class DatasetParams:
    root_dir: str = ""
    frame_shape: tuple[int, int, int] = (256, 256, 3)
    id_sampling: bool = False
    # The original's csv of evaluation pairs: not supported (_UNSUPPORTED), kept so its files load.
    pairs_list: Optional[str] = None
    augmentation_params: AugmentationParams = AugmentationParams()


def resolve_align_corners(config: Any, released: bool | None) -> Any:
    """`config` with `model_params.align_corners` decided, so that families always get a bool.

    An explicit value is kept. None (auto) becomes `released` when that is a bool: True for
    a checkpoint without the project's config (the released files, trained when grid_sample
    behaved as align_corners=True), or a project checkpoint's recorded value; False for a
    new model (training, random weights), torch's default since 1.3.
    """
    if config.model_params.align_corners is not None:
        return config
    value = bool(released) if released is not None else False
    return replace(config, model_params=replace(config.model_params, align_corners=value))


# --------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TransformParams:
    sigma_affine: float = 0.05
    sigma_tps: float = 0.005
    points_tps: int = 5


@dataclass(frozen=True)
class LossWeights:
    generator_gan: float = 0.0
    discriminator_gan: float = 1.0
    feature_matching: tuple[float, ...] = (10.0, 10.0, 10.0, 10.0)
    perceptual: tuple[float, ...] = (10.0, 10.0, 10.0, 10.0, 10.0)
    equivariance_value: float = 10.0
    equivariance_jacobian: float = 10.0
    # Plain L1 photometric loss (X2Face trains on this alone).
    reconstruction_l1: float = 0.0


@dataclass(frozen=True)
class TrainParams:
    num_epochs: int = 100
    num_repeats: int = 1
    epoch_milestones: tuple[int, ...] = ()
    lr_generator: float = 2.0e-4
    lr_discriminator: float = 2.0e-4
    lr_kp_detector: float = 2.0e-4
    batch_size: int = 40
    scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    # A checkpoint at the end of every checkpoint_freq-th epoch, as the original's; the
    # loop also writes one every `checkpoint_every` steps and at the last step.
    checkpoint_freq: int = 50
    transform_params: TransformParams = TransformParams()
    loss_weights: LossWeights = LossWeights()
    # ---- the project's additions (absent from the original files) ----
    # Optimiser of every group: "adam" (betas 0.5, 0.999; FOMM and Monkey-Net) or "sgd"
    # with `momentum` (X2Face's train_model.py: SGD, momentum 0.9).
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.0
    # Stop after this many optimiser steps (None: run num_epochs).
    max_steps: Optional[int] = None
    # ImageNet VGG19 for the perceptual loss: "torchvision" looks in torch's hub cache
    # (vgg19-dcbb9e9d.pth), a path loads that file, and "random" is the documented
    # substitute for offline machines and tests (fixed-seed random VGG19 features).
    vgg19_weights: str = "torchvision"
    log_every: int = 50
    image_every: int = 500
    checkpoint_every: int = 1000
    # Mixed precision: "auto" uses bf16 autocast on CUDA and fp32 on CPU.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True
    dataloader_workers: int = 2
    seed: int = 0
    # The training stage of this run, one of the family's `stages`: "reconstruction", or
    # "avd" (MRAA's and TPSMM's animation-via-disentanglement network, trained from a
    # finished reconstruction run: `pipeline run train --stage avd --checkpoint K`).
    stage: str = "reconstruction"


@dataclass(frozen=True)
class ReconstructionParams:
    num_videos: Optional[int] = 1000
    # reconstruct writes .mp4 (the original's default); other containers are not supported.
    format: str = ".mp4"


@dataclass(frozen=True)
class NormalizationParams:
    adapt_movement_scale: bool = False
    use_relative_movement: bool = True
    use_relative_jacobian: bool = True


@dataclass(frozen=True)
class AnimateParams:
    # The original's batch animation of num_pairs dataset pairs into `format` files: not
    # supported (animate renders the one pair it is given); kept so the original files load.
    num_pairs: int = 50
    format: str = ".mp4"
    normalization_params: NormalizationParams = NormalizationParams()


@dataclass(frozen=True)
class VisualizerParams:
    kp_size: int = 5
    # White 2-pixel lines between the panels of the training images (fomm.visualize.image_grid).
    draw_border: bool = True
    colormap: str = "gist_rainbow"


# Older original configs spell some keys differently; map them onto one field.
_ALIASES = {"dataset_params.image_shape": "dataset_params.frame_shape"}

# --------------------------------------------------------------------------- loading
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
# Every number in a config counts or scales something: none is negative (the originals' files
# hold none), none is infinite or NaN, and integers stay in the range torch and numpy take.
MAX_INT = 2**53 - 1
# Fields (by their last name) that divide or scale and so must not be 0 either.
_POSITIVE = {"temperature", "scale_factor", "kp_variance", "scales", "frame_shape", "ratio", "size"}
# A config is a small tree (a few hundred values, a few levels). These bound what a file may
# ask the loader to build, counted before it is built: a yaml alias or a checkpoint's shared
# list is counted every time it is used, as the copy that follows would make it.
MAX_CONFIG_NODES = 100_000
MAX_CONFIG_DEPTH = 32


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses, while composing and before constructing anything,
    nesting deeper than MAX_CONFIG_DEPTH and documents whose aliases expand to more than
    MAX_CONFIG_NODES nodes (a "billion laughs" file is a few hundred bytes)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise _TooBig(f"line {line}: nested deeper than {MAX_CONFIG_DEPTH} levels; expected a config tree")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _TooBig(Exception):
    """A document past the loader's bounds (the message says which)."""


def _expanded_size(root, children) -> int:
    """Nodes of the tree under `root` counting every shared node each time it is reached,
    computed once per distinct node (no expansion); _TooBig past the bounds or on a cycle."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children(node))
            if sizes[key] > MAX_CONFIG_NODES:
                raise _TooBig(f"expands to more than {MAX_CONFIG_NODES} values (shared references or "
                              "aliases counted each time they are used); expected a config tree")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _TooBig("refers to itself (a recursive alias or reference); expected a config tree")
        if len(on_path) >= MAX_CONFIG_DEPTH:
            raise _TooBig(f"is nested deeper than {MAX_CONFIG_DEPTH} levels; expected a config tree")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _yaml_children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _tree_children(value) -> list:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (list, tuple)):
        return list(value)
    return []


def load_yaml(text: str, what: str) -> Any:
    """Plain yaml (SafeLoader: mappings, lists, numbers, strings, booleans) from `text`, bounded
    as _BoundedLoader says; ConfigError naming `what` for anything else."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, _yaml_children)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: {_yaml_problem(err)}") from None
    except _TooBig as err:
        raise ConfigError(f"{what}: {err}") from None
    except RecursionError:
        raise ConfigError(f"{what}: nested too deeply; expected a config tree") from None
    finally:
        loader.dispose()


def check_tree(data: Any, what: str) -> None:
    """ConfigError unless `data` is a plain config tree (dicts with string keys, lists, strings,
    numbers, booleans, None) within MAX_CONFIG_NODES and MAX_CONFIG_DEPTH, checked before
    anything copies it (a checkpoint's `config`, whose pickle may share one list many times)."""
    try:
        _expanded_size(data, _tree_children)
    except _TooBig as err:
        raise ConfigError(f"{what} {err}") from None
    seen: set[int] = set()
    stack = [("", data)]
    while stack:
        where, value = stack.pop()
        if id(value) in seen and isinstance(value, (dict, list, tuple)):
            continue
        seen.add(id(value))
        if isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str):
                    raise ConfigError(f"{what}: key {key!r} at {where or 'the top'} is not a string")
                stack.append((f"{where}.{key}" if where else key, child))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(value))
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"{what}: {where or 'the top'} holds a {type(value).__name__}; expected plain "
                              "values (numbers, strings, booleans, lists, mappings)")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`; return it in the dataclass's form."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value in ("None", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        for member in inner[:-1]:  # the first member that takes the value (e.g. a number or 'sum')
            try:
                return _coerce(value, member, path)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not one of {list(allowed)}")
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, path)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if abs(value) > MAX_INT:
            raise ConfigError(f"{path}: {value} is out of range; expected an integer <= {MAX_INT}")
        return value
    if tp is float:
        # PyYAML reads "2e-4" (no dot) as a string: accept numeric strings for floats.
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{path}: {value!r} is not a finite number; expected a finite number >= 0")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported annotation {_type_name(tp)}")


def _build(cls: type, data: dict, path: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if full in _ALIASES:
            full = _ALIASES[full]
            key = full.rsplit(".", 1)[-1]
        if key not in names:
            raise ConfigError(
                f"unknown config key {full!r}; expected one of {sorted(names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """`["train_params.lr_generator=1e-4", ...]` -> `[(key, yaml value), ...]`."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train_params.batch_size=8")
        key, raw = item.split("=", 1)
        value = load_yaml(raw, f"override {item!r}") if raw.strip() else ""
        parsed.append((key.strip(), value))
    return parsed


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a yaml error: where, what, and what a config may hold."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if "tag" in problem:
        return (f"{where}{problem}; a config is plain yaml (mappings, lists, numbers, strings, booleans), "
                f"so tags such as !!python are refused")
    return f"{where}{problem}; expected plain yaml"


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to a yaml file, or the name of one in configs/ (`vox-256`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor one of {known}")


@dataclass(frozen=True)
class Schema:
    """What a run config is: the root dataclass of its tree, the translations that map other
    layouts of the same information onto it (an original repository's yaml), and the count
    fields that must be at least a minimum. fomm/config.py composes the project's run config
    (shared sections here, one section per model family) and binds the loaders below to it."""
    root: type
    translations: tuple[Callable[[dict], dict], ...] = ()
    minimums: tuple[tuple[str, int], ...] = ()


def build_config(schema: Schema, data: dict, overrides: list[str] | tuple[str, ...] = (),
                 recorded: bool = False) -> Any:
    """The config of a plain tree (a yaml's, or a checkpoint's resolved config) and overrides.

    Each of the schema's translations runs first (each returns a tree it does not recognise
    unchanged), then the overrides, then the typed build and the checks. `recorded`: `data`
    is a config the project wrote itself (inside a checkpoint). Earlier versions accepted any
    value in the _UNSUPPORTED fields, which have no effect: such a value is read as the
    field's default instead of refused, so the file still loads and the config it gives
    passes the check wherever it goes next.
    """
    check_tree(data or {}, "the config")  # before the copy below expands shared references
    tree = json.loads(json.dumps(data or {}))  # deep copy, plain types
    for translate in schema.translations:
        tree = translate(tree)
    for key, value in parse_overrides(overrides):
        _set_path(tree, key, value)
    config = _build(schema.root, tree)
    _check_counts(config, dict(_MINIMUMS, **dict(schema.minimums)))
    _check_numbers(config)
    if recorded:
        config = _reset_unsupported(config)
    _check_unsupported(config)
    return config


# Counts that must be at least this; the loop would otherwise read 0 as "no limit" (max_steps),
# divide by it (*_every) or loop forever. None still means "no limit" where the field allows it.
_MINIMUMS = {
    "train_params.num_epochs": 1, "train_params.num_repeats": 1, "train_params.batch_size": 1,
    "train_params.max_steps": 1, "train_params.log_every": 1, "train_params.image_every": 1,
    "train_params.checkpoint_every": 1, "train_params.checkpoint_freq": 1,
    "train_params.dataloader_workers": 0, "reconstruction_params.num_videos": 1,
}


def _check_counts(config: Any, minimums: dict[str, int]) -> None:
    for dotted, minimum in minimums.items():
        value = _field(config, dotted)
        if value is not None and value < minimum:
            unset = " (null means no limit)" if value == 0 and minimum == 1 else ""
            raise ConfigError(f"{dotted}: {value} is out of range; expected an integer >= {minimum}{unset}")


def _check_numbers(config: Any, path: str = "") -> None:
    """No number of the tree is negative, and none of the _POSITIVE fields is 0."""
    if dataclasses.is_dataclass(config):
        for f in dataclasses.fields(config):
            _check_numbers(getattr(config, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(config, tuple):
        for index, value in enumerate(config):
            _check_numbers(value, f"{path}[{index}]")
    elif isinstance(config, (int, float)) and not isinstance(config, bool):
        if config < 0:
            raise ConfigError(f"{path}: {config} is out of range; expected a number >= 0")
        if config == 0 and path.rsplit(".", 1)[-1].split("[")[0] in _POSITIVE:
            raise ConfigError(f"{path}: 0 is out of range; expected a number > 0")


# Fields of the original files for modes this project does not have. Each loads only with the
# values the original FOMM and Monkey-Net configs ship, so those files still load; any other
# value would ask for something that does not happen, so it is refused.
_UNSUPPORTED = {
    "dataset_params.pairs_list": ((None, "data/vox256.csv", "data/taichi256.csv", "data/taichi.csv"),
                                  "the original's evaluation pairs; `animate` takes one source and one driving video"),
    "animate_params.num_pairs": ((50, 100), "the original's batch animation of dataset pairs; `animate` renders "
                                            "the one pair it is given"),
    "animate_params.format": ((".mp4",), "`animate` writes the file --output names"),
    "reconstruction_params.format": ((".mp4",), "`reconstruct` writes .mp4 videos"),
}


def _field(config: Any, dotted: str) -> Any:
    value = config
    for name in dotted.split("."):
        value = getattr(value, name)
    return value


def _check_unsupported(config: Any) -> None:
    for dotted, (accepted, instead) in _UNSUPPORTED.items():
        value = _field(config, dotted)
        if value not in accepted:
            expected = " or ".join(repr(v) for v in accepted if v is not None)
            raise ConfigError(f"{dotted}: {value!r} is not supported ({instead}); expected {expected} "
                              f"as in the original configs, or leave it out")


def _reset_unsupported(config: Any) -> Any:
    for dotted, (accepted, _) in _UNSUPPORTED.items():
        section_name, name = dotted.split(".")
        section = getattr(config, section_name)
        if getattr(section, name) not in accepted:
            default = getattr(type(section)(), name)
            log.info("%s: %r, recorded by an earlier version, has no effect; read as %r", dotted,
                     getattr(section, name), default)
            config = replace(config, **{section_name: replace(section, **{name: default})})
    return config


def read_config(schema: Schema, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Read a yaml config (ours or an original repository's) and apply `key=value` overrides."""
    path = resolve_config_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"{path}: cannot be read as a utf-8 yaml file ({type(err).__name__})") from None
    data = load_yaml(text, str(path))
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return build_config(schema, data or {}, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def config_to_dict(config: Any) -> dict:
    """Plain nested dict (lists for tuples): what is written beside outputs and in checkpoints."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value
    return plain(config)


def config_to_yaml(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def config_hash(config: Any) -> str:
    """sha256 of the resolved config: two runs with equal hashes used the same settings."""
    blob = json.dumps(config_to_dict(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def replace(config: Any, **changes: Any) -> Any:
    """`dataclasses.replace` re-exported for frozen sub-configs."""
    return dataclasses.replace(config, **changes)
