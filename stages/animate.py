"""`pipeline run animate`: animate a photo with the motion of a driving video.

    pipeline run animate --config vox-256 --checkpoint vox-cpk.pth.tar \\
        --source photo.jpg --driving video.mp4 --out result.mp4 [--crop auto] [--find-best-frame]

`options(args)` turns the flags into one `fomm.jobs.AnimateRequest` (the config loaded,
paths as Paths, the device and the precision resolved once, every value checked before any
work); `run(request)` animates it with `fomm.jobs.animate_request` (from a file,
fomm/animation.py, or live with `--stream`, fomm/stream.py). The web app (stages/app.py) builds the same
request through the same parser and calls the same `run`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core import devices, media
from core.errors import UserError
from fomm import source_crop, stream
from fomm.animation import (LAYOUTS, MODES, AnimateOptions, AnimationResult, Progress, check_options,
                            resolve_device)
from fomm.config import Config, load_config
from fomm.families import NAMES
from fomm.jobs import AnimateRequest, LiveSettings, animate_request
from stages.common import add_provenance_flag


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
    add_provenance_flag(parser)


def options_from_args(args: argparse.Namespace, config: Config,
                      precision: devices.Precision | None = None) -> AnimateOptions:
    """The animation options the flags say, the config giving the motion defaults; the
    precision `precision`, else `--precision` resolved for `--device`."""
    norm = config.animate_params.normalization_params
    relative = norm.use_relative_movement if args.relative is None else args.relative
    if args.mode is not None:
        relative = args.mode == "relative"
    if precision is None:
        precision = devices.resolve(args.precision, resolve_device(args.device), args.compile)
    return AnimateOptions(
        relative=relative, avd=args.mode == "avd",
        relative_jacobian=norm.use_relative_jacobian,
        adapt_scale=norm.adapt_movement_scale if args.adapt_scale is None else args.adapt_scale,
        find_best_frame=args.find_best_frame, landmarks=args.landmarks, crop=args.crop,
        layout=args.layout, show_keypoints=args.show_keypoints, audio=args.audio,
        batch_size=args.batch_size, max_frames=args.max_frames, precision=precision,
        compile=args.compile, provenance=args.provenance, paste_back=args.paste_back, smooth=args.smooth,
        smooth_strength=args.smooth_strength)


def _backend(args: argparse.Namespace) -> Path | None:
    """The ONNX export folder of `--backend onnxruntime DIR`, None for torch."""
    name, *rest = args.backend
    if name == "torch" and not rest:
        return None
    if name == "onnxruntime" and len(rest) == 1:
        return Path(rest[0])
    raise UserError(f"--backend {' '.join(args.backend)!r}: expected torch or onnxruntime DIR")


def options(args: argparse.Namespace) -> AnimateRequest:
    """The request the flags describe, every value checked (UserError) before any work."""
    onnx_dir = _backend(args)
    device = resolve_device(args.device)
    if onnx_dir is not None:
        from fomm.export import export_config
        config = export_config(onnx_dir) if args.config is None else load_config(args.config, args.overrides)
        chosen = devices.resolve("fp32", "cpu")  # the graphs are fp32, run on the CPU
    else:
        if args.config is None:
            raise UserError("--config is required (a name like vox-256 or a yaml path)")
        config = load_config(args.config, args.overrides)
        if args.checkpoint is None and not args.random_weights:
            raise UserError("--checkpoint is required (or --random-weights for a smoke test)")
        chosen = devices.resolve(args.precision, device, args.compile)
    animate_options = options_from_args(args, config, chosen)
    live_target = args.stream and media.is_live_target(args.out)
    check_options(animate_options, args.out, live_target)
    live = None
    if args.stream:
        stream.check_stream_options(args.queue, args.stream_fps, args.stall_timeout)
        live = LiveSettings(args.stream_fps, args.queue, args.drop, args.stall_timeout, args.realtime)
    if not live_target:
        from core.outputs import check_out_file
        check_out_file(args.out, {"--source": args.source, "--driving": args.driving, "--checkpoint": args.checkpoint,
                                  "--config": args.config, "--backend": onnx_dir})
    live_input = args.stream and not Path(args.driving).is_file()  # a camera, a pipe or a URL
    return AnimateRequest(
        config=config, source=Path(args.source), driving=args.driving if live_input else Path(args.driving),
        out=args.out if live_target else Path(args.out), options=animate_options, device=device,
        checkpoint=None if args.checkpoint is None else Path(args.checkpoint), onnx_dir=onnx_dir,
        model_name=args.model, live=live)


def run(request: AnimateRequest, progress: Progress | None = None) -> AnimationResult | stream.StreamReport:
    """Animate the request: from a file (`progress(done, total)` after each batch) or, with
    `request.live`, live."""
    return animate_request(request, progress)


def main(args: argparse.Namespace) -> int:
    request = options(args)
    if request.live is not None:
        report = run(request)
        # stdout may be carrying the video itself
        print(report.summary(), file=sys.stderr if str(request.out) == "-" else sys.stdout)
        return 0
    from tqdm import tqdm
    bar = tqdm(unit="frame", desc="animate", disable=None)  # none off a terminal

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    try:
        result = run(request, progress)
    finally:
        bar.close()
    print(result.summary())
    return 0
