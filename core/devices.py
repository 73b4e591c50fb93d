"""`--precision auto|fp32|bf16`: the numeric path inference runs on, picked per device.

`auto` picks the fastest path that stays within the error budget (benchmarks/animate.py
measures both):
- CUDA: bf16 autocast and channels_last where the GPU supports bf16, else fp32;
- CPU with native bf16 (AMX-BF16 or AVX512-BF16 in the CPU flags): bf16 autocast and
  channels_last; oneDNN then runs the convolutions on the bf16 units;
- any other CPU: fp32 in the default (contiguous) layout. Without native bf16, oneDNN
  would emulate bf16 at a loss, and channels_last alone did not pay off in fp32.

What is precision sensitive stays fp32 under autocast: the whole keypoint detector
(`Precision.keypoint_context`), and inside the FOMM modules keypoint softmax and coordinates, jacobians and their inverses (`fomm.blocks.full_precision`
regions), sampling grids and `grid_sample` (`fomm.blocks.warp` samples in the wider of the
two dtypes). bf16 coordinates would be about one pixel off at 256 px.

Inference also runs under `torch.inference_mode` (no autograd bookkeeping).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
from dataclasses import dataclass

import torch

from core.errors import UserError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 in hardware: AMX-BF16 (Sapphire Rapids and later) or
    AVX512-BF16 (Cooper Lake, Zen 4 and later)."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


@dataclass(frozen=True)
class Precision:
    """The resolved path: `name` is fp32 or bf16 (the autocast dtype), `channels_last` the
    memory format of the model and its inputs."""
    device_type: str
    name: str
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        """bf16 autocast on the device, or nothing for fp32."""
        if self.name == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def context(self):
        """Everything inference runs under: inference_mode plus autocast."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(self.autocast())
        return stack

    def keypoint_context(self):
        """What keypoint detection runs under: inference_mode with autocast off, so the
        detector runs in fp32 on every path. Keypoints from a bf16 hourglass moved enough to
        break the error budget on their own (benchmarks/animate.py, tiny model trained on real
        faces: worst frame mean 1.09/255 and p99 5.3/255 with a bf16 detector, 0.30 and 1.18
        with an fp32 one); the detector is a few per cent of the work."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast(self.device_type, enabled=False))
        return stack

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` in this path's memory format (in place, as `Module.to` is)."""
        return model.to(memory_format=self.memory_format) if self.channels_last else model

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in this path's memory format."""
        return images.contiguous(memory_format=self.memory_format) if self.channels_last else images

    def __str__(self) -> str:
        return f"{self.name}{' channels_last' if self.channels_last else ''} on {self.device_type}"


def resolve(precision: str, device: torch.device | str) -> Precision:
    """The path `precision` (auto, fp32, bf16) means on `device`; UserError for a bad name."""
    device_type = torch.device(device).type
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {list(PRECISIONS)}")
    native = _native_bf16(device_type)
    if precision == "auto":
        precision = "bf16" if native else "fp32"
    if precision == "bf16" and not native:
        if device_type == "cuda":
            raise UserError("--precision bf16: this GPU has no bf16 support; use fp32 or auto")
        _warn_emulated_bf16()
    # channels_last pays where bf16 convolutions run on oneDNN or tensor cores; on fp32 CPU
    # paths the contiguous layout measured as fast or faster (benchmarks/animate.py).
    return Precision(device_type, precision, channels_last=precision == "bf16")


@functools.lru_cache(maxsize=1)
def _warn_emulated_bf16() -> None:
    logger.warning("--precision bf16 on a CPU without native bf16 (flags %s): emulated, "
                   "likely slower than fp32", "/".join(NATIVE_BF16_FLAGS))


def _native_bf16(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return cpu_has_native_bf16()
    return False


# Frames per model call when --batch-size is not given, per (device, precision), from the
# batch sweep of benchmarks/animate.py (vox-256, 256 px, 2-core AMX Xeon, CPU seconds per
# frame at batch 1/2/4/8): fp32 2.7/2.1/1.6/1.4 with wall-clock frames/s flat from 4 on, so 4
# (half the memory of 8); bf16 + channels_last 2.3/1.2/0.86/0.58, still falling at 8 (AMX tiles
# fill up with larger batches). The old default of 8 spent most of its system time in page
# faults, not in the batch (see keep_freed_memory). GPU values are a starting point until
# benchmarks/gpu.py has run on one.
DEFAULT_BATCH = {("cpu", "fp32"): 4, ("cpu", "bf16"): 8, ("cuda", "fp32"): 32, ("cuda", "bf16"): 32}


def default_batch_size(resolved: Precision) -> int:
    return DEFAULT_BATCH.get((resolved.device_type, resolved.name), 1)


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)


@functools.lru_cache(maxsize=1)
def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc to reuse freed buffers instead of handing them back to the kernel.

    By default glibc serves every buffer over its mmap threshold (at most 32 MiB) with a
    fresh mmap and unmaps it on free, so each model call faults its activations in again
    page by page and the kernel zeroes every page: at 256 px, batch 4, 156,000 page faults
    a frame and most of the old default's system time (benchmarks/animate.py). With mmap
    off (M_MMAP_MAX 0) large buffers come from the heap and are reused; the heap is trimmed
    only beyond `trim_threshold` free bytes at its top. For processes that run inference
    (the CLI stages call it); False, changing nothing, outside glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    logger.debug("glibc: mmap for large buffers off, trim threshold %d: %s", trim_threshold, done)
    return done
