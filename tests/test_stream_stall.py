"""`--stream` as a real process fed through its stdin by a producer that stops sending but
keeps the pipe open: the stall timeout, SIGTERM and SIGINT each end the run with the frames
received so far in a valid file (issue 10)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.media import ffmpeg_exe, probe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip_bytes(shared_data, tmp_path_factory) -> bytes:
    """20 frames of a real talking-face clip as MPEG-TS, without B-frames (so the decoder
    holds no frame back waiting for later ones)."""
    out = tmp_path_factory.mktemp("clips") / "d12.ts"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i",
                    str(shared_data / "faces/liveportrait/d12.mp4"), "-frames:v", "20", "-an",
                    "-c:v", "libx264", "-bf", "0", "-f", "mpegts", str(out)], check=True)
    return out.read_bytes()


class StreamProcess:
    """`pipeline run animate --stream --driving -` in a subprocess; stderr collected by a thread."""

    def __init__(self, checkpoint: Path, source: Path, out: Path, stall_timeout: float):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stages.cli", "run", "animate", "--config", "tiny",
             "--checkpoint", str(checkpoint), "--source", str(source), "--driving", "-",
             "--out", str(out), "--stream", "--no-drop", "--stream-fps", "25", "--device", "cpu",
             "--stall-timeout", str(stall_timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env)
        self.stderr: list[str] = []
        self.listening = threading.Event()
        self.writing = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        for line in self.proc.stderr:
            text = line.decode(errors="replace")
            self.stderr.append(text)
            if "INFO fomm.stream: stream: " in text:  # logged once the model is warm
                self.listening.set()
            if "stream: first frame written" in text:
                self.writing.set()

    def send_then_stall(self, data: bytes) -> float:
        """Write `data` and keep the pipe open; returns when it was sent."""
        assert self.listening.wait(timeout=180), "".join(self.stderr)
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        return time.monotonic()

    def finish(self, timeout: float) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.stdin.close()
        self._thread.join(timeout=10)
        return code, self.proc.stdout.read().decode()


def frames_written(summary: str) -> int:
    return int(re.search(r"stream: (\d+) frames written", summary).group(1))


def test_stalled_producer_ends_within_the_timeout(checkpoint, clip_bytes, shared_data, tmp_path):
    out = tmp_path / "stalled.mp4"
    run = StreamProcess(checkpoint, shared_data / "faces/sadtalker/happy.png", out, stall_timeout=3)
    sent = run.send_then_stall(clip_bytes)
    code, summary = run.finish(timeout=60)  # the producer never closes its end
    ended = time.monotonic() - sent
    assert code == 0, "".join(run.stderr)
    assert "ended by stall" in summary
    # 3 s of silence after the last frame, plus decoding, animating and finishing the file
    assert 3 <= ended <= 30, ended
    # the demuxer keeps the last packets until the next one starts: most frames come through
    assert frames_written(summary) >= 10 and probe(out).num_frames == frames_written(summary)


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_finishes_the_file_written_so_far(checkpoint, clip_bytes, shared_data, tmp_path, signum):
    out = tmp_path / "signalled.mp4"
    run = StreamProcess(checkpoint, shared_data / "faces/sadtalker/happy.png", out, stall_timeout=600)
    run.send_then_stall(clip_bytes)
    assert run.writing.wait(timeout=120), "".join(run.stderr)
    time.sleep(1)  # the producer stays silent
    run.proc.send_signal(signum)
    code, summary = run.finish(timeout=60)
    assert code == 0, "".join(run.stderr)
    assert f"ended by {signal.Signals(signum).name}" in summary
    assert frames_written(summary) >= 1 and probe(out).num_frames == frames_written(summary)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind
