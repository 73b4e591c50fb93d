"""`pipeline run report`: a self-contained page from a real (tiny) training run and benchmark,
the data summary of a manifest with failed clips, and errors that name the bad folder."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from metrics import report
from pipeline.cli import main as cli_main
from core.media import sha256_of
from core.errors import UserError


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
