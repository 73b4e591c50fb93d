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

The ffmpeg side (decoder command, FrameReader, LiveWriter) is core/media.py; the frames come
from fomm/animation.Animator, as in file mode.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.media import (FrameReader, LiveWriter, Stalled, VideoWriter, is_live_target, live_decoder_command,
                        probe)
from fomm import source_crop
from fomm.animation import (AnimateOptions, Animator, batch_size, check_options, check_out_is_not_an_input,
                            model_device)
from fomm.api import MotionTransferModel
from fomm.config import Config

logger = logging.getLogger(__name__)

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


def check_stream_options(queue_size: int, fps: float | None, stall_timeout: float | None) -> None:
    """UserError for --queue, --stream-fps or --stall-timeout values a live run cannot use
    (a queue of no frame would drop every frame; a rate or timeout must be a positive time)."""
    from core.errors import check_count, check_number
    check_count("--queue", queue_size)
    check_number("--stream-fps", fps)
    check_number("--stall-timeout", stall_timeout, unit="seconds")


def stream_fps(spec: str, fps: float | None) -> float:
    """The output rate: `fps`, else a regular file's own rate, else 25."""
    if fps is not None:
        if fps <= 0:
            raise UserError(f"--stream-fps {fps}: expected a positive number")
        return fps
    path = Path(spec)
    if path.is_file():
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
    live_target = is_live_target(str(out_path))
    out_path = str(out_path) if live_target else Path(out_path)
    check_options(options, out_path, live_target)
    if not live_target and driving != "-":
        check_out_is_not_an_input(out_path, source=source_path, driving=driving)
    check_stream_options(queue_size, fps, stall_timeout)
    if options.find_best_frame:
        raise UserError("--find-best-frame needs the whole driving video; it cannot be used with --stream")
    device = model_device(model)
    height, width = config.dataset_params.frame_shape[:2]
    source_image = source_crop.load_source(source_path)
    source_box = source_crop.source_box(source_image, options.crop, options.crop_increase)
    source = source_crop.prepare(source_image, source_box, (height, width))
    paste_back = None  # the photo is still: the live path pastes back as file mode does
    if source_crop.wants_paste_back(options.paste_back, options.crop, source_image.shape, (height, width),
                                    options.layout == "side-by-side"):
        paste_back = source_crop.PasteBack(source_image, source_box,
                                           even=live_target or Path(out_path).suffix.lower() != ".gif")
    analysis = (height, width) if options.crop != "auto" else (max(2 * height, 256), max(2 * width, 256))
    command, needs_stdin = live_decoder_command(driving, analysis[1], analysis[0], options.crop, realtime)
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
            _animate_live(model, config, source, reader, provenance.marking(writer, generation), options,
                          device, report, stall_timeout, paste_back=paste_back, fps=output_fps)
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
        reader.drain()
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
    animator = Animator.from_frames(model, source, source, options, device)
    animator.calibrating = False  # int8 calibrates on the live loop's first real frames, not on the source
    for batch in live_batch_sizes(animator.batch_size):
        animator(animator.source.expand(batch, -1, -1, -1))
    if device.type == "cuda":
        import torch
        torch.cuda.synchronize(device)


def _animate_live(model, config, source, reader, writer, options, device, report,
                  stall_timeout: float | None = None, paste_back=None, fps: float | None = None) -> None:
    """The live loop: crop box and initial frame from the first usable frame, then batches
    of whatever is waiting. Ctrl-C, SIGTERM or a stall end the loop and keep what was written.
    With `options.smooth` the filter takes the frames as written, one step per frame at `fps`
    (a dropped frame is not a step)."""
    height, width = config.dataset_params.frame_shape[:2]
    animator, box, searched = None, None, 0
    limit = batch_size(options, device)
    try:
        while True:
            items, ended = reader.take_waiting(limit, stall_timeout)
            if animator is None and items:
                if options.crop == "auto":
                    box, searched, items = _find_face_box(items, options, searched)
                    if box is None:
                        if ended:
                            break
                        continue
                report.crop_box = box
                initial = source_crop.prepare(items[0][1], box, (height, width))
                animator = Animator.from_frames(model, source, initial, options, device, config,
                                                paste_back=paste_back, fps=fps)
            if items:
                _write_batch(animator, items, box, (height, width), writer, report)
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
    from core import faces
    from fomm.source_crop import _largest_face_any_scale, square_around
    for index, (_, frame) in enumerate(items):
        face = _largest_face_any_scale(frame, faces)
        searched += 1
        if face is not None:
            return square_around(face, frame.shape, options.crop_increase), searched, items[index:]
        if searched >= FACE_SEARCH_FRAMES:
            raise UserError(f"no face found in the first {searched} stream frames with --crop auto; "
                            "use --crop center or --crop none")
    return None, searched, []


def _write_batch(animator, items, box, size, writer, report) -> None:
    frames = [source_crop.prepare(frame, box, size) for _, frame in items]
    padded = next(shape for shape in live_batch_sizes(animator.batch_size) if shape >= len(frames))
    frames += [frames[-1]] * (padded - len(frames))  # results past len(items) are not written
    step = time.perf_counter()
    results, outputs = animator.predict(frames, valid=len(items))  # padding leaves --smooth's state alone
    report.steps.append(time.perf_counter() - step)
    for (arrival, _), frame in zip(items, animator.compose(results, frames, outputs)):
        writer.write(frame)
        report.latencies.append(time.perf_counter() - arrival)
        report.frames_out += 1
        if report.frames_out == 1:
            logger.info("stream: first frame written, %.0f ms after it arrived", 1000 * report.latencies[0])
