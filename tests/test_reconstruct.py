"""`pipeline run reconstruct`: PNGs, an mp4 per clip, and an l1.csv that the PNGs confirm."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import write_sample

from core.config import config_to_dict
from core.media import probe
from fomm.checkpoint import save_checkpoint
from fomm.config import load_config
from fomm.data import ReconstructionClips, open_clips
from fomm.registry import build_model
from stages.cli import main as cli_main


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
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".lock", ".motion-transfer.json",
                                                                               ".rows"]  # no part left


def test_reconstruct_rejects_missing_checkpoint_and_data(test_root, checkpoint, tmp_path):
    assert cli_main(["run", "reconstruct", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(test_root),
                     "--out", str(tmp_path / "o")]) == 2
    assert cli_main(["run", "reconstruct", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "empty"),
                     "--out", str(tmp_path / "o")]) == 2
    # a checkpoint built for another config names the mismatching tensor
    assert cli_main(["run", "reconstruct", "--config", "tiny", "--checkpoint", str(checkpoint), "--data",
                     str(test_root), "--out", str(tmp_path / "o"), "model_params.common_params.num_kp=3"]) == 2


@pytest.fixture
def sample_root(tmp_path) -> Path:
    """Three test clips of the built-in sample dataset (8 frames, 64 px)."""
    return write_sample(tmp_path / "sample", num_train=0, num_test=3)


# `reconstruct` in a child process that SIGKILLs itself while writing the 4th frame of the
# second clip: its staged folder, its temporary mp4 and its ffmpeg are left behind.
KILLED_RECONSTRUCT = textwrap.dedent("""
    import os, signal, sys
    import torch
    from fomm import reconstruction
    from stages.cli import main
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # as tests/conftest.py: the same arithmetic
    save, calls = reconstruction.save_frame, []

    def save_then_die(path, frame):
        calls.append(path)
        if len(calls) == 8 + 4:
            os.kill(os.getpid(), signal.SIGKILL)
        save(path, frame)

    reconstruction.save_frame = save_then_die
    sys.exit(main(sys.argv[1:]))
""")


def test_a_killed_reconstruct_rerun_does_the_missing_clips_and_leaves_no_part(sample_root, checkpoint, tmp_path):
    argv = ["run", "reconstruct", "--checkpoint", str(checkpoint), "--data", str(sample_root), "--num-videos", "3",
            "--batch-size", "3", "--no-provenance"]
    assert cli_main([*argv, "--out", str(tmp_path / "unbroken")]) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.run([sys.executable, "-c", KILLED_RECONSTRUCT, *argv, "--out", str(out)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    first, second, third = sorted(p.name.removesuffix(".mp4") for p in (sample_root / "png" / "test").iterdir())
    left = sorted(p.name for p in out.iterdir())
    assert f".{second}.part" in left and any(n.startswith(f".{second}.") and n.endswith(".part.mp4") for n in left)
    kept = {p: p.stat().st_mtime_ns for p in [out / f"{first}.mp4", *(out / first).iterdir()]}

    assert cli_main([*argv, "--out", str(out)]) == 0
    assert (out / "l1.csv").read_text() == (tmp_path / "unbroken" / "l1.csv").read_text()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the finished clip was not redone
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".lock", ".motion-transfer.json",
                                                                               ".rows"]
    for clip in (first, second, third):
        assert len(list((out / clip).glob("*.png"))) == 8 and probe(out / f"{clip}.mp4").num_frames == 8

    # another model into the same folder redoes every clip: a row is only reused for its own weights
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    config = load_config("tiny")
    save_checkpoint(other, {"config": config_to_dict(config), **build_model(config).checkpoint_state()})
    assert cli_main(["run", "reconstruct", "--checkpoint", str(other), *argv[4:], "--out", str(out)]) == 0
    assert (out / "l1.csv").read_text() != (tmp_path / "unbroken" / "l1.csv").read_text()
    assert all(p.stat().st_mtime_ns != stamp for p, stamp in kept.items())


def test_options_resolve_the_run_and_refuse_a_bad_value_before_writing(test_root, checkpoint, tmp_path):
    """stages.reconstruct.options: the checkpoint's own config (or --config's), Paths, a
    resolved core.devices.Precision, checked counts; a bad value is one UserError and nothing
    appears under --out."""
    from core.devices import Precision
    from core.errors import UserError
    from fomm.config import Config
    from fomm.reconstruction import ReconstructOptions
    from stages import cli
    from stages import reconstruct as stage
    out = tmp_path / "rec"

    def parse(*extra):
        return cli.build_parser("reconstruct").parse_args(["run", "reconstruct", "--checkpoint", str(checkpoint),
                                                           "--data", str(test_root), "--out", str(out), *extra])

    opts = stage.options(parse("--batch-size", "3", "--num-videos", "1", "--no-provenance",
                               "dataset_params.frame_shape=[32,32,3]"))
    assert isinstance(opts, ReconstructOptions) and isinstance(opts.config, Config)
    assert tuple(opts.config.dataset_params.frame_shape) == (32, 32, 3)  # the checkpoint's config, overridden
    assert opts.config.model_params == load_config("tiny").model_params
    assert isinstance(opts.precision, Precision) and opts.precision.name == "fp32"
    assert opts.precision.device_type == opts.device
    assert (opts.checkpoint, opts.data, opts.out) == (checkpoint, test_root, out)
    assert all(isinstance(p, Path) for p in (opts.checkpoint, opts.data, opts.out))
    assert (opts.split, opts.batch_size, opts.num_videos, opts.provenance, opts.ray_address) == ("test", 3, 1,
                                                                                                  False, None)
    assert opts.workers >= 1 and opts.config_source is None
    assert stage.options(parse("--config", "tiny")).config == load_config("tiny")
    for bad, message in ((["--precision", "int8"], "--precision int8 is animate's path"),
                         (["--precision", "fp16"], "--precision 'fp16': expected one of"),
                         (["--batch-size", "0"], "--batch-size 0: expected an integer >= 1"),
                         (["--num-videos", "0"], "--num-videos must be a positive number of clips, got 0"),
                         (["--workers", "-1"], "--workers must be a positive number, got -1")):
        with pytest.raises(UserError, match=re.escape(message)):
            stage.options(parse(*bad))
        assert not out.exists()
