"""`pipeline run reconstruct`: PNGs, an mp4 per clip, and an l1.csv that the PNGs confirm."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import config_to_dict
from core.media import probe
from fomm.checkpoint import save_checkpoint
from fomm.config import load_config
from fomm.data import ReconstructionClips, open_clips
from fomm.registry import build_model
from pipeline.cli import main as cli_main


@pytest.fixture
def test_root(shared_data, tmp_path) -> Path:
    """A test split with a PNG-folder clip (48 frames) and an mp4 clip (150 frames)."""
    root = tmp_path / "data"
    (root / "test").mkdir(parents=True)
    (root / "test" / "taichi2").symlink_to(shared_data / "bodies" / "dwnet-taichi" / "2")
    (root / "test" / "vox08.mp4").symlink_to(shared_data / "faces" / "fomm-demo" / "08.mp4")
    return root


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    config = load_config("tiny")
    torch.manual_seed(0)
    model = build_model(config)
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"config": config_to_dict(config), **model.checkpoint_state()})
    return path


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGB"))


def test_reconstruct_writes_pngs_videos_and_l1_from_them(test_root, checkpoint, tmp_path):
    out = tmp_path / "rec"
    assert cli_main(["run", "reconstruct", "--checkpoint", str(checkpoint), "--data", str(test_root),
                     "--out", str(out), "--batch-size", "32"]) == 0
    with open(out / "l1.csv", newline="") as handle:
        rows = {r["clip"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"vox08", "taichi2"}

    truth = ReconstructionClips(open_clips(test_root, "test"), (64, 64, 3), batch_size=200)
    for clip, batches in truth:
        driving = torch.cat(list(batches)).permute(0, 2, 3, 1).numpy()  # (T, 64, 64, 3) in [0, 1]
        pngs = sorted((out / clip).glob("*.png"))
        assert len(pngs) == len(driving) == int(rows[clip]["num_frames"])
        assert pngs[0].name == "0000000.png"
        predicted = np.stack([_read_png(p) for p in pngs]).astype(np.float64) / 255.0
        direct = np.abs(predicted - driving).mean()
        # the CSV holds the float prediction's L1; the PNGs round it to 1/255
        assert abs(float(rows[clip]["l1"]) - direct) <= 0.5 / 255 + 1e-6
        info = probe(out / f"{clip}.mp4")
        assert info.num_frames == len(driving) and (info.width, info.height) == (64, 64)
    assert probe(out / "vox08.mp4").fps == pytest.approx(35.0, rel=1e-3)  # the source clip's rate


def test_first_frame_is_the_source_and_reruns_skip_done_clips(test_root, checkpoint, tmp_path):
    """Frame t of the output is model.reconstruct(frame 0, frame t) (absolute motion),
    whatever batch it fell in; a rerun rewrites nothing."""
    from fomm.checkpoint import load_model
    out = tmp_path / "rec"
    args = ["run", "reconstruct", "--checkpoint", str(checkpoint), "--data", str(test_root),
            "--out", str(out), "--num-videos", "1", "--batch-size", "7"]
    assert cli_main(args) == 0
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in ("l1.csv", ".lock")}
    assert len([p for p in written if p.suffix == ".png"]) == 48  # taichi2 only (name order)

    frames = torch.cat(list(ReconstructionClips(open_clips(test_root, "test"), (64, 64, 3), 48).frames("taichi2")))
    model = load_model(None, checkpoint)
    picks = [0, 20, 47]
    with torch.no_grad():
        expected = model.reconstruct(frames[:1].expand(3, -1, -1, -1), frames[picks])["prediction"]
    for index, prediction in zip(picks, expected):
        png = _read_png(out / "taichi2" / f"{index:07d}.png").astype(np.int16)
        direct = (prediction.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.int16)
        assert np.abs(png - direct).max() <= 1

    assert cli_main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".lock", ".motion-transfer.json"]


def test_reconstruct_rejects_missing_checkpoint_and_data(test_root, checkpoint, tmp_path):
    assert cli_main(["run", "reconstruct", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(test_root),
                     "--out", str(tmp_path / "o")]) == 2
    assert cli_main(["run", "reconstruct", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "empty"),
                     "--out", str(tmp_path / "o")]) == 2
    # a checkpoint built for another config names the mismatching tensor
    assert cli_main(["run", "reconstruct", "--config", "tiny", "--checkpoint", str(checkpoint), "--data",
                     str(test_root), "--out", str(tmp_path / "o"), "model_params.common_params.num_kp=3"]) == 2
