"""`pipeline run benchmark`: reconstruct the test split with each model and score every frame.

Protocol (the paper's, REFERENCE §1; fomm/reconstruction.py, which `pipeline run reconstruct`
runs too): for each test clip, the source is its first frame and the driving frames are all
of its frames, with absolute motion (`model.reconstruct`); L1 is the protocol's, on the
model's float output. Each generated frame is scored against the real one with
`metrics.evaluate.score_clip` (SSIM, PSNR, and AKD / MKR / AED / LPIPS where a backend is
given) under `--protocol` (paper: pose-evaluation's arithmetic, the default wherever a
published table reports the dataset; see metrics.protocol). On the `sample` dataset, whose
true motion is known, each model's 'deformation' output is also compared with the truth.

Reads top to bottom: check every flag, take the writer lock of `--out` (one benchmark at a
time), remove what a killed run left half-written, then for each model in `--models` order
score the clips it has no result for (metrics.clip_scores: one worker per GPU or CPU slot,
in this process or as Ray actors, each holding the loaded model; every (model, clip) result
is written as its own file the moment it arrives), then build every output from those files
in a fixed order (models as given, clips by name), so a killed run rerun scores only what is
missing and writes the same tables as an unbroken run.

Writes to `--out`:
    clips/<model>-<digest>/     one Parquet file per scored clip (metrics.clip_scores)
    per_frame.parquet   model, clip, frame, l1, ssim, psnr, akd, mkr, aed, lpips, motion_epe,
                        akd_skip, mkr_skip, aed_skip (why a frame has no value),
                        pose_backend, identity_backend
    per_clip.parquet    the same, averaged per (model, clip), with num_frames
    comparison.{json,md,csv,html}   ours with bootstrap 95 % intervals over clips, beside the
                        published numbers (metrics.paper), with the test-clip list's sha256
    motion.{json,md,csv,html}       (sample only) motion error against the true backward grids
    detectability.json  with --detectability: the file given, copied; its column is in comparison
    samples/            source, driving and each model's frames of the first clip (PNG)
    benchmark.json      what ran: data, checkpoints, config hashes, the clips and their frame
                        counts and sha256 (`clip_list`), protocol, backends (and which metrics
                        compare with the paper), frames scored and skipped per metric and
                        reason, per model the clips scored in this run and its seconds
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import config_hash
from core.errors import UserError
from metrics import clip_scores
from metrics.clip_scores import ClipItem, ClipResults, ModelSpec, ScoringSettings

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["l1", "ssim", "psnr", "akd", "mkr", "aed", "lpips", "motion_epe"]
NO_MOTION = "no motion (identity grid)"


# --------------------------------------------------------------------------- scoring
def score_model(spec: ModelSpec, config, clips: list[str], settings: ScoringSettings, out: Path, args,
                detections: dict) -> tuple[ClipResults, dict]:
    """Score every clip of `clips` that `spec` has no result for in `out`; returns its result
    files and what benchmark.json records of this run. `detections`: (clip, frame size) -> the real clip's
    (keypoints, embeddings), filled by every model and passed to the next at the same size."""
    from core.ray_runner import map_items
    size = clip_scores.frame_size(config)
    results = ClipResults.of(out, spec.name, clip_scores.settings_digest(spec, config, settings))
    todo = [clip for clip in clips if not results.done(clip, settings.sample_clip)]
    log.info("%s: %d of %d clips to score (%d done in an earlier run)", spec.name, len(todo), len(clips),
             len(clips) - len(todo))
    items = [ClipItem(clip, *detections.get((clip, size), (None, None))) for clip in todo]
    frames = [0]

    def keep(item: ClipItem, result: clip_scores.ClipResult) -> None:
        results.write(result)
        detections[(result.clip, size)] = (result.real_keypoints, result.real_embeddings)
        frames[0] += len(result.scores)

    started = time.perf_counter()
    gpus = 1 if settings.device.startswith("cuda") else 0
    map_items(clip_scores.ClipScorer, (spec, settings), items, keep, args.workers, args.ray_address, gpus)
    seconds = time.perf_counter() - started
    record = {"checkpoint": str(spec.checkpoint.resolve()), "config": spec.config,
              "config_hash": config_hash(config), "results": str(results.folder),
              "clips_scored_this_run": len(todo), "clips_from_earlier_runs": len(clips) - len(todo),
              "seconds": round(seconds, 2), "frames_scored_this_run": frames[0],
              "frames_per_second": round(frames[0] / seconds, 2) if frames[0] else None}
    return results, record


def collect(results: dict[str, ClipResults], clips: list[str],
            out: Path) -> tuple[pd.DataFrame, dict[str, int], list[tuple[str, dict]]]:
    """(per-frame rows, clip -> frames in the data, (model, sample frames)) from the per-clip
    files, models in `results` (--models) order and clips in `clips` order: never in the
    order they were scored."""
    parts, clip_frames, samples = [], {}, []
    for name, files in results.items():
        for clip in clips:
            scores, count = files.read(clip)
            if clip_frames.setdefault(clip, count) != count:
                raise UserError(f"clip {clip!r} has {count} frames in {str(files.folder)!r} but "
                                f"{clip_frames[clip]} for the models before: the data changed under "
                                f"--out {str(out)!r}; benchmark into a new folder")
            parts.append(scores)
        samples.append((name, files.samples()))
    return pd.concat(parts, ignore_index=True), clip_frames, samples


def no_motion_rows(clips: list[str], args, frame_shape: tuple[int, int]) -> pd.DataFrame:
    """Motion error of the identity grid (no motion at all): the floor a model must beat."""
    rows = []
    for clip in clips:
        truth = clip_scores.truth_grid(args.data, args.split, clip)
        if truth is not None:
            truth = truth[:args.max_frames] if args.max_frames else truth
            still = np.broadcast_to(clip_scores.identity_grid(truth.shape[1]), truth.shape)
            rows.append(pd.DataFrame({"model": NO_MOTION, "clip": clip,
                                      "frame": np.arange(len(truth)),
                                      "motion_epe": clip_scores.motion_epe(still, truth, frame_shape)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


# --------------------------------------------------------------------------- outputs
def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    from core.media import atomic_path
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_samples(samples: list[tuple[str, dict]], out: Path, generations: dict | None = None) -> dict:
    """PNGs of the first clip's sample frames (metrics.clip_scores.sample_frames): source,
    driving (the first model's real frames) and each model's. Model frames carry the
    provenance marks of `generations[name]` (the scores were taken before)."""
    from PIL import Image

    from core.provenance import save_marked_png
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    first = samples[0][1]
    picks = [int(frame) for frame in first["frames"]]
    Image.fromarray(first["source"]).save(folder / "source.png")
    for index, frame in enumerate(picks):
        Image.fromarray(first["real"][index]).save(folder / f"driving_{frame:04d}.png")
    for name, sample in samples:
        for index, frame in enumerate(picks):
            save_marked_png(folder / f"{name}_{frame:04d}.png", sample["fake"][index], (generations or {}).get(name))
    return {"frames": picks, "rows": ["driving"] + [name for name, _ in samples]}


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


def clip_list_note(clip_list: dict) -> str:
    """The table note that names the scored clips by their hash (metrics.clip_scores.clip_list_sha256)."""
    return (f"test clips: {clip_list['clips']} ({clip_list['frames']} frames in the data), sha256 "
            f"{clip_list['sha256']} of their sorted names and frame counts: two benchmarks with the "
            "same hash scored the same clips.")


def extra_columns(detectability: dict | None) -> tuple:
    """Columns other stages measured per model, set beside the metrics (metrics.tables.
    ExtraColumn): the detect stage's held-out-family AUC with --detectability. This is the one
    place an optional per-model column joins the comparison table."""
    if not detectability:
        return ()
    from metrics.detectability import column
    return (column(detectability),)


def write_tables(per_frame: pd.DataFrame, out: Path, args, backends: dict,
                 comparable: dict[str, bool] | None = None, clip_list: dict | None = None,
                 detectability: dict | None = None) -> dict:
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
                                         protocol=protocol,
                                         extra=extra_columns(detectability))
    clip_notes = [clip_list_note(clip_list)] if clip_list else []
    comparison.notes += skipped_notes(frame_counts(per_frame), metrics) + clip_notes
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
                       table.notes[0]] + clip_notes
        written["motion"] = tables.write_table(table, out, "motion")
    return {k: {ext: str(p) for ext, p in v.items()} for k, v in written.items()}


# --------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset name (vox, taichi, sample, ...)")
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset folder")
    parser.add_argument("--models", required=True,
                        help="NAME=CHECKPOINT[@CONFIG],...; names from fomm/families.py")
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
    parser.add_argument("--workers", type=int, default=None,
                        help="models loaded at once, each scoring its share of the clips: one per GPU "
                             "(the default: every GPU when --device is cuda, else 1); 1 without "
                             "--ray-address runs in this process, more run as Ray actors")
    parser.add_argument("--ray-address", default=None, help="score on this Ray cluster (its workers "
                        "must read --data at the same path) instead of here")
    from core.provenance import add_argument
    add_argument(parser)
    parser.add_argument("--precision", default="fp32", help="fp32 (default: scores comparable across "
                        "machines), bf16 or auto (core/devices.py)")
    parser.add_argument("--detectability", type=Path, default=None,
                        help="a detectability.json (pipeline run detect detectability): adds each model's "
                             "held-out-family detector AUC to the table")


def command_line(args: argparse.Namespace) -> list[str]:
    """The `pipeline run benchmark` arguments that repeat this run."""
    argv = [] if getattr(args, "provenance", True) else ["--no-provenance"]
    for key, value in vars(args).items():
        if key in ("command", "stage", "verbose", "provenance") or value is None or value is False:
            continue
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


def check_arguments(args: argparse.Namespace) -> None:
    """Every count, before anything is written: UserError on the first bad one."""
    for option in ("max_clips", "max_frames", "batch_size", "bootstrap", "workers"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            raise UserError(f"--{option.replace('_', '-')} {value}: expected a positive number")


def run(args: argparse.Namespace) -> dict:
    """The benchmark as a function; returns what benchmark.json records."""
    import torch

    from core.media import remove_partial_files
    from core.writer_lock import writer_lock
    from metrics import paper
    check_arguments(args)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.workers = args.workers or (torch.cuda.device_count() if args.device.startswith("cuda") else 1) or 1
    args.ray_address = getattr(args, "ray_address", None)
    args.protocol = getattr(args, "protocol", None) or ("paper" if paper.paper_dataset(args.dataset)
                                                        else "project")
    specs = clip_scores.parse_models(args.models)
    detectability = None
    if getattr(args, "detectability", None) is not None:
        from metrics.detectability import read_detectability
        detectability = read_detectability(args.detectability)  # checked before any work
    with writer_lock(Path(args.out)) as out:
        remove_partial_files(out)
        for folder in sorted((out / "clips").glob("*")):
            remove_partial_files(folder)
        return _run(args, specs, out, detectability)


def _run(args: argparse.Namespace, specs: list[ModelSpec], out: Path, detectability: dict | None) -> dict:
    """Everything after the checks, with the writer lock held."""
    store, clips = clip_scores.open_test_clips(args.data, args.split, args.max_clips)
    pose, identity = clip_scores.resolve_backends(args.dataset, args.pose, args.identity)
    backends = {"pose": clip_scores.backend_label(pose), "identity": clip_scores.backend_label(identity)}
    log.info("benchmark %s: %d %s clips, %s", args.dataset, len(clips), args.split, backends)
    settings = ScoringSettings(str(Path(args.data).resolve()), args.split, args.max_frames, args.batch_size,
                               args.device, getattr(args, "precision", "fp32"), args.protocol,
                               pose.name if pose else "none", identity.name if identity else "none",
                               bool(args.lpips), clips[0])
    configs = {spec.name: clip_scores.model_config(spec) for spec in specs}
    results, record, detections = {}, {"models": {}}, {}
    for spec in specs:
        results[spec.name], record["models"][spec.name] = score_model(spec, configs[spec.name], clips, settings,
                                                                      out, args, detections)
    per_frame, clip_frames, samples = collect(results, clips, out)
    frame_shape = clip_scores.frame_size(configs[specs[0].name])
    per_frame = pd.concat([per_frame, no_motion_rows(clips, args, frame_shape)], ignore_index=True)
    for column in SCORE_COLUMNS:
        if column not in per_frame:
            per_frame[column] = np.nan
    per_frame["pose_backend"] = backends["pose"]
    per_frame["identity_backend"] = backends["identity"]
    for name in record["models"]:
        record["models"][name]["frames"] = int((per_frame["model"] == name).sum())
    per_clip = (per_frame.groupby(["model", "clip", "pose_backend", "identity_backend"], sort=False)
                [SCORE_COLUMNS].mean().reset_index())
    per_clip["num_frames"] = per_frame.groupby(["model", "clip"], sort=False).size().to_numpy()
    _write_parquet(per_frame, out / "per_frame.parquet")
    _write_parquet(per_clip, out / "per_clip.parquet")
    clip_list = {"sha256": clip_scores.clip_list_sha256(clip_frames), "clips": len(clip_frames),
                 "frames": int(sum(clip_frames.values()))}
    comparable = comparable_metrics(args.protocol, pose, identity)
    record.update(dataset=args.dataset, data=str(Path(args.data).resolve()), split=args.split,
                  clips=clips, clip_frames=clip_frames, clip_list=clip_list, backends=backends,
                  device=args.device, workers=args.workers, bootstrap=args.bootstrap, seed=args.seed,
                  samples=write_samples(samples, out, generations=_generations(configs, args)),
                  protocol=args.protocol, comparable=comparable, frame_counts=frame_counts(per_frame),
                  tables=write_tables(per_frame, out, args, backends, comparable, clip_list, detectability))
    if detectability:
        from metrics.detectability import FILE
        (out / FILE).write_text(json.dumps(detectability, indent=2) + "\n")
        record["detectability"] = {"source": str(Path(args.detectability).resolve()), "file": FILE}
    record["argv"] = command_line(args)
    from core.media import atomic_path
    with atomic_path(out / "benchmark.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return record


def _generations(configs: dict, args) -> dict:
    from core.provenance import Generation, warn_opt_out
    if not getattr(args, "provenance", True):
        warn_opt_out()
        return {}
    return {name: Generation.of(config, name) for name, config in configs.items()}


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
