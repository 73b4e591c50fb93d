"""Video and image I/O shared by every stage: probing with PyAV, streaming frames,
writing mp4/gif through ffmpeg, files that appear only when complete, the audio of a
driving video muxed under an animation, and live input and output (cameras, pipes, URLs)
through ffmpeg processes.

ffmpeg is the system's when there is one, else the binary bundled with imageio-ffmpeg;
there is no ffprobe, so probing uses PyAV. Subprocesses take argument lists, never shell
strings.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import queue
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from core.errors import UserError

log = logging.getLogger(__name__)


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: $FFMPEG_BINARY, the system's, or imageio-ffmpeg's."""
    env = os.environ.get("FFMPEG_BINARY")
    if env:
        return env
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def dies_with_parent() -> None:
    """`preexec_fn` for worker subprocesses (ffmpeg, yt-dlp): the kernel kills the child
    when the process that started it dies, so a killed Ray worker leaves no orphan."""
    import ctypes
    import signal
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the child outlives a killed parent, as before
        pass


@functools.lru_cache(maxsize=None)
def ffmpeg_has_option(option: str) -> bool:
    """Whether this ffmpeg build knows `-option` (options differ between versions)."""
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-h", "full"], capture_output=True, text=True)
    return f"-{option} " in result.stdout


def realtime_input_arguments() -> list[str]:
    """Input options that read a file at its native frame rate, as a camera delivers it.

    `-re` alone lets ffmpeg >= 6.1 burst-read the first 0.5 s; a camera has no such burst.
    (A burst of 0 means "the default" to ffmpeg, hence 1 ms.)"""
    burst = ["-readrate_initial_burst", "0.001"] if ffmpeg_has_option("readrate_initial_burst") else []
    return ["-re", *burst]


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float
    num_frames: int  # the container's count where it stores one (may be off by one; a full decode is exact)
    duration: float
    codec: str
    has_audio: bool
    audio_duration: float | None


def probe(path: str | Path) -> VideoInfo:
    """Stream facts of a video file. Raises UserError if it is missing or not a video."""
    import av
    path = Path(path)
    if not path.is_file():
        raise UserError(f"video {str(path)!r} does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{str(path)!r} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            fps = float(rate)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            else:
                duration = 0.0
            num_frames = stream.frames or 0
            if num_frames <= 0:  # some containers do not store a count: decode to count
                num_frames = sum(1 for _ in container.decode(video=0))
            audio = container.streams.audio[0] if container.streams.audio else None
            audio_duration = None
            if audio is not None and audio.duration is not None and audio.time_base is not None:
                audio_duration = float(audio.duration * audio.time_base)
            return VideoInfo(str(path), stream.codec_context.width, stream.codec_context.height,
                             fps, int(num_frames), duration, stream.codec_context.name,
                             audio is not None, audio_duration)
    except av.error.FFmpegError as err:
        raise UserError(f"{str(path)!r} is not a readable video: {err}") from None


def iter_frames(path: str | Path, start: int = 0, end: int | None = None) -> Iterator[np.ndarray]:
    """Decode frames [start, end) of a video as RGB uint8 arrays (H, W, 3), one at a time."""
    import av
    try:
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if end is not None and index >= end:
                    break
                if index >= start:
                    yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as err:
        raise UserError(f"{str(path)!r} is not a readable video: {err}") from None


def read_frames(path: str | Path, start: int = 0, end: int | None = None) -> np.ndarray:
    """All frames [start, end) as one (T, H, W, 3) uint8 array; for short clips only."""
    frames = list(iter_frames(path, start, end))
    if not frames:
        raise UserError(f"{str(path)!r} has no frames in [{start}, {end})")
    return np.stack(frames)


def nth_frame(path: str | Path, index: int) -> np.ndarray:
    """Frame `index` of a video as RGB uint8 (H, W, 3); UserError if it has no such frame."""
    for frame in iter_frames(path, index, index + 1):
        return frame
    raise UserError(f"{str(path)!r} has no frame {index}")


def stream_starts(path: str | Path) -> tuple[float, float]:
    """(video start, audio start) in seconds on the file's clock; audio start = video
    start when there is no audio."""
    import av
    with av.open(str(path)) as container:
        def start(stream):
            return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        video = start(container.streams.video[0]) if container.streams.video else 0.0
        audio = start(container.streams.audio[0]) if container.streams.audio else video
        return video, audio


def audio_offset(path: str | Path) -> float:
    """Seconds from the audio stream's start to the video stream's start.

    Positive when the video starts later (faces/animateanyone/talkinghead_3.mp4 starts its
    video 7.3 s after its audio: the audio heard with the first frame is the one at that
    offset); negative when the audio starts after the first frame (silence until then).
    """
    video, audio = stream_starts(path)
    return video - audio


def current_umask() -> int:
    """The process umask (read without changing it where /proc says it; else set and restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file(folder: str | Path, prefix: str, suffix: str) -> Path:
    """An empty file under a fresh name in `folder`, with the mode a plain `open()` would give
    it: mkstemp makes files 0600, and a rename would carry that mode to the final file."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    return Path(name)


def temp_dir(folder: str | Path, prefix: str) -> Path:
    """A fresh folder in `folder` with the mode `mkdir` would give it (mkdtemp makes 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    path.chmod(0o777 & ~current_umask())
    return path


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds.

    A crash or an error leaves no file at `final` (and removes the temporary one), so a
    file that exists is always complete. The file gets the mode the umask allows.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = final.suffix if suffix is None else suffix
    tmp_path = temp_file(final.parent, f".{final.stem}.", f".part{suffix}")
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_partial_files(folder: str | Path) -> list[Path]:
    """Remove what a killed writer left in `folder` (not below it): the hidden temporary files
    of `atomic_path`, `VideoWriter` and core.provenance (`.NAME.XXXX.part.EXT`,
    `.NAME.XXXX.mark.EXT`) and staged folders (`.NAME.part`). Call it only with the folder's
    writer lock held (core.writer_lock), when nobody else can be writing them."""
    removed = []
    for path in sorted(Path(folder).glob(".*")):
        if ".part" not in path.name[1:] and ".mark." not in path.name:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info("removed %d partial file(s) of an interrupted run in %s", len(removed), folder)
    return removed


class FfmpegPipe:
    """An ffmpeg process fed raw frames on stdin; a `with` block closes it on success and
    kills it on error. Subclasses start `_proc` on their first frame and define `close()`."""

    _proc: subprocess.Popen | None = None

    def abort(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def close(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class VideoWriter(FfmpegPipe):
    """Write RGB uint8 frames to mp4 (h264) or gif through an ffmpeg pipe.

    The output appears at `path` only when `close()` succeeds. Video only: animate muxes
    the driving video's audio in a second pass (`mux_audio`), where it can line the audio
    up with the video's start.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 18):
        self.path = Path(path)
        self.fps = float(fps)
        self.crf = crf
        self._proc: subprocess.Popen | None = None
        self._size: tuple[int, int] | None = None
        self._count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_file(self.path.parent, f".{self.path.stem}.", f".part{self.path.suffix}")

    def _command(self, width: int, height: int) -> list[str]:
        cmd = [ffmpeg_exe(), "-y", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
               "-r", f"{self.fps:.6f}", "-i", "-"]
        ext = self.path.suffix.lower()
        if ext == ".gif":
            return cmd + ["-filter_complex", "split[a][b];[a]palettegen[p];[b][p]paletteuse",
                          "-f", "gif", str(self._tmp)]
        # yuv420p needs even sizes: pad by one pixel where needed.
        cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast",
                "-crf", str(self.crf), "-pix_fmt", "yuv420p", "-movflags", "+faststart",
                "-f", "mp4", str(self._tmp)]
        return cmd

    def write(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}")
        if self._proc is None:
            self._size = (frame.shape[1], frame.shape[0])
            self._proc = subprocess.Popen(self._command(*self._size), stdin=subprocess.PIPE,
                                          stderr=subprocess.PIPE)
        elif (frame.shape[1], frame.shape[0]) != self._size:
            raise ValueError(f"frame size {frame.shape[1]}x{frame.shape[0]} differs from {self._size}")
        self._proc.stdin.write(frame.tobytes())
        self._count += 1

    def write_all(self, frames: Iterable[np.ndarray]) -> "VideoWriter":
        for frame in frames:
            self.write(frame)
        return self

    def close(self) -> Path:
        if self._proc is None:
            self.abort()
            raise UserError(f"no frames were written to {str(self.path)!r}")
        self._proc.stdin.close()
        stderr = self._proc.stderr.read().decode(errors="replace")
        if self._proc.wait() != 0:
            self.abort()
            raise RuntimeError(f"ffmpeg failed writing {self.path}: {stderr.strip()}")
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        super().abort()
        if self._tmp.exists():
            self._tmp.unlink()

    @property
    def frames_written(self) -> int:
        return self._count


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Write all `frames` to `path` (mp4 or gif) atomically; see VideoWriter."""
    with VideoWriter(path, fps) as writer:
        writer.write_all(frames)
    return writer.path


def mux_audio(video: Path, audio_from: str | Path, out: Path, duration: float) -> None:
    """Copy `video`'s stream into `out` with the audio `audio_from` plays alongside its
    video stream, as a track that starts at 0 and lasts exactly `duration` s.

    Seeking the audio input to the driving's video start drops what plays before the first
    frame; `aresample=async=1:first_pts=0` fills with silence where the audio starts after
    it; `apad` and `-t` pad or cut the end to the video's length. A second pass rather than
    `-shortest` while encoding: -shortest overshoots when the audio is read ahead of a
    piped video, and cuts the video when the audio is shorter.
    """
    video_start, _ = stream_starts(audio_from)
    command = [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(video)]
    if video_start > 0:
        command += ["-ss", f"{video_start:.6f}"]
    command += ["-i", str(audio_from), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                "-af", "aresample=async=1:first_pts=0,apad", "-c:a", "aac", "-t", f"{duration:.6f}",
                "-movflags", "+faststart", "-f", "mp4", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed muxing the audio of {audio_from} into {out}: "
                           f"{result.stderr.strip()[-500:]}")


def load_image(path: str | Path) -> np.ndarray:
    """Any image file as RGB uint8 (H, W, 3): EXIF orientation applied, then `rgb8`.
    UserError if it is not an image."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            return rgb8(ImageOps.exif_transpose(image), str(path))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:  # PIL raises SyntaxError for some bad headers
        raise UserError(f"{str(path)!r} is not a readable image ({err})") from None


# PIL modes of one channel with more than 8 bits: 16-bit grayscale PNGs and TIFFs open as
# "I;16*" (or "I" in older Pillow), 32-bit integer TIFFs as "I", float TIFFs as "F".
_DEEP_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def rgb8(image, name: str = "image") -> np.ndarray:
    """A PIL image of any mode as RGB uint8 (H, W, 3), each mode converted by what it means
    (PIL's own `convert("RGB")` clips 16-bit gray at 255, so such a photo came out white):

    - 16-bit gray ("I;16*", and "I" clipped to 0..65535): the high byte, v >> 8, as PIL and
      libpng reduce 16-bit colour PNGs (which PIL opens as 8-bit RGB/RGBA already);
    - 32-bit float ("F"): values in [0, 1] scaled to 0..255 and rounded (NaN as 0);
    - alpha (RGBA, LA, PA, La, RGBa, a palette or colour with a transparent entry): composited
      on white;
    - 1-bit, gray, palette, CMYK, YCbCr, LAB, HSV: PIL's conversion to RGB.
    UserError for a mode with no conversion."""
    from PIL import Image
    mode = image.mode
    if mode in _DEEP_GRAY or mode == "F":
        values = np.asarray(image)
        if mode == "F":
            gray = (np.clip(np.nan_to_num(values.astype(np.float64)), 0, 1) * 255 + 0.5).astype(np.uint8)
        else:
            gray = (np.clip(values.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as err:
        raise UserError(f"{name}: PIL image mode {mode!r} cannot be converted to RGB ({err}); expected a "
                        "photo in a common format") from None


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- live input and output
DEVICE_FORMATS = ("v4l2", "avfoundation", "dshow", "x11grab", "gdigrab", "lavfi")
URL_SCHEMES = ("rtsp://", "rtmp://", "udp://", "tcp://", "http://", "https://", "srt://", "rtp://")
OUTPUT_SCHEMES = ("udp://", "rtmp://", "srt://", "tcp://", "rtp://")


def live_input_arguments(spec: str, realtime: bool = False) -> tuple[list[str], bool]:
    """ffmpeg input arguments for `spec`, and whether ffmpeg must read our stdin.

    `/dev/videoN` (v4l2), `FORMAT:DEVICE` with FORMAT in DEVICE_FORMATS (`-f FORMAT -i
    DEVICE`), `-` (stdin), a URL, a named pipe or a regular file (`realtime`: read at its
    native rate, like a camera)."""
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
    probe_arguments = short_probe if stat.S_ISFIFO(mode) else []
    return pace + probe_arguments + ["-i", str(path)], False


def live_decoder_command(spec: str, width: int, height: int, crop: str, realtime: bool = False
                         ) -> tuple[list[str], bool]:
    """ffmpeg reading `spec` and writing raw rgb24 frames of width x height to stdout, and
    whether it reads our stdin.

    `none` squeezes the whole frame (as file mode does); `center` and `auto` keep the aspect
    and cut the centred square (auto then crops the face inside it).
    """
    inputs, needs_stdin = live_input_arguments(spec, realtime)
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


class Stalled(Exception):
    """No frame arrived within the stall timeout."""


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

    def take_waiting(self, limit: int, timeout: float | None = None) -> tuple[list, bool]:
        """The next (arrival, frame) item (waiting at most `timeout` s, else Stalled) plus
        whatever else is already waiting, up to `limit`; and whether the stream ended."""
        try:
            first = self.frames.get(timeout=timeout)
        except queue.Empty:
            raise Stalled from None
        if first is None:
            return [], True
        items, ended = [first], False
        while len(items) < limit:
            try:
                item = self.frames.get_nowait()
            except queue.Empty:
                break
            if item is None:
                ended = True
                break
            items.append(item)
        return items, ended

    def drain(self) -> None:
        """Wait for the thread to end (after `stop` is set or its pipe closed), emptying the
        queue so its final put cannot block."""
        while self.is_alive():
            with contextlib.suppress(queue.Empty):
                self.frames.get(timeout=0.05)

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
