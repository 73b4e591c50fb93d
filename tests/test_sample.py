"""The built-in `sample` dataset: layout, shards, ground-truth motion, determinism, resume."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stages import cli
from pipeline.clips import clip_dir
from pipeline.sample import TRUTH_GRID, SampleClip, render_clip, sample_clips

NAME = re.compile(r"^[a-z_]+#[a-z_]+-m\d{4}#\d{6}#\d{6}$")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("sample")
    assert cli.main(["run", "prepare", "--dataset", "sample", "--out", str(out),
                     "--no-progress"]) == 0
    return out


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_layout_rows_and_summary(prepared):
    for split, count in (("train", 8), ("test", 4)):
        folders = sorted((prepared / "png" / split).iterdir())
        assert len(folders) == count
        for folder in folders:
            assert folder.name.endswith(".mp4") and NAME.match(folder.name[:-4]), folder.name
            frames = sorted(folder.glob("*.png"))
            assert [f.name for f in frames] == [f"{i:07d}.png" for i in range(32)]
            assert _png(frames[0]).shape == (64, 64, 3)
    table = pd.read_parquet(prepared / "clips.parquet")
    assert len(table) == 12 and set(table.status) == {"done"}
    assert (table.num_frames == 32).all() and table.error.isna().all()
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["done"] == 12 and summary["frames"] == 12 * 32
    assert summary["bytes"] == sum(p.stat().st_size for p in (prepared / "png").rglob("*.png"))


def test_shards_hold_every_png(prepared):
    for split, count in (("train", 8), ("test", 4)):
        table = pq.read_table(prepared / "shards" / f"{split}-00000.parquet")
        assert table.schema.field("frame_index").type == "int32"
        assert table.num_rows == count * 32
        row = table.slice(37, 1).to_pylist()[0]
        path = clip_dir(prepared, split, row["clip"]) / f"{row['frame_index']:07d}.png"
        assert path.read_bytes() == row["png"]
        assert np.asarray(Image.open(io.BytesIO(row["png"]))).shape == (64, 64, 3)


def test_truth_grid_warps_frame0_onto_frame_t(prepared):
    """frame_t ~= grid_sample(frame_0, backward_grid[t]) where the grid stays in the frame,
    and far closer than frame 0 itself: the stored motion is the motion in the frames."""
    for path in sorted((prepared / "truth" / "test").glob("*.npz")):
        grid = np.load(path)["backward_grid"]
        assert grid.shape == (32, TRUTH_GRID, TRUTH_GRID, 2) and grid.dtype == np.float32
        axis = (2 * np.arange(TRUTH_GRID) + 1) / TRUTH_GRID - 1
        np.testing.assert_allclose(grid[0, 5, :, 0], axis, atol=1e-6)   # t=0: identity
        np.testing.assert_allclose(grid[0, :, 9, 1], axis, atol=1e-6)
        folder = clip_dir(prepared, "test", path.stem)
        frame0 = torch.tensor(_png(folder / "0000000.png")).permute(2, 0, 1)[None].float() / 255
        for t in (10, 31):
            frame_t = torch.tensor(_png(folder / f"{t:07d}.png")).permute(2, 0, 1).float() / 255
            warped = F.grid_sample(frame0, torch.tensor(grid[t])[None], mode="bilinear",
                                   align_corners=False)[0]
            inside = torch.tensor((np.abs(grid[t]) < 0.95).all(-1))
            assert inside.float().mean() > 0.7
            warp_error = (warped - frame_t).abs().mean(0)[inside].mean().item()
            still_error = (frame0[0] - frame_t).abs().mean(0)[inside].mean().item()
            assert warp_error < 0.03, (path.stem, t, warp_error)
            assert still_error > 2 * warp_error, (path.stem, t, still_error, warp_error)


def test_motion_is_smooth_and_nontrivial():
    _, grid = render_clip(sample_clips(1, 0, 32, 32)[0])
    steps = np.abs(np.diff(grid, axis=0)).max(axis=(1, 2, 3))
    total = np.abs(grid - grid[0]).max()
    assert total > 0.1                      # it moves
    assert steps.max() < 0.25 * total       # smoothly: no frame jumps by a large share


def test_render_is_deterministic_and_size_configurable():
    clip = sample_clips(0, 1, 4, 48)[0]
    frames_a, grid_a = render_clip(clip)
    frames_b, grid_b = render_clip(clip)
    assert frames_a.shape == (4, 48, 48, 3)
    assert np.array_equal(frames_a, frames_b) and np.array_equal(grid_a, grid_b)
    other = SampleClip(clip.name, clip.photo, clip.seed + 1, clip.split, 4, 48)
    assert not np.array_equal(render_clip(other)[1], grid_a)


def test_rerun_does_nothing(prepared, capsys):
    before = {p: p.stat().st_mtime_ns for p in (prepared / "png").rglob("*.png")}
    assert cli.main(["run", "prepare", "--dataset", "sample", "--out", str(prepared),
                     "--no-progress"]) == 0
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["processed_this_run"] == 0 and summary["done"] == 12
    assert {p: p.stat().st_mtime_ns for p in (prepared / "png").rglob("*.png")} == before
