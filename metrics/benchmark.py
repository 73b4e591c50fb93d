"""`pipeline run benchmark`: reconstruct the test split with each model and score every frame.

Protocol (the paper's, REFERENCE §1; fomm/reconstruction.py, which `pipeline run reconstruct`
runs too): for each test clip, the source is its first frame and the driving frames are all
of its frames, with absolute motion (`model.reconstruct`); L1 is the protocol's, on the
model's float output. Each generated frame is scored against the real one with
`metrics.evaluate.score_clip` (SSIM, PSNR, and AKD / MKR / AED / LPIPS where a backend is
given) under `--protocol` (paper: pose-evaluation's arithmetic, the default wherever a
published table reports the dataset; see metrics.protocol). On the `sample` dataset, whose
true motion is known, each model's 'deformation' output is also compared with the truth.

`run(options)` takes a `BenchmarkOptions`, every flag already checked and resolved
(stages/benchmark.py builds it from the command line). It reads top to bottom: claim `--out`
(core.outputs: apart from the inputs, ours, the writer lock held: one benchmark at a time),
remove what a killed run left half-written, then for each model in `--models` order
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

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.config import config_hash
from core.errors import UserError
from metrics import clip_scores
from metrics.clip_scores import ClipItem, ClipResults, ModelSpec, ScoringSettings

if TYPE_CHECKING:
    from core.devices import Precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchmarkOptions:
    """A benchmark, every flag checked and resolved (stages/benchmark.py: `options(args)`)."""
    dataset: str
    data: Path
    models: tuple[ModelSpec, ...]       # metrics.clip_scores.parse_models, files checked
    out: Path
    protocol: str                       # paper | project, resolved from the dataset when not given
    device: str                         # cpu, cuda, cuda:N
    workers: int                        # models loaded at once
    precision: Precision                # core.devices.resolve(..., calibrates=False): a float path
    pose: str | None = None             # a backend's name, 'none', or None for the dataset's
    identity: str | None = None
    lpips: bool = False
    split: str = "test"
    max_clips: int | None = None
    max_frames: int | None = None
    batch_size: int = 16
    bootstrap: int = 1000
    seed: int = 0
    ray_address: str | None = None
    provenance: bool = True
    detectability: dict | None = None   # the detectability.json read (metrics.detectability)
    detectability_source: Path | None = None
    argv: tuple[str, ...] = ()          # the `pipeline run benchmark` arguments that repeat this run


SCORE_COLUMNS = ["l1", "ssim", "psnr", "akd", "mkr", "aed", "lpips", "motion_epe"]
NO_MOTION = "no motion (identity grid)"


# --------------------------------------------------------------------------- scoring
def score_model(spec: ModelSpec, config, clips: list[str], settings: ScoringSettings, out: Path,
                options: BenchmarkOptions, detections: dict) -> tuple[ClipResults, dict]:
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
    map_items(clip_scores.ClipScorer, (spec, settings), items, keep, options.workers, options.ray_address,
              gpus)
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


def no_motion_rows(clips: list[str], options: BenchmarkOptions, frame_shape: tuple[int, int]) -> pd.DataFrame:
    """Motion error of the identity grid (no motion at all): the floor a model must beat."""
    rows = []
    for clip in clips:
        truth = clip_scores.truth_grid(options.data, options.split, clip)
        if truth is not None:
            truth = truth[:options.max_frames] if options.max_frames else truth
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


def write_tables(per_frame: pd.DataFrame, out: Path, options: BenchmarkOptions, backends: dict,
                 comparable: dict[str, bool] | None = None, clip_list: dict | None = None,
                 detectability: dict | None = None) -> dict:
    from metrics import tables
    models = per_frame[per_frame["model"] != NO_MOTION]
    metrics = ["l1", "ssim", "psnr"] + (["akd", "mkr"] if backends["pose"] != "none" else [])
    metrics += (["aed"] if backends["identity"] != "none" else []) + (["lpips"] if options.lpips else [])
    from metrics.evaluate import FACES_HAVE_NO_MKR
    if "mkr" in metrics and models["mkr_skip"].eq(FACES_HAVE_NO_MKR).all():
        metrics.remove("mkr")  # the paper protocol has no MKR for faces: no empty column
    summary = tables.summarise(models, metrics, options.bootstrap, options.seed)
    comparison = tables.comparison_table(summary, options.dataset, metrics, backends, comparable=comparable,
                                         protocol=options.protocol,
                                         extra=extra_columns(detectability))
    clip_notes = [clip_list_note(clip_list)] if clip_list else []
    comparison.notes += skipped_notes(frame_counts(per_frame), metrics) + clip_notes
    written = {"comparison": tables.write_table(comparison, out, "comparison")}
    if per_frame["motion_epe"].notna().any():
        motion = per_frame[per_frame["motion_epe"].notna()]
        summary = tables.summarise(motion, ["motion_epe"], options.bootstrap, options.seed)
        table = tables.comparison_table(summary, "sample", ["motion_epe"],
                                        {"truth": "the sample dataset's backward grids (64x64)"},
                                        references=(NO_MOTION,))
        table.title = f"Motion error against the true motion on {options.dataset}"
        table.notes = [f"mean end-point error, in pixels of the scored frames, between each model's "
                       f"'deformation' (resized to 64x64) and the true backward grid; "
                       f"'{NO_MOTION}' is the error of predicting no motion at all.",
                       table.notes[0]] + clip_notes
        written["motion"] = tables.write_table(table, out, "motion")
    return {k: {ext: str(p) for ext, p in v.items()} for k, v in written.items()}


# --------------------------------------------------------------------------- the run
def run(options: BenchmarkOptions) -> dict:
    """The benchmark as a function; returns what benchmark.json records."""
    from core import outputs
    from core.media import remove_partial_files
    with outputs.claim(options.out, "benchmark", inputs_of(options),
                       earlier=("benchmark.json", "per_frame.parquet"), partial_dirs=("samples",)) as out:
        for folder in sorted((out / "clips").glob("*")):
            remove_partial_files(folder)
        return _run(options, out)


def inputs_of(options: BenchmarkOptions) -> dict[str, Path | str | None]:
    """The paths a benchmark reads (--data, every checkpoint and @CONFIG file), for the
    output policy (core.outputs): `--out` must lie apart from all of them."""
    inputs: dict[str, Path | str | None] = {"--data": options.data}
    for spec in options.models:
        inputs[f"--models {spec.name} checkpoint"] = spec.checkpoint
        inputs[f"--models {spec.name} config"] = spec.config
    return inputs


def _run(options: BenchmarkOptions, out: Path) -> dict:
    """Everything after the checks, with `out` claimed."""
    specs, detectability = options.models, options.detectability
    store, clips = clip_scores.open_test_clips(options.data, options.split, options.max_clips)
    pose, identity = clip_scores.resolve_backends(options.dataset, options.pose, options.identity)
    backends = {"pose": clip_scores.backend_label(pose), "identity": clip_scores.backend_label(identity)}
    log.info("benchmark %s: %d %s clips, %s", options.dataset, len(clips), options.split, backends)
    settings = ScoringSettings(str(options.data.resolve()), options.split, options.max_frames, options.batch_size,
                               options.device, options.precision.name, options.protocol,
                               pose.name if pose else "none", identity.name if identity else "none",
                               bool(options.lpips), clips[0])
    configs = {spec.name: clip_scores.model_config(spec) for spec in specs}
    results, record, detections = {}, {"models": {}}, {}
    for spec in specs:
        results[spec.name], record["models"][spec.name] = score_model(spec, configs[spec.name], clips, settings,
                                                                      out, options, detections)
    per_frame, clip_frames, samples = collect(results, clips, out)
    frame_shape = clip_scores.frame_size(configs[specs[0].name])
    per_frame = pd.concat([per_frame, no_motion_rows(clips, options, frame_shape)], ignore_index=True)
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
    comparable = comparable_metrics(options.protocol, pose, identity)
    record.update(dataset=options.dataset, data=str(options.data.resolve()), split=options.split,
                  clips=clips, clip_frames=clip_frames, clip_list=clip_list, backends=backends,
                  device=options.device, workers=options.workers, bootstrap=options.bootstrap, seed=options.seed,
                  samples=write_samples(samples, out, generations=_generations(configs, options)),
                  protocol=options.protocol, comparable=comparable, frame_counts=frame_counts(per_frame),
                  tables=write_tables(per_frame, out, options, backends, comparable, clip_list, detectability))
    if detectability:
        from metrics.detectability import FILE
        (out / FILE).write_text(json.dumps(detectability, indent=2) + "\n")
        record["detectability"] = {"source": str(Path(options.detectability_source).resolve()), "file": FILE}
    record["argv"] = list(options.argv)
    from core.media import atomic_path
    with atomic_path(out / "benchmark.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return record


def _generations(configs: dict, options: BenchmarkOptions) -> dict:
    from core.provenance import Generation, warn_opt_out
    if not options.provenance:
        warn_opt_out()
        return {}
    return {name: Generation.of(config, name) for name, config in configs.items()}
