"""Bad inputs to `pipeline run animate`: one clear line (exit 2) and no output file left
behind, neither the output nor a temporary beside it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from fomm.animation import animate
from fomm.animation import AnimateOptions, Animator, load_animation_model
from fomm.config import load_config
from stages import cli


@pytest.fixture
def out_dir(tmp_path):
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def run(checkpoint, source, driving, out, *extra) -> int:
    return cli.main(["run", "animate", "--config", "tiny", "--checkpoint", str(checkpoint),
                     "--source", str(source), "--driving", str(driving), "--out", str(out),
                     "--device", "cpu", "--max-frames", "4", *extra])


def assert_fails_cleanly(capsys, code: int, out_dir: Path, *words: str) -> str:
    message = capsys.readouterr().err.strip()
    assert code == 2, message
    assert message.startswith("error: ") and "\n" not in message
    for word in words:
        assert word in message, message
    assert list(out_dir.iterdir()) == []  # no output, no temporary
    return message


def zero_frame_video(path: Path) -> Path:
    """An AVI with a video stream (64x64 mpeg4) and no frames."""
    import av
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


def test_source_that_is_not_an_image(checkpoint, shared_data, out_dir, capsys):
    driving = shared_data / "faces/fomm-demo/08.mp4"
    code = run(checkpoint, driving, driving, out_dir / "x.mp4")  # a video given as the source
    assert_fails_cleanly(capsys, code, out_dir, "08.mp4", "not a readable image")


def test_source_that_does_not_exist(checkpoint, shared_data, out_dir, capsys):
    code = run(checkpoint, out_dir.parent / "nope.png", shared_data / "faces/fomm-demo/08.mp4",
               out_dir / "x.mp4")
    assert_fails_cleanly(capsys, code, out_dir, "nope.png", "does not exist")


def test_video_with_zero_frames(checkpoint, shared_data, out_dir, tmp_path, capsys):
    empty = zero_frame_video(tmp_path / "empty.avi")
    code = run(checkpoint, shared_data / "faces/sadtalker/happy.png", empty, out_dir / "x.mp4")
    assert_fails_cleanly(capsys, code, out_dir, "empty.avi", "zero frames")


def test_driving_that_is_not_a_video(checkpoint, shared_data, out_dir, capsys):
    image = shared_data / "faces/sadtalker/happy.png"
    code = run(checkpoint, image, shared_data / "manifests/keypoints-gt/vox_test_gt.pkl", out_dir / "x.mp4")
    assert_fails_cleanly(capsys, code, out_dir, "vox_test_gt.pkl")


def test_no_face_with_crop_auto(checkpoint, shared_data, out_dir, tmp_path, capsys):
    from PIL import Image
    from skimage import data
    landscape = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(landscape)
    code = run(checkpoint, landscape, shared_data / "faces/fomm-demo/08.mp4", out_dir / "x.mp4",
               "--crop", "auto")
    assert_fails_cleanly(capsys, code, out_dir, "no face found in the source image", "--crop")


def test_no_face_in_driving_with_crop_auto(checkpoint, shared_data, out_dir, tmp_path, capsys):
    from skimage import data

    from core.media import write_video
    scenery = write_video(tmp_path / "scenery.mp4", [data.coffee()] * 5, fps=25)
    code = run(checkpoint, shared_data / "faces/sadtalker/happy.png", scenery, out_dir / "x.mp4",
               "--crop", "auto")
    assert_fails_cleanly(capsys, code, out_dir, "no face found", "driving video")


def test_checkpoint_that_does_not_match_the_config(checkpoint, shared_data, out_dir, capsys):
    code = run(checkpoint, shared_data / "faces/sadtalker/happy.png", shared_data / "faces/fomm-demo/08.mp4",
               out_dir / "x.mp4", "--set", "model_params.common_params.num_kp=7")
    assert_fails_cleanly(capsys, code, out_dir, "does not match", "shape")


def test_checkpoint_of_another_family(checkpoint, shared_data, out_dir, capsys):
    code = cli.main(["run", "animate", "--config", "x2face-tiny", "--checkpoint", str(checkpoint),
                     "--source", str(shared_data / "faces/sadtalker/happy.png"),
                     "--driving", str(shared_data / "faces/fomm-demo/08.mp4"),
                     "--out", str(out_dir / "x.mp4"), "--device", "cpu"])
    assert_fails_cleanly(capsys, code, out_dir, "checkpoint")


def test_checkpoint_that_is_not_a_checkpoint(shared_data, out_dir, capsys):
    code = run(shared_data / "faces/sadtalker/happy.png", shared_data / "faces/sadtalker/happy.png",
               shared_data / "faces/fomm-demo/08.mp4", out_dir / "x.mp4")
    assert_fails_cleanly(capsys, code, out_dir, "happy.png")


@pytest.mark.parametrize("extra, words", [
    (("--device", "cuda"), ("cuda", "--device cpu")),
    (("--precision", "fp16"), ("fp16",)),
    (("--batch-size", "0"), ("--batch-size 0",)),
])
def test_bad_options(checkpoint, shared_data, out_dir, capsys, extra, words):
    if extra[:2] == ("--device", "cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    code = run(checkpoint, shared_data / "faces/sadtalker/happy.png", shared_data / "faces/fomm-demo/08.mp4",
               out_dir / "x.mp4", *extra)
    assert_fails_cleanly(capsys, code, out_dir, *words)


def test_bad_output_extension(checkpoint, shared_data, out_dir, capsys):
    code = run(checkpoint, shared_data / "faces/sadtalker/happy.png", shared_data / "faces/fomm-demo/08.mp4",
               out_dir / "x.avi")
    assert_fails_cleanly(capsys, code, out_dir, "x.avi", ".mp4 or .gif")


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_failure_half_way_leaves_nothing(checkpoint, shared_data, out_dir, monkeypatch, suffix):
    """A crash after frames were written (here the model, on the second batch) aborts the
    writer and the audio mux: no output and no temporary files."""
    config = load_config("tiny")
    model = load_animation_model(config, checkpoint, torch.device("cpu"))
    calls = {"n": 0}
    original = Animator.__call__

    def failing(self, driving, valid=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure")
        return original(self, driving, valid)

    monkeypatch.setattr(Animator, "__call__", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        animate(model, config, shared_data / "faces/sadtalker/happy.png",
                shared_data / "faces/sadtalker/WDA_AlexandriaOcasioCortez_000.mp4",  # has audio
                out_dir / f"x{suffix}", AnimateOptions(batch_size=2, max_frames=6))
    assert calls["n"] == 2
    assert list(out_dir.iterdir()) == []


def test_existing_output_survives_a_failed_run(checkpoint, shared_data, out_dir, capsys):
    out = out_dir / "keep.mp4"
    out.write_bytes(b"an earlier result")
    code = run(checkpoint, shared_data / "faces/fomm-demo/08.mp4", shared_data / "faces/fomm-demo/08.mp4", out)
    assert code == 2 and out.read_bytes() == b"an earlier result"
    assert [p.name for p in out_dir.iterdir()] == ["keep.mp4"]


def test_library_raises_user_error(shared_data, checkpoint, tmp_path):
    config = load_config("tiny")
    model = load_animation_model(config, checkpoint, torch.device("cpu"))
    with pytest.raises(UserError, match="zero frames"):
        animate(model, config, shared_data / "faces/sadtalker/happy.png",
                zero_frame_video(tmp_path / "empty.avi"), tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()
    assert np.all([not p.name.startswith(".x.") for p in tmp_path.iterdir()])


def test_avd_mode_on_a_family_without_an_avd_network(checkpoint, shared_data, out_dir, capsys):
    """--mode avd asks for MRAA's / TPSMM's AVD network: FOMM has none, said in one line."""
    driving = shared_data / "faces/fomm-demo/08.mp4"
    code = run(checkpoint, shared_data / "faces/fomm-demo/01.png", driving, out_dir / "x.mp4", "--mode", "avd")
    assert_fails_cleanly(capsys, code, out_dir, "--mode avd", "fomm has no AVD network")


def test_mode_names_are_the_absolute_and_relative_switches():
    import argparse

    from stages.animate import add_arguments, options_from_args
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = load_config("tiny")
    base = ["--source", "s.png", "--driving", "d.mp4", "--out", "o.mp4"]
    standard = options_from_args(parser.parse_args(base + ["--mode", "standard"]), config)
    absolute = options_from_args(parser.parse_args(base + ["--absolute"]), config)
    assert standard == absolute and not standard.relative and not standard.avd
    assert options_from_args(parser.parse_args(base + ["--mode", "relative"]), config).relative
    assert options_from_args(parser.parse_args(base + ["--mode", "avd"]), config).avd
    with pytest.raises(SystemExit):  # one way to say it: --mode and --absolute exclude each other
        parser.parse_args(base + ["--mode", "avd", "--absolute"])


def test_options_resolve_the_request_before_any_work(checkpoint, shared_data, tmp_path):
    """stages.animate.options: one typed request (a Config, Paths, a Precision), and a bad
    value refused with one line before anything is written."""
    from core.devices import Precision
    from fomm.config import Config
    from stages import animate as stage
    parser = cli.build_parser("animate")
    base = ["run", "animate", "--config", "tiny", "--checkpoint", str(checkpoint), "--source",
            str(shared_data / "faces/sadtalker/happy.png"), "--driving", str(shared_data / "faces/fomm-demo/08.mp4"),
            "--device", "cpu"]
    request = stage.options(parser.parse_args(base + ["--out", str(tmp_path / "o.mp4"), "--precision", "fp32"]))
    assert isinstance(request.config, Config) and request.checkpoint == checkpoint
    assert request.source == shared_data / "faces/sadtalker/happy.png" and request.out == tmp_path / "o.mp4"
    chosen = request.options.precision
    assert isinstance(chosen, Precision) and (chosen.name, chosen.device_type) == ("fp32", "cpu")
    assert request.live is None and request.onnx_dir is None
    with pytest.raises(UserError, match="--precision 'fp64'"):
        stage.options(parser.parse_args(base + ["--out", str(tmp_path / "o.mp4"), "--precision", "fp64"]))
    with pytest.raises(UserError, match="--batch-size 0"):
        stage.options(parser.parse_args(base + ["--out", str(tmp_path / "o.mp4"), "--batch-size", "0"]))
    with pytest.raises(UserError, match="--out .*expected a .mp4 or .gif"):
        stage.options(parser.parse_args(base + ["--out", str(tmp_path / "o.avi")]))
    assert list(tmp_path.iterdir()) == []
