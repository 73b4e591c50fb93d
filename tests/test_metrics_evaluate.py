"""`pipeline run evaluate`: another method's output (here a CRF 35 re-encode of a real clip)
scored against the real frames, as folders of frames, videos, or folders of clips."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.errors import UserError
from core.media import VideoWriter, read_frames
from metrics import evaluate
from stages import evaluate as evaluate_stage
from stages.cli import main as cli

FRAMES = 12


@pytest.fixture(scope="module")
def clips(shared_data, tmp_path_factory):
    """real/<name>/frameN.png (lossless, natural order without padding) and gen/<name>.mp4
    (the same frames through x264 at CRF 35) for two real face clips."""
    root = tmp_path_factory.mktemp("evaluate")
    for name in ("04", "08"):
        frames = read_frames(shared_data / "faces" / "fomm-demo" / f"{name}.mp4", 0, FRAMES)
        (root / "real" / name).mkdir(parents=True)
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(root / "real" / name / f"frame{index}.png")
        (root / "gen").mkdir(exist_ok=True)
        with VideoWriter(root / "gen" / f"{name}.mp4", 30, crf=35) as writer:
            writer.write_all(frames)
    return root


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """As on a machine without face-alignment and OpenFace weights: the dlib substitutes."""
    monkeypatch.setitem(sys.modules, "face_alignment", None)
    monkeypatch.setenv("OPENFACE_WEIGHTS", str(tmp_path / "absent.pth"))
    monkeypatch.setattr("metrics.backends.openface.WEIGHTS_DIR", tmp_path)


def test_reencoded_clip_scores_small_nonzero_l1_and_akd(clips, tmp_path, offline, capsys):
    out = tmp_path / "one"
    code = cli(["run", "evaluate", "--real", str(clips / "real" / "04"), "--generated",
                str(clips / "gen" / "04.mp4"), "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "paper" and summary["clips"] == ["04"]
    assert summary["backends"]["pose"] == {"name": "dlib68", "scheme": "dlib-68", "paper_equivalent": False}
    assert summary["backends"]["identity"]["name"] == "dlib-face"
    assert not summary["comparable_with_paper"] and "not comparable" in capsys.readouterr().out
    assert 0.002 < summary["l1"] < 0.05  # CRF 35 blurs and blocks, but it is the same picture
    assert 0.05 < summary["akd"] < 3.0  # landmarks move by a pixel or so, not by a face
    assert summary["aed"] is not None and summary["aed"] > 0
    assert summary["mkr"] is None  # faces: pose-evaluation has no MKR
    assert summary["frames"]["l1"] == {"frames": FRAMES, "scored": FRAMES, "skipped": {}}
    akd = summary["frames"]["akd"]
    assert akd["scored"] + sum(akd["skipped"].values()) == FRAMES
    per_frame = pd.read_parquet(out / "per_frame.parquet")
    assert len(per_frame) == FRAMES and list(per_frame["frame"]) == list(range(FRAMES))
    assert per_frame["akd"].mean() == pytest.approx(summary["akd"])


def test_folders_of_clips_match_by_name_and_pool_all_frames(clips, tmp_path, offline):
    out = tmp_path / "both"
    summary = _run(_args(clips / "real", clips / "gen", out, "--identity", "none",
                                       "--protocol", "project"))
    assert summary["clips"] == ["04", "08"] and summary["protocol"] == "project"
    assert summary["aed"] is None and summary["backends"]["identity"] is None
    per_frame = pd.read_parquet(out / "per_frame.parquet")
    assert len(per_frame) == 2 * FRAMES
    assert summary["l1"] == pytest.approx(per_frame["l1"].mean())  # over frames of all clips


def test_bad_inputs_are_named_and_nothing_is_written(clips, tmp_path, offline):
    out = tmp_path / "bad"
    with pytest.raises(UserError, match=r"--generated .*does not exist"):
        _run(_args(clips / "real" / "04", tmp_path / "missing.mp4", out))
    short = tmp_path / "short.mp4"
    with VideoWriter(short, 30) as writer:
        writer.write_all(read_frames(clips / "gen" / "04.mp4", 0, FRAMES - 2))
    with pytest.raises(UserError, match=rf"{FRAMES} real and {FRAMES - 2} generated frames"):
        _run(_args(clips / "real" / "04", short, out, "--pose", "none", "--identity", "none"))
    assert not out.exists()


def test_options_pair_the_clips_before_any_work(clips, tmp_path):
    """`options(args)`: Paths, the clips paired by name; a side that is not there is named
    before anything is written."""
    chosen = evaluate_stage.options(_args(clips / "real", clips / "gen", tmp_path / "o", "--kind", "bodies"))
    assert isinstance(chosen, evaluate.EvaluateOptions) and isinstance(chosen.out, Path)
    assert (chosen.kind, chosen.protocol, chosen.pose, chosen.identity) == ("bodies", "paper", None, None)
    assert chosen.pairs == (("04", clips / "real" / "04", clips / "gen" / "04.mp4"),
                            ("08", clips / "real" / "08", clips / "gen" / "08.mp4"))
    with pytest.raises(UserError, match=r"--real .*absent.* does not exist"):
        evaluate_stage.options(_args(tmp_path / "absent", clips / "gen", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def _run(args) -> dict:
    return evaluate_stage.run(evaluate_stage.options(args))


def _args(real, generated, out, *extra):
    import argparse
    parser = argparse.ArgumentParser()
    evaluate_stage.add_arguments(parser)
    return parser.parse_args(["--real", str(real), "--generated", str(generated), "--out", str(out), *extra])


def test_frame_folders_read_in_natural_order(clips, shared_data):
    """frame10.png comes after frame9.png, not after frame1.png."""
    expected = read_frames(shared_data / "faces" / "fomm-demo" / "04.mp4", 0, FRAMES)
    np.testing.assert_array_equal(evaluate.read_clip(clips / "real" / "04"), expected)
