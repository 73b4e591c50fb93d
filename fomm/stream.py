"""`--stream`: live animation from a camera, a pipe or a stream, with bounded latency.

ffmpeg (an argument list, never a shell string) decodes the driving input as it arrives
and writes raw RGB frames of a fixed size to a pipe; a reader thread timestamps each frame
on arrival and keeps at most `queue_size` of them waiting, dropping the oldest when the
model falls behind (live sources cannot wait, so latency stays bounded; `drop=False`
keeps every frame for pipes and files). The main loop takes whatever is waiting (up to the
batch size), animates it and writes it. The latency of a frame is the time from its arrival
to the moment its result is handed to the encoder; the run ends with per-frame latencies
and their p50/p95.

Inputs (`--driving`):
- `/dev/videoN` (v4l2), `v4l2:/dev/videoN`, `avfoundation:0` (macOS), `dshow:video=NAME`
  (Windows): `FORMAT:DEVICE` passes `-f FORMAT -i DEVICE` to ffmpeg;
- `-`: the process's stdin (e.g. `ffmpeg ... -f mpegts - | pipeline run animate --stream`);
- a URL (`rtsp://`, `udp://`, `http://`, ...), a named pipe (FIFO) that a recorder writes
  into, or a regular file (`--realtime` reads it at its native rate, like a camera).

Relative motion starts from the first frame that arrives (no look-ahead, so no best-frame
search); with `--crop auto` the crop box is fixed from the first frame that shows a face.

A run ends at the end of the input, after `stall_timeout` seconds without a new frame (a
producer that stopped sending but keeps its pipe open), or on SIGINT/SIGTERM; in each case
the frames written so far are finished into a valid file.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fomm import source_crop
from core.frames import to_tensor, to_uint8
from fomm.animate import AnimateOptions, Animator, batch_size, compose, model_device
from fomm.api import MotionTransferModel
from core.config import Config
from core.errors import UserError
from core.media import FfmpegPipe, realtime_input_arguments

logger = logging.getLogger(__name__)

DEVICE_FORMATS = ("v4l2", "avfoundation", "dshow", "x11grab", "gdigrab", "lavfi")
URL_SCHEMES = ("rtsp://", "rtmp://", "udp://", "tcp://", "http://", "https://", "srt://", "rtp://")
FACE_SEARCH_FRAMES = 50  # --crop auto gives up when this many first frames show no face
STALL_TIMEOUT = 10.0     # s without a new frame before a live run is ended (--stall-timeout)


@dataclass
class StreamReport:
    """What a live run did: frames in/out/dropped and each written frame's latency (s)."""
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)  # seconds per model call (one batch)
    crop_box: source_crop.CropBox | None = None          # --crop auto: in the decoded frames
    ended_by: str = "end of input"                       # or "stall", "SIGTERM", "SIGINT"

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def summary(self) -> str:
        return (f"stream: {self.frames_out} frames written of {self.frames_in} received "
                f"({self.dropped} dropped) in {self.seconds:.1f} s; latency p50 "
                f"{1000 * self.percentile(50):.0f} ms, p95 {1000 * self.percentile(95):.0f} ms, "
                f"max {1000 * max(self.latencies, default=float('nan')):.0f} ms; model "
                f"{1000 * float(np.median(self.steps)) if self.steps else float('nan'):.0f} ms a batch; "
                f"ended by {self.ended_by}")


def input_arguments(spec: str, realtime: bool = False) -> tuple[list[str], bool]:
    """ffmpeg input arguments for `spec`, and whether ffmpeg must read our stdin."""
    # nobuffer: hand frames on as soon as they are decoded. (`-flags low_delay` would be the
    # next step, but it makes the h264 decoder drop streams with B-frames.)
    low_delay = ["-fflags", "nobuffer"]
    # A pipe is probed on its first 32 KB / 0.2 s: ffmpeg's default (5 MB or 5 s of stream)
    # holds back every frame of a producer that has sent less and then paused.
    short_probe = ["-probesize", "32768", "-analyzeduration", "200000"]
    if spec == "-":  # nobuffer breaks probing a pipe (no frames come out): not here
        return short_probe + ["-i", "pipe:0"], True
    if spec.startswith("/dev/video"):
        return ["-f", "v4l2"] + low_delay + ["-i", spec], False
    head, sep, rest = spec.partition(":")
    if sep and head in DEVICE_FORMATS:
        return ["-f", head] + low_delay + ["-i", rest], False
    if spec.startswith(URL_SCHEMES):
        return low_delay + ["-i", spec], False
    path = Path(spec)
    if not path.exists():
        raise UserError(f"--driving {spec!r} for --stream: expected a camera (/dev/videoN, "
                        f"FORMAT:DEVICE with FORMAT in {list(DEVICE_FORMATS)}), '-', a URL, "
                        "a named pipe or a video file")
    mode = path.stat().st_mode
    pace = realtime_input_arguments() if realtime and stat.S_ISREG(mode) else []
    probe = short_probe if stat.S_ISFIFO(mode) else []
    return pace + probe + ["-i", str(path)], False


def decoder_command(spec: str, width: int, height: int, crop: str, realtime: bool = False
                    ) -> tuple[list[str], bool]:
    """ffmpeg reading `spec` and writing raw rgb24 frames of width x height to stdout.

    `none` squeezes the whole frame (as file mode does); `center` and `auto` keep the aspect
    and cut the centred square (auto then crops the face inside it).
    """
    from core.media import ffmpeg_exe
    inputs, needs_stdin = input_arguments(spec, realtime)
    if crop == "none":
        scale = f"scale={width}:{height}:flags=bicubic"
    else:
        scale = (f"scale={width}:{height}:force_original_aspect_ratio=increase:flags=bicubic,"
                 f"crop={width}:{height}")
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin"] if not needs_stdin \
        else [ffmpeg_exe(), "-hide_banner", "-loglevel", "error"]
    # passthrough: one raw frame per decoded frame (no duplicates filling timestamp gaps).
    return command + inputs + ["-an", "-vf", scale, "-fps_mode", "passthrough", "-pix_fmt", "rgb24",
                               "-f", "rawvideo", "pipe:1"], needs_stdin


class FrameReader(threading.Thread):
    """Reads fixed-size raw frames from ffmpeg's stdout into a bounded queue of
    (arrival time, frame); when the queue is full the oldest frame is dropped (or, with
    drop=False, the reader waits, which backs up the pipe)."""

    def __init__(self, stdout, shape: tuple[int, int, int], queue_size: int, drop: bool,
                 max_frames: int | None):
        super().__init__(daemon=True, name="stream-reader")
        self.stdout, self.shape, self.drop, self.max_frames = stdout, shape, drop, max_frames
        self.frames: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self.received = 0
        self.dropped = 0
        self.stop = threading.Event()

    def run(self) -> None:
        size = int(np.prod(self.shape))
        try:
            while not self.stop.is_set():
                if self.max_frames is not None and self.received >= self.max_frames:
                    break
                data = self._read_exactly(size)
                if data is None:
                    break
                item = (time.perf_counter(), np.frombuffer(data, np.uint8).reshape(self.shape))
                self.received += 1
                self._put(item)
        finally:
            self.frames.put(None)  # end of stream, never dropped (put blocks until room)

    def _read_exactly(self, size: int) -> bytes | None:
        chunks, remaining = [], size
        while remaining:
            chunk = self.stdout.read(remaining)
            if not chunk:
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _put(self, item) -> None:
        if not self.drop:
            self.frames.put(item)
            return
        while True:
            try:
                self.frames.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass


class Stalled(Exception):
    """No frame arrived within the stall timeout."""


def _take_waiting(reader: FrameReader, limit: int, timeout: float | None = None) -> tuple[list, bool]:
    """The next frame (waiting at most `timeout` s, else Stalled) plus whatever else is
    already waiting, up to `limit`."""
    try:
        first = reader.frames.get(timeout=timeout)
    except queue.Empty:
        raise Stalled from None
    if first is None:
        return [], True
    items, ended = [first], False
    while len(items) < limit:
        try:
            item = reader.frames.get_nowait()
        except queue.Empty:
            break
        if item is None:
            ended = True
            break
        items.append(item)
    return items, ended


OUTPUT_SCHEMES = ("udp://", "rtmp://", "srt://", "tcp://", "rtp://")


def is_live_target(out: str) -> bool:
    """'-' (stdout) or a network URL: results are sent as they are made, not kept in a file."""
    return out == "-" or str(out).startswith(OUTPUT_SCHEMES)


class LiveWriter(FfmpegPipe):
    """Encode frames as they come to stdout ('-', MPEG-TS) or a URL (FLV for rtmp://,
    MPEG-TS otherwise) with x264's zerolatency tuning, for a player to show:

        pipeline run animate --stream ... --out - | ffplay -fflags nobuffer -
    """

    def __init__(self, target: str, fps: float, stdout=None):
        self.target, self.fps, self.stdout = target, fps, stdout
        self._proc: subprocess.Popen | None = None
        self.frames_written = 0

    def _command(self, width: int, height: int) -> list[str]:
        from core.media import ffmpeg_exe
        container = "flv" if self.target.startswith("rtmp://") else "mpegts"
        return [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                "-s", f"{width}x{height}", "-r", f"{self.fps:.6f}", "-i", "pipe:0",
                "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "ultrafast",
                "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-f", container,
                "pipe:1" if self.target == "-" else self.target]

    def write(self, frame: np.ndarray) -> None:
        if self._proc is None:
            out = (self.stdout or sys.stdout.buffer) if self.target == "-" else subprocess.DEVNULL
            self._proc = subprocess.Popen(self._command(frame.shape[1], frame.shape[0]),
                                          stdin=subprocess.PIPE, stdout=out)
        self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        self._proc.stdin.flush()  # hand each frame on now: latency over throughput
        self.frames_written += 1

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            if self._proc.wait() != 0:
                raise RuntimeError(f"ffmpeg failed sending the stream to {self.target}")



def stream_fps(spec: str, fps: float | None) -> float:
    """The output rate: `fps`, else a regular file's own rate, else 25."""
    if fps is not None:
        if fps <= 0:
            raise UserError(f"--stream-fps {fps}: expected a positive number")
        return fps
    path = Path(spec)
    if path.is_file():
        from core.media import probe
        return probe(path).fps
    return 25.0


def run_stream(model: MotionTransferModel, config: Config, source_path: str | Path, driving: str,
               out_path: str | Path, options: AnimateOptions = AnimateOptions(),
               fps: float | None = None, queue_size: int = 2, drop: bool = True,
               realtime: bool = False, stdin=None, stdout=None,
               stall_timeout: float = STALL_TIMEOUT) -> StreamReport:
    """Animate `source_path` live from `driving` into `out_path`: an mp4/gif file (complete on
    return, including after Ctrl-C, SIGTERM or a stall of `stall_timeout` s), or '-' / a URL,
    encoded as the frames come (see LiveWriter). `options.max_frames` stops after that many
    received frames; `stdin` and `stdout` replace the process's for '-' (tests)."""
    from core import provenance
    from core.media import VideoWriter
    from fomm.animate import check_options, check_out_is_not_an_input
    live_target = is_live_target(str(out_path))
    out_path = str(out_path) if live_target else Path(out_path)
    check_options(options, out_path, live_target)
    if not live_target and driving != "-":
        check_out_is_not_an_input(out_path, source=source_path, driving=driving)
    if not stall_timeout > 0:
        raise UserError(f"--stall-timeout {stall_timeout}: expected a positive number of seconds")
    if options.find_best_frame:
        raise UserError("--find-best-frame needs the whole driving video; it cannot be used with --stream")
    device = model_device(model)
    height, width = config.dataset_params.frame_shape[:2]
    source_image = source_crop.load_source(source_path)
    source = source_crop.prepare(source_image, source_crop.source_box(
        source_image, options.crop, options.crop_increase), (height, width))
    analysis = (height, width) if options.crop != "auto" else (max(2 * height, 256), max(2 * width, 256))
    command, needs_stdin = decoder_command(driving, analysis[1], analysis[0], options.crop, realtime)
    output_fps = stream_fps(driving, fps)
    warm_up(model, source, options, device)
    # A live target (MPEG-TS/FLV) gets the watermark only: those containers hold no manifest.
    generation = provenance.generation_or_warn(options.provenance, config, driving, out_path)
    logger.info("stream: %s", " ".join(command))
    proc = subprocess.Popen(command, stdin=(stdin or sys.stdin) if needs_stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = FrameReader(proc.stdout, (*analysis, 3), queue_size, drop, options.max_frames)
    report = StreamReport()
    start = time.perf_counter()
    reader.start()
    try:
        writer = LiveWriter(out_path, output_fps, stdout) if live_target else VideoWriter(out_path, output_fps)
        with writer, _signals_end_the_run():
            _animate_live(model, source, reader, provenance.marking(writer, generation), options, config,
                          device, report, stall_timeout)
            if report.frames_out == 0 and report.ended_by == "stall":
                raise UserError(f"--driving {driving!r}: no frame arrived within {stall_timeout:g} s "
                                "(--stall-timeout)")
            if report.frames_out == 0 and report.ended_by == "end of input":
                proc.wait(timeout=10)
                error = proc.stderr.read().decode(errors="replace").strip()
                raise UserError(f"--driving {driving!r}: no frames could be read"
                                + (f" (ffmpeg: {error.splitlines()[-1]})" if error else ""))
    finally:
        reader.stop.set()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        while reader.is_alive():  # empty the queue so the reader's final put cannot block
            with contextlib.suppress(queue.Empty):
                reader.frames.get(timeout=0.05)
    if not live_target:
        provenance.finalize(out_path, generation)
    report.frames_in, report.dropped = reader.received, reader.dropped
    report.seconds = time.perf_counter() - start
    logger.info(report.summary())
    return report


class _Signalled(KeyboardInterrupt):
    """SIGTERM turned into an interrupt, so the run finishes its file as on Ctrl-C."""


@contextlib.contextmanager
def _signals_end_the_run():
    """While live: SIGTERM (and SIGINT, as always) interrupt the loop, which then finishes the
    output. A second signal during the finishing gets the previous handler. Main thread only
    (Python delivers signals there); elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        signal.signal(signal.SIGTERM, previous)
        raise _Signalled("SIGTERM")

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def live_batch_sizes(batch_size: int) -> list[int]:
    """Batch shapes the live loop runs: powers of two up to `batch_size`, and `batch_size`.

    Whatever is waiting is padded up to the next of these, so only these few shapes are
    ever run and all of them are warmed up (a new shape's first call can cost several
    times a warm one on CPU: kernel selection per shape)."""
    sizes = {1, batch_size}
    size = 2
    while size < batch_size:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def warm_up(model: MotionTransferModel, source: np.ndarray, options: AnimateOptions, device) -> None:
    """One pass at each live batch shape before the camera starts, so the first live
    frames do not pay for lazy kernel selection and allocation."""
    image = to_tensor(source, device)
    animator = Animator(model, image, image, options, device)
    for batch in live_batch_sizes(batch_size(options, device)):
        animator(image.expand(batch, -1, -1, -1))
    if device.type == "cuda":
        import torch
        torch.cuda.synchronize(device)


def _animate_live(model, source, reader, writer, options, config, device, report,
                  stall_timeout: float | None = None) -> None:
    """The live loop: crop box and initial frame from the first usable frame, then batches
    of whatever is waiting. Ctrl-C, SIGTERM or a stall end the loop and keep what was written."""
    height, width = config.dataset_params.frame_shape[:2]
    animator, box, searched = None, None, 0
    limit = batch_size(options, device)
    try:
        while True:
            items, ended = _take_waiting(reader, limit, stall_timeout)
            if animator is None and items:
                if options.crop == "auto":
                    box, searched, items = _find_face_box(items, options, searched)
                    if box is None:
                        if ended:
                            break
                        continue
                report.crop_box = box
                initial = source_crop.prepare(items[0][1], box, (height, width))
                animator = Animator(model, to_tensor(source, device), to_tensor(initial, device),
                                    options, device)
            if items:
                _write_batch(animator, items, box, source, writer, options, config, report, device)
            if ended:
                break
    except Stalled:
        report.ended_by = "stall"
        logger.warning("stream: no frame for %.1f s; finishing the output", stall_timeout)
    except KeyboardInterrupt as interrupt:
        report.ended_by = "SIGTERM" if isinstance(interrupt, _Signalled) else "SIGINT"
        logger.info("stream: %s, finishing the output", report.ended_by)


def _find_face_box(items, options, searched):
    """Crop box from the first frame (of the waiting ones) with a face; frames before it
    are skipped. UserError when none of the first FACE_SEARCH_FRAMES frames has one."""
    from fomm.source_crop import _largest_face_any_scale, square_around
    from core import faces
    for index, (_, frame) in enumerate(items):
        face = _largest_face_any_scale(frame, faces)
        searched += 1
        if face is not None:
            return square_around(face, frame.shape, options.crop_increase), searched, items[index:]
        if searched >= FACE_SEARCH_FRAMES:
            raise UserError(f"no face found in the first {searched} stream frames with --crop auto; "
                            "use --crop center or --crop none")
    return None, searched, []


def _write_batch(animator, items, box, source, writer, options, config, report, device) -> None:
    height, width = config.dataset_params.frame_shape[:2]
    frames = [source_crop.prepare(frame, box, (height, width)) for _, frame in items]
    padded = next(size for size in live_batch_sizes(batch_size(options, device)) if size >= len(frames))
    frames += [frames[-1]] * (padded - len(frames))  # results past len(items) are not written
    step = time.perf_counter()
    outputs = animator(to_tensor(frames, device))
    results = to_uint8(outputs["prediction"])  # waits for the device
    report.steps.append(time.perf_counter() - step)
    for (arrival, _), frame in zip(items, compose(results, frames, source, outputs, animator, options,
                                                  config.visualizer_params.kp_size,
                                                  config.visualizer_params.colormap)):
        writer.write(frame)
        report.latencies.append(time.perf_counter() - arrival)
        report.frames_out += 1
        if report.frames_out == 1:
            logger.info("stream: first frame written, %.0f ms after it arrived", 1000 * report.latencies[0])
