"""The `pipeline run train` stage's library: one plain training loop for every model family
(its command line is stages/train.py, which builds a `TrainOptions` and calls `train_run`).

    pipeline run train --config tiny --data data/sample --out runs/tiny [--model fomm]
                       [--workers N] [--ray-address ADDR] [--resume | --overwrite] [key=value ...]

`train()` is the loop, read top to bottom: Adam (betas 0.5, 0.999) per optimizer group
with `train_params.lr_<group>`, MultiStepLR (x0.1) at `epoch_milestones` stepped per
epoch, bf16 autocast and channels_last on CUDA only, `max_steps`. A checkpoint carries
the resolved config, the model in the original layout, optimizer and scheduler states,
step, epoch, position within the epoch and every RNG state, so a stopped run resumed
with `--resume` ends with the same weights, bit for bit, as an unbroken one. With
`--workers N` the same function runs on N Ray Train workers under DDP
(fomm/distributed.py).

A folder that already holds a run (config.yaml, metrics.jsonl, checkpoints/ or images/)
is continued with `--resume`, replaced with `--overwrite` (its old outputs are deleted
first), and otherwise refused: a second run never mixes its files with the first's.

Outputs under `--out`: `config.yaml` (resolved), `metrics.jsonl` (one line per step: the
losses, `loss` their sum, `lr_<group>` per optimizer), `images/step-XXXXXXX.png` (source |
driving with keypoints | deformed source | occlusion | prediction) every `image_every`
steps, and `checkpoints/step-XXXXXXX.pt` every `checkpoint_every` steps and at the end of
every `checkpoint_freq`-th epoch (the original's setting), and at the last step.

Losses stay on the device between log steps (`log_every`) and checkpoints: the steps since
the last one reach the host, averaged over workers, in one sync (flush_losses), so a GPU
never waits on the host for a loss value. A family that trains no discriminator (FOMM with
`generator_gan` 0) gets no discriminator optimizer, and DDP hooks every parameter it
wraps without searching for unused ones.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from core.config import TrainParams, config_to_dict, config_to_yaml, replace, resolve_align_corners
from core.errors import UserError
from fomm.checkpoint import load_checkpoint_file, load_state_dicts, save_checkpoint
from fomm.config import Config, load_config
from fomm.data import EpochSampler, FramePairs, collate_pairs, open_clips
from fomm.distributed import (DistContext, average_gradients, mean_over_workers, synchronize_batch_norm,
                              train_distributed)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
ADAM_BETAS = (0.5, 0.999)


# --------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class TrainOptions:
    """What `pipeline run train` runs, resolved (stages/train.py builds it from the command
    line; `run all` and Python callers build the same): the config with its overrides, model
    family and stage applied (`resolve_run_config`), the data and run folders, the checkpoint
    a later stage starts from (checked to be a file), `workers` (checked against this
    machine's slots; a Ray cluster's are checked by `train_run`, which joins it), and how a
    folder holding a run is treated (`resume` xor `overwrite`). `config_source` is the
    --config name or file, kept apart from the run folder."""
    config: Config
    data: Path
    out: Path
    init_checkpoint: Path | None = None
    workers: int = 1
    ray_address: str | None = None
    resume: bool = False
    overwrite: bool = False
    config_source: str | None = None

    @property
    def stage(self) -> str:
        """reconstruction (the first stage) or avd (MRAA's and TPSMM's second)."""
        return self.config.train_params.stage

    @property
    def distributed(self) -> bool:
        return self.workers > 1 or self.ray_address is not None


def resolve_run_config(config_name: str, overrides: list[str], model: str | None,
                       stage: str = "reconstruction") -> Config:
    """Load `config_name` (the family's own variant where one exists, see
    fomm.registry.family_config), make `model` its model family and `stage` its stage (the
    family's `stage_config`: the AVD stage trains with the family's AVD settings)."""
    from fomm.registry import family_config, model_class
    config = load_config(family_config(config_name, model), overrides)
    if model and model != config.model_params.name:
        config = replace(config, model_params=replace(config.model_params, name=model))
    config = model_class(config.model_params.name).stage_config(config, stage)
    # Training decides the grid convention now, so config.yaml and every checkpoint record it.
    return resolve_align_corners(config, None)


def train_run(options: TrainOptions) -> dict[str, Any] | Path:
    """Run `options`: in this process (returns the last step's losses) or, with several
    workers or a Ray address, on Ray Train workers under DDP (returns the run folder). The
    run folder is claimed (claim_run_folder) and another run in it refused (check_run_folder)
    before anything is written; an --overwrite'd run is deleted only once the inputs passed."""
    from fomm.distributed import check_workers
    out = Path(options.out)
    run_folder = claim_run_folder(out, options.data, options.init_checkpoint, options.config_source)
    # refused early, before the lock: a run that is refused touches nothing of the run there
    check_run_folder(out, options.resume, options.overwrite, delete=False)
    if options.ray_address is not None:  # the cluster's slots (this machine's were checked with the options)
        check_workers(options.workers, options.ray_address)
    with run_folder:
        if options.distributed:
            # Checked (and an --overwrite'd run deleted) before any worker starts: one line, not a worker's traceback.
            check_run_folder(out, options.resume, options.overwrite)
            # the workers get the config as a dict and plain paths (fomm/distributed.py), never these options
            return train_distributed(train, options.config, options.data, out, num_workers=options.workers,
                                     ray_address=options.ray_address, resume=options.resume,
                                     init_checkpoint=options.init_checkpoint)
        # an --overwrite deletes only once the loop has checked its inputs
        return train(options.config, options.data, out, resume=options.resume, overwrite=options.overwrite,
                     init_checkpoint=options.init_checkpoint)


def claim_run_folder(out: str | Path, data: str | Path, init_checkpoint: str | Path | None = None,
                     config: str | None = None):
    """The run folder as core.outputs.claim holds it: apart from the data, the starting
    checkpoint and the config file; new, empty, or a run folder train made (marked, or an
    earlier version's: `earlier_run`); the writer lock held while the run goes on."""
    from core import outputs
    return outputs.claim(out, "train", {"--data": data, "--checkpoint": init_checkpoint, "--config": config},
                         earlier=earlier_run, scaffolding=("config.yaml",), partial_dirs=("checkpoints", "images"))


def check_initial_checkpoint(config: Config, checkpoint: str | None, resume: bool) -> Path | None:
    """The checkpoint a later stage starts from: required for a stage after the first (unless
    --resume continues one), refused for the first, which starts from scratch."""
    first = config.train_params.stage == "reconstruction"
    if checkpoint is None:
        if not first and not resume:
            raise UserError(f"--stage {config.train_params.stage} starts from a trained model: expected "
                            f"--checkpoint with the reconstruction run's checkpoint")
        return None
    if first:
        raise UserError(f"--checkpoint {checkpoint!r}: the reconstruction stage starts from scratch (--resume "
                        f"continues a run in --out); --checkpoint is for --stage avd")
    if not Path(checkpoint).is_file():
        raise UserError(f"--checkpoint {checkpoint!r} does not exist; expected the reconstruction run's checkpoint")
    return Path(checkpoint)


# --------------------------------------------------------------------------- pieces
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from (the data sampler's state is (epoch, position)), as
    tensors and plain Python values, so a checkpoint loads with weights_only=True."""
    numpy_state = np.random.get_state(legacy=False)  # {'bit_generator', 'state': {'key', 'pos'}, ...}
    state = {
        "python": random.getstate(),  # (version, tuple of 625 ints, None)
        "numpy": {**numpy_state, "state": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                                           "pos": int(numpy_state["state"]["pos"])}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = numpy_state["state"]["key"]
        numpy_state = {**numpy_state, "state": {"key": np.asarray(key, dtype=np.int64).astype(np.uint32),
                                                "pos": numpy_state["state"]["pos"]}}
    np.random.set_state(numpy_state)  # a tuple: a checkpoint written before the states were tensors
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def use_bf16(config: Config, device: str) -> bool:
    """bf16 autocast on CUDA ("auto" or "bf16"); CPU always trains in fp32."""
    precision = config.train_params.precision
    if precision == "bf16" and not device.startswith("cuda"):
        log.warning("train_params.precision=bf16 applies on CUDA only; training in fp32 on %s", device)
    return device.startswith("cuda") and precision in ("auto", "bf16")


def make_optimizer(params: list[nn.Parameter], lr: float, config: Config,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """train_params.optimizer: Adam with betas (0.5, 0.999) as FOMM, or SGD with
    train_params.momentum as X2Face's train_model.py (momentum 0.9); `weight_decay` the
    family's (`optimizer_weight_decay`: TPSMM's 1e-4, else 0)."""
    tp = config.train_params
    if not 0 <= tp.momentum < 1:
        raise UserError(f"train_params.momentum={tp.momentum}: expected a value in [0, 1)")
    if tp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=tp.momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, weight_decay=weight_decay)


def build_optimizers(model, config: Config) -> dict[str, torch.optim.Optimizer]:
    """One optimiser (make_optimizer) per non-empty parameter group of the model's current
    stage, with the family's learning rate for it (`optimizer_lr`: train_params.lr_<group>).

    Parameters in no group (Monkey-Net's discriminator without a discriminator loss, whose
    feature maps its losses still read) are frozen: no gradient is computed or all-reduced
    for them, so DDP need not search for unused parameters.
    """
    grouped = {id(p) for params in model.optimizer_groups().values() for p in params}
    for param in model.parameters():
        if id(param) not in grouped:
            param.requires_grad_(False)
    optimizers = {}
    for group, params in model.optimizer_groups().items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        optimizers[group] = make_optimizer(params, model.optimizer_lr(group, config.train_params), config,
                                           model.optimizer_weight_decay(group, config.train_params))
    return optimizers


def build_kit(config: Config, device: str):
    """The losses' shared state (VGG19, equivariance transforms): fomm/losses.py's LossKit."""
    from fomm.losses import LossKit
    kit = LossKit(config.train_params, align_corners=config.model_params.align_corners,
                  num_channels=config.model_params.common_params.num_channels)
    return kit.to(device)


class GeneratorStep(nn.Module):
    """`model.generator_losses` as a forward, so DDP can hook the generator-side backward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, source: torch.Tensor, driving: torch.Tensor, kit: Any):
        return self.model.generator_losses(source, driving, kit)


def train_step(model, optimizers: dict[str, torch.optim.Optimizer], kit, source: torch.Tensor,
               driving: torch.Tensor, forward=None, autocast=None, world_size: int = 1
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One optimisation step of the loop (and of benchmarks/train.py): every group but the
    discriminator on `model.generator_losses` (FOMM: perceptual Eq. 10, equivariance Eq.
    11-12, GAN terms), gradients clipped where the family does (`clip_gradients`), then the
    discriminator (LSGAN) where the model trains one.

    `forward` replaces `model.generator_losses` (the DDP-wrapped GeneratorStep); `autocast`
    is entered around each forward. Returns the losses detached but still on the device (no
    host sync) and the generated outputs.
    """
    forward = forward or model.generator_losses
    autocast = autocast or contextlib.nullcontext()
    model.train()
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    with autocast:
        losses, generated = forward(source, driving, kit)
    sum(losses.values()).backward()
    model.clip_gradients()
    for name, optimizer in optimizers.items():
        if name != "discriminator":
            optimizer.step()
    if "discriminator" in optimizers:
        discriminator = optimizers["discriminator"]
        discriminator.zero_grad(set_to_none=True)
        detached = {k: v.detach() if torch.is_tensor(v) else v for k, v in generated.items()}
        with autocast:
            d_losses = model.discriminator_losses(source, driving, detached, kit)
        if d_losses:
            sum(d_losses.values()).backward()
            if world_size > 1:  # its backward ran outside the DDP forward
                average_gradients(discriminator.param_groups[0]["params"], world_size)
            discriminator.step()
            losses = {**losses, **d_losses}
    return {k: v.detach() for k, v in losses.items()}, generated


def checkpoint_due(step: int, epoch: int, epoch_done: bool, total_steps: int | float, tp: TrainParams) -> bool:
    """Every `checkpoint_every` steps, at the end of every `checkpoint_freq`-th epoch (the
    original's checkpoint_freq, in epochs), and at the last step."""
    return step % tp.checkpoint_every == 0 or step == total_steps or (epoch_done and epoch % tp.checkpoint_freq == 0)


def flush_losses(window: list[dict[str, Any]], dist_ctx: DistContext) -> list[dict[str, Any]]:
    """metrics.jsonl records of the steps in `window`, whose losses are still device tensors:
    one host sync and one all-reduce (mean over workers) for the whole window."""
    keys = list(window[0]["losses"])
    stacked = torch.stack([torch.stack([entry["losses"][k].double() for k in keys]) for entry in window])  # (N, L)
    rows = mean_over_workers(stacked, dist_ctx).tolist()
    records = []
    for entry, row in zip(window, rows):
        values = dict(zip(keys, row))
        records.append({"step": entry["step"], "epoch": entry["epoch"], "loss": sum(values.values()), **values,
                        **entry["lr"], "time": entry["time"]})
    return records


# --------------------------------------------------------------------------- checkpoints
def checkpoint_paths(out_dir: Path) -> list[Path]:
    return sorted((out_dir / CHECKPOINT_DIR).glob("step-*.pt"))


# What a run writes in its folder (fomm/distributed.py adds Ray's own `ray/`, kept), and the
# files it writes inside its two subfolders.
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "images", CHECKPOINT_DIR)
RUN_FILES = {"images": "step-*.png", CHECKPOINT_DIR: "step-*.pt"}


def earlier_run(out_dir: Path) -> bool:
    """Whether an unmarked folder is a run of an earlier version: its metrics or checkpoints,
    or only the config.yaml a start that failed before its first step left behind."""
    if (out_dir / "metrics.jsonl").is_file() or checkpoint_paths(out_dir):
        return True
    return sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(".")) == ["config.yaml"]


def check_run_folder(out_dir: Path, resume: bool, overwrite: bool, delete: bool = True) -> None:
    """Refuse an `out_dir` that holds another run unless `resume` continues it or `overwrite`
    replaces it; with `overwrite` (and `delete`), delete that run's outputs first: the files
    the loop writes and nothing else (a folder holding other files is refused). A lone
    config.yaml (a start that never finished a step) is no run: it is replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; expected a run folder")
    found = [name for name in RUN_OUTPUTS if (out_dir / name).exists()]
    if found == ["config.yaml"]:
        found = []
    if not found or resume:
        return
    if not overwrite:
        raise UserError(f"--out {out_dir} already holds a run ({', '.join(found)}); pass --resume to continue it, "
                        f"--overwrite to replace it, or choose another folder")
    foreign = [f"{name}/{p.name}" for name, pattern in RUN_FILES.items() if (out_dir / name).is_dir()
               for p in sorted((out_dir / name).iterdir()) if not p.match(pattern) or not p.is_file()]
    if foreign:
        raise UserError(f"--out {out_dir}: --overwrite would delete {foreign[0]}, which train did not write "
                        f"({len(foreign)} such in all); move it away or choose another folder")
    if not delete:
        return
    import shutil
    log.warning("--overwrite: deleting the earlier run's %s in %s", ", ".join(found), out_dir)
    for name in found:
        target = out_dir / name
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()


def save_training_checkpoint(path: Path, model, optimizers, schedulers, config: Config,
                             progress: dict[str, int]) -> None:
    """Everything a resume needs, via fomm/checkpoint.save_checkpoint (atomic)."""
    state = {
        "config": config_to_dict(config),
        **model.checkpoint_state(),  # generator / kp_detector / discriminator, original layout
        **{f"optimizer_{name}": opt.state_dict() for name, opt in optimizers.items()},
        "schedulers": {name: s.state_dict() for name, s in schedulers.items()},
        "step": progress["step"], "epoch": progress["epoch"], "batch_in_epoch": progress["batch_in_epoch"],
        "rng": rng_state(),
    }
    save_checkpoint(path, state)


# Settings a resumed run honours as given (the loop reads them afresh at every step); every
# other difference from the checkpoint's config would be recorded but not used (the optimiser,
# scheduler and sampler states carry the old values), so --resume refuses it.
RESUME_MAY_CHANGE = ("train_params.max_steps", "train_params.num_epochs", "train_params.log_every",
                     "train_params.image_every", "train_params.checkpoint_every", "train_params.checkpoint_freq",
                     "train_params.dataloader_workers", "dataset_params.root_dir")
RESUME_STATE = ("step", "epoch", "batch_in_epoch", "rng", "schedulers")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}.{key}" if prefix else key).items()}
    return {prefix: tree}


def check_resume_settings(saved: dict | None, config: Config, path: Path) -> None:
    """UserError naming the first setting a resume from `path` would record but not honour."""
    if saved is None:
        return
    if saved.get("model_params") != config_to_dict(config)["model_params"]:
        raise UserError(f"{str(path)!r} was trained with other model_params than this config; "
                        "resume with the config written beside it (config.yaml)")
    old, new = _flat(saved), _flat(config_to_dict(config))
    for key in sorted(set(old) | set(new)):
        if key in RESUME_MAY_CHANGE or old.get(key) == new.get(key):
            continue
        raise UserError(f"--resume: {key} is {new.get(key)!r} here but {old.get(key)!r} in {str(path)!r}, and a "
                        f"resumed run cannot change it (only {', '.join(k.split('.')[-1] for k in RESUME_MAY_CHANGE[:-1])} "
                        "can); resume with the run's config.yaml, or start a new run")


def load_training_checkpoint(path: Path, model, optimizers, schedulers, config: Config) -> dict[str, int]:
    state = load_checkpoint_file(path)
    missing = [key for key in RESUME_STATE if key not in state]
    if missing:
        raise UserError(f"{str(path)!r} holds no {missing[0]!r} state ({', '.join(missing)} missing): it was not "
                        "written by `pipeline run train`; --resume needs a training checkpoint")
    check_resume_settings(state.get("config"), config, path)
    # Sub-networks and optimisers this run does not build (a discriminator without a GAN
    # loss, as in checkpoints written before it was left out) are ignored.
    model.load_checkpoint_state(state, strict=True)
    missing = [name for name in optimizers if f"optimizer_{name}" not in state or name not in state["schedulers"]]
    if missing:
        raise UserError(f"{str(path)!r} holds no optimizer state for {missing}: it was trained with other "
                        "loss weights than this config; resume with the config written beside it (config.yaml)")
    try:
        for name, opt in optimizers.items():
            opt.load_state_dict(state[f"optimizer_{name}"])
            schedulers[name].load_state_dict(state["schedulers"][name])
        set_rng_state(state["rng"])
        return {key: int(state[key]) for key in ("step", "epoch", "batch_in_epoch")}
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise UserError(f"{str(path)!r}: its optimizer, scheduler or RNG state cannot be restored "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}); "
                        "--resume needs a checkpoint `pipeline run train` wrote") from None


# --------------------------------------------------------------------------- metrics.jsonl
def append_records(path: Path, records: list[dict]) -> None:
    """Append lines to metrics.jsonl in one write(2) of whole lines, so a kill leaves the
    file ending at a line's end (a torn last line, should one happen, is dropped on resume)."""
    data = "".join(json.dumps(record) + "\n" for record in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def kept_records(path: Path, last_step: int) -> list[str]:
    """The lines of metrics.jsonl up to `last_step` (the checkpoint a resume starts from);
    a torn last line (what a kill leaves) is dropped; any other unreadable line is an error."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                log.warning("%s: its last line is torn (a run killed while writing it): dropped", path)
                continue
            raise UserError(f"{str(path)!r} line {number} is not a metrics record ({line[:60]!r}); "
                            "expected one JSON object with a 'step' a line") from None
        if step <= last_step:
            kept.append(line)
    return kept


# --------------------------------------------------------------------------- images
def _occlusion_image(generated: dict, index: int, size: tuple[int, int]) -> torch.Tensor:
    occlusion = generated.get("occlusion_map")
    if occlusion is None:
        return torch.full((3, *size), 0.5)
    occlusion = F.interpolate(occlusion[index:index + 1].detach().float(), size=size, mode="bilinear",
                              align_corners=False)
    return occlusion[0].expand(3, -1, -1)


def _deformed_image(generated: dict, source: torch.Tensor, index: int, align_corners: bool) -> torch.Tensor:
    """The source warped by the predicted deformation, at the frame size."""
    deformed = generated.get("deformed")
    if deformed is None or deformed.dim() != 4 or deformed.shape[1] != source.shape[1]:
        if "deformation" not in generated:
            return torch.full_like(source[index], 0.5)
        grid = generated["deformation"][index:index + 1].detach().float()  # (1, h, w, 2)
        deformed = F.grid_sample(source[index:index + 1].float(), grid, align_corners=align_corners)
        index = 0
    image = deformed[index:index + 1].detach().float()  # (1, 3, h, w)
    if image.shape[2:] != source.shape[2:]:
        image = F.interpolate(image, size=tuple(source.shape[2:]), mode="bilinear", align_corners=False)
    return image[0]


def _driving_keypoints(model, generated: dict, index: int):
    kp = generated.get("kp_driving")
    if isinstance(kp, dict):
        kp = model.keypoints(kp)
    return None if kp is None else kp[index]


def training_image(model, config: Config, source, driving, generated, num_rows: int = 4) -> np.ndarray:
    """Rows of (source, driving with keypoints, deformed source, occlusion, prediction)."""
    from core.frames import to_uint8
    from fomm.visualize import draw_keypoints, image_grid
    vis = config.visualizer_params
    size = tuple(source.shape[2:])
    rows = []
    for i in range(min(num_rows, source.shape[0])):
        kp = _driving_keypoints(model, generated, i)
        driving_img = to_uint8(driving[i])
        if kp is not None:
            driving_img = draw_keypoints(driving_img, kp, vis.kp_size, vis.colormap)
        rows.append([to_uint8(source[i]), driving_img,
                     to_uint8(_deformed_image(generated, source, i, config.model_params.align_corners)),
                     to_uint8(_occlusion_image(generated, i, size)),
                     to_uint8(generated["prediction"][i])])
    return image_grid(rows, border=2 if vis.draw_border else 0)


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    from core.media import atomic_path
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


# --------------------------------------------------------------------------- the loop
def train(config: Config, data_root: str | Path, out_dir: str | Path, resume: bool = False,
          dist_ctx: DistContext | None = None, overwrite: bool = False,
          init_checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Train `config`'s model on `data_root`'s train split; returns the last step's losses.

    Called as it is (no `dist_ctx`), it holds the run folder (claim_run_folder: apart from
    the inputs, a run folder of train's, its writer lock); a worker of a distributed run
    (`dist_ctx` given) writes under the lock its driver holds. The loop is `train_loop`."""
    if dist_ctx is not None:
        return train_loop(config, data_root, out_dir, resume, dist_ctx, overwrite, init_checkpoint)
    with claim_run_folder(out_dir, data_root, init_checkpoint):
        return train_loop(config, data_root, out_dir, resume, dist_ctx, overwrite, init_checkpoint)


def train_loop(config: Config, data_root: str | Path, out_dir: str | Path, resume: bool = False,
               dist_ctx: DistContext | None = None, overwrite: bool = False,
               init_checkpoint: str | Path | None = None) -> dict[str, Any]:
    """The training loop (`train` holds the folder first).

    `out_dir` holding another run is refused unless `resume` or `overwrite` (check_run_folder).
    `train_params.stage` says which of the family's stages trains (`set_stage`); a stage
    after the first starts from the weights of `init_checkpoint` (a finished run's
    checkpoint, project or released layout), unless `resume` finds a checkpoint in `out_dir`.
    """
    dist_ctx = dist_ctx or DistContext(device="cuda" if torch.cuda.is_available() else "cpu")
    config = resolve_align_corners(config, None)
    tp = config.train_params
    out_dir, device = Path(out_dir), dist_ctx.device
    bf16 = use_bf16(config, device)
    channels_last = tp.channels_last and device.startswith("cuda")

    # ---- data: pairs of frames, a sampler whose state is (epoch, position)
    dataset = FramePairs(open_clips(data_root, "train"), config.dataset_params, tp.num_repeats)
    batch_size = tp.batch_size // dist_ctx.world_size
    if batch_size < 1 or tp.batch_size % dist_ctx.world_size:
        raise UserError(f"train_params.batch_size={tp.batch_size} must be a multiple of the {dist_ctx.world_size} workers")
    sampler = EpochSampler(len(dataset), tp.seed, dist_ctx.rank, dist_ctx.world_size)
    steps_per_epoch = len(sampler) // batch_size
    if steps_per_epoch == 0:
        raise UserError(f"{len(dataset)} training items (clips x num_repeats) make no batch of "
                        f"{tp.batch_size}; raise train_params.num_repeats or lower batch_size")
    total_steps = min(tp.max_steps if tp.max_steps is not None else math.inf, tp.num_epochs * steps_per_epoch)
    if dist_ctx.is_main:  # after the checks above: a refused run deletes and writes nothing
        check_run_folder(out_dir, resume, overwrite)
        out_dir.mkdir(parents=True, exist_ok=True)
    config_written = False  # config.yaml appears with the first step's record: a start that fails writes none

    # ---- model, optimisers, schedules, losses
    seed_everything(tp.seed)
    from fomm.registry import build_model
    model = build_model(config).to(device)
    if init_checkpoint is not None and not (resume and checkpoint_paths(out_dir)):
        load_state_dicts(model, model.state_from_checkpoint(load_checkpoint_file(init_checkpoint)),
                         source=f"--checkpoint {init_checkpoint}")
        log.info("stage %s starts from %s", tp.stage, init_checkpoint)
    model.set_stage(tp.stage)
    if dist_ctx.world_size > 1:  # batch statistics over all workers, as the original's synchronised BN
        model = synchronize_batch_norm(model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizers = build_optimizers(model, config)
    schedulers = {name: torch.optim.lr_scheduler.MultiStepLR(opt, list(tp.epoch_milestones), gamma=0.1)
                  for name, opt in optimizers.items()}
    kit = build_kit(config, device)
    step_module: nn.Module = GeneratorStep(model)
    if dist_ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel
        step_module = DistributedDataParallel(step_module,
                                              device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    # Equivariance transforms differ between workers; one process is rank 0.
    torch.manual_seed(tp.seed + 1_000_003 * dist_ctx.rank)

    progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    if resume and checkpoint_paths(out_dir):
        path = checkpoint_paths(out_dir)[-1]
        progress = load_training_checkpoint(path, model, optimizers, schedulers, config)
        log.info("resumed from %s at step %d (epoch %d)", path, progress["step"], progress["epoch"])
    elif resume:
        log.info("no checkpoint in %s: starting from scratch", out_dir / CHECKPOINT_DIR)

    metrics_path = out_dir / "metrics.jsonl"
    if dist_ctx.is_main and metrics_path.exists():
        # A fresh run starts a fresh curve; a resumed one drops steps logged after its checkpoint.
        from core.media import atomic_path
        kept = kept_records(metrics_path, progress["step"]) if resume else []
        with atomic_path(metrics_path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
    # Built once; the sampler is told each epoch (and a resumed run's position in it) before iterating.
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_pairs,
                        num_workers=tp.dataloader_workers, persistent_workers=tp.dataloader_workers > 0,
                        drop_last=True, generator=torch.Generator().manual_seed(tp.seed),  # off torch's global RNG
                        pin_memory=device.startswith("cuda"),
                        # workers from a clean server process, not forked from this one: a fork
                        # of a process whose other threads (Ray, onnxruntime, pyarrow, a web app)
                        # hold the allocator's locks can crash the child (seen: double free)
                        multiprocessing_context="forkserver" if tp.dataloader_workers > 0 else None)
    window_start, window_steps, last = time.perf_counter(), 0, {}
    pending: list[dict[str, Any]] = []  # steps whose losses are still on the device

    while progress["step"] < total_steps:
        sampler.set_epoch(progress["epoch"], start=progress["batch_in_epoch"] * batch_size)
        model.set_epoch(progress["epoch"])
        for batch in loader:
            source = batch["source"].to(device, non_blocking=True)
            driving = batch["driving"].to(device, non_blocking=True)
            if channels_last:
                source = source.contiguous(memory_format=torch.channels_last)
                driving = driving.contiguous(memory_format=torch.channels_last)
            losses, generated = train_step(model, optimizers, kit, source, driving, forward=step_module,
                                           autocast=autocast, world_size=dist_ctx.world_size)

            progress["step"] += 1
            progress["batch_in_epoch"] += 1
            epoch_done = progress["batch_in_epoch"] == steps_per_epoch
            if epoch_done:
                progress["epoch"] += 1
                progress["batch_in_epoch"] = 0
                for sched in schedulers.values():
                    sched.step()
            step = progress["step"]
            window_steps += 1
            pending.append({"step": step, "epoch": progress["epoch"], "losses": losses, "time": time.time(),
                            "lr": {f"lr_{name}": opt.param_groups[0]["lr"] for name, opt in optimizers.items()}})
            log_due = step % tp.log_every == 0 or step == total_steps
            save_due = checkpoint_due(step, progress["epoch"], epoch_done, total_steps, tp)
            if log_due or save_due:  # a checkpoint's steps are in metrics.jsonl before it is written
                records, pending = flush_losses(pending, dist_ctx), []
                last = {k: records[-1][k] for k in losses}
            if dist_ctx.is_main and (log_due or save_due):
                if not config_written:  # the settings of the steps recorded (a resume's honoured changes too)
                    from core.media import atomic_path
                    with atomic_path(out_dir / "config.yaml") as tmp:
                        tmp.write_text(config_to_yaml(config))
                    config_written = True
                append_records(metrics_path, records)
            if dist_ctx.is_main and log_due:
                elapsed = time.perf_counter() - window_start
                rate = window_steps / max(elapsed, 1e-9)
                eta = (total_steps - step) / rate
                terms = " ".join(f"{k} {v:.4f}" for k, v in last.items())
                print(f"step {step}/{total_steps} epoch {progress['epoch']} {terms} "
                      f"| {rate:.2f} it/s | ETA {eta / 60:.1f} min", flush=True)
                window_start, window_steps = time.perf_counter(), 0
            if dist_ctx.is_main and (step % tp.image_every == 0 or step == total_steps):
                image = training_image(model, config, source.float(), driving.float(), generated)
                save_png(out_dir / "images" / f"step-{step:07d}.png", image)
            if dist_ctx.is_main and save_due:
                save_training_checkpoint(out_dir / CHECKPOINT_DIR / f"step-{step:07d}.pt", model,
                                         optimizers, schedulers, config, progress)
            if step >= total_steps:
                break
    return last
