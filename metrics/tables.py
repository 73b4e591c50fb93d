"""Comparison tables of a benchmark: seeded bootstrap confidence intervals over clips, the
paper's published numbers beside ours, and the table files (JSON data, Markdown, CSV, HTML:
the last two rendered by metrics/templates/).

The point estimate of a metric is the paper's: the mean over all frames of all test clips
(frames where a metric is undefined, e.g. no face found, are left out). Its 95 % interval
resamples whole clips with replacement, since frames of one clip are not independent.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from metrics import paper
from metrics.render import render

log = logging.getLogger(__name__)

# metric column -> (printed name, lower is better)
METRICS: dict[str, tuple[str, bool]] = {
    "l1": ("L1", True),
    "ssim": ("SSIM", False),
    "psnr": ("PSNR (dB)", False),
    "akd": ("AKD (px)", True),
    "mkr": ("MKR", True),
    "aed": ("AED", True),
    "lpips": ("LPIPS", True),
    "motion_epe": ("motion EPE (px)", True),
}


def clip_sums(per_frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per (model, clip): for each metric the sum and count of its defined frame values."""
    rows = []
    for (model, clip), group in per_frame.groupby(["model", "clip"], sort=True):
        row = {"model": model, "clip": clip, "num_frames": len(group)}
        for metric in metrics:
            values = group[metric].to_numpy(dtype=float)
            finite = np.isfinite(values)
            row[f"{metric}_sum"] = float(values[finite].sum())
            row[f"{metric}_count"] = int(finite.sum())
        rows.append(row)
    return pd.DataFrame(rows)


def bootstrap_ci(sums: np.ndarray, counts: np.ndarray, num_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of sum(sums) / sum(counts) over clips resampled with replacement.

    `sums[i]`, `counts[i]`: the metric's sum and number of defined frames in clip i.
    Resamples with no defined frame are dropped; (nan, nan) when nothing is defined.
    """
    sums, counts = np.asarray(sums, float), np.asarray(counts, float)
    if len(sums) == 0 or counts.sum() == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sums), size=(num_resamples, len(sums)))  # (R, C)
    totals, frames = sums[picks].sum(1), counts[picks].sum(1)
    means = totals[frames > 0] / frames[frames > 0]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarise(per_frame: pd.DataFrame, metrics: list[str], num_resamples: int = 1000,
              seed: int = 0) -> pd.DataFrame:
    """One row per model: frame-mean of each metric with its bootstrap 95 % interval."""
    sums = clip_sums(per_frame, metrics)
    rows = []
    order = {model: index for index, model in enumerate(pd.unique(per_frame["model"]))}
    for model, group in sorted(sums.groupby("model", sort=False), key=lambda item: order[item[0]]):
        row = {"model": model, "num_clips": len(group), "num_frames": int(group["num_frames"].sum())}
        for metric in metrics:
            total, count = group[f"{metric}_sum"].to_numpy(), group[f"{metric}_count"].to_numpy()
            row[metric] = float(total.sum() / count.sum()) if count.sum() else float("nan")
            row[f"{metric}_lo"], row[f"{metric}_hi"] = bootstrap_ci(total, count, num_resamples, seed)
            row[f"{metric}_frames"] = int(count.sum())
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class Table:
    """A printable table: header, rows of strings, machine-readable records, notes."""
    title: str
    columns: list[str]
    rows: list[list[str]]
    records: list[dict]
    notes: list[str] = field(default_factory=list)


def _fmt(value: float, metric: str) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.2f}" if metric in ("psnr",) else f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _header(metric: str) -> str:
    return METRICS[metric][0] + (" ↓" if METRICS[metric][1] else " ↑")


@dataclass(frozen=True)
class ExtraColumn:
    """A column beside the metrics, measured per model by another stage (e.g. how often a
    detector flags the model's frames): filled for our rows, empty for the published ones."""
    header: str
    cells: dict[str, str]                              # model -> printed text
    values: dict[str, float] = field(default_factory=dict)  # model -> the number, for the records
    note: str = ""                                     # appended to the table's notes
    record_key: str = ""                               # the records' field for `values` (else the header)
    details: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> more record fields


def comparison_table(summary: pd.DataFrame, dataset: str, metrics: list[str],
                     backends: dict[str, str], references: tuple[str, ...] = (),
                     comparable: dict[str, bool] | None = None, protocol: str | None = None,
                     extra: tuple[ExtraColumn, ...] = ()) -> Table:
    """Our models (value [95 % CI]) and, below them, the published rows for `dataset`.

    `backends`: role -> backend description (e.g. {"pose": "dlib68 (scheme ibug-68)"});
    printed in the title and notes, since numbers from different backends do not compare.
    `references`: rows that are yardsticks rather than models (labelled "reference").
    `comparable`: metric -> whether ours was measured as the papers measured it (their
    protocol and network). A metric that is not gets two columns: ours, headed "not
    comparable", and the paper's, so a substitute's number never stands in the paper's column.
    `protocol`: printed in the title and notes. `extra`: columns after the metrics.
    Published rows (metrics.paper) carry their paper and table in a "published in" column;
    a cell whose number is not confirmed is left empty.
    """
    comparable = {metric: comparable.get(metric, True) for metric in metrics} if comparable else \
        {metric: True for metric in metrics}
    group = paper.paper_dataset(dataset)
    publications = paper.publications_for(dataset)
    backend_text = "; ".join(f"{role}: {name}" for role, name in backends.items()) or "none"
    # (metric, whose values: "both" | "ours" | "paper") per printed column
    layout = []
    for metric in metrics:
        if comparable[metric] or not publications:
            layout.append((metric, "both"))
        else:
            layout += [(metric, "ours"), (metric, "paper")]
    names = {"both": "", "ours": " (ours, not comparable)", "paper": " (paper)"}
    columns = (["model", "source"] + [_header(m) + names[whose] for m, whose in layout]
               + [column.header for column in extra] + ["clips", "frames"]
               + (["published in"] if publications else []))
    cited = [""] if publications else []
    rows, records, coverage = [], [], []
    for _, row in summary.iterrows():
        source = "reference" if row["model"] in references else "ours"
        cells = [str(row["model"]), source]
        record = {"model": row["model"], "source": source, "confirmed": True,
                  "backends": backend_text, "protocol": protocol, "num_clips": int(row["num_clips"]),
                  "num_frames": int(row["num_frames"])}
        for metric, whose in layout:
            if whose == "paper":
                cells.append(EMPTY)
                continue
            value, low, high = row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"]
            cells.append(_fmt(value, metric) if not np.isfinite(value) else
                         f"{_fmt(value, metric)} [{_fmt(low, metric)}, {_fmt(high, metric)}]")
            record.update({metric: value, f"{metric}_lo": low, f"{metric}_hi": high,
                           f"{metric}_comparable": comparable[metric]})
        for column in extra:
            cells.append(column.cells.get(row["model"], EMPTY))
            if row["model"] in column.values:
                record[column.record_key or column.header] = column.values[row["model"]]
            record.update(column.details.get(row["model"], {}))
        rows.append(cells + [str(int(row["num_clips"])), str(int(row["num_frames"]))] + cited)
        records.append(record)
        partial = [f"{METRICS[m][0]} on {int(row[f'{m}_frames'])}/{int(row['num_frames'])}"
                   for m in metrics if row[f"{m}_frames"] < row["num_frames"]]
        if partial:
            coverage.append(f"{row['model']}: " + ", ".join(partial) + " frames")
    protocol_text = f"protocol: {protocol}; " if protocol else ""
    notes = [f"ours: mean over all frames of the test clips, [95 % bootstrap interval over clips, "
             f"seeded]; {protocol_text}backends: {backend_text}."]
    if coverage:
        notes.append("defined only where the backend found the subject in both frames: "
                     + "; ".join(coverage) + ".")
    for publication in publications:
        for method in publication.methods:
            cells, record = _published_row(publication, method, dataset, layout, len(extra))
            rows.append(cells)
            records.append(record)
    notes += [column.note for column in extra if column.note]
    notes += _publication_notes(publications, group, dataset)
    apart = [METRICS[m][0] for m in metrics if not comparable[m]]
    if publications and apart:
        notes.append("not comparable with the papers (a substitute network or another protocol), so "
                     "printed apart from the papers' columns: " + ", ".join(apart) + ".")
    title = f"Reconstruction on {dataset} ({protocol_text}backends: {backend_text})"
    return Table(title, columns, rows, records, notes)


EMPTY = "–"


def _published_row(publication: paper.Publication, method: str, dataset: str,
                   layout: list[tuple[str, str]], num_extra: int) -> tuple[list[str], dict]:
    """A published row's cells and record: confirmed numbers only, the citation last."""
    group = paper.paper_dataset(dataset)
    cells = [method, "paper"]
    record = {"model": method, "source": "paper", "publication": publication.key,
              "published_in": publication.cell_text(), "backends": paper.PAPER_BACKENDS.get(group, "")}
    for metric, whose in layout:
        if whose == "ours":
            cells.append(EMPTY)
            continue
        cell = paper.paper_value(method, dataset, metric, publication)
        confirmed = cell is not None and cell.confirmed
        cells.append(cell.text() if confirmed else EMPTY)
        record[metric] = cell.value if confirmed else float("nan")
        record[f"{metric}_confirmed"] = confirmed
    return cells + [EMPTY] * num_extra + ["", "", publication.cell_text()], record


def _publication_notes(publications: list[paper.Publication], group: str | None, dataset: str) -> list[str]:
    if not publications:
        return [f"paper: no numbers published for dataset {dataset!r}."]
    notes = [f"{p.cell_text()}: {p.citation}." for p in publications]
    notes.append(f"published numbers: measured by each paper on its own copy of the dataset with "
                 f"{paper.PAPER_BACKENDS.get(group, 'its own networks')}, so they compare with ours only "
                 "where the clips and the backends agree; a cell is empty where its number is not confirmed "
                 "by the paper's text or its authors' words (metrics/paper.py says which are).")
    return notes


def to_markdown(table: Table) -> str:
    """The table in Markdown: bold title, rows, notes as a list."""
    return render("table.md.j2", table=table)


def to_html(table: Table) -> str:
    """A standalone page around the table (inline CSS, no external resources)."""
    return render("table.html.j2", table=table)


def write_table(table: Table, out_dir: Path, stem: str) -> dict[str, Path]:
    """`stem`.json (the table as data: what the report reads), `stem`.md, `stem`.csv (one
    record per row, numbers unrounded) and `stem`.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "html", "json")}
    paths["json"].write_text(json.dumps(dataclasses.asdict(table), indent=1, default=_json_scalar))
    paths["md"].write_text(to_markdown(table))
    pd.DataFrame(table.records).to_csv(paths["csv"], index=False)
    paths["html"].write_text(to_html(table))
    return paths


def read_table(path: Path) -> Table:
    """A table that `write_table` wrote as JSON."""
    return Table(**json.loads(Path(path).read_text()))


def _json_scalar(value):
    """numpy scalars (int64, bool_) as Python numbers; NaN stays NaN, as json writes floats."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} in a table record: expected a number or text")
