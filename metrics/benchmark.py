"""`pipeline run benchmark`: reconstruct the test split with each model and score every frame.

Protocol (the paper's, REFERENCE §1; fomm/reconstruction.py, which `pipeline run reconstruct`
runs too): for each test clip, the source is its first frame and the driving frames are all
of its frames, with absolute motion (`model.reconstruct`); L1 is the protocol's, on the
model's float output. Each generated frame is scored against the real one with
`metrics.evaluate.score_clip` (SSIM, PSNR, and AKD / MKR / AED / LPIPS where a backend is
given) under `--protocol` (paper: pose-evaluation's arithmetic, the default wherever Table 3
has numbers for the dataset; see metrics.protocol). On the `sample` dataset, whose true
motion is known, each model's 'deformation' output is also compared with the truth.

Writes to `--out`:
    per_frame.parquet   model, clip, frame, l1, ssim, psnr, akd, mkr, aed, lpips, motion_epe,
                        akd_skip, mkr_skip, aed_skip (why a frame has no value),
                        pose_backend, identity_backend
    per_clip.parquet    the same, averaged per (model, clip), with num_frames
    comparison.{md,csv,html}   ours with bootstrap 95 % intervals over clips, beside the paper's
    motion.{md,csv,html}       (sample only) motion error against the true backward grids
    samples/            source, driving and each model's frames of the first clip (PNG)
    benchmark.json      what ran: data, checkpoints, config hashes, protocol, backends (and
                        which metrics compare with the paper), frames scored and skipped
                        per metric and reason, seconds per model
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["l1", "ssim", "psnr", "akd", "mkr", "aed", "lpips", "motion_epe"]
NO_MOTION = "no motion (identity grid)"


# --------------------------------------------------------------------------- model specs
@dataclass(frozen=True)
class ModelSpec:
    name: str          # registry name: fomm, monkey-net, x2face
    checkpoint: Path
    config: str | None  # a config name or yaml path for checkpoints that embed none


def parse_models(text: str) -> list[ModelSpec]:
    """`fomm=CKPT,monkey-net=CKPT@CONFIG,...` -> specs (registry names, files checked)."""
    from fomm.registry import MODELS
    specs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, rest = item.partition("=")
        if not sep or not rest:
            raise UserError(f"--models item {item!r}: expected NAME=CHECKPOINT[@CONFIG]")
        if name not in MODELS:
            raise UserError(f"--models item {item!r}: unknown model {name!r}; expected one of {sorted(MODELS)}")
        checkpoint, _, config = rest.partition("@")
        if not Path(checkpoint).is_file():
            raise UserError(f"--models item {item!r}: checkpoint {checkpoint!r} does not exist")
        specs.append(ModelSpec(name, Path(checkpoint), config or None))
    if not specs:
        raise UserError(f"--models {text!r}: expected at least one NAME=CHECKPOINT")
    if len({s.name for s in specs}) != len(specs):
        raise UserError(f"--models {text!r} names a model twice")
    return specs


def model_config(spec: ModelSpec):
    """The config a checkpoint was trained with: `@CONFIG` if given, else the embedded one,
    with `model_params.name` set to the spec's family."""
    from core.config import replace
    from fomm.checkpoint import checkpoint_config, load_checkpoint_file
    from fomm.config import load_config
    config = load_config(spec.config) if spec.config else checkpoint_config(load_checkpoint_file(spec.checkpoint))
    if config is None:
        raise UserError(f"checkpoint {str(spec.checkpoint)!r} embeds no config (a released checkpoint?); "
                        f"pass {spec.name}={spec.checkpoint}@CONFIG, e.g. @vox-256")
    if config.model_params.name != spec.name:
        config = replace(config, model_params=replace(config.model_params, name=spec.name))
    return config


def load_model(spec: ModelSpec, device: str = "cpu"):
    """(model in eval mode on `device`, its Config) from a released or project checkpoint."""
    from fomm.checkpoint import load_model as load_checkpoint_model
    config = model_config(spec)
    return load_checkpoint_model(config, spec.checkpoint, device=device), config


# --------------------------------------------------------------------------- test clips
def open_test_clips(data: str | Path, split: str, max_clips: int | None):
    """(store, clip names): the split's clips in name order, from any layout that
    `fomm.data.open_clips` reads (shards, png folders, the original layouts)."""
    from fomm.data import open_clips
    store = open_clips(data, split)
    return store, list(store.clips[:max_clips] if max_clips else store.clips)


def clip_batches(store, clip: str, size: tuple[int, int], batch_size: int, max_frames: int | None = None):
    """(n, 3, H, W) float batches of `clip`'s first `max_frames` frames (all when None) at
    `size`, as `pipeline run reconstruct` reads them (`fomm.data.ReconstructionClips`)."""
    from fomm.data import ReconstructionClips
    left = max_frames
    for batch in ReconstructionClips(store, size, min(batch_size, max_frames or batch_size)).frames(clip):
        if left is not None:
            batch, left = batch[:left], left - min(left, len(batch))
        if len(batch):
            yield batch
        if left == 0:
            return


def truth_grid(data: str | Path, split: str, clip: str) -> np.ndarray | None:
    """The sample dataset's true backward grid (T, 64, 64, 2) of `clip`, or None."""
    path = Path(data) / "truth" / split / f"{clip}.npz"
    if not path.is_file():
        return None
    with np.load(path) as archive:
        return archive["backward_grid"].astype(np.float32)


# --------------------------------------------------------------------------- motion error
def identity_grid(size: int) -> np.ndarray:
    """(size, size, 2) normalised (x, y) of pixel centres (align_corners=False)."""
    from fomm.blocks import identity_grid as grid
    return grid((size, size), align_corners=False).numpy()


def motion_epe(deformation: np.ndarray, truth: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """Per-frame mean end-point error in pixels between a predicted backward grid and the truth.

    deformation (T, h, w, 2) and truth (T, g, g, 2) hold normalised source (x, y) in [-1, 1];
    the prediction is resized to g x g (bilinear, align_corners=False, as pixel centres), and
    a normalised unit is W/2 (x) or H/2 (y) pixels of the scored frames `frame_size` (H, W).
    """
    import torch
    import torch.nn.functional as F
    count = min(len(deformation), len(truth))
    grid = torch.from_numpy(np.ascontiguousarray(deformation[:count])).permute(0, 3, 1, 2)  # (T, 2, h, w)
    grid = F.interpolate(grid, size=truth.shape[1:3], mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).numpy()  # (T, g, g, 2)
    scale = np.array([frame_size[1] / 2, frame_size[0] / 2], np.float32)
    error = np.linalg.norm((grid - truth[:count]) * scale, axis=-1)  # (T, g, g)
    out = np.full(len(deformation), np.nan)
    out[:count] = error.mean(axis=(1, 2))
    return out


# --------------------------------------------------------------------------- scoring
def _backends(dataset: str, pose: str | None, identity: str | None):
    from metrics import backends
    default_pose, default_identity = (None, None)
    if pose is None or identity is None:
        default_pose, default_identity = backends.default_backends(dataset)
    pose_backend = (None if pose == "none" else backends.get_pose_backend(pose) if pose else default_pose)
    identity_backend = (None if identity == "none" else backends.get_identity_backend(identity)
                        if identity else default_identity)
    return pose_backend, identity_backend


def backend_label(backend) -> str:
    if backend is None:
        return "none"
    kind = "the paper's network" if backend.paper_equivalent else "substitute"
    return f"{backend.name} (scheme {backend.scheme}, {kind})"


def _real_detections(cache: dict, clip: str, real: np.ndarray, pose, identity):
    """The real clip's keypoints and embeddings, detected once and shared by every model
    that scores at the same frame size."""
    from metrics.evaluate import embeddings_at_256, keypoints_at_256
    key = (clip, real.shape)
    if key not in cache:
        cache[key] = (keypoints_at_256(pose, real) if pose is not None else None,
                      embeddings_at_256(identity, real) if identity is not None else None)
    return cache[key]


def score_model(spec: ModelSpec, store, clips: list[str], args, pose, identity, samples: dict,
                cache: dict) -> pd.DataFrame:
    """Reconstruct and score every clip with one model: its per-frame rows."""
    from fomm.reconstruction import reconstruct_clip
    from metrics.evaluate import score_clip
    model, config = load_model(spec, args.device)
    size = tuple(config.dataset_params.frame_shape[:2])
    rows = []
    for index, clip in enumerate(clips):
        batches = clip_batches(store, clip, size, args.batch_size, args.max_frames)
        clip_out = reconstruct_clip(model, batches, args.device, getattr(args, "precision", "fp32"))
        real, fake = clip_out.real, clip_out.fake
        real_kp, real_emb = _real_detections(cache, clip, real, pose, identity)
        scores = score_clip(real, fake, pose=pose, identity=identity, lpips=args.lpips,
                            real_keypoints=real_kp, real_embeddings=real_emb, protocol=args.protocol,
                            l1=clip_out.l1)
        scores = scores.reset_index(drop=True)
        scores["motion_epe"] = np.nan
        truth = truth_grid(args.data, args.split, clip)
        if truth is not None and clip_out.deformation is not None:
            scores["motion_epe"] = motion_epe(clip_out.deformation, truth, real.shape[1:3])
        scores.insert(0, "clip", clip)
        scores.insert(0, "model", spec.name)
        rows.append(scores)
        if index == 0:
            samples[spec.name] = fake
            samples.setdefault("driving", real)
        log.info("%s: clip %d/%d %s, L1 %.4f", spec.name, index + 1, len(clips), clip,
                 float(scores["l1"].mean()))
    return pd.concat(rows, ignore_index=True)


def no_motion_rows(clips: list[str], args, frame_size: tuple[int, int]) -> pd.DataFrame:
    """Motion error of the identity grid (no motion at all): the floor a model must beat."""
    rows = []
    for clip in clips:
        truth = truth_grid(args.data, args.split, clip)
        if truth is not None:
            truth = truth[:args.max_frames] if args.max_frames else truth
            still = np.broadcast_to(identity_grid(truth.shape[1]), truth.shape)
            rows.append(pd.DataFrame({"model": NO_MOTION, "clip": clip,
                                      "frame": np.arange(len(truth)),
                                      "motion_epe": motion_epe(still, truth, frame_size)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


# --------------------------------------------------------------------------- outputs
def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    from core.media import atomic_path
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_samples(samples: dict, out: Path, count: int = 4, generations: dict | None = None) -> dict:
    """PNGs of `count` evenly spaced frames of the first clip: driving, source, each model.
    Model frames carry the provenance marks of `generations[name]` (scores are already taken)."""
    from PIL import Image

    from core.provenance import save_marked_png
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    driving = samples["driving"]
    picks = sorted(set(np.linspace(0, len(driving) - 1, count).round().astype(int).tolist()))
    Image.fromarray(driving[0]).save(folder / "source.png")
    for name, frames in samples.items():
        for frame in picks:
            if name == "driving":
                Image.fromarray(frames[frame]).save(folder / f"{name}_{frame:04d}.png")
            else:
                save_marked_png(folder / f"{name}_{frame:04d}.png", frames[frame], (generations or {}).get(name))
    return {"frames": picks, "rows": ["driving"] + [n for n in samples if n != "driving"]}


def comparable_metrics(protocol: str, pose, identity) -> dict[str, bool]:
    """Which metrics were measured as the paper measured them: its protocol and, for AKD /
    MKR / AED, the network pose-evaluation ran (not a substitute)."""
    paper_way = protocol == "paper"
    same = lambda backend: paper_way and backend is not None and backend.paper_equivalent  # noqa: E731
    return {"l1": True, "akd": same(pose), "mkr": same(pose), "aed": same(identity)}


def frame_counts(per_frame: pd.DataFrame) -> dict:
    """Per model and metric: frames, frames scored, and frames skipped by reason."""
    from metrics import protocol as paper_protocol
    counts = {}
    for model, group in per_frame[per_frame["model"] != NO_MOTION].groupby("model", sort=False):
        counts[model] = {}
        for metric in ("akd", "mkr", "aed"):
            reasons = group[f"{metric}_skip"].fillna("").tolist() if f"{metric}_skip" in group else []
            scores = paper_protocol.FrameScores(group[metric].to_numpy(dtype=float), reasons)
            pooled = paper_protocol.pooled([scores])
            counts[model][metric] = {key: pooled[key] for key in ("frames", "scored", "skipped")}
    return counts


def skipped_notes(counts: dict, metrics: list[str]) -> list[str]:
    """One note per model: the frames each metric skipped, and why (from `frame_counts`)."""
    from metrics.tables import METRICS
    notes = []
    for model, per_metric in counts.items():
        parts = [f"{METRICS[metric][0]}: {count} {reason}" for metric, numbers in per_metric.items()
                 if metric in metrics for reason, count in numbers["skipped"].items() if reason != "no backend"]
        if parts:
            notes.append(f"{model}, frames skipped: " + "; ".join(parts) + ".")
    return notes


def write_tables(per_frame: pd.DataFrame, out: Path, args, backends: dict,
                 comparable: dict[str, bool] | None = None) -> dict:
    from metrics import tables
    models = per_frame[per_frame["model"] != NO_MOTION]
    metrics = ["l1", "ssim", "psnr"] + (["akd", "mkr"] if backends["pose"] != "none" else [])
    metrics += (["aed"] if backends["identity"] != "none" else []) + (["lpips"] if args.lpips else [])
    from metrics.evaluate import FACES_HAVE_NO_MKR
    if "mkr" in metrics and models["mkr_skip"].eq(FACES_HAVE_NO_MKR).all():
        metrics.remove("mkr")  # the paper protocol has no MKR for faces: no empty column
    summary = tables.summarise(models, metrics, args.bootstrap, args.seed)
    protocol = getattr(args, "protocol", None)
    comparison = tables.comparison_table(summary, args.dataset, metrics, backends, comparable=comparable,
                                         protocol=protocol)
    comparison.notes += skipped_notes(frame_counts(per_frame), metrics)
    written = {"comparison": tables.write_table(comparison, out, "comparison")}
    if per_frame["motion_epe"].notna().any():
        motion = per_frame[per_frame["motion_epe"].notna()]
        summary = tables.summarise(motion, ["motion_epe"], args.bootstrap, args.seed)
        table = tables.comparison_table(summary, "sample", ["motion_epe"],
                                        {"truth": "the sample dataset's backward grids (64x64)"},
                                        references=(NO_MOTION,))
        table.title = f"Motion error against the true motion on {args.dataset}"
        table.notes = [f"mean end-point error, in pixels of the scored frames, between each model's "
                       f"'deformation' (resized to 64x64) and the true backward grid; "
                       f"'{NO_MOTION}' is the error of predicting no motion at all.",
                       table.notes[0]]
        written["motion"] = tables.write_table(table, out, "motion")
    return {k: {ext: str(p) for ext, p in v.items()} for k, v in written.items()}


# --------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset name (vox, taichi, sample, ...)")
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset folder")
    parser.add_argument("--models", required=True,
                        help="NAME=CHECKPOINT[@CONFIG],...; names from fomm.registry")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--pose", default=None, help="pose backend (default: the dataset's; 'none')")
    parser.add_argument("--identity", default=None, help="identity backend (default: the dataset's; 'none')")
    parser.add_argument("--protocol", default=None, choices=["paper", "project"],
                        help="paper: pose-evaluation's arithmetic (squared-L2 AED; the default for "
                             "datasets of the paper's Table 3); project: L2 AED (default otherwise)")
    parser.add_argument("--lpips", action="store_true", help="also LPIPS (needs the lpips package)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-clips", type=int, default=None)
    parser.add_argument("--max-frames", type=int, default=None, help="first N frames of each clip")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    from core.provenance import add_argument
    add_argument(parser)
    parser.add_argument("--precision", default="fp32", help="fp32 (default: scores comparable across "
                        "machines), bf16 or auto (core/devices.py)")


def command_line(args: argparse.Namespace) -> list[str]:
    """The `pipeline run benchmark` arguments that repeat this run."""
    argv = []
    for key, value in vars(args).items():
        if key in ("command", "stage", "verbose") or value is None or value is False:
            continue
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


def run(args: argparse.Namespace) -> dict:
    """The benchmark as a function; returns what benchmark.json records."""
    import torch

    from core.config import config_hash
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for option in ("max_clips", "max_frames", "batch_size", "bootstrap"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise UserError(f"--{option.replace('_', '-')} {value}: expected a positive number")
    from metrics import paper
    default_protocol = "paper" if paper.paper_dataset(args.dataset) else "project"
    args.protocol = getattr(args, "protocol", None) or default_protocol
    specs = parse_models(args.models)
    store, clips = open_test_clips(args.data, args.split, args.max_clips)
    pose, identity = _backends(args.dataset, args.pose, args.identity)
    backends = {"pose": backend_label(pose), "identity": backend_label(identity)}
    log.info("benchmark %s: %d %s clips, %s", args.dataset, len(clips), args.split, backends)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts, samples, cache, record = [], {}, {}, {"models": {}}
    for spec in specs:
        started = time.perf_counter()
        frame_rows = score_model(spec, store, clips, args, pose, identity, samples, cache)
        seconds = time.perf_counter() - started
        config = model_config(spec)
        record["models"][spec.name] = {
            "checkpoint": str(spec.checkpoint.resolve()), "config": spec.config,
            "config_hash": config_hash(config), "seconds": round(seconds, 2),
            "frames": len(frame_rows), "frames_per_second": round(len(frame_rows) / seconds, 2)}
        parts.append(frame_rows)
    size = tuple(samples["driving"].shape[1:3])
    parts.append(no_motion_rows(clips, args, size))
    per_frame = pd.concat(parts, ignore_index=True)
    for column in SCORE_COLUMNS:
        if column not in per_frame:
            per_frame[column] = np.nan
    per_frame["pose_backend"] = backends["pose"]
    per_frame["identity_backend"] = backends["identity"]
    per_clip = (per_frame.groupby(["model", "clip", "pose_backend", "identity_backend"], sort=False)
                [SCORE_COLUMNS].mean().reset_index())
    per_clip["num_frames"] = per_frame.groupby(["model", "clip"], sort=False).size().to_numpy()
    _write_parquet(per_frame, out / "per_frame.parquet")
    _write_parquet(per_clip, out / "per_clip.parquet")
    record.update(dataset=args.dataset, data=str(Path(args.data).resolve()), split=args.split,
                  clips=clips, backends=backends, device=args.device,
                  bootstrap=args.bootstrap, seed=args.seed,
                  samples=write_samples(samples, out, generations=_generations(specs, args)),
                  protocol=args.protocol, comparable=comparable_metrics(args.protocol, pose, identity),
                  frame_counts=frame_counts(per_frame),
                  tables=write_tables(per_frame, out, args, backends,
                                      comparable_metrics(args.protocol, pose, identity)))
    record["argv"] = command_line(args)
    (out / "benchmark.json").write_text(json.dumps(record, indent=2))
    return record


def _generations(specs, args) -> dict:
    from core.provenance import Generation, warn_opt_out
    if not getattr(args, "provenance", True):
        warn_opt_out()
        return {}
    return {spec.name: Generation.of(model_config(spec), spec.name) for spec in specs}


def inputs_of(args: argparse.Namespace) -> dict[str, str]:
    """The paths a benchmark reads (--data, every checkpoint and @CONFIG file), for the
    output policy (core.outputs): `--out` must lie apart from all of them."""
    inputs = {"--data": args.data}
    for item in filter(None, (part.strip() for part in str(args.models).split(","))):
        name, _, rest = item.partition("=")
        checkpoint, _, config = rest.partition("@")
        inputs[f"--models {name} checkpoint"] = checkpoint or None
        inputs[f"--models {name} config"] = config or None
    return inputs


def main(args: argparse.Namespace) -> int:
    from core import outputs
    with outputs.claim(args.out, "benchmark", inputs_of(args), earlier=("benchmark.json", "per_frame.parquet"),
                       partial_dirs=("samples",)):
        record = run(args)
    print((Path(args.out) / "comparison.md").read_text())
    if "motion" in record["tables"]:
        print(Path(record["tables"]["motion"]["md"]).read_text())
    return 0
