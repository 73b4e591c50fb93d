"""`pipeline run all --dataset sample` at the tiny budget: prepare (Ray), train every
registered family, benchmark them all on the same clips, report; then a rerun that only
rewrites the report."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from metrics import clip_scores
from stages.cli import main as cli_main
from stages.run_all import BUDGETS, families

MODELS = tuple(families())  # the registry's, not a list of our own


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run-all")
    assert cli_main(["run", "all", "--dataset", "sample", "--out", str(out), "--budget", "tiny"]) == 0
    return out


def test_every_stage_is_timed_and_done(run_dir):
    timings = json.loads((run_dir / "timings.json").read_text())
    expected = {"prepare", "benchmark", "report"} | {f"train-{m}" for m in MODELS}
    assert set(timings["stages"]) == expected
    assert all(entry["status"] == "done" and entry["seconds"] > 0 for entry in timings["stages"].values())
    assert timings["total_seconds"] == pytest.approx(sum(e["seconds"] for e in timings["stages"].values()),
                                                     abs=0.05)
    for model in MODELS:  # each model trained exactly the budget's steps
        curve = pd.read_json(run_dir / "train" / model / "metrics.jsonl", lines=True)
        assert curve["step"].max() == BUDGETS["tiny"].steps_for(model)


def test_benchmark_scores_every_family_on_the_same_test_clips(run_dir):
    per_clip = pd.read_parquet(run_dir / "benchmark" / "per_clip.parquet")
    clips = pd.read_parquet(run_dir / "data" / "clips.parquet")
    test_clips = sorted(clips[(clips["split"] == "test") & (clips["status"] == "done")]["clip"])
    chosen = test_clips[:BUDGETS["tiny"].max_clips]
    for model in MODELS:
        rows = per_clip[per_clip["model"] == model]
        assert sorted(rows["clip"]) == chosen
        assert rows["l1"].between(0, 1).all()
        assert rows["motion_epe"].notna().all()  # the sample dataset's truth was used
    assert (per_clip["num_frames"] == BUDGETS["tiny"].max_frames).all()
    record = json.loads((run_dir / "benchmark" / "benchmark.json").read_text())
    assert list(record["models"]) == list(MODELS) and sorted(record["clip_frames"]) == chosen
    assert record["clip_list"]["sha256"] == clip_scores.clip_list_sha256(record["clip_frames"])


def test_report_holds_every_familys_tables_and_nothing_external(run_dir):
    page = (run_dir / "report.html").read_text()
    for section in ("Environment", "Configs, checkpoints and manifest hashes", "Data", "Training curves",
                    "Metrics", "Sample frames", "Time per stage"):
        assert f"<h2>{section}</h2>" in page
    metrics = page[page.index("<h2>Metrics</h2>"):page.index("<h2>Sample frames</h2>")]
    assert "Reconstruction on sample" in metrics and "Motion error against the true motion" in metrics
    for model in MODELS:
        assert metrics.count(f"<td>{model}</td>") == 2  # in the metric table and the motion table
    assert "backends: pose: none; identity: none" in metrics
    assert "<svg" in page  # the training curves, inline
    sha = json.loads((run_dir / "benchmark" / "benchmark.json").read_text())["clip_list"]["sha256"]
    assert sha in page and sha in metrics  # which clips were scored: in the headline and the tables
    images = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(images) >= 4 * (2 + len(MODELS)) - 4  # source, driving and each model, per frame
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # self-contained
    markdown = (run_dir / "report.md").read_text()
    assert all(f"| {m} | ours |" in markdown for m in MODELS)
    assert (run_dir / "report_samples.png").is_file()


def test_rerun_only_rewrites_the_report(run_dir):
    before = json.loads((run_dir / "timings.json").read_text())
    checkpoints = {m: (run_dir / "train" / m / "checkpoints").iterdir() for m in MODELS}
    mtimes = {p: p.stat().st_mtime_ns for files in checkpoints.values() for p in files}
    assert cli_main(["run", "all", "--dataset", "sample", "--out", str(run_dir), "--budget", "tiny"]) == 0
    after = json.loads((run_dir / "timings.json").read_text())
    for stage, entry in before["stages"].items():
        if stage != "report":
            assert after["stages"][stage] == entry
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_unknown_model_is_named(tmp_path, capsys):
    """One line naming the bad value and the known models, before any stage writes anything."""
    assert cli_main(["run", "all", "--out", str(tmp_path), "--models", "fomm,dalle"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'fomm,dalle'" in err and all(m in err for m in families())
    assert list(tmp_path.iterdir()) == []
