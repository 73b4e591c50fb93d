"""`pipeline run report`: a self-contained page from a real (tiny) training run and benchmark,
the data summary of a manifest with failed clips, errors that name the bad folder, and one
report model rendered to HTML and Markdown with the same cells (markup escaped in HTML)."""
from __future__ import annotations

import base64
import html
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.errors import UserError
from core.media import sha256_of
from metrics import report
from metrics.render import render
from stages.cli import main as cli_main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """Sample clips (2 train, 1 test, 6 frames), X2Face trained 3 steps, then benchmarked."""
    from pipeline import sample
    root = tmp_path_factory.mktemp("report-run")
    data = root / "data"
    for clip in sample.sample_clips(num_train=2, num_test=1, num_frames=6, size=64):
        assert sample.prepare_clip(clip, data)["status"] == "done"
    train_dir = root / "train" / "x2face"
    assert cli_main(["run", "train", "--config", "x2face-tiny", "--data", str(data), "--out", str(train_dir),
                     "train_params.max_steps=3", "train_params.num_epochs=3", "train_params.batch_size=2"]) == 0
    checkpoint = sorted((train_dir / "checkpoints").glob("*.pt"))[-1]
    assert cli_main(["run", "benchmark", "--dataset", "sample", "--data", str(data),
                     "--models", f"x2face={checkpoint}", "--out", str(root / "benchmark"),
                     "--bootstrap", "50"]) == 0
    assert cli_main(["run", "report", "--run", str(root)]) == 0
    return root


def test_page_is_self_contained_and_has_every_section(tiny_run):
    page = (tiny_run / "report.html").read_text()
    for section in ("Environment", "Configs, checkpoints and manifest hashes", "Data", "Training curves",
                    "Metrics", "Sample frames", "Commands to reproduce this run", "Time per stage"):
        assert f"<h2>{section}</h2>" in page
    assert "<style>" in page and "<link" not in page and "<script" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # every image is inline
    assert re.search(r"<td>torch</td><td>\d+\.\d+", page)


def test_training_curve_and_tables_come_from_the_run(tiny_run):
    page = (tiny_run / "report.html").read_text()
    curves = page[page.index("<h2>Training curves</h2>"):page.index("<h2>Metrics</h2>")]
    assert "<svg" in curves and "<td>x2face</td><td>3</td>" in curves  # 3 steps in metrics.jsonl
    metrics = page[page.index("<h2>Metrics</h2>"):page.index("<h2>Sample frames</h2>")]
    per_frame = pd.read_parquet(tiny_run / "benchmark" / "per_frame.parquet")
    l1 = per_frame[per_frame["model"] == "x2face"]["l1"].mean()
    assert f"{l1:.3f} [" in metrics  # the table's number is the frames' mean
    assert "Motion error against the true motion" in metrics and "reference" in metrics
    checkpoint_hash = sha256_of(Path(json.loads(
        (tiny_run / "benchmark" / "benchmark.json").read_text())["models"]["x2face"]["checkpoint"]))
    assert checkpoint_hash[:16] in page


def test_sample_frames_are_the_benchmark_outputs(tiny_run):
    page = (tiny_run / "report.html").read_text()
    grid = page[page.index("<h2>Sample frames</h2>"):]
    sources = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', grid)
    labels = {alt.split(" frame ")[0] for alt, _ in sources}
    assert labels == {"source", "driving", "x2face"}
    first_driving = next(data for alt, data in sources if alt == "driving frame 0")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(first_driving))).convert("RGB"))
    saved = np.asarray(Image.open(tiny_run / "benchmark" / "samples" / "driving_0000.png").convert("RGB"))
    assert np.array_equal(decoded, saved)
    markdown = (tiny_run / "report.md").read_text()
    assert "| x2face | ours |" in markdown and "report_samples.png" in markdown
    assert (tiny_run / "report_samples.png").is_file()


def test_data_summary_counts_failed_and_unavailable_clips(tmp_path):
    clips = pd.DataFrame({"clip": ["a#1", "b#2", "c#3", "d#4"], "split": ["train", "train", "test", "test"],
                          "status": ["done", "unavailable", "done", "failed"],
                          "error": ["", "video gone: HTTP 404", "", "ffmpeg exited 1"]})
    clips.to_parquet(tmp_path / "clips.parquet")
    summary = report.data_summary(tmp_path)
    assert summary["counts"] == {"test": {"done": 1, "failed": 1, "unavailable": 0},
                                 "train": {"done": 1, "failed": 0, "unavailable": 1}}
    assert summary["num_problems"] == 2
    assert {p["error"] for p in summary["problems"]} == {"video gone: HTTP 404", "ffmpeg exited 1"}
    assert summary["sha256_clips_parquet"] == sha256_of(tmp_path / "clips.parquet")


def test_a_folder_with_nothing_to_report_is_named(tmp_path, capsys):
    with pytest.raises(UserError, match="nothing to report"):
        report.find_run(tmp_path)
    assert cli_main(["run", "report", "--run", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


# --------------------------------------------------------------------------- one model, two renderings
class _HtmlCells(HTMLParser):
    """Every <table>'s rows of cell texts (the sample-frame grid aside) and every <li>'s text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables, self.items, self._cell, self._skip = [], [], None, False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._skip = dict(attrs).get("class") == "frames"
            self.tables.append([])
        elif tag == "tr" and not self._skip:
            self.tables[-1].append([])
        elif tag in ("td", "th", "li"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and not self._skip:
            self.tables[-1][-1].append(self._cell.strip())
        elif tag == "li":
            self.items.append(self._cell.strip())
        if tag in ("td", "th", "li"):
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _markdown_cells(text: str) -> tuple[list[list[list[str]]], list[str]]:
    """Markdown's tables (rows of unescaped cells, separator lines dropped) and its list items."""
    tables, items, previous = [], [], ""
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|(---\|)+", line):
            if not previous.startswith("|"):
                tables.append([])
            cells = re.split(r"(?<!\\)\|", line[1:-1])
            tables[-1].append([cell.strip().replace("\\|", "|") for cell in cells])
        elif line.startswith("- "):
            items.append(line[2:])
        previous = line
    return tables, items


def _model(name: str) -> report.Report:
    """A report on `name` and fomm on vox, built from data only (no run folder): a table with the
    paper's rows, AKD as a not-comparable substitute, and AKD undefined on some frames."""
    from metrics import tables
    rng = np.random.default_rng(0)
    per_frame = pd.DataFrame([{"model": model, "clip": f"clip{c}", "frame": f,
                               "l1": offset + rng.normal(0, 0.01),
                               "akd": np.nan if f % 3 == 0 else 2 + rng.normal(0, 0.2)}
                              for model, offset in (("fomm", 0.05), (name, 0.09))
                              for c in range(4) for f in range(6)])
    summary = tables.summarise(per_frame, ["l1", "akd"], num_resamples=50)
    table = tables.comparison_table(summary, "vox", ["l1", "akd"], {"pose": "dlib68"},
                                    comparable={"l1": True, "akd": False}, protocol="project")
    info = report.RunInfo(Path("run"), benchmark={"clips": ["clip0", "clip1"], "dataset": "vox",
                                                  "backends": {"pose": "dlib68"}})
    rows = report.Rows.of
    image = np.full((4, 4, 3), 200, np.uint8)
    return report.Report(
        title="Motion-transfer run report: vox", meta="run · today", headline=report.headline(info, {"comparison": table}),
        environment=rows([{"item": "python", "value": "3.11"}]), packages=rows([{"package": "torch", "version": "2"}]),
        hashes=rows([{"model": name, "checkpoint": "a.pt", "checkpoint sha256": "ab12"}]),
        data=report.DataSection("data", rows([{"split": "test", "done": 3, "failed": 1}]),
                                rows([{"clip": "clip9", "status": "failed", "error": "ffmpeg exited 1"}]), 1),
        training=report.TrainingSection("", rows([])),
        metrics=report.MetricsSection([table], rows([{"clip": "clip0", f"{name} L1": "0.0912"}]), 20, [],
                                      report.MARKS_NOTE),
        samples=report.SampleGrid("clip0", [0, 1], [report.SampleRow(name, [image, image])]),
        commands=["pipeline run all --dataset vox"], timings=rows([{"stage": "train", "seconds": "1.5"}]),
        total_seconds=12.34)


def test_options_name_a_run_that_is_no_folder(tmp_path):
    """`options(args)`: the run folder as a Path; a file given as --run is named and nothing is
    written beside it."""
    import argparse

    from stages import report as report_stage
    parser = argparse.ArgumentParser()
    report_stage.add_arguments(parser)
    chosen = report_stage.options(parser.parse_args(["--run", str(tmp_path)]))
    assert chosen == report_stage.ReportOptions(run=tmp_path) and isinstance(chosen.run, Path)
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(UserError, match="--run .*run.json' is not a folder"):
        report_stage.options(parser.parse_args(["--run", str(tmp_path / "run.json")]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_html_and_markdown_render_the_same_cells_from_one_model():
    model = _model("x2face | v2")  # a `|` that Markdown must escape
    page = _HtmlCells()
    page.feed(render("report.html.j2", report=model))
    md_tables, md_items = _markdown_cells(render("report.md.j2", report=model))
    assert [table for table in page.tables if table] == md_tables
    assert len(md_tables) == 8  # environment, packages, hashes, counts, problems, metrics, per clip, timings
    assert page.items == md_items  # the headline and the table's notes
    metric_table = next(t for t in md_tables if t[0][:2] == ["model", "source"])
    assert "AKD (px) ↓ (ours, not comparable)" in metric_table[0] and "AKD (px) ↓ (paper)" in metric_table[0]
    # FOMM's Table 3 rows (X2Face, Monkey-Net, FOMM), then MRAA's and TPSMM's papers
    assert [row[1] for row in metric_table[1:]] == ["ours", "ours"] + ["paper"] * 5
    ours = {row[0]: row[2] for row in metric_table[1:3]}
    assert set(ours) == {"fomm", "x2face | v2"}
    headline = md_items[1:3]  # the first line is the clips and backends
    for name, cell in ours.items():  # the headline's L1 is the table's, to its 3 printed digits
        line = next(line for line in headline if line.startswith(f"{name}: L1 "))
        assert f"{float(line.split()[-3]):.3f}" == cell.split()[0]
    assert "total: 12.3 s" in render("report.md.j2", report=model)


def test_markup_in_a_model_name_is_escaped_in_html_only():
    name = "<script>alert(1)</script>"
    model = _model(name)
    curve = pd.DataFrame({"step": [1, 2, 3], "loss": [1.0, 0.6, 0.5]})  # the SVG is inlined unescaped
    model.training = report.TrainingSection(report.curves_svg({name: curve}), report.Rows.of([{"model": name}]))
    page = render("report.html.j2", report=model)
    assert "<script" not in page and "<svg" in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6  # tables, headline, grid, curve title
    assert f'alt="{html.escape(name)} frame 0"' in page
    assert name in render("report.md.j2", report=_model(name))


def test_a_benchmark_without_table_json_is_named_not_read_from_html(tmp_path):
    bench = tmp_path / "benchmark"
    bench.mkdir()
    (bench / "comparison.html").write_text("<html><body><table><tr><td>stale</td></tr></table></body></html>")
    (bench / "benchmark.json").write_text(json.dumps({"dataset": "sample", "tables": {"comparison": {
        "html": str(bench / "comparison.html"), "md": str(bench / "comparison.md")}}}))
    html_path, md_path = report.write_report(tmp_path)
    page = html_path.read_text()
    assert "comparison.json is missing" in page and "stale" not in page
    assert "no benchmark in this run" in page and "comparison.json is missing" in md_path.read_text()
