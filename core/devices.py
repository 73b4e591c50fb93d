"""`--precision auto|fp32|bf16|int8`: the numeric path inference runs on, picked per device.

`auto` picks the fastest path that stays within the error budget (benchmarks/animate.py
measures them all):
- CUDA: bf16 autocast and channels_last where the GPU supports bf16, else fp32;
- CPU with 8-bit dot products (AVX512-VNNI, AVX-VNNI or AMX-INT8 in the CPU flags) and
  onnxruntime: int8 (core/quantize.py: the generating convolutions in int8, calibrated on
  the first driving frames and kept only where the calibration's check frames stay within
  the budget; otherwise the float path below, `Precision.within_budget`);
- CPU with native bf16 (AMX-BF16 or AVX512-BF16 in the CPU flags): bf16 autocast and
  channels_last; oneDNN then runs the convolutions on the bf16 units;
- any other CPU: fp32, channels_last as well (oneDNN runs nhwc convolutions without
  reordering their inputs and outputs; benchmarks/fp32_path.py). Without native bf16,
  oneDNN would emulate bf16 at a loss.
`--precision int8` on a CPU without the instructions (or without onnxruntime) runs the best
float path instead, saying so in one log line. `compiled` (`--compile`) adds torch.compile
(inductor) to the float paths' inference copy.

What is precision sensitive stays fp32 under autocast: the whole keypoint detector
(`Precision.keypoint_context`), and inside the FOMM modules keypoint softmax and coordinates, jacobians and their inverses (`fomm.blocks.full_precision`
regions), sampling grids and `grid_sample` (`fomm.blocks.warp` samples in the wider of the
two dtypes). bf16 coordinates would be about one pixel off at 256 px.

Inference also runs under `torch.inference_mode` (no autograd bookkeeping), on a copy of
the model whose eval-mode BatchNorms are folded into the convolutions before them
(`Precision.inference_model`).
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from core.errors import UserError

logger = logging.getLogger(__name__)

# Caches that later processes reuse: int8 calibrations where a checkpoint's folder cannot be
# written (core/quantize.py), inductor's compiled kernels (compile_inference).
CACHE_DIR = Path(os.environ.get("MOTION_TRANSFER_CACHE", Path.home() / ".cache" / "motion-transfer"))

PRECISIONS = ("auto", "fp32", "bf16", "int8")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# 8-bit multiply-accumulate into 32 bits in one instruction (onnxruntime's u8s8 kernels use
# them; without them its AVX2/AVX-512 kernels add pairs in 16 bits, which can saturate).
NATIVE_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")


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


def cpu_has_native_int8() -> bool:
    """True when the CPU has 8-bit dot-product instructions: AVX512-VNNI (Cascade Lake, Zen 4
    and later), AVX-VNNI (Alder Lake and later) or AMX-INT8 (Sapphire Rapids and later)."""
    return any(flag in cpu_flags() for flag in NATIVE_INT8_FLAGS)


@functools.lru_cache(maxsize=1)
def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Precision:
    """The resolved path: `name` is fp32, bf16 (the autocast dtype) or int8 (the generating
    convolutions in int8 by onnxruntime, the rest in fp32: core/quantize.py);
    `channels_last` the memory format of the model and its inputs; `compiled` whether the
    inference copy's detect and generate run through torch.compile. An int8 path carries
    its `fallback`, the best float path, which it turns into where nothing in the model can
    run in int8, or where its calibration breaks the error budget and `budget_decides`
    (auto; int8 asked for by name stays int8 then, with a warning)."""
    device_type: str
    name: str
    channels_last: bool
    compiled: bool = False
    fallback: Precision | None = None
    budget_decides: bool = False

    @property
    def int8(self) -> bool:
        return self.name == "int8"

    def within_budget(self, holds: bool, measured: str) -> Precision:
        """The path to run once the int8 calibration measured its error against fp32
        (`holds`: within the budget; `measured`: the figures, for the log): this one, or
        its float fallback when the budget does not hold and int8 was not asked for."""
        if holds or not self.budget_decides:
            if not holds:
                logger.warning("--precision int8: %s; running int8 as asked", measured)
            return self
        logger.warning("int8: %s; running %s instead", measured, self.fallback)
        return self.fallback

    def without_int8(self, why: str) -> Precision:
        """The float path to run where the model has nothing to run in int8 (`why`)."""
        logger.warning("int8: %s; running %s instead", why, self.fallback)
        return self.fallback

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

    def inference_model(self, model: nn.Module) -> nn.Module:
        """A copy of `model` for inference on this path: in this path's memory format, with its
        eval-mode BatchNorms folded into the convolutions that feed them (`fold_batchnorm`;
        the folded weights keep the format), its `detect` and `generate` compiled when
        `compiled`. The caller's model is left as it is, so training can go on with it. A
        model with no BatchNorm is not copied: it is only put in the path's format, as
        `prepare_model` does (and may hold what cannot be copied, such as the onnxruntime
        sessions of `fomm.export.OnnxFomm`). The int8 path's copy is the fp32 one; its
        calibration then puts int8 regions in it (core/quantize.py)."""
        if not any(isinstance(module, nn.BatchNorm2d) for module in model.modules()):
            copied = self.prepare_model(model)
        else:
            copied = fold_batchnorm(self.prepare_model(module_copy(model)))
        if self.compiled and hasattr(copied, "generate"):
            copied = compile_inference(copied if copied is not model else module_copy(model))
        return copied

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in this path's memory format."""
        return images.contiguous(memory_format=self.memory_format) if self.channels_last else images

    def __str__(self) -> str:
        layout = " channels_last" if self.channels_last else ""
        return f"{self.name}{layout}{' compiled' if self.compiled else ''} on {self.device_type}"


def resolve(precision: str, device: torch.device | str, compiled: bool = False,
            calibrates: bool = True) -> Precision:
    """The path `precision` (auto, fp32, bf16, int8) means on `device`, with torch.compile
    when `compiled` (float paths only: the int8 regions are onnxruntime graphs already);
    UserError for a bad name. `calibrates`: the caller runs the int8 calibration (the
    Animator does; reconstruct and benchmark do not, so for them auto is a float path and
    int8 an error)."""
    device_type = torch.device(device).type
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {list(PRECISIONS)}")
    if precision == "int8" and not calibrates:
        raise UserError("--precision int8 is animate's path (calibrated on the driving frames); "
                        "expected auto, fp32 or bf16 here")
    if precision == "int8" and device_type != "cpu":
        raise UserError(f"--precision int8 runs on CPUs; on {device_type} use auto, bf16 or fp32")
    asked = precision
    native = _native_bf16(device_type)
    best_float = "bf16" if native else "fp32"
    int8 = calibrates and device_type == "cpu" and cpu_has_native_int8() and onnxruntime_available()
    if precision == "int8" and not int8:
        _warn_no_int8(best_float)
        precision = best_float
    if precision == "auto":
        precision = "int8" if int8 else best_float
    if precision == "bf16" and not native:
        if device_type == "cuda":
            raise UserError("--precision bf16: this GPU has no bf16 support; use fp32 or auto")
        _warn_emulated_bf16()
    if precision == "int8":
        # auto keeps int8 only within the budget; int8 asked for stays int8
        return Precision(device_type, "int8", channels_last=True, fallback=_float_path(device_type, best_float, compiled),
                         budget_decides=asked == "auto")
    return _float_path(device_type, precision, compiled)


def _float_path(device_type: str, name: str, compiled: bool) -> Precision:
    # channels_last pays where bf16 convolutions run on oneDNN or tensor cores, and in fp32 on
    # CPU too once the model is in it as well (benchmarks/fp32_path.py, CPU s/frame at batch
    # 4: 1.03x and 1.24x in two runs on a busy machine, 1.18x idle before); fp32 CUDA keeps
    # the default layout (not measured on a GPU yet).
    return Precision(device_type, name, channels_last=name == "bf16" or device_type == "cpu", compiled=compiled)


@functools.lru_cache(maxsize=1)
def _warn_no_int8(best_float: str) -> None:
    missing = "onnxruntime" if cpu_has_native_int8() else f"{'/'.join(NATIVE_INT8_FLAGS)} in the CPU flags"
    logger.warning("--precision int8: no %s; running %s instead", missing, best_float)


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


def compile_inference(model: nn.Module) -> nn.Module:
    """`model.detect` and `model.generate` through torch.compile (inductor), in place.

    Graphs are specialised to the shapes they see (a shorter last batch compiles once
    more). Inductor's FX graph cache lives under ~/.cache/motion-transfer/inductor (unless
    TORCHINDUCTOR_CACHE_DIR says otherwise), so a later process with the same model and
    shapes loads the compiled kernels instead of generating them; it still traces the
    model (benchmarks/animate.py counts both in the whole-process time)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE_DIR / "inductor"))
    model.detect = torch.compile(model.detect, dynamic=False)
    model.generate = torch.compile(model.generate, dynamic=False)
    return model


def module_copy(model: nn.Module) -> nn.Module:
    """A copy of `model`'s modules whose parameters and buffers share storage with the
    original's: copying the tensors too would cost a pass over the weights that the
    memory-format change or the folding then repeats. Safe because neither writes into a
    tensor: `Module.to` and `fold_batchnorm` put new tensors in the copy's own modules."""
    memo = {id(tensor): tensor for tensor in model.buffers()}
    memo.update({id(param): nn.Parameter(param.detach(), requires_grad=param.requires_grad)
                 for param in model.parameters()})
    return copy.deepcopy(model, memo)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that reads only a Conv2d's output into that
    convolution (w' = w g / sqrt(var + eps), b' = (b - mean) g / sqrt(var + eps) + beta) and
    replace it by an identity, in place; returns `model`. A model in training mode is
    returned unchanged (its BatchNorms normalise with batch statistics).

    The conv -> BatchNorm pairs come from each module's traced graph (torch.fx), not from
    attribute names: a pair is folded only when the convolution's output goes to that
    BatchNorm alone and each is called once. A module that cannot be traced (control flow
    on tensor values) keeps its BatchNorms. The result equals the unfolded model's to
    float32 rounding: the same products, summed in another order.
    """
    if model.training:
        return model
    folded = 0
    for module in list(model.modules()):
        if any(isinstance(child, nn.BatchNorm2d) for child in module.children()):
            for conv_name, norm_name in _conv_batchnorm_pairs(module):
                conv, norm = module.get_submodule(conv_name), module.get_submodule(norm_name)
                # new tensors, never written in place: the weights may be shared (module_copy)
                with torch.no_grad():
                    conv.weight, conv.bias = fuse_conv_bn_weights(
                        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
                        norm.weight, norm.bias)
                _set_submodule(module, norm_name, nn.Identity())
                folded += 1
    logger.debug("folded %d BatchNorm layers into their convolutions", folded)
    return model


def _conv_batchnorm_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv, BatchNorm) submodule names where the BatchNorm reads only that conv's output."""
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001 - any tracing failure just means: leave it unfolded
        logger.debug("%s: not traceable, BatchNorms left as they are", type(module).__name__)
        return []
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(module.get_submodule(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        if (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1
                and isinstance(module.get_submodule(source.target), nn.Conv2d)
                and calls[source.target] == 1 and calls[node.target] == 1
                and module.get_submodule(node.target).running_mean is not None):
            pairs.append((source.target, node.target))
    return pairs


def _set_submodule(module: nn.Module, name: str, value: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, value)


# Frames per model call when --batch-size is not given, per (device, precision). CPU fp32: 8,
# from benchmarks/fp32_path.py on a busy 2-core AVX-512 Xeon (vox-256, 256 px, the inference
# copy, channels_last, medians of interleaved repeats): wall s/frame 1.58 / 1.25 / 1.18 and CPU
# s/frame 1.01 / 0.82 / 0.78 at batch 4 / 8 / 16. The deep hourglass layers (1024 channels at
# 2x2 to 8x8 px) read their weights once per call, and the source is encoded once per batch,
# so both pay off over more frames; 16 adds little for twice the activations. An earlier
# sweep on the idle machine (benchmarks/animate.py, before these changes) had wall frames/s
# flat from 4 to 8. CPU bf16 + channels_last: 8, from benchmarks/animate.py (CPU
# s/frame 2.3/1.2/0.86/0.58 at 1/2/4/8, still falling at 8: AMX tiles fill up with larger
# batches). The old default of 8 spent most of its system time in page faults, not in the
# batch (see keep_freed_memory). GPU values are a starting point until benchmarks/gpu.py has
# run on one.
DEFAULT_BATCH = {("cpu", "fp32"): 8, ("cpu", "bf16"): 8, ("cpu", "int8"): 8, ("cuda", "fp32"): 32,
                 ("cuda", "bf16"): 32}


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
