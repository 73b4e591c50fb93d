"""Animate a photo with the motion of a driving video: the `pipeline run animate` stage.

    pipeline run animate --config vox-256 --checkpoint vox-cpk.pth.tar \\
        --source photo.jpg --driving video.mp4 --out result.mp4 [--crop auto] [--find-best-frame]

From Python (the model and options from fomm/animation.py, the library this stage runs):

    model = load_animation_model(config, "vox-cpk.pth.tar", device)
    animate(model, config, "photo.jpg", "video.mp4", "result.mp4", AnimateOptions(crop="auto"))

Frames stream from the driving video through the model in batches (`--batch-size`) and
straight into the encoder, so memory does not grow with the video's length. The output
has the driving video's fps and frame count and, for mp4, its audio cut to the video's
length; it appears at `--out` only when complete (core/media.VideoWriter), whatever
fails on the way. (GIF stores frame delays in 1/100 s, so a gif's rate is rounded: 30 fps
plays at 33.3.) With `--stream` the run is handed to fomm/stream.py. The frames come from
fomm/animation.Animator; reading, writing and the audio mux from core/media.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core import devices as precision
from core import media
from core.errors import UserError
from fomm import source_crop, stream
from fomm.animation import (LAYOUTS, AnimateOptions, Animator, batch_size, batched, check_options,
                            load_animation_model, model_device, resolve_device)
from fomm.api import MotionTransferModel
from fomm.config import Config, load_config
from fomm.families import NAMES

# The animation modes of MRAA's and TPSMM's demos (standard = absolute motion).
MODES = ("standard", "relative", "avd")

logger = logging.getLogger(__name__)


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
    driving_box: source_crop.CropBox | None
    best_frame: int
    animator: Animator                  # holds the cropped source (animator.source_frame)


def prepare(model: MotionTransferModel, config: Config, source_path: str | Path,
            driving_path: str | Path, out_path: str | Path,
            options: AnimateOptions = AnimateOptions()) -> AnimationPlan:
    """Check every input, crop the source, fix the driving crop and the initial frame.

    Everything that can be wrong with the inputs raises UserError here, before any file
    is opened for writing.
    """
    from core.outputs import check_out_file
    out_path, driving_path = Path(out_path), Path(driving_path)
    check_options(options, out_path)
    check_out_file(out_path, {"--source": source_path, "--driving": driving_path})
    size = tuple(config.dataset_params.frame_shape[:2])
    source_image = source_crop.load_source(source_path)
    info = media.probe(driving_path)
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
    initial = source_crop.prepare(media.nth_frame(driving_path, best), driving_box, size)
    paste_back = None
    if source_crop.wants_paste_back(options.paste_back, options.crop, source_image.shape, size,
                                    options.layout == "side-by-side"):
        paste_back = source_crop.PasteBack(source_image, source_box, even=out_path.suffix.lower() == ".mp4")
    animator = Animator.from_frames(model, source, initial, options, model_device(model), config,
                                    paste_back=paste_back, fps=info.fps)
    has_audio = options.audio and info.has_audio and out_path.suffix.lower() == ".mp4"
    return AnimationPlan(model, config, driving_path, out_path, options, info.fps, end, has_audio,
                         driving_box, best, animator)


def run(plan: AnimationPlan, progress: Callable[[int], None] | None = None) -> AnimationResult:
    """Animate and write `plan.out_path`; it appears only when complete (video and audio).

    An error on the way aborts the writer and removes every temporary file.
    `progress(n)` is called with the number of frames done after each batch.
    """
    from core import provenance
    start = time.perf_counter()
    size = tuple(plan.config.dataset_params.frame_shape[:2])
    generation = provenance.generation_or_warn(plan.options.provenance, plan.config,
                                               plan.driving_path.name, plan.out_path.name)
    with media.atomic_path(plan.out_path) as final:
        video_path = media.temp_file(plan.out_path.parent, f".{plan.out_path.stem}.", ".video.mp4") \
            if plan.has_audio else final
        try:
            with media.VideoWriter(video_path, plan.fps) as writer:
                done = _animate_frames(plan.animator, plan.driving_path, plan.driving_box, plan.num_frames,
                                       size, provenance.marking(writer, generation), progress)
            if plan.has_audio:
                media.mux_audio(video_path, plan.driving_path, final, done / plan.fps)
            provenance.finalize(final, generation)
        finally:
            if plan.has_audio:
                video_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    logger.info("animate: %d frames at %.2f fps -> %s in %.1f s (%.1f frames/s)",
                done, plan.fps, plan.out_path, seconds, done / max(seconds, 1e-9))
    return AnimationResult(plan.out_path, done, plan.fps, plan.best_frame, seconds, plan.has_audio,
                           plan.animator.frame_shape)


def animate(model: MotionTransferModel, config: Config, source_path: str | Path,
            driving_path: str | Path, out_path: str | Path,
            options: AnimateOptions = AnimateOptions(),
            progress: Callable[[int], None] | None = None) -> AnimationResult:
    """Write `out_path` (mp4/gif): `source_path` moved like `driving_path` (prepare + run)."""
    return run(prepare(model, config, source_path, driving_path, out_path, options), progress)


def _animate_frames(animator: Animator, driving_path, driving_box, end, size, writer, progress) -> int:
    """Stream driving frames [0, end) through the animator in batches into `writer`."""
    done = 0
    frames = (source_crop.prepare(f, driving_box, size) for f in media.iter_frames(driving_path, 0, end))
    for batch in batched(frames, animator.batch_size):
        for frame in animator.animate(batch):
            writer.write(frame)
        done += len(batch)
        if progress is not None:
            progress(len(batch))
    if done == 0:
        raise UserError(f"driving video {str(driving_path)!r} has zero decodable frames")
    return done


def _best_frame(source_image, source_box, driving_path, driving_box, end, options) -> int:
    """Best-frame search on crops at 256 px (dlib's detector needs faces of ~80 px)."""
    from fomm.best_frame import find_best_frame
    side = (256, 256)
    source = source_crop.prepare(source_image, source_box, side) if source_box else source_image
    frames = (source_crop.prepare(f, driving_box, side) if driving_box else f
              for f in media.iter_frames(driving_path, 0, end))
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
    parser.add_argument("--model", choices=list(NAMES),
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
    motion.add_argument("--mode", choices=list(MODES),
                        help="the originals' animation modes: standard (= --absolute), relative (= --relative), "
                             "avd (MRAA's and TPSMM's animation-via-disentanglement network)")
    parser.add_argument("--adapt-scale", action="store_true", default=None,
                        help="scale motion by the ratio of source and driving face sizes")
    parser.add_argument("--find-best-frame", action="store_true",
                        help="start from the driving frame whose landmarks match the source's")
    parser.add_argument("--landmarks", default="auto", choices=["auto", "dlib", "face-alignment"])
    parser.add_argument("--crop", default="none", choices=list(source_crop.CROP_MODES),
                        help="auto: square around the face (face models; pasted back into a larger "
                             "photo, see --paste-back); center; none: resize")
    paste = parser.add_mutually_exclusive_group()
    paste.add_argument("--paste-back", dest="paste_back", action="store_true", default=None,
                       help="composite the animated crop back into the whole photo (feathered edge): the "
                            "output has the photo's size; the default with --crop auto on a photo larger "
                            "than the model's input")
    paste.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                       help="write the model's square crop, not the whole photo")
    parser.add_argument("--smooth", action="store_true",
                        help="steady motion: One-Euro filter the driving keypoints and jacobians over time "
                             "(fomm/smoothing.py)")
    parser.add_argument("--smooth-strength", type=float, default=1.0,
                        help="--smooth: how hard (default 1; 2 steadier with more lag, 0.5 lighter)")
    parser.add_argument("--layout", default="result", choices=list(LAYOUTS),
                        help="result, or side-by-side: source | driving | result (with paste-back: the "
                             "photo | the driving crop at the photo's height | the result photo)")
    parser.add_argument("--show-keypoints", action="store_true")
    parser.add_argument("--no-audio", dest="audio", action="store_false")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="frames per model call (default: measured per device and precision, "
                             "core/devices.py DEFAULT_BATCH)")
    parser.add_argument("--max-frames", type=int, help="animate only the first N driving frames")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", default="auto", metavar="{auto,fp32,bf16,int8}",
                        help="auto: int8 where the CPU has VNNI/AMX-INT8 and the calibration stays within "
                             "the error budget, else bf16 autocast + channels_last where the device has "
                             "native bf16 (AMX/AVX512-BF16 CPUs, bf16 GPUs), else fp32")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile (inductor) the float paths; pays only on long videos "
                             "(README: Fast inference)")
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
    relative = norm.use_relative_movement if args.relative is None else args.relative
    if args.mode is not None:
        relative = args.mode == "relative"
    return AnimateOptions(
        relative=relative, avd=args.mode == "avd",
        relative_jacobian=norm.use_relative_jacobian,
        adapt_scale=norm.adapt_movement_scale if args.adapt_scale is None else args.adapt_scale,
        find_best_frame=args.find_best_frame, landmarks=args.landmarks, crop=args.crop,
        layout=args.layout, show_keypoints=args.show_keypoints, audio=args.audio,
        batch_size=args.batch_size, max_frames=args.max_frames, precision=args.precision,
        compile=args.compile, provenance=args.provenance, paste_back=args.paste_back, smooth=args.smooth,
        smooth_strength=args.smooth_strength)


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
        from fomm.export import open_export
        onnx_model = open_export(onnx_dir)
        config = onnx_model.config if args.config is None else load_config(args.config, args.overrides)
        args.precision = "fp32"  # the graphs are fp32
    else:
        if args.config is None:
            raise UserError("--config is required (a name like vox-256 or a yaml path)")
        config = load_config(args.config, args.overrides)
        if args.checkpoint is None and not args.random_weights:
            raise UserError("--checkpoint is required (or --random-weights for a smoke test)")
    options = options_from_args(args, config)
    live_target = args.stream and media.is_live_target(args.out)
    check_options(options, args.out, live_target)
    if args.stream:
        stream.check_stream_options(args.queue, args.stream_fps, args.stall_timeout)
    if not live_target:
        from core.outputs import check_out_file
        check_out_file(args.out, {"--source": args.source, "--driving": args.driving, "--checkpoint": args.checkpoint,
                                  "--config": args.config, "--backend": onnx_dir})
    device = resolve_device(args.device)
    precision.keep_freed_memory()
    chosen = precision.resolve(options.precision, device, options.compile)
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
    with tqdm(total=plan.num_frames, unit="frame", desc="animate", disable=None) as bar:  # none off a terminal
        result = run(plan, bar.update)
    print(f"{result.path}: {result.num_frames} frames at {result.fps:.3f} fps, "
          f"{result.frame_size[1]}x{result.frame_size[0]}, audio={'yes' if result.has_audio else 'no'}, "
          f"{result.frames_per_second:.1f} frames/s")
    return 0
