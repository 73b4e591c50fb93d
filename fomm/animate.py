"""Animate a photo with the motion of a driving video: the `pipeline run animate` stage.

    pipeline run animate --config vox-256 --checkpoint vox-cpk.pth.tar \\
        --source photo.jpg --driving video.mp4 --out result.mp4 [--crop auto] [--find-best-frame]

From Python:

    model = load_animation_model(config, "vox-cpk.pth.tar", device)
    animate(model, config, "photo.jpg", "video.mp4", "result.mp4", AnimateOptions(crop="auto"))

Frames stream from the driving video through the model in batches (`--batch-size`) and
straight into the encoder, so memory does not grow with the video's length. The output
has the driving video's fps and frame count and, for mp4, its audio cut to the video's
length; it appears at `--out` only when complete (pipeline/media.VideoWriter), whatever
fails on the way. (GIF stores frame delays in 1/100 s, so a gif's rate is rounded: 30 fps
plays at 33.3.) Motion transfer is the model family's `transfer()` (FOMM Eq. 8 for
relative motion, with the adapt-scale factor of the original demo).
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from core import devices as precision

from fomm import source_crop
from fomm.api import Motion, MotionTransferModel
from core.config import Config, load_config
from core.errors import UserError
from core.frames import to_tensor, to_uint8

logger = logging.getLogger(__name__)

LAYOUTS = ("result", "side-by-side")
OUTPUT_SUFFIXES = (".mp4", ".gif")


@dataclass(frozen=True)
class AnimateOptions:
    relative: bool = True              # Eq. 8 relative motion (False: absolute keypoints)
    relative_jacobian: bool = True
    adapt_scale: bool = False          # scale motion by sqrt(source hull area / driving hull area)
    find_best_frame: bool = False
    landmarks: str = "auto"            # best-frame landmark backend: auto, dlib, face-alignment
    crop: str = "none"                 # auto | center | none (see fomm/source_crop.py)
    crop_increase: float = 0.4
    layout: str = "result"             # result | side-by-side
    show_keypoints: bool = False
    audio: bool = True
    batch_size: int | None = None      # None: the measured default for the device (core/devices.py)
    max_frames: int | None = None
    precision: str = "auto"            # auto | fp32 | bf16 (core/devices.py)
    provenance: bool = True            # watermark, C2PA manifest, AI-generated tag (core/provenance.py)


@dataclass
class AnimationResult:
    path: Path
    num_frames: int
    fps: float
    best_frame: int
    seconds: float
    has_audio: bool
    frame_size: tuple[int, int] = field(default=(0, 0))

    @property
    def frames_per_second(self) -> float:
        return self.num_frames / max(self.seconds, 1e-9)


# --------------------------------------------------------------------------- devices
def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device {name!r}: expected cpu, cuda, cuda:N or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def model_device(model) -> torch.device:
    """The device a model's parameters live on (CPU for a parameterless ONNX runner)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def batch_size(options: AnimateOptions, device: torch.device) -> int:
    """`options.batch_size`, or the measured default for the device and precision."""
    if options.batch_size is not None:
        return options.batch_size
    return precision.default_batch_size(precision.resolve(options.precision, device))


# --------------------------------------------------------------------------- model
def load_animation_model(config: Config, checkpoint: str | Path | None, device: torch.device,
                         name: str | None = None) -> MotionTransferModel:
    """The config's (or `name`'s) model in eval mode on `device`, weights from `checkpoint`
    (fomm/checkpoint.load_model: released or project format; a checkpoint that does not match
    the config raises UserError). `checkpoint=None` keeps the random initialisation."""
    from fomm.checkpoint import load_model
    from fomm.registry import build_model
    from core.config import replace
    if name is not None and name != config.model_params.name:
        config = replace(config, model_params=replace(config.model_params, name=name))
    if checkpoint is None:
        return build_model(config).to(device).eval()
    try:
        return load_model(config, checkpoint, device)
    except UserError as err:  # torch's unpickling messages span lines; the CLI prints one
        raise UserError(" ".join(str(err).split())) from None


# --------------------------------------------------------------------------- tensors
def expand_motion(motion: Motion, batch: int) -> Motion:
    """Repeat a batch-1 motion dict along the batch axis (views, no copies)."""
    return {key: value.expand(batch, *value.shape[1:]) for key, value in motion.items()}


# --------------------------------------------------------------------------- animator
class Animator:
    """Holds the source and the initial driving frame; turns driving batches into frames.

    The output for driving frame t depends only on the source, frame t and the initial
    frame (Eq. 8 compares frame t with the initial frame, never with t-1), so batches can
    be any size and frames can be fed in any order.
    """

    def __init__(self, model: MotionTransferModel, source: torch.Tensor, initial: torch.Tensor,
                 options: AnimateOptions, device: torch.device):
        self.model, self.options, self.device = model, options, device
        self.precision = precision.resolve(options.precision, device)
        self.precision.prepare_model(model)
        self.source = self.precision.prepare_input(source)      # (1, 3, H, W)
        with self.precision.keypoint_context():
            self.motion_source = model.detect(self.source)
            self.motion_initial = model.detect(self.precision.prepare_input(initial))

    def motion(self, driving: torch.Tensor) -> tuple[Motion, Motion]:
        """(detected driving motion, transferred motion) for a batch (B, 3, H, W)."""
        batch = driving.shape[0]
        with self.precision.keypoint_context():
            motion_driving = self.model.detect(self.precision.prepare_input(driving))
        transferred = self.model.transfer(
            expand_motion(self.motion_source, batch), motion_driving,
            expand_motion(self.motion_initial, batch), relative=self.options.relative,
            relative_jacobian=self.options.relative_jacobian,
            adapt_movement_scale=self.options.adapt_scale)
        return motion_driving, transferred

    def __call__(self, driving: torch.Tensor) -> dict[str, torch.Tensor | Motion]:
        """Predictions (B, 3, H, W) and the motions behind them for a driving batch."""
        driving = self.precision.prepare_input(driving)
        with self.precision.context():
            motion_driving, transferred = self.motion(driving)
            batch = driving.shape[0]
            out = self.model.generate(self.source.expand(batch, -1, -1, -1),
                                      expand_motion(self.motion_source, batch), transferred)
        return {"prediction": out["prediction"].float(), "motion_driving": motion_driving,
                "motion_transferred": transferred}


# --------------------------------------------------------------------------- layout
def compose(results: np.ndarray, driving: np.ndarray, source: np.ndarray, outputs: dict,
            animator: Animator, options: AnimateOptions, kp_size: int = 5,
            colormap: str = "gist_rainbow") -> Iterator[np.ndarray]:
    """Output frames (H, W', 3) uint8: the result alone, or source | driving | result panels
    (each the model's input size, no borders, so panel i is columns [i*W, (i+1)*W))."""
    from fomm.visualize import draw_keypoints
    kp_result = kp_driving = kp_source = None
    if options.show_keypoints:
        kp_result = animator.model.keypoints(outputs["motion_transferred"])
        kp_driving = animator.model.keypoints(outputs["motion_driving"])
        kp_source = animator.model.keypoints(animator.motion_source)
    for i, result in enumerate(results):
        if kp_result is not None:
            result = draw_keypoints(result, kp_result[i], kp_size, colormap)
        if options.layout == "result":
            yield result
            continue
        drive, src = driving[i], source
        if kp_driving is not None:
            drive = draw_keypoints(drive, kp_driving[i], kp_size, colormap)
        if kp_source is not None:
            src = draw_keypoints(src, kp_source[0], kp_size, colormap)
        yield np.concatenate([src, drive, result], axis=1)


def batched(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------- the run
def check_options(options: AnimateOptions, out_path: Path | str, live_target: bool = False) -> None:
    """UserError for options that cannot work; `live_target` (--stream to '-' or a URL)
    skips the file-name check."""
    if not live_target and Path(out_path).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--out {str(out_path)!r}: expected a .mp4 or .gif file name"
                        " (with --stream also '-' for stdout or a udp://, rtmp://, srt:// URL)")
    if options.layout not in LAYOUTS:
        raise UserError(f"--layout {options.layout!r}: expected one of {list(LAYOUTS)}")
    if options.crop not in source_crop.CROP_MODES:
        raise UserError(f"--crop {options.crop!r}: expected one of {list(source_crop.CROP_MODES)}")
    if options.batch_size is not None and options.batch_size < 1:
        raise UserError(f"--batch-size {options.batch_size}: expected 1 or more")
    if options.max_frames is not None and options.max_frames < 1:
        raise UserError(f"--max-frames {options.max_frames}: expected 1 or more")
    if options.precision not in precision.PRECISIONS:
        raise UserError(f"--precision {options.precision!r}: expected one of {list(precision.PRECISIONS)}")


def check_out_is_not_an_input(out_path: str | Path, **inputs: str | Path) -> None:
    """UserError when `--out` names one of the input files (`source=..., driving=...`):
    the same path once symlinks and `..` are resolved, or the same file (a hard link)."""
    out = Path(out_path)
    for name, value in inputs.items():
        given = Path(value)
        same = out.resolve() == given.resolve()
        if not same and out.exists() and given.exists():
            same = os.path.samefile(out, given)
        if same:
            raise UserError(f"--out {str(out_path)!r} is the --{name} file {str(value)!r}: writing it "
                            "would destroy the input; expected another output path")


def nth_frame(path: str | Path, index: int) -> np.ndarray:
    from core.media import iter_frames
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


@dataclass
class AnimationPlan:
    """Everything checked and loaded before the first frame is written (see `prepare`)."""
    model: MotionTransferModel
    config: Config
    driving_path: Path
    out_path: Path
    options: AnimateOptions
    fps: float
    num_frames: int                     # frames to animate: [0, num_frames)
    has_audio: bool
    source: np.ndarray                  # (H, W, 3) uint8, cropped and resized
    driving_box: source_crop.CropBox | None
    best_frame: int
    animator: Animator


def prepare(model: MotionTransferModel, config: Config, source_path: str | Path,
            driving_path: str | Path, out_path: str | Path,
            options: AnimateOptions = AnimateOptions()) -> AnimationPlan:
    """Check every input, crop the source, fix the driving crop and the initial frame.

    Everything that can be wrong with the inputs raises UserError here, before any file
    is opened for writing.
    """
    from core.media import probe
    out_path, driving_path = Path(out_path), Path(driving_path)
    check_options(options, out_path)
    check_out_is_not_an_input(out_path, source=source_path, driving=driving_path)
    device = model_device(model)
    size = tuple(config.dataset_params.frame_shape[:2])
    source_image = source_crop.load_source(source_path)
    info = probe(driving_path)
    end = info.num_frames if options.max_frames is None else min(info.num_frames, options.max_frames)
    if end <= 0:
        raise UserError(f"driving video {str(driving_path)!r} has zero frames")

    source_box = source_crop.source_box(source_image, options.crop, options.crop_increase)
    source = source_crop.prepare(source_image, source_box, size)  # (H, W, 3) uint8
    driving_box = None
    if options.crop != "none":
        sampled = source_crop.sample_frames(driving_path, info.num_frames, end=end)
        driving_box = source_crop.driving_box(sampled, options.crop, options.crop_increase)
    best = 0
    if options.find_best_frame:
        best = _best_frame(source_image, source_box, driving_path, driving_box, end, options)
    initial = source_crop.prepare(nth_frame(driving_path, best), driving_box, size)
    animator = Animator(model, to_tensor(source, device), to_tensor(initial, device), options, device)
    has_audio = options.audio and info.has_audio and out_path.suffix.lower() == ".mp4"
    return AnimationPlan(model, config, driving_path, out_path, options, info.fps, end, has_audio,
                         source, driving_box, best, animator)


def run(plan: AnimationPlan, progress: Callable[[int], None] | None = None) -> AnimationResult:
    """Animate and write `plan.out_path`; it appears only when complete (video and audio).

    An error on the way aborts the writer and removes every temporary file.
    `progress(n)` is called with the number of frames done after each batch.
    """
    from core import provenance
    from core.media import VideoWriter, atomic_path
    start = time.perf_counter()
    size = tuple(plan.config.dataset_params.frame_shape[:2])
    generation = provenance.generation_or_warn(plan.options.provenance, plan.config,
                                               plan.driving_path.name, plan.out_path.name)
    with atomic_path(plan.out_path) as final:
        video_path = _silent_video_path(plan.out_path) if plan.has_audio else final
        try:
            with VideoWriter(video_path, plan.fps) as writer:
                done = _animate_frames(plan.animator, plan.source, plan.driving_path, plan.driving_box,
                                       plan.num_frames, size, provenance.marking(writer, generation),
                                       plan.options, plan.config, progress)
            if plan.has_audio:
                mux_audio(video_path, plan.driving_path, final, done / plan.fps)
            provenance.finalize(final, generation)
        finally:
            if plan.has_audio:
                video_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    logger.info("animate: %d frames at %.2f fps -> %s in %.1f s (%.1f frames/s)",
                done, plan.fps, plan.out_path, seconds, done / max(seconds, 1e-9))
    panels = 3 if plan.options.layout == "side-by-side" else 1
    return AnimationResult(plan.out_path, done, plan.fps, plan.best_frame, seconds, plan.has_audio,
                           (size[0], size[1] * panels))


def animate(model: MotionTransferModel, config: Config, source_path: str | Path,
            driving_path: str | Path, out_path: str | Path,
            options: AnimateOptions = AnimateOptions(),
            progress: Callable[[int], None] | None = None) -> AnimationResult:
    """Write `out_path` (mp4/gif): `source_path` moved like `driving_path` (prepare + run)."""
    return run(prepare(model, config, source_path, driving_path, out_path, options), progress)


def _animate_frames(animator, source, driving_path, driving_box, end, size, writer, options,
                    config, progress) -> int:
    """Stream driving frames [0, end) through the animator in batches into `writer`."""
    from core.media import iter_frames
    done = 0
    frames = (source_crop.prepare(f, driving_box, size) for f in iter_frames(driving_path, 0, end))
    for batch in batched(frames, batch_size(options, animator.device)):
        outputs = animator(to_tensor(batch, animator.device))
        results = to_uint8(outputs["prediction"])
        for frame in compose(results, batch, source, outputs, animator, options,
                             config.visualizer_params.kp_size, config.visualizer_params.colormap):
            writer.write(frame)
        done += len(batch)
        if progress is not None:
            progress(len(batch))
    if done == 0:
        raise UserError(f"driving video {str(driving_path)!r} has zero decodable frames")
    return done


def _silent_video_path(out_path: Path) -> Path:
    import tempfile
    fd, name = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".video.mp4", dir=out_path.parent)
    os.close(fd)
    return Path(name)


def mux_audio(video: Path, audio_from: str | Path, out: Path, duration: float) -> None:
    """Copy `video`'s stream into `out` with the audio `audio_from` plays alongside its
    video stream, as a track that starts at 0 and lasts exactly `duration` s.

    Seeking the audio input to the driving's video start drops what plays before the first
    frame; `aresample=async=1:first_pts=0` fills with silence where the audio starts after
    it; `apad` and `-t` pad or cut the end to the video's length. A second pass rather than
    `-shortest` while encoding: -shortest overshoots when the audio is read ahead of a
    piped video, and cuts the video when the audio is shorter.
    """
    from core.media import ffmpeg_exe
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


def _best_frame(source_image, source_box, driving_path, driving_box, end, options) -> int:
    """Best-frame search on crops at 256 px (dlib's detector needs faces of ~80 px)."""
    from fomm.best_frame import find_best_frame
    from core.media import iter_frames
    side = (256, 256)
    source = source_crop.prepare(source_image, source_box, side) if source_box else source_image
    frames = (source_crop.prepare(f, driving_box, side) if driving_box else f
              for f in iter_frames(driving_path, 0, end))
    return find_best_frame(source, frames, options.landmarks)


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config name (vox-256) or yaml path (with --backend "
                        "onnxruntime: the export's own)")
    parser.add_argument("--checkpoint", help="checkpoint file (state dicts per sub-network)")
    parser.add_argument("--backend", nargs="+", default=["torch"], metavar="NAME",
                        help="torch (default) or `onnxruntime DIR`: the graphs `pipeline run export` "
                             "wrote to DIR, run on the CPU")
    parser.add_argument("--random-weights", action="store_true",
                        help="no checkpoint: random initialisation (smoke tests, benchmarks)")
    parser.add_argument("--model", choices=["fomm", "monkey-net", "x2face"],
                        help="model family (default: the config's model_params.name)")
    parser.add_argument("--source", required=True, help="source image (any size, RGBA, grayscale, EXIF)")
    parser.add_argument("--driving", required=True,
                        help="driving video; with --stream also a camera (/dev/video0, "
                             "avfoundation:0), a pipe (-) or a URL")
    parser.add_argument("--out", required=True,
                        help="output .mp4 (h264, with audio) or .gif; with --stream also '-' "
                             "(MPEG-TS on stdout, e.g. | ffplay -) or a udp://, rtmp://, srt:// URL")
    motion = parser.add_mutually_exclusive_group()
    motion.add_argument("--relative", dest="relative", action="store_true", default=None,
                        help="relative motion, Eq. 8 (default: the config's animate_params)")
    motion.add_argument("--absolute", dest="relative", action="store_false",
                        help="absolute motion: the driving keypoints as they are")
    parser.add_argument("--adapt-scale", action="store_true", default=None,
                        help="scale motion by the ratio of source and driving face sizes")
    parser.add_argument("--find-best-frame", action="store_true",
                        help="start from the driving frame whose landmarks match the source's")
    parser.add_argument("--landmarks", default="auto", choices=["auto", "dlib", "face-alignment"])
    parser.add_argument("--crop", default="none", choices=list(source_crop.CROP_MODES),
                        help="auto: square around the face (face models); center; none: resize")
    parser.add_argument("--layout", default="result", choices=list(LAYOUTS))
    parser.add_argument("--show-keypoints", action="store_true")
    parser.add_argument("--no-audio", dest="audio", action="store_false")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="frames per model call (default: measured per device and precision, "
                             "core/devices.py DEFAULT_BATCH)")
    parser.add_argument("--max-frames", type=int, help="animate only the first N driving frames")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", default="auto", metavar="{auto,fp32,bf16}",
                        help="auto: bf16 autocast + channels_last where the device has native bf16 "
                             "(AMX/AVX512-BF16 CPUs, bf16 GPUs), else fp32")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, e.g. model_params.align_corners=true")
    parser.add_argument("--stream", action="store_true",
                        help="live mode: read driving frames as they arrive (fomm/stream.py)")
    parser.add_argument("--stream-fps", type=float, default=None,
                        help="--stream: output fps (default: the input's, else 25)")
    parser.add_argument("--queue", type=int, default=2,
                        help="--stream: frames waiting at most; older ones are dropped")
    parser.add_argument("--no-drop", dest="drop", action="store_false",
                        help="--stream: never drop frames (latency may grow)")
    parser.add_argument("--stall-timeout", type=float, default=None,
                        help="--stream: end the run (keeping what was written) after this many "
                             "seconds without a new frame (default 10)")
    parser.add_argument("--realtime", action="store_true",
                        help="--stream with a file: read it at its native rate, like a camera")
    from core.provenance import add_argument
    add_argument(parser)


def options_from_args(args: argparse.Namespace, config: Config) -> AnimateOptions:
    norm = config.animate_params.normalization_params
    return AnimateOptions(
        relative=norm.use_relative_movement if args.relative is None else args.relative,
        relative_jacobian=norm.use_relative_jacobian,
        adapt_scale=norm.adapt_movement_scale if args.adapt_scale is None else args.adapt_scale,
        find_best_frame=args.find_best_frame, landmarks=args.landmarks, crop=args.crop,
        layout=args.layout, show_keypoints=args.show_keypoints, audio=args.audio,
        batch_size=args.batch_size, max_frames=args.max_frames, precision=args.precision,
        provenance=args.provenance)


def _backend(args: argparse.Namespace) -> str | None:
    """The ONNX export folder of `--backend onnxruntime DIR`, None for torch."""
    name, *rest = args.backend
    if name == "torch" and not rest:
        return None
    if name == "onnxruntime" and len(rest) == 1:
        return rest[0]
    raise UserError(f"--backend {' '.join(args.backend)!r}: expected torch or onnxruntime DIR")


def main(args: argparse.Namespace) -> int:
    onnx_dir = _backend(args)
    onnx_model = None
    if onnx_dir is not None:
        from fomm.export import OnnxFomm
        onnx_model = OnnxFomm(onnx_dir)
        config = onnx_model.config if args.config is None else load_config(args.config, args.overrides)
        args.precision = "fp32"  # the graphs are fp32
    else:
        if args.config is None:
            raise UserError("--config is required (a name like vox-256 or a yaml path)")
        config = load_config(args.config, args.overrides)
        if args.checkpoint is None and not args.random_weights:
            raise UserError("--checkpoint is required (or --random-weights for a smoke test)")
    options = options_from_args(args, config)
    live_target = False
    if args.stream:
        from fomm import stream
        live_target = stream.is_live_target(args.out)
    check_options(options, args.out, live_target)
    if not live_target:
        check_out_is_not_an_input(args.out, source=args.source, driving=args.driving)
    device = resolve_device(args.device)
    precision.keep_freed_memory()
    chosen = precision.resolve(options.precision, device)
    logger.info("animate: %s, batch %d%s", chosen, batch_size(options, device),
                f", onnxruntime graphs from {onnx_dir}" if onnx_dir else "")
    model = onnx_model or load_animation_model(config, args.checkpoint, device, args.model)
    if args.stream:
        report = stream.run_stream(model, config, args.source, args.driving, args.out, options,
                                   fps=args.stream_fps, queue_size=args.queue, drop=args.drop,
                                   realtime=args.realtime, stall_timeout=stream.STALL_TIMEOUT
                                   if args.stall_timeout is None else args.stall_timeout)
        # stdout may be carrying the video itself
        print(report.summary(), file=sys.stderr if args.out == "-" else sys.stdout)
        return 0
    from tqdm import tqdm
    plan = prepare(model, config, args.source, args.driving, args.out, options)
    with tqdm(total=plan.num_frames, unit="frame", desc="animate") as bar:
        result = run(plan, bar.update)
    print(f"{result.path}: {result.num_frames} frames at {result.fps:.3f} fps, "
          f"{result.frame_size[1]}x{result.frame_size[0]}, audio={'yes' if result.has_audio else 'no'}, "
          f"{result.frames_per_second:.1f} frames/s")
    return 0
