"""The report of a run (`pipeline run report --run DIR`, stages/report.py): one self-contained
HTML page (and its Markdown twin) describing a run well enough to reproduce it and judge its
numbers.

Sections: environment (packages, CPU, GPU), git commit, config and manifest hashes, data
summary (clips done / failed / unavailable), training curves, the metric tables with the
backends behind them, detectability (when the benchmark was given a detectability.json: the
detector, its data and each family's AUC on unmarked and marked copies), a grid of sample
frames (source, driving, each model), time per stage.

A run folder is what `pipeline run all` writes (`data/`, `train/<model>/`, `benchmark/`,
`timings.json`); a benchmark folder alone works too: its `benchmark.json` points at the
data and the checkpoints, whose run folders hold `config.yaml` and `metrics.jsonl`.
The run's files are read once into one model (`Report`, plain dataclasses; the metric tables
are the JSON data the benchmark wrote, never its HTML) and rendered twice, through
metrics/templates/report.html.j2 and report.md.j2. In the HTML everything is inlined (CSS,
images as base64 data URIs, plots as SVG): the page opens offline, mailed or archived, with
nothing beside it; the Markdown points at `report_samples.png` for the frames.
"""
from __future__ import annotations

import datetime
import io
import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from core.media import sha256_of
from metrics.render import render
from metrics.tables import Table, read_table

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("motion-transfer", "torch", "numpy", "pandas", "pyarrow", "ray", "av", "imageio-ffmpeg",
            "scikit-image", "dlib-bin", "face-recognition-models", "matplotlib", "pillow",
            "lpips", "face-alignment", "mediapipe")


# --------------------------------------------------------------------------- the model
@dataclass
class Rows:
    """A plain table: column names and one list of cell texts per row."""
    columns: list[str]
    rows: list[list[str]]

    @classmethod
    def of(cls, records: list[dict]) -> Rows:
        """Columns in order of first appearance; a record without a column gets an empty cell."""
        columns = list(dict.fromkeys(key for record in records for key in record))
        return cls(columns, [[str(record.get(c, "")) for c in columns] for record in records])


@dataclass
class DataSection:
    path: str | None  # None: no data folder found
    counts: Rows      # clips per split and status
    problems: Rows    # the first clips not done
    num_problems: int
    manifest_sha256: str = ""  # of clips.parquet; "" without one


@dataclass
class TrainingSection:
    svg: str          # every model's loss curves as one inline SVG figure; "" when none was logged
    summary: Rows     # steps, final loss and the settings that decide what they mean, per model


@dataclass
class MetricsSection:
    tables: list[Table]   # as the benchmark wrote them (comparison, motion): frame counts and skip
                          # reasons in their columns and notes, substitutes in "(ours, not comparable)"
    per_clip: Rows
    per_clip_limit: int
    missing: list[str]    # table files benchmark.json names but the folder lacks
    note: str             # MARKS_NOTE when there is anything to read it beside


@dataclass
class DetectabilitySection:
    """The benchmark's detectability.json (metrics/detectability.py): who detected what."""
    detector: str     # the detector and the data, in one line
    rows: Rows        # a row per family: AUC unmarked and marked, what the detector trained on
    source: str       # the file the benchmark was given


@dataclass
class SampleRow:
    label: str                 # "source", "driving" or a model
    images: list[np.ndarray]   # (H, W, 3) uint8, one per sampled frame


@dataclass
class SampleGrid:
    clip: str
    frames: list[int]
    rows: list[SampleRow]


@dataclass
class Report:
    """Everything the report shows, gathered once; metrics/templates/report.{html,md}.j2 render it."""
    title: str
    meta: str
    headline: list[str]
    environment: Rows
    packages: Rows
    hashes: Rows
    data: DataSection
    training: TrainingSection
    metrics: MetricsSection
    samples: SampleGrid | None
    commands: list[str]
    timings: Rows
    total_seconds: float | None
    detectability: DetectabilitySection | None = None


# --------------------------------------------------------------------------- gathering
@dataclass
class RunInfo:
    """Where a run's parts are (see `find_run`) and what its benchmark.json and timings.json say."""
    run: Path
    benchmark_dir: Path | None = None
    benchmark: dict = field(default_factory=dict)
    data_dir: Path | None = None
    train_dirs: dict[str, Path] = field(default_factory=dict)  # model -> training run folder
    timings: dict = field(default_factory=dict)


def find_run(run: Path) -> RunInfo:
    """Locate the benchmark, data and training folders of `run` (see the module docstring)."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"--run {str(run)!r} is not a folder; expected a `pipeline run all` or "
                        "benchmark output folder")
    info = RunInfo(run)
    for candidate in (run / "benchmark", run):
        if (candidate / "benchmark.json").is_file():
            info.benchmark_dir = candidate
            info.benchmark = read_json(candidate / "benchmark.json")
            break
    data = info.benchmark.get("data")
    info.data_dir = Path(data) if data and Path(data).is_dir() else (
        run / "data" if (run / "data").is_dir() else None)
    for name, model in info.benchmark.get("models", {}).items():
        folder = _run_folder_of(Path(model["checkpoint"]))
        if folder is not None:
            info.train_dirs[name] = folder
    for metrics_file in sorted((run / "train").glob("*/metrics.jsonl")):
        info.train_dirs.setdefault(metrics_file.parent.name, metrics_file.parent)
    if (run / "timings.json").is_file():
        info.timings = read_json(run / "timings.json")
    if info.benchmark_dir is None and not info.train_dirs and info.data_dir is None:
        raise UserError(f"{str(run)!r} holds no benchmark.json, train/*/metrics.jsonl or data/: "
                        "nothing to report")
    return info


def read_json(path: Path) -> dict:
    """A JSON object the run's stages wrote; UserError naming the file when it is truncated,
    not JSON or not an object (a report is never built from half a file)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        where = f" at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise UserError(f"{str(path)!r} is not readable JSON{where} (truncated or damaged?): "
                        f"{str(err).splitlines()[0][:120]}; rerun the stage that writes it") from None
    if not isinstance(data, dict):
        raise UserError(f"{str(path)!r} holds a JSON {type(data).__name__}; expected the object its stage writes")
    return data


def read_parquet(path: Path) -> pd.DataFrame:
    """A table the run's stages wrote; UserError naming the file when it cannot be read."""
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...; all mean a damaged file
        raise UserError(f"{str(path)!r} is not a readable Parquet table ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:120] if str(err) else ''}); rerun the stage that writes it") from None


def _run_folder_of(checkpoint: Path) -> Path | None:
    """The training run folder of a checkpoint (`<run>/checkpoints/step-N.pt` or `<run>/x.pt`)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "metrics.jsonl").is_file() or (folder / "config.yaml").is_file():
            return folder
    return None


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=REPO_ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_text() -> str:
    try:
        return f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"
    except (ValueError, OSError):
        return "unknown"


def environment() -> dict:
    """Python, package versions, CPU, memory, GPU, ffmpeg and the git commit."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    gpu = "none"
    try:
        import torch
        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            gpu += f" (CUDA {torch.version.cuda})"
    except ImportError:
        pass
    from core.media import ffmpeg_exe
    ffmpeg = _run([ffmpeg_exe(), "-hide_banner", "-version"]).splitlines()
    commit = _run(["git", "rev-parse", "HEAD"])
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "memory": memory_text(), "gpu": gpu, "ffmpeg": ffmpeg[0] if ffmpeg else "unknown",
            "git_commit": (commit or "unknown") + (" (with uncommitted changes)" if dirty else ""),
            "packages": versions}


def data_summary(data_dir: Path | None) -> dict:
    """Clip counts by split and status, the first failures, and the manifest's hash."""
    if data_dir is None:
        return {}
    summary: dict = {"path": str(data_dir)}
    clips_file = data_dir / "clips.parquet"
    if clips_file.is_file():
        clips = read_parquet(clips_file)
        summary["sha256_clips_parquet"] = sha256_of(clips_file)
        counts = clips.groupby(["split", "status"]).size().unstack(fill_value=0)
        summary["counts"] = {split: {k: int(v) for k, v in row.items()} for split, row in counts.iterrows()}
        bad = clips[clips["status"] != "done"]
        summary["problems"] = [{"clip": r["clip"], "status": r["status"], "error": str(r.get("error", ""))}
                               for _, r in bad.head(10).iterrows()]
        summary["num_problems"] = len(bad)
    if (data_dir / "summary.json").is_file():
        summary["summary_json"] = read_json(data_dir / "summary.json")
    return summary


def training_curves(train_dir: Path) -> pd.DataFrame:
    """metrics.jsonl as a table (one row per step); empty when the file is missing."""
    path = train_dir / "metrics.jsonl"
    if not path.is_file():
        return pd.DataFrame()
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:  # a torn line, what a killed run leaves: the curve goes without it
            log.warning("%s: a line that is not JSON is left out of the curve", path)
            continue
        if isinstance(record, dict):
            rows.append(record)
    return pd.DataFrame(rows)


def training_settings(train_dir: Path) -> dict:
    """The settings that decide what a short run's numbers mean, from its config.yaml."""
    path = train_dir / "config.yaml"
    if not path.is_file():
        return {}
    from core.config import load_yaml
    config = load_yaml(path.read_text(encoding="utf-8", errors="replace"), str(path)) or {}
    if not isinstance(config, dict):
        raise UserError(f"{str(path)!r} is not a config mapping; expected the config.yaml train writes")
    train, data = config.get("train_params") or {}, config.get("dataset_params") or {}
    shape = data.get("frame_shape") or ["?", "?"]
    return {"batch size": train.get("batch_size", ""), "frame size": f"{shape[0]}x{shape[1]}",
            "perceptual VGG19 weights": train.get("vgg19_weights", "") if any(
                train.get("loss_weights", {}).get("perceptual", [])) else "unused"}


def config_hashes(info: RunInfo) -> list[dict]:
    """Per model: checkpoint, its sha256, its resolved config's hash (from benchmark.json)."""
    rows = []
    for name, model in info.benchmark.get("models", {}).items():
        checkpoint = Path(model["checkpoint"])
        rows.append({"model": name, "checkpoint": str(checkpoint),
                     "checkpoint sha256": sha256_of(checkpoint)[:16] if checkpoint.is_file() else "missing",
                     "config sha256": model.get("config_hash", "")[:16],
                     "config": model.get("config") or "embedded in the checkpoint"})
    return rows


# --------------------------------------------------------------------------- gathering figures and rows
def curves_svg(curves: dict[str, pd.DataFrame]) -> str:
    """One inline SVG: a panel per model, every loss term against the step (log y)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    models = [m for m, c in curves.items() if not c.empty]
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        table = curves[model]
        terms = [c for c in table.columns if c not in ("step", "epoch", "time") and not c.startswith("lr")
                 and pd.api.types.is_numeric_dtype(table[c])]
        for term in terms:
            values = table[term].astype(float)
            smooth = values.rolling(max(1, len(values) // 20), min_periods=1).mean()
            ax.plot(table["step"], smooth, label=term, lw=1.4 if term == "loss" else 0.9)
        if (table[terms] > 0).all().all():
            ax.set_yscale("log")
        ax.set_title(model)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def sample_rows(info: RunInfo) -> tuple[list[str], list[int], dict[str, list[np.ndarray]]]:
    """(row labels, frame numbers, label -> images) of the benchmark's sample frames."""
    from PIL import Image

    from core.media import load_image
    samples = info.benchmark.get("samples")
    if not samples or info.benchmark_dir is None:
        return [], [], {}
    folder = info.benchmark_dir / "samples"
    frames = samples["frames"]
    images = {"source": [load_image(folder / "source.png")] * len(frames)}
    height, width = images["source"][0].shape[:2]  # models may run at other sizes (X2Face: 256)
    for row in samples["rows"]:
        images[row] = [np.asarray(Image.fromarray(load_image(folder / f"{row}_{f:04d}.png")).resize(
            (width, height), Image.BILINEAR)) for f in frames]
    return ["source"] + samples["rows"], frames, images


def load_tables(info: RunInfo) -> tuple[dict[str, Table], list[str]]:
    """The benchmark's tables (key -> Table) from the JSON it wrote beside benchmark.json, and
    the names of those it records but that are missing (a benchmark older than the JSON)."""
    found, missing = {}, []
    for key in ("comparison", "motion"):
        paths = info.benchmark.get("tables", {}).get(key)
        if not paths:
            continue
        path = info.benchmark_dir / Path(paths.get("json", f"{key}.json")).name
        if path.is_file():
            read_json(path)  # one line naming a truncated file
            try:
                found[key] = read_table(path)
            except (TypeError, ValueError) as err:
                raise UserError(f"{str(path)!r} is not a table the benchmark wrote ({err}); rerun the benchmark") from None
        else:
            missing.append(path.name)
    return found, missing


def per_clip_rows(info: RunInfo, limit: int = 20) -> list[dict]:
    """One row per clip: each model's L1 (and motion error where the truth is known)."""
    path = info.benchmark_dir / "per_clip.parquet" if info.benchmark_dir else None
    if path is None or not path.is_file():
        return []
    table = read_parquet(path)
    rows = []
    for clip, group in list(table.groupby("clip", sort=True))[:limit]:
        row = {"clip": clip}
        for _, model in group.iterrows():
            if pd.notna(model["l1"]):
                row[f"{model['model']} L1"] = f"{model['l1']:.4f}"
            if pd.notna(model.get("motion_epe")):
                row[f"{model['model']} EPE"] = f"{model['motion_epe']:.3f}"
        rows.append(row)
    return rows


def reproduce_commands(info: RunInfo) -> list[str]:
    """The `pipeline run <stage> ...` lines behind this run, from timings.json (run all) or
    benchmark.json (a benchmark alone)."""
    import shlex
    stages = info.timings.get("stages", {})
    lines = []
    for name, entry in stages.items():
        if name != "report" and entry.get("argv"):
            stage = name.split("-", 1)[0]
            lines.append(" ".join(["pipeline", "run", stage, *map(shlex.quote, entry["argv"])]))
    if not lines and info.benchmark.get("argv"):
        lines.append(" ".join(["pipeline", "run", "benchmark", *map(shlex.quote, info.benchmark["argv"])]))
    lines.append(f"pipeline run report --run {shlex.quote(str(info.run))}")
    return lines


def timing_rows(info: RunInfo) -> list[dict]:
    rows = [{"stage": stage, "seconds": f"{entry.get('seconds', float('nan')):.1f}",
             "CPU seconds (this process)": f"{entry['cpu_seconds']:.1f}" if "cpu_seconds" in entry else "–",
             "load average at end": entry.get("load_average_1min", ""),
             "status": entry.get("status", "") + (f": {entry['error']}" if entry.get("error") else "")}
            for stage, entry in info.timings.get("stages", {}).items()]
    for name, model in info.benchmark.get("models", {}).items():
        scored = model.get("frames_scored_this_run", model["frames"])
        status = f"{scored} frames scored" + (f", {model['frames_per_second']} frames/s" if scored else "")
        if model.get("clips_from_earlier_runs"):
            status += f"; {model['clips_from_earlier_runs']} clips scored by an earlier run"
        rows.append({"stage": f"benchmark: {name}", "seconds": f"{model['seconds']:.1f}",
                     "CPU seconds (this process)": "", "load average at end": "", "status": status})
    return rows


# --------------------------------------------------------------------------- building and writing
MARKS_NOTE = ("Scores are computed on the models' unmarked output; the videos and sample frames "
              "written carry the generated-content marks (watermark, C2PA manifest, metadata tag).")
PER_CLIP_LIMIT = 20


def data_section(info: RunInfo) -> DataSection:
    """The data summary (see `data_summary`) as the report's tables."""
    data = data_summary(info.data_dir)
    return DataSection(data.get("path"), Rows.of([{"split": s, **c} for s, c in data.get("counts", {}).items()]),
                       Rows.of(data.get("problems", [])), data.get("num_problems", 0),
                       data.get("sha256_clips_parquet", ""))


def training_section(info: RunInfo) -> TrainingSection:
    """Every model's logged losses as one figure, and a row per model of what they came to."""
    curves = {name: training_curves(folder) for name, folder in info.train_dirs.items()}
    curves = {k: v for k, v in curves.items() if not v.empty and "step" in v}
    if not curves:
        return TrainingSection("", Rows([], []))
    last = [{"model": m, "steps": int(c["step"].max()),
             "final loss (mean of last 10 steps)": f"{c['loss'].tail(10).mean():.4f}" if "loss" in c else "",
             **training_settings(info.train_dirs[m])}
            for m, c in curves.items()]
    return TrainingSection(curves_svg(curves), Rows.of(last))


def metrics_section(info: RunInfo, tables: dict[str, Table], missing: list[str]) -> MetricsSection:
    """The benchmark's tables, its first clips one by one, and what the scores were computed on."""
    per_clip = Rows.of(per_clip_rows(info, PER_CLIP_LIMIT))
    # metrics/benchmark.py scores frames before core/provenance.py marks them
    note = MARKS_NOTE if tables or per_clip.rows else ""
    return MetricsSection(list(tables.values()), per_clip, PER_CLIP_LIMIT, missing, note)


def detectability_section(info: RunInfo) -> DetectabilitySection | None:
    """The detectability the benchmark was given (`--detectability`), None without one."""
    from metrics.detectability import detector_text, family_rows, read_detectability
    given = info.benchmark.get("detectability")
    if not given or info.benchmark_dir is None or not (info.benchmark_dir / given["file"]).is_file():
        return None
    record = read_detectability(info.benchmark_dir / given["file"])
    return DetectabilitySection(detector_text(record), Rows.of(family_rows(record)), given["source"])


def sample_grid(info: RunInfo) -> SampleGrid | None:
    """The benchmark's sample frames, a row per source / driving / model; None without them."""
    labels, frames, images = sample_rows(info)
    if not labels:
        return None
    return SampleGrid(info.benchmark["clips"][0], frames, [SampleRow(label, images[label]) for label in labels])


def build_report(info: RunInfo, env: dict) -> Report:
    """The report's model, from the run's files (see the module docstring)."""
    hashes = config_hashes(info)
    data = data_section(info)
    if data.manifest_sha256:
        hashes.append({"model": "data manifest", "checkpoint": str(info.data_dir / "clips.parquet"),
                       "checkpoint sha256": data.manifest_sha256[:16], "config sha256": "", "config": ""})
    clip_list = info.benchmark.get("clip_list")
    if clip_list:  # metrics.clip_scores.clip_list_sha256: which clips the benchmark scored
        hashes.append({"model": "test clips", "checkpoint": f"{clip_list['clips']} clips, {clip_list['frames']} "
                       "frames (sorted names and frame counts)", "checkpoint sha256": clip_list["sha256"][:16],
                       "config sha256": "", "config": ""})
    tables, missing = load_tables(info)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Report(
        title=f"Motion-transfer run report: {info.benchmark.get('dataset', '?')}",
        meta=f"{info.run.resolve()} · {stamp} · commit {env['git_commit']}",
        headline=headline(info, tables),
        environment=Rows.of([{"item": k, "value": v} for k, v in env.items() if k != "packages"]),
        packages=Rows.of([{"package": k, "version": v} for k, v in env["packages"].items()]),
        hashes=Rows.of(hashes), data=data, training=training_section(info),
        metrics=metrics_section(info, tables, missing), samples=sample_grid(info),
        commands=reproduce_commands(info), timings=Rows.of(timing_rows(info)),
        total_seconds=info.timings.get("total_seconds"), detectability=detectability_section(info))


def headline(info: RunInfo, tables: dict[str, Table]) -> list[str]:
    """One line per model: its L1 and, where the truth is known, its motion error."""
    if "comparison" not in tables:
        return ["no benchmark in this run"]
    from metrics.benchmark import NO_MOTION
    motion = {r["model"]: r["motion_epe"] for r in tables["motion"].records} if "motion" in tables else {}
    clip_list = info.benchmark.get("clip_list")
    lines = [f"{len(info.benchmark.get('clips', []))} {info.benchmark.get('split', 'test')} clips of "
             f"{info.benchmark.get('dataset', '?')}"
             + (f" (clip list sha256 {clip_list['sha256']})" if clip_list else "")
             + f"; protocol: {info.benchmark.get('protocol', 'project')}; backends: "
             + "; ".join(f"{k}: {v}" for k, v in info.benchmark.get("backends", {}).items())]
    for row in tables["comparison"].records:
        if row["source"] != "ours":
            continue
        text = f"{row['model']}: L1 {row['l1']:.4f} [{row['l1_lo']:.4f}, {row['l1_hi']:.4f}]"
        if row["model"] in motion:
            text += f", motion error {motion[row['model']]:.2f} px"
        if row.get("detectability_auc") is not None:
            text += (f", detectability AUC {row['detectability_auc']:.3f} [{row['detectability_auc_lo']:.3f}, "
                     f"{row['detectability_auc_hi']:.3f}] (held-out family)")
        lines.append(text)
    if NO_MOTION in motion:
        lines.append(f"predicting no motion at all: motion error {motion[NO_MOTION]:.2f} px")
    return lines


def write_report(run: str | Path) -> tuple[Path, Path]:
    """Write `report.html` and `report.md` (plus `report_samples.png`) into the run folder."""
    from core import outputs
    info = find_run(Path(run))
    # the pages go into the run folder: one of ours (run all's, a benchmark's), never while a
    # stage writes it, and never over a file of the same name that is no page of ours
    with outputs.claim(info.run, "report", flag="--run", accepts=("all", "benchmark"), mark=False,
                       earlier=("benchmark.json", "benchmark/benchmark.json", "timings.json", "train/*/metrics.jsonl")):
        return _write_pages(info)


def _write_pages(info: RunInfo) -> tuple[Path, Path]:
    from core.media import atomic_path
    report = build_report(info, environment())
    html_path, md_path = info.run / "report.html", info.run / "report.md"
    if report.samples is not None:
        from PIL import Image

        from fomm.visualize import image_grid
        grid = image_grid([row.images for row in report.samples.rows])
        with atomic_path(info.run / "report_samples.png") as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
    with atomic_path(html_path) as tmp:
        tmp.write_text(render("report.html.j2", report=report))
    with atomic_path(md_path) as tmp:
        tmp.write_text(render("report.md.j2", report=report))
    return html_path, md_path
