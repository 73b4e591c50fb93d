"""Bootstrap intervals, the paper's Table 3 as data, and the table files (JSON read back whole)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metrics import paper, tables


def _per_frame(seed=0, num_clips=8, frames=(5, 40)):
    rng = np.random.default_rng(seed)
    rows = []
    for model, offset in (("fomm", 0.05), ("x2face", 0.09)):
        for c in range(num_clips):
            clip_level = offset + rng.normal(0, 0.01)
            for f in range(int(rng.integers(*frames))):
                rows.append({"model": model, "clip": f"clip{c}", "frame": f,
                             "l1": clip_level + rng.normal(0, 0.002),
                             "akd": np.nan if f % 4 == 0 else 2.0 + rng.normal(0, 0.3)})
    return pd.DataFrame(rows)


def test_point_estimate_is_the_mean_over_all_frames():
    per_frame = _per_frame()
    summary = tables.summarise(per_frame, ["l1", "akd"], num_resamples=200)
    for model, group in per_frame.groupby("model"):
        row = summary.set_index("model").loc[model]
        assert row["l1"] == pytest.approx(group["l1"].mean(), rel=1e-12)
        assert row["akd"] == pytest.approx(group["akd"].dropna().mean(), rel=1e-12)
        assert row["akd_frames"] == group["akd"].notna().sum()
        assert row["num_clips"] == group["clip"].nunique()


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    per_frame = _per_frame()
    first = tables.summarise(per_frame, ["l1"], num_resamples=500, seed=3)
    again = tables.summarise(per_frame, ["l1"], num_resamples=500, seed=3)
    other = tables.summarise(per_frame, ["l1"], num_resamples=500, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["l1_lo"], other["l1_lo"])
    assert (first["l1_lo"] < first["l1"]).all() and (first["l1"] < first["l1_hi"]).all()


def test_bootstrap_interval_narrows_with_more_clips_and_vanishes_for_equal_clips():
    few = tables.summarise(_per_frame(num_clips=4), ["l1"], num_resamples=500)
    many = tables.summarise(_per_frame(num_clips=64), ["l1"], num_resamples=500)
    assert ((many["l1_hi"] - many["l1_lo"]) < (few["l1_hi"] - few["l1_lo"])).all()
    low, high = tables.bootstrap_ci(np.full(6, 0.5), np.full(6, 10))
    assert low == pytest.approx(0.05) and high == pytest.approx(0.05)
    assert np.isnan(tables.bootstrap_ci(np.zeros(3), np.zeros(3))[0])


def test_paper_table3_cells_and_confirmation_flags():
    cell = paper.paper_value("fomm", "vox", "akd")
    assert cell.value == 1.294 and cell.confirmed and cell.text() == "1.294"
    assert paper.paper_value("fomm", "nemo", "akd").confirmed
    assert paper.paper_value("fomm", "vox-256", "aed").value == 0.140
    unconfirmed = paper.paper_value("x2face", "taichi", "mkr")
    assert unconfirmed.value == 0.109 and not unconfirmed.confirmed and unconfirmed.text().endswith("(?)")
    assert paper.paper_value("monkey-net", "bair", "akd") is None  # Bair reports L1 only
    assert paper.paper_cells("sample") == []
    confirmed = [c for d in paper.DATASET_METRICS for c in paper.paper_cells(d) if c.confirmed]
    assert len(confirmed) == 3


def test_comparison_table_labels_paper_rows_and_names_backends(tmp_path):
    summary = tables.summarise(_per_frame(), ["l1", "akd"], num_resamples=100)
    table = tables.comparison_table(summary, "vox", ["l1", "akd"], {"pose": "dlib68 (ibug-68)"})
    paths = tables.write_table(table, tmp_path, "comparison")
    markdown = paths["md"].read_text()
    assert "dlib68 (ibug-68)" in table.title and "dlib68" in markdown
    paper_lines = [line for line in markdown.splitlines() if "| paper |" in line]
    assert len(paper_lines) == 3
    fomm_paper = next(line for line in paper_lines if line.startswith("| fomm"))
    assert "1.294" in fomm_paper and "1.294 (?)" not in fomm_paper and "0.043 (?)" in fomm_paper
    assert "face-alignment" in markdown  # the paper's own backends are named too
    records = pd.read_csv(paths["csv"])
    assert set(records["source"]) == {"ours", "paper"}
    ours = records[records["source"] == "ours"].set_index("model")
    assert ours.loc["fomm", "l1"] == pytest.approx(summary.set_index("model").loc["fomm", "l1"])
    page = paths["html"].read_text()
    assert page.count('class="paper"') == 3 and "<style>" in page and "http" not in page
    again = tables.read_table(paths["json"])  # what the report reads: the table as data, NaNs kept
    assert (again.title, again.columns, again.rows, again.notes) == (table.title, table.columns, table.rows,
                                                                     table.notes)
    pd.testing.assert_frame_equal(pd.DataFrame(again.records), pd.DataFrame(table.records))


def test_dataset_without_paper_numbers_says_so():
    summary = tables.summarise(_per_frame(), ["l1"], num_resamples=50)
    table = tables.comparison_table(summary, "sample", ["l1"], {})
    assert all(cells[1] == "ours" for cells in table.rows)
    assert any("no numbers" in note for note in table.notes)
