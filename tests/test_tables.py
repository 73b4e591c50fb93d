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
    assert unconfirmed.value == 0.109 and not unconfirmed.confirmed and unconfirmed.text() == ""
    assert paper.paper_value("monkey-net", "bair", "akd") is None  # Bair reports L1 only
    assert paper.paper_cells("sample") == []
    confirmed = [c for d in paper.DATASET_METRICS for c in paper.paper_cells(d) if c.confirmed]
    assert len(confirmed) == 3
    # MRAA's and TPSMM's papers report vox, taichi, ted and mgif, but no number of theirs is confirmed
    assert [p.key for p in paper.publications_for("ted-384")] == ["mraa", "tpsmm"]
    assert [p.key for p in paper.publications_for("vox")] == ["fomm", "mraa", "tpsmm"]
    assert not any(c.publication is not paper.FOMM for d in paper.DATASET_ALIASES for c in paper.paper_cells(d))


def _published_rows(table):
    return [(cells, record) for cells, record in zip(table.rows, table.records) if record["source"] == "paper"]


def test_comparison_table_labels_paper_rows_and_names_backends(tmp_path):
    summary = tables.summarise(_per_frame(), ["l1", "akd"], num_resamples=100)
    table = tables.comparison_table(summary, "vox", ["l1", "akd"], {"pose": "dlib68 (ibug-68)"})
    paths = tables.write_table(table, tmp_path, "comparison")
    markdown = paths["md"].read_text()
    assert "dlib68 (ibug-68)" in table.title and "dlib68" in markdown
    paper_lines = [line for line in markdown.splitlines() if "| paper |" in line]
    assert [line.split(" | ")[0] for line in paper_lines] == ["| x2face", "| monkey-net", "| fomm", "| mraa",
                                                              "| tpsmm"]
    fomm_paper = next(line for line in paper_lines if line.startswith("| fomm"))
    # the confirmed Table 3 cell is printed; the unconfirmed L1 0.043 is left empty, not quoted
    assert "| 1.294 |" in fomm_paper and "0.043" not in markdown and "(?)" not in markdown
    assert "face-alignment" in markdown  # the paper's own backends are named too
    records = pd.read_csv(paths["csv"])
    assert set(records["source"]) == {"ours", "paper"}
    ours = records[records["source"] == "ours"].set_index("model")
    assert ours.loc["fomm", "l1"] == pytest.approx(summary.set_index("model").loc["fomm", "l1"])
    assert records[records["source"] == "paper"]["l1"].isna().all()  # no unconfirmed number in the data
    page = paths["html"].read_text()
    assert page.count('class="paper"') == 5 and "<style>" in page and "http" not in page
    again = tables.read_table(paths["json"])  # what the report reads: the table as data, NaNs kept
    assert (again.title, again.columns, again.rows, again.notes) == (table.title, table.columns, table.rows,
                                                                     table.notes)
    pd.testing.assert_frame_equal(pd.DataFrame(again.records), pd.DataFrame(table.records))


@pytest.mark.parametrize("dataset", ["vox", "taichi", "nemo", "bair", "ted", "mgif"])
def test_every_published_row_cites_its_paper_and_prints_only_confirmed_numbers(dataset):
    metrics = ["l1", "akd", "mkr", "aed"]
    per_frame = _per_frame().assign(mkr=0.05, aed=0.2)
    table = tables.comparison_table(tables.summarise(per_frame, metrics, num_resamples=20), dataset, metrics, {})
    assert table.columns[-1] == "published in"
    published = _published_rows(table)
    assert {record["publication"] for _, record in published} == {p.key for p in paper.publications_for(dataset)}
    for cells, record in published:
        publication = next(p for p in paper.PUBLICATIONS if p.key == record["publication"])
        assert cells[-1] == record["published_in"] == publication.cell_text()
        assert publication.short in cells[-1] and (publication.table or "table not confirmed") in cells[-1]
        assert any(publication.citation in note for note in table.notes)  # authors, title and venue
        for metric in metrics:
            cell = paper.paper_value(record["model"], dataset, metric, publication)
            text = cells[2 + metrics.index(metric)]
            if cell is not None and cell.confirmed:
                assert text == f"{cell.value:.3f}" and record[metric] == cell.value
            else:
                assert text == tables.EMPTY and np.isnan(record[metric])
    ours = [cells for cells in table.rows if cells[1] == "ours"]
    assert all(cells[-1] == "" for cells in ours)


def test_an_extra_column_sits_after_the_metrics_for_our_rows_only():
    summary = tables.summarise(_per_frame(), ["l1"], num_resamples=20)
    column = tables.ExtraColumn("detected", {"fomm": "12 %"}, {"fomm": 0.12}, note="detected: a note")
    table = tables.comparison_table(summary, "vox", ["l1"], {}, extra=(column,))
    index = table.columns.index("detected")
    assert table.columns[index - 1].startswith("L1") and table.columns[index + 1] == "clips"
    by_model = {(cells[0], cells[1]): cells[index] for cells in table.rows}
    assert by_model[("fomm", "ours")] == "12 %" and by_model[("x2face", "ours")] == tables.EMPTY
    assert all(text == tables.EMPTY for (_, source), text in by_model.items() if source == "paper")
    assert table.records[0]["detected"] == 0.12 and "detected: a note" in table.notes


def test_dataset_without_paper_numbers_says_so():
    summary = tables.summarise(_per_frame(), ["l1"], num_resamples=50)
    table = tables.comparison_table(summary, "sample", ["l1"], {})
    assert all(cells[1] == "ours" for cells in table.rows)
    assert any("no numbers" in note for note in table.notes)
