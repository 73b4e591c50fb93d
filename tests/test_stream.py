"""`--stream`: live animation from a paced file, a growing pipe and stdin, with the tiny
FOMM; latency is reported per frame and stays bounded when the model is too slow."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from core.media import (ffmpeg_exe, is_live_target, iter_frames, live_input_arguments, probe, read_frames,
                        realtime_input_arguments)
from fomm import stream
from fomm.animation import animate
from fomm.animation import AnimateOptions, Animator
from stages import cli


@pytest.fixture(scope="module")
def clip(shared_data, tmp_path_factory) -> Path:
    """0.8 s (20 frames at 25 fps) of a real talking-face clip, as MPEG-TS (streamable)."""
    out = tmp_path_factory.mktemp("clips") / "d12.ts"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i",
                    str(shared_data / "faces/liveportrait/d12.mp4"), "-frames:v", "20", "-an",
                    "-c:v", "libx264", "-f", "mpegts", str(out)], check=True)
    return out


def test_live_batch_shapes_are_few():
    assert stream.live_batch_sizes(1) == [1]
    assert stream.live_batch_sizes(4) == [1, 2, 4]
    assert stream.live_batch_sizes(6) == [1, 2, 4, 6]


def test_input_arguments_for_devices_urls_and_pipes(tmp_path):
    assert live_input_arguments("/dev/video0")[0][:2] == ["-f", "v4l2"]
    assert live_input_arguments("/dev/video0")[0][-2:] == ["-i", "/dev/video0"]
    args, _ = live_input_arguments("avfoundation:0")
    assert args[:2] == ["-f", "avfoundation"] and args[-2:] == ["-i", "0"]
    args, _ = live_input_arguments("dshow:video=Integrated Camera")
    assert args[-1] == "video=Integrated Camera"  # one argument, spaces and all: no shell
    assert live_input_arguments("rtsp://camera.local/live")[0][-1] == "rtsp://camera.local/live"
    assert live_input_arguments("-")[0][-2:] == ["-i", "pipe:0"] and live_input_arguments("-")[1]
    clip = tmp_path / "a.ts"
    clip.write_bytes(b"")
    assert live_input_arguments(str(clip), realtime=True)[0][:-2] == realtime_input_arguments()
    with pytest.raises(UserError, match="camera"):
        live_input_arguments(str(tmp_path / "missing.mp4"))


def assert_latency_bounded(report, margin: float = 0.5) -> None:
    """Every frame waited at most for the batch in the model when it arrived plus its own:
    the queue never holds more than one batch, so latency cannot pile up."""
    latencies, steps = np.array(report.latencies), np.array(report.steps)
    assert len(latencies) == report.frames_out and len(steps) >= 1
    assert latencies.max() <= 2 * steps.max() + margin, (latencies.max(), steps.max())


def test_stream_paced_file_reports_latency(model, config, clip, tmp_path, shared_data):
    out = tmp_path / "live.mp4"
    report = stream.run_stream(model, config, shared_data / "faces/sadtalker/happy.png", str(clip), out,
                               AnimateOptions(batch_size=4), realtime=True, queue_size=4)
    assert report.frames_in == 20
    assert report.frames_out + report.dropped == report.frames_in and report.frames_out >= 1
    assert len(report.latencies) == report.frames_out == probe(out).num_frames
    # Paced at 25 fps like a camera: 19 frame intervals take 0.76 s, less a few frames of
    # decoder look-ahead; unpaced, the 20 frames are read in about 0.2 s.
    assert report.seconds >= 0.6
    assert 0 < report.percentile(50) <= report.percentile(95)
    assert_latency_bounded(report)
    assert "p50" in report.summary() and "p95" in report.summary()


def test_stream_from_growing_pipe_keeps_every_frame(model, config, clip, tmp_path, shared_data):
    """A recorder writes into a named pipe at 25 fps while we read it; with --no-drop every
    frame that arrives is animated and written, in order."""
    fifo = tmp_path / "camera.ts"
    os.mkfifo(fifo)
    writer = subprocess.Popen([ffmpeg_exe(), "-y", "-loglevel", "error", *realtime_input_arguments(), "-i", str(clip),
                               "-c", "copy", "-f", "mpegts", str(fifo)])
    try:
        report = stream.run_stream(model, config, shared_data / "faces/sadtalker/happy.png", str(fifo),
                                   tmp_path / "pipe.mp4", AnimateOptions(batch_size=4), drop=False)
    finally:
        writer.wait(timeout=30)
    assert report.frames_in == report.frames_out == 20 and report.dropped == 0
    assert probe(tmp_path / "pipe.mp4").num_frames == 20
    assert report.seconds >= 0.6  # the frames came in as they were written (see above)


def test_stream_latency_stays_bounded_with_a_slow_model(model, config, clip, tmp_path, shared_data,
                                                        monkeypatch):
    """A model slower than the camera: old frames are dropped so latency does not grow."""
    original = Animator.__call__

    def slow(self, driving, *valid):
        time.sleep(0.12 * driving.shape[0])  # 8 frames/s against a 25 fps source
        return original(self, driving, *valid)

    monkeypatch.setattr(Animator, "__call__", slow)
    report = stream.run_stream(model, config, shared_data / "faces/sadtalker/happy.png", str(clip),
                               tmp_path / "slow.mp4", AnimateOptions(batch_size=1), realtime=True,
                               queue_size=1)
    assert report.dropped >= 5 and min(report.steps) >= 0.12
    assert_latency_bounded(report)


def test_stream_cli_from_stdin(checkpoint, clip, tmp_path, shared_data, monkeypatch, capsys):
    out = tmp_path / "stdin.gif"
    with open(clip, "rb") as handle:
        monkeypatch.setattr("sys.stdin", handle)
        code = cli.main(["run", "animate", "--config", "tiny", "--checkpoint", str(checkpoint),
                         "--source", str(shared_data / "faces/sadtalker/happy.png"), "--driving", "-",
                         "--out", str(out), "--stream", "--no-drop", "--stream-fps", "25",
                         "--device", "cpu", "--max-frames", "8"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "8 frames written of 8 received" in printed and "p95" in printed
    assert probe(out).num_frames == 8


def test_stream_to_a_file_gives_the_frames_file_mode_gives(model, config, shared_data, tmp_path):
    """The same driving video through `--stream` and through file mode: the same output
    frames (one Animator, the first frame as the initial one, one layout). The clip is
    stored as RGB (PNG frames) at the model's size, so both decoders hand over its pixels
    unchanged and any difference is the animation's."""
    driving = tmp_path / "d12-rgb.mkv"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(shared_data / "faces/liveportrait/d12.mp4"),
                    "-frames:v", "6", "-an", "-vf", "scale=64:64", "-c:v", "png", str(driving)], check=True)
    source = shared_data / "faces/sadtalker/happy.png"
    options = AnimateOptions(batch_size=1, layout="side-by-side", provenance=False)
    animate(model, config, source, driving, tmp_path / "file.mp4", options)
    report = stream.run_stream(model, config, source, str(driving), tmp_path / "live.mp4", options, drop=False)
    assert report.frames_out == 6
    from_file, live = read_frames(tmp_path / "file.mp4"), read_frames(tmp_path / "live.mp4")
    assert from_file.shape == (6, 64, 3 * 64, 3)
    np.testing.assert_array_equal(live, from_file)


def test_stream_unreadable_device_fails_cleanly(model, config, tmp_path, shared_data):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(UserError, match="no frames could be read"):
        stream.run_stream(model, config, shared_data / "faces/sadtalker/happy.png", "/dev/video99",
                          out_dir / "cam.mp4", AnimateOptions())
    assert list(out_dir.iterdir()) == []


def test_stream_rejects_best_frame(model, config, clip, tmp_path, shared_data):
    with pytest.raises(UserError, match="--find-best-frame"):
        stream.run_stream(model, config, shared_data / "faces/sadtalker/happy.png", str(clip),
                          tmp_path / "x.mp4", AnimateOptions(find_best_frame=True))
    assert not (tmp_path / "x.mp4").exists()


def test_stream_to_stdout_for_a_player(model, config, clip, tmp_path, shared_data):
    """--out - sends MPEG-TS as the frames come (here into a file standing in for `| ffplay -`)."""
    received = tmp_path / "received.ts"
    with open(received, "wb") as stdout:
        report = stream.run_stream(model, config, shared_data / "faces/sadtalker/happy.png", str(clip), "-",
                                   AnimateOptions(batch_size=4), drop=False, stdout=stdout)
    assert report.frames_out == 20
    info = probe(received)
    assert info.num_frames == 20 and (info.width, info.height) == (64, 64) and info.codec == "h264"
    assert is_live_target("udp://127.0.0.1:5000") and not is_live_target("out.mp4")


def test_stream_crop_auto_fixes_the_box_on_the_first_face(model, config, clip, tmp_path, shared_data):
    from core import faces
    report = stream.run_stream(model, config, shared_data / "faces/liveportrait/s2.jpg", str(clip),
                               tmp_path / "crop.mp4", AnimateOptions(crop="auto", batch_size=4, paste_back=False),
                               drop=False)
    assert report.frames_out == 20 and report.crop_box is not None
    box = report.crop_box  # in the 256x256 decoded frames: around the face, smaller than the frame
    first = next(iter_frames(clip))
    face = faces.largest_face(first) * 256 / first.shape[0]  # the clip is square: one scale
    centre = (face[:2] + face[2:]) / 2
    assert box.side < 256
    assert box.left < centre[0] < box.left + box.side and box.top < centre[1] < box.top + box.side


def test_stream_failure_half_way_leaves_nothing(model, config, clip, tmp_path, shared_data, monkeypatch):
    import threading
    calls = {"n": 0}
    original = Animator.__call__

    def failing(self, driving, valid=None):
        calls["n"] += 1
        if calls["n"] == 4:  # warm-up takes two calls (batch 1 and 2); fail on the second live batch
            raise RuntimeError("simulated failure")
        return original(self, driving, valid)

    monkeypatch.setattr(Animator, "__call__", failing)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(RuntimeError, match="simulated"):
        stream.run_stream(model, config, shared_data / "faces/sadtalker/happy.png", str(clip),
                          out_dir / "live.mp4", AnimateOptions(batch_size=2), drop=False, queue_size=2)
    assert list(out_dir.iterdir()) == []
    assert not any(t.name == "stream-reader" for t in threading.enumerate())
