"""One animation as a request: what `pipeline run animate` and the web app build (their front
door is stages/animate.py) and the one library call that runs it, from a file
(fomm/animation.py) or live (fomm/stream.py), with the weights of a checkpoint, of an ONNX
export (fomm/export.py) or random ones."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from core import devices as precision
from fomm import stream
from fomm.animation import (AnimateOptions, AnimationResult, Progress, batch_size, load_animation_model,
                            precision_of, prepare, run_plan)
from fomm.api import MotionTransferModel
from fomm.config import Config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveSettings:
    """`--stream`'s settings (fomm/stream.py); checked by the front door."""
    fps: float | None = None           # output fps (None: the input's, else 25)
    queue: int = 2                     # frames waiting at most
    drop: bool = True                  # drop the oldest waiting frame when the model falls behind
    stall_timeout: float | None = None  # s without a new frame before the run ends (None: stream's)
    realtime: bool = False             # read a file at its native rate, like a camera


@dataclass(frozen=True)
class AnimateRequest:
    """One animation, fully resolved (stages/animate.py's `options` builds it from the command
    line, the web app from its page): the config, where the weights come from (a checkpoint,
    an ONNX export folder, or neither: random weights), the model family, the device, the
    files and the options (its precision a resolved Precision). `live` is set for --stream,
    where `driving` may be a camera or a pipe and `out` '-' or a URL."""
    config: Config
    source: Path
    driving: Path | str
    out: Path | str
    options: AnimateOptions
    device: torch.device
    checkpoint: Path | None = None     # None with onnx_dir None: random weights
    onnx_dir: Path | None = None       # --backend onnxruntime DIR
    model_name: str | None = None      # --model (None: the config's)
    live: LiveSettings | None = None   # --stream


def request_model(request: AnimateRequest) -> MotionTransferModel:
    """The request's model: the ONNX export's runner, or the config's model on the device
    with the checkpoint's weights (random ones without a checkpoint)."""
    precision.keep_freed_memory()
    logger.info("animate: %s, batch %d%s", precision_of(request.options, request.device),
                batch_size(request.options, request.device),
                f", onnxruntime graphs from {request.onnx_dir}" if request.onnx_dir else "")
    if request.onnx_dir is not None:
        from fomm.export import open_export
        return open_export(request.onnx_dir)
    return load_animation_model(request.config, request.checkpoint, request.device, request.model_name)


def animate_request(request: AnimateRequest, progress: Progress | None = None
                    ) -> AnimationResult | stream.StreamReport:
    """Animate one request: from a file (`progress(done, total)` after each batch), or live
    with `request.live` (fomm/stream.py)."""
    model = request_model(request)
    if request.live is not None:
        live = request.live
        return stream.run_stream(model, request.config, request.source, str(request.driving), request.out,
                                 request.options, fps=live.fps, queue_size=live.queue, drop=live.drop,
                                 realtime=live.realtime, stall_timeout=stream.STALL_TIMEOUT
                                 if live.stall_timeout is None else live.stall_timeout)
    return run_plan(prepare(model, request.config, request.source, request.driving, request.out,
                            request.options), progress)
