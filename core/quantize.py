"""The int8 path: a model's convolution blocks run by onnxruntime's quantised kernels.

Which route: onnxruntime's static QDQ quantisation measured faster here than PyTorch's own
x86 stack (benchmarks/int8_route.py, README "Fast inference": on a 2-core Zen 5 with
AVX512-VNNI, vox-256 generator at batch 4, onnxruntime int8 about 1.6-1.9x torch's bf16
path, torch's eager oneDNN int8 convolutions 1.1x it: they quantise and dequantise around
every convolution and leave ReLU, pooling, upsampling and concatenation in float; PT2E
through inductor fuses those too but measured slower than onnxruntime after minutes of
export and compilation, paid again in every new process).

What runs in int8 is found from the model, not named per family (`find_regions`): the
largest sub-modules that
- are called while the model generates frames and never while it detects motion (the
  keypoint detector, jacobians, TPS solves, SVDs and inverses stay in float),
- take tensors and return a tensor or a list of tensors, and
- contain a convolution.
For FOMM these are the dense motion network's hourglass and mask / occlusion heads and
the generator's encoder, bottleneck, decoder blocks and final convolution; the grid
building, softmax-weighted motion and every `grid_sample` between them stay float. Each
region is traced to ONNX with a dynamic batch axis and quantised statically: int8 weights
with a scale per output channel (symmetric), uint8 activations with a scale and zero point
per tensor from the min / max seen on real frames (the calibration); the ReLUs, pools,
upsamplings, concatenations and additions between its convolutions stay in int8 (QDQ
pairs that onnxruntime fuses into its integer kernels). A region's 4-D inputs and outputs
are NHWC in its graph (a transpose at each end): onnxruntime runs its integer convolutions
NHWC and cancels those transposes against its own, and torch's channels_last tensors are
NHWC in memory, so a region boundary copies nothing. With NCHW boundaries every tensor
crossing one was copied up to four times (torch to NCHW, onnxruntime to NHWC and back, torch
to channels_last): on 2 Zen 5 cores the generator's first down block (batch 8, 64 channels at
256 px) took 146 ms with them and 90 ms without, five batches of vox-256 3.9-5.0 s against
4.4-5.8 s in the same process (a whole 48-frame run: no difference above the noise).

The calibration frames should be spread over the driving clip (fomm.animation does that
for a file): activation ranges from the first frames alone clip the later ones when the
head moves further (on a tiny FOMM trained on real faces, p99 4.9/255 on later frames with
ranges from the first four, 2.4/255 with ranges from eight spread over the clip). The
ranges of each region's inputs are stored with the calibration; while `range_guard` is
on (auto's int8), a region whose input leaves its range by more than GUARD of the range's
width raises OutOfRange before running, and the caller runs that batch on its float path
(a driving clip the calibration never saw, a stream's later frames).

The calibration is stored as a folder of ONNX graphs (protobuf: tensors and operator names,
parsed by onnxruntime, nothing in it is executed as Python code, unlike a pickle) and a
JSON manifest keyed by the checkpoint's sha256 and the model config's hash, with the sha256
of every graph checked when read back. It is written to a staging folder and renamed into
place, so a reader sees all of it or none.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from core.devices import CACHE_DIR, cpu_has_native_int8, module_copy

logger = logging.getLogger(__name__)

# 2: NHWC region boundaries and the calibrated input ranges (a format-1 calibration is redone)
FORMAT = 2
MANIFEST = "manifest.json"
VERDICTS = "verified.json"  # budgets measured on later runs' inputs (`remembered_budget`)
MAX_VERDICTS = 256
SHA_MEMO = "checkpoint.sha256.json"
OPSET = 17
# onnxruntime ops quantised inside a region: the convolutions and what lies between them.
REGION_OPS = ("Conv", "Relu", "LeakyRelu", "AveragePool", "MaxPool", "Resize", "Concat", "Add",
              "BatchNormalization")
# A convolution alone with fewer output channels than this stays float: int8 does not pay on
# it (onnxruntime's integer kernels are built for wide outputs; FOMM's 7x7 prediction,
# mask and occlusion heads, 3, K+1 and 1 channels, measured slower in int8 than in fp32),
# and heads are where the rounding would show (the prediction, the motion masks' softmax).
MIN_INT8_CHANNELS = 16
# The error budget of a fast path against fp32 (issue 12): per frame, mean and 99th
# percentile of |fast - fp32| over the predicted pixels in [0, 1].
BUDGET_MEAN, BUDGET_P99 = 1 / 255, 4 / 255
# How far (a fraction of the calibrated range's width) a region's input may leave the range
# its calibration saw before the batch runs on the float path instead (`range_guard`). On
# the tiny trained FOMM of the docstring, batches whose bottleneck input left its range by
# 9-20 % stayed within the budget (p99 <= 1.7/255) and those that left it by 32 % or more
# broke it (p99 4.6/255 and, on another photo, 46/255).
GUARD = 0.25


# --------------------------------------------------------------------------- the budget
def frame_errors(fast: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame mean and 99th percentile of |fast - reference|, (T,) each, for (T, C, H, W)."""
    diff = (fast.float() - reference.float()).abs().flatten(1)  # (T, C H W)
    return diff.mean(dim=1), torch.quantile(diff.double(), 0.99, dim=1).float()


@dataclass(frozen=True)
class Budget:
    """The measured error of the int8 path against fp32 on the calibration's check frames."""
    frames: int
    worst_mean: float   # in [0, 1] pixel units
    worst_p99: float

    @property
    def holds(self) -> bool:
        return self.worst_mean <= BUDGET_MEAN and self.worst_p99 <= BUDGET_P99

    @classmethod
    def measure(cls, fast: torch.Tensor, reference: torch.Tensor) -> "Budget":
        means, p99 = frame_errors(fast, reference)
        return cls(int(fast.shape[0]), float(means.max()), float(p99.max()))

    def __str__(self) -> str:
        return (f"worst frame mean {self.worst_mean * 255:.3f}/255, p99 {self.worst_p99 * 255:.3f}/255 "
                f"over {self.frames} frames ({'within' if self.holds else 'outside'} the budget "
                f"{BUDGET_MEAN * 255:g}/255, {BUDGET_P99 * 255:g}/255)")


# --------------------------------------------------------------------------- where it is stored
def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_sha256(checkpoint: Path, beside: Path) -> str:
    """The checkpoint's sha256, remembered in `beside`/checkpoint.sha256.json with the file's
    size, mtime and inode (a released checkpoint is 700 MB: half a second to hash each run);
    hashed again whenever one of those differs. The memo is only written into a `beside`
    folder that holds a calibration already (`remember_sha256`): a run that fails before
    calibrating leaves nothing beside the checkpoint."""
    stat = checkpoint.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
    try:
        saved = json.loads((beside / SHA_MEMO).read_text())
        if {key: saved.get(key) for key in stamp} == stamp and len(saved.get("sha256", "")) == 64:
            return saved["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = file_sha256(checkpoint)
    if beside.is_dir():
        remember_sha256(checkpoint, beside, digest)
    return digest


def remember_sha256(checkpoint: Path, beside: Path, digest: str) -> None:
    """Write the memo `checkpoint_sha256` reads (nothing when the folder is read-only)."""
    stat = checkpoint.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
    memo = beside / SHA_MEMO
    try:
        partial = memo.with_name(f".{memo.name}.{os.getpid()}")
        partial.write_text(json.dumps({**stamp, "sha256": digest}))
        partial.replace(memo)
    except OSError:
        pass  # a read-only folder: hashed every run


@dataclass(frozen=True)
class CalibrationKey:
    """What a calibration belongs to: the weights (the checkpoint's sha256) and the model's
    architecture and frame size (the sha256 of the config text that builds it)."""
    checkpoint_sha256: str
    config_sha256: str

    @property
    def folder_name(self) -> str:
        return f"{self.checkpoint_sha256[:16]}-{self.config_sha256[:12]}"


@dataclass(frozen=True)
class CalibrationStore:
    """Where the calibration of one checkpoint lives: `<checkpoint>.int8/<key>/` beside it,
    or under ~/.cache/motion-transfer/int8/ when the checkpoint's folder is not writable.
    The key is computed on first use (the int8 path only)."""
    checkpoint: Path
    config_text: str

    @classmethod
    def for_checkpoint(cls, checkpoint: str | Path, config_text: str) -> "CalibrationStore":
        return cls(Path(checkpoint), config_text)

    @property
    def beside(self) -> Path:
        return self.checkpoint.with_name(self.checkpoint.name + ".int8")

    @functools.cached_property
    def key(self) -> CalibrationKey:
        return CalibrationKey(checkpoint_sha256(self.checkpoint, self.beside),
                              hashlib.sha256(self.config_text.encode()).hexdigest())

    @property
    def candidates(self) -> list[Path]:
        return [self.beside / self.key.folder_name, CACHE_DIR / "int8" / self.key.folder_name]

    def find(self) -> Path | None:
        """The first stored calibration folder (its manifest present), or None."""
        return next((folder for folder in self.candidates if (folder / MANIFEST).is_file()), None)

    def write(self, fill: Callable[[Path], None]) -> Path | None:
        """Let `fill(staging)` write a calibration, then rename it into place (the first
        writable candidate); None, with a warning, when no place can be written."""
        for folder in self.candidates:
            try:
                folder.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
            except OSError:
                continue
            try:
                fill(staging)
                staging.chmod(0o755)
                try:
                    staging.rename(folder)
                except OSError:  # there is one already: another process's stays, a broken one goes
                    if _readable(folder):
                        return folder
                    shutil.rmtree(folder)
                    staging.rename(folder)
                if folder.parent == self.beside:
                    remember_sha256(self.checkpoint, self.beside, self.key.checkpoint_sha256)
                return folder
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        logger.warning("int8: no writable place for the calibration (%s); it is redone next run",
                       ", ".join(map(str, self.candidates)))
        return None


def _readable(folder: Path) -> bool:
    try:
        Calibration.read(folder)
    except (OSError, ValueError, KeyError):
        return False
    return True


# --------------------------------------------------------------------------- regions
@dataclass
class _Calls:
    """What the hooks saw of one module."""
    in_detect: bool = False
    in_generate: bool = False
    tensor_io: bool = True           # every generate call: tensors in, a tensor or tensors out
    output_kind: str = "tensor"      # tensor | list
    inputs: list | None = None       # per generate call: a tuple of numpy arrays

    def add_inputs(self, arrays: tuple) -> None:
        """Inputs of one more call; shapes other than the batch must match the first call's
        (a region's graph has a dynamic batch axis only)."""
        if self.inputs and [a.shape[1:] for a in arrays] != [a.shape[1:] for a in self.inputs[0]]:
            self.tensor_io = False
        self.inputs = (self.inputs or []) + [arrays]


def _output_kind(output) -> str | None:
    if isinstance(output, torch.Tensor):
        return "tensor"
    if isinstance(output, (list, tuple)) and output and all(isinstance(o, torch.Tensor) for o in output):
        return "list"
    return None


class Recorder:
    """Forward hooks on every sub-module of `model`: which are called in which phase, their
    inputs in the generate phase (for calibration), their input / output kinds."""

    def __init__(self, model: nn.Module):
        self.model, self.phase = model, "detect"
        self.calls: dict[str, _Calls] = {}
        # only a module holding a convolution can be a region: the others' inputs are not kept
        self.candidates = {name for name, module in model.named_modules()
                           if any(isinstance(m, nn.Conv2d) for m in module.modules())}
        self.handles = []
        for name, module in model.named_modules():
            if name:
                self.handles.append(module.register_forward_pre_hook(self._before(name), with_kwargs=True))
                self.handles.append(module.register_forward_hook(self._after(name)))

    def _before(self, name: str):
        def hook(module, args, kwargs):
            calls = self.calls.setdefault(name, _Calls())
            if self.phase == "detect":
                calls.in_detect = True
            elif kwargs or not args or not all(isinstance(a, torch.Tensor) for a in args):
                calls.in_generate, calls.tensor_io = True, False
            else:  # copied before the call: a module may change its input in place
                calls.in_generate = True
                if name in self.candidates:
                    calls.add_inputs(tuple(_numpy(a) for a in args))
        return hook

    def _after(self, name: str):
        def hook(module, args, output):
            calls = self.calls[name]
            if self.phase != "detect":
                kind = _output_kind(output)
                if kind is None or (calls.inputs and len(calls.inputs) > 1 and kind != calls.output_kind):
                    calls.tensor_io = False
                else:
                    calls.output_kind = kind
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def find_regions(model: nn.Module, calls: dict[str, _Calls], keep_float: Sequence[str] = (),
                 inside: str = "") -> list[str]:
    """The largest sub-modules (of `inside`, default the whole model) called only while
    generating, with tensors in and out, that hold a convolution (top-down: a qualifying
    module is taken whole, its children not). `keep_float` names sub-modules that estimate
    motion inside generation (the family's `float_modules`, e.g. X2Face's networks, whose
    outputs are sampling grids)."""
    regions: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if path in keep_float:
                continue
            seen = calls.get(path)
            has_conv = any(isinstance(m, nn.Conv2d) for m in child.modules())
            narrow_head = isinstance(child, nn.Conv2d) and child.out_channels < MIN_INT8_CHANNELS
            if not has_conv or narrow_head or (seen is not None and seen.in_detect):
                continue  # nothing to quantise, or (part of) motion detection: float
            if seen is not None and seen.in_generate and seen.tensor_io and not _detect_inside(path, calls):
                regions.append(path)
            else:
                visit(path, child)
    visit(inside, model.get_submodule(inside) if inside else model)
    return regions


def _detect_inside(path: str, calls: dict[str, _Calls]) -> bool:
    return any(name.startswith(path + ".") and seen.in_detect for name, seen in calls.items())


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy())


# --------------------------------------------------------------------------- building a calibration
def quantise_regions(model: nn.Module, calls: dict[str, _Calls], regions: Sequence[str], folder: Path,
                     keep_float: Sequence[str] = ()) -> list[dict]:
    """Export each region to ONNX and quantise it on the inputs it was called with; the
    graphs go to `folder`; returns the manifest's region entries. A region that does not
    export or quantise (an operator ONNX or the quantiser lacks) is replaced by its parts."""
    entries, pending = [], list(regions)
    while pending:
        name = pending.pop(0)
        try:
            entries.append(_quantise_region(model.get_submodule(name), name, calls[name], folder, len(entries)))
        except Exception as err:  # noqa: BLE001 - whatever the exporter or quantiser refuses: try the parts
            logger.info("int8: %s stays float (%s: %s); trying its parts", name, type(err).__name__, err)
            pending[:0] = find_regions(model, calls, keep_float, inside=name)
    return entries


class _Inputs:
    """The calibration inputs of one region, call by call, as onnxruntime's quantiser reads them
    (its CalibrationDataReader protocol: `get_next` until None)."""

    def __init__(self, names: list[str], calls_inputs: list[tuple[np.ndarray, ...]]):
        self.items = [dict(zip(names, arrays)) for arrays in calls_inputs]

    def get_next(self):
        return self.items.pop(0) if self.items else None

    def __iter__(self):
        return iter(self.get_next, None)


def _quantise_region(module: nn.Module, name: str, seen: _Calls, folder: Path, index: int) -> dict:
    """Export region `name` to ONNX (dynamic batch) and quantise it statically; its manifest entry."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    first = seen.inputs[0]
    inputs = [f"input{i}" for i in range(len(first))]
    float_file, int8_file = folder / f".region{index:02d}.float.onnx", folder / f"region{index:02d}.onnx"
    example = tuple(torch.from_numpy(a) for a in first)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        outputs = module(*example)
        count = 1 if seen.output_kind == "tensor" else len(outputs)
        names = [f"output{i}" for i in range(count)]
        torch.onnx.export(_Listed(module) if seen.output_kind == "list" else module, example, str(float_file),
                          input_names=inputs, output_names=names, opset_version=OPSET, dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in inputs + names})
    try:
        with _quiet_onnxruntime():
            quantize_static(str(float_file), str(int8_file), _Inputs(inputs, seen.inputs),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=not cpu_has_native_int8(),
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(REGION_OPS), calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    finally:
        float_file.unlink(missing_ok=True)
    nhwc_in = [a.ndim == 4 for a in first]
    nhwc_out = [o.dim() == 4 for o in ([outputs] if seen.output_kind == "tensor" else outputs)]
    _nhwc_boundaries(int8_file, nhwc_in, nhwc_out)
    ranges = [[float(min(call[i].min() for call in seen.inputs)), float(max(call[i].max() for call in seen.inputs))]
              for i in range(len(first))]
    return {"module": name, "file": int8_file.name, "outputs": seen.output_kind, "count": count,
            "nhwc_inputs": nhwc_in, "nhwc_outputs": nhwc_out, "input_ranges": ranges,
            "sha256": file_sha256(int8_file)}


def _nhwc_boundaries(path: Path, inputs: Sequence[bool], outputs: Sequence[bool]) -> None:
    """Rewrite the graph at `path` so that its flagged (4-D) inputs and outputs are NHWC: a
    transpose to NCHW after each such input, one to NHWC before each such output; the
    tensors keep their names (onnxruntime's optimiser cancels these transposes against the
    ones it puts around its NHWC integer convolutions)."""
    import onnx
    from onnx import helper
    model = onnx.load(str(path))
    graph = model.graph

    def rename_uses(old: str, new: str) -> None:
        for node in graph.node:
            node.input[:] = [new if name == old else name for name in node.input]

    for flag, value in zip(inputs, graph.input):
        if flag:
            inner = f"{value.name}.nchw"
            rename_uses(value.name, inner)
            graph.node.insert(0, helper.make_node("Transpose", [value.name], [inner], perm=[0, 3, 1, 2]))
            _permute_shape(value, (0, 2, 3, 1))
    for flag, value in zip(outputs, graph.output):
        if flag:
            inner = f"{value.name}.nchw"
            rename_uses(value.name, inner)
            for node in graph.node:
                node.output[:] = [inner if name == value.name else name for name in node.output]
            graph.node.append(helper.make_node("Transpose", [inner], [value.name], perm=[0, 2, 3, 1]))
            _permute_shape(value, (0, 2, 3, 1))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _permute_shape(value, order: tuple[int, ...]) -> None:
    """Reorder the dimensions of a graph input's or output's declared shape."""
    dims = [type(d)() for d in value.type.tensor_type.shape.dim]
    for new, d in zip(dims, value.type.tensor_type.shape.dim):
        new.CopyFrom(d)
    del value.type.tensor_type.shape.dim[:]
    value.type.tensor_type.shape.dim.extend([dims[i] for i in order])


@contextlib.contextmanager
def _quiet_onnxruntime():
    """Drop the advice onnxruntime's quantiser logs on the root logger (pre-processing, shape
    inference): it is about its own tooling, not something a user of animate can act on."""
    def keep(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname
    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


class _Listed(nn.Module):
    """A module returning a list, as a tuple of outputs (what the ONNX exporter takes)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *inputs):
        return tuple(self.module(*inputs))


# --------------------------------------------------------------------------- running a calibration
class OutOfRange(Exception):
    """A region's input left the range its calibration saw (under `range_guard`)."""

    def __init__(self, region: str, beyond: float):
        super().__init__(f"an input of {region} leaves its calibrated range by {beyond:.0%} of its width")
        self.region, self.beyond = region, beyond


_GUARDED = contextvars.ContextVar("int8_range_guard", default=False)


@contextlib.contextmanager
def range_guard(on: bool = True):
    """While on, regions raise OutOfRange for inputs beyond their calibrated ranges (GUARD)."""
    token = _GUARDED.set(on)
    try:
        yield
    finally:
        _GUARDED.reset(token)


def beyond_range(tensor: torch.Tensor, low: float, high: float) -> float:
    """How far `tensor`'s values leave [low, high], as a fraction of its width (0 inside).
    `tensor` should be contiguous: torch's aminmax over a channels_last layout is 20x slower
    than over the same memory flat."""
    smallest, largest = torch.aminmax(tensor.detach().reshape(-1))
    width = max(high - low, 1e-12)
    return max(0.0, (low - float(smallest)) / width, (float(largest) - high) / width)


class OnnxRegion(nn.Module):
    """A region of the model run by onnxruntime: tensors in, a tensor or a list out (fp32, on
    CPU); 4-D tensors cross as NHWC (channels_last tensors without a copy)."""

    def __init__(self, session, entry: dict):
        super().__init__()
        self.session, self.outputs, self.region = session, entry["outputs"], entry["module"]
        self.input_names = [i.name for i in session.get_inputs()]
        self.nhwc_inputs, self.nhwc_outputs = entry["nhwc_inputs"], entry["nhwc_outputs"]
        self.input_ranges = entry["input_ranges"]

    def forward(self, *inputs: torch.Tensor):
        # the graph's layout (a channels_last tensor's NHWC view is contiguous: no copy)
        inputs = [(t.permute(0, 2, 3, 1) if nhwc else t).detach().float().contiguous()
                  for t, nhwc in zip(inputs, self.nhwc_inputs)]
        if _GUARDED.get():
            beyond = max(beyond_range(t, *r) for t, r in zip(inputs, self.input_ranges))
            if beyond > GUARD:
                raise OutOfRange(self.region, beyond)
        feed = {name: t.cpu().numpy() for name, t in zip(self.input_names, inputs)}
        results = self.session.run(None, feed)
        tensors = [torch.from_numpy(r).permute(0, 3, 1, 2) if nhwc else torch.from_numpy(r)
                   for r, nhwc in zip(results, self.nhwc_outputs)]
        return tensors[0] if self.outputs == "tensor" else tensors

    def __deepcopy__(self, memo):  # sessions cannot be copied; the graph is read-only
        return self

    def extra_repr(self) -> str:
        return f"{self.region}: onnxruntime int8"


@dataclass(frozen=True)
class Calibration:
    """A read calibration: the manifest and the folder its graphs are in."""
    folder: Path
    manifest: dict

    @property
    def budget(self) -> Budget:
        return Budget(**self.manifest["budget"])

    @classmethod
    def read(cls, folder: Path) -> "Calibration":
        """The manifest and checked graphs of `folder`; ValueError when anything is off."""
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{folder}: calibration format {manifest.get('format')!r}, expected {FORMAT}")
        for entry in manifest["regions"]:
            path = folder / entry["file"]
            if Path(entry["file"]).name != entry["file"] or file_sha256(path) != entry["sha256"]:
                raise ValueError(f"{path}: not the graph the manifest names (sha256 differs)")
            ranges, flags = entry["input_ranges"], entry["nhwc_inputs"] + entry["nhwc_outputs"]
            if not (all(isinstance(flag, bool) for flag in flags) and len(ranges) == len(entry["nhwc_inputs"])
                    and all(len(pair) == 2 and all(isinstance(v, float) and np.isfinite(v) for v in pair)
                            for pair in ranges)):
                raise ValueError(f"{folder / MANIFEST}: region {entry['module']!r} has no valid layout and "
                                 "input ranges (expected booleans and finite [low, high] pairs)")
        return cls(folder, manifest)

    def apply(self, model: nn.Module, threads: int | None = None) -> nn.Module:
        """Put the regions' int8 graphs in place of their modules in `model` (in place)."""
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # torch's threads run the float ops between two regions: onnxruntime's must not spin
        # on the cores meanwhile
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for entry in self.manifest["regions"]:
            session = ort.InferenceSession(str(self.folder / entry["file"]), options,
                                           providers=["CPUExecutionProvider"])
            _set_submodule(model, entry["module"], OnnxRegion(session, entry))
        return model


RANGES, BUDGET = "ranges", "budget"


def remembered_budget(folder: Path, key: str) -> Budget | None:
    """The budget measured before on the inputs `key` names with the calibration in
    `folder` (`remember_budget`), or None (never measured, or the file is unreadable)."""
    try:
        entry = json.loads((folder / VERDICTS).read_text())[key]
        return Budget(int(entry["frames"]), float(entry["worst_mean"]), float(entry["worst_p99"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_budget(folder: Path, key: str, budget: Budget) -> None:
    """Keep `budget` for the inputs `key` names beside the calibration (the MAX_VERDICTS
    latest); nothing when the folder cannot be written."""
    try:
        verdicts = json.loads((folder / VERDICTS).read_text())
        verdicts = verdicts if isinstance(verdicts, dict) else {}
    except (OSError, ValueError):
        verdicts = {}
    verdicts.pop(key, None)
    verdicts[key] = {"frames": budget.frames, "worst_mean": budget.worst_mean, "worst_p99": budget.worst_p99}
    kept = dict(list(verdicts.items())[-MAX_VERDICTS:])
    try:
        partial = folder / f".{VERDICTS}.{os.getpid()}"
        partial.write_text(json.dumps(kept))
        partial.replace(folder / VERDICTS)
    except OSError:
        pass  # a read-only calibration: measured again next run


def calibrate(model: nn.Module, detect: Callable[[], object], generate: Callable[[nn.Module, str], torch.Tensor],
              store: CalibrationStore | None) -> tuple[nn.Module, Budget] | None:
    """Calibrate the int8 regions of `model` (an fp32 inference copy, left as it is) on real
    frames; returns the int8 copy and its measured error against fp32.

    `detect()` runs motion detection and transfer for the calibration frames (what it calls
    stays float); `generate(model, RANGES)` generates, with `model`, the frames whose
    activations set the ranges, and `generate(model, BUDGET)` the frames the budget is
    measured on (frames the ranges did not see, where there are any), returning the
    predictions (fomm.animation.Animator: frames spread over the driving clip, every other
    one for each part, and a few stock photographs as further sources for the ranges).
    With a `store` the calibration is written there for later runs. None when the model
    has no region to run in int8.
    """
    fingerprint = weights_fingerprint(model) if store is None else None
    if fingerprint in _REMEMBERED:  # the same weights calibrated before in this process
        regions, budget = _REMEMBERED[fingerprint]
        quantised = module_copy(model)
        for name, region in regions:
            _set_submodule(quantised, name, region)
        return quantised, budget
    recorder = Recorder(model)
    try:
        with torch.inference_mode():
            detect()
            recorder.phase = "generate"
            seen = int(generate(model, RANGES).shape[0])
    finally:
        recorder.close()
    with torch.inference_mode():
        reference = generate(model, BUDGET)
    keep_float = getattr(model, "float_modules", ())
    regions = find_regions(model, recorder.calls, keep_float)
    if not regions:
        return None
    staging, stored = Path(tempfile.mkdtemp(prefix="motion-transfer-int8-")), None
    try:
        entries = quantise_regions(model, recorder.calls, regions, staging, keep_float)
        if not entries:
            return None
        regions = [entry["module"] for entry in entries]
        manifest = manifest_for(store.key if store else None, entries, seen)
        quantised = Calibration(staging, manifest).apply(module_copy(model))  # graphs read into memory
        with torch.inference_mode():
            budget = Budget.measure(generate(quantised, BUDGET), reference)
        manifest["budget"] = {"frames": budget.frames, "worst_mean": budget.worst_mean,
                              "worst_p99": budget.worst_p99}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        stored = store.write(lambda folder: _copy_into(staging, folder)) if store is not None else None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if fingerprint is not None:
        _REMEMBERED[fingerprint] = ([(name, quantised.get_submodule(name)) for name in regions], budget)
    where = f"stored in {stored}" if stored else "not stored" + (": no checkpoint file" if store is None else "")
    logger.info("int8: %d regions calibrated on %d frames (%s): %s", len(regions), seen, where, budget)
    return quantised, budget


# Calibrations of weights that came from no checkpoint file (random weights, a model built in
# code), by `weights_fingerprint`, for the rest of the process: a second Animator on the same
# model (a stream's warm-up and live loop, a test's several) reuses the first one's graphs.
_REMEMBERED: dict[str, tuple[list[tuple[str, nn.Module]], Budget]] = {}


def forget_calibrations() -> None:
    """Drop the process's remembered calibrations (a benchmark comparing ways of calibrating)."""
    _REMEMBERED.clear()


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of every parameter and buffer of `model`, with their names."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _copy_into(source: Path, target: Path) -> None:
    for path in source.iterdir():
        shutil.copy2(path, target / path.name)


def manifest_for(key: CalibrationKey | None, regions: list[dict], frames: int) -> dict:
    """The calibration's manifest (its budget is added once measured)."""
    import onnxruntime
    return {"format": FORMAT, "checkpoint_sha256": key.checkpoint_sha256 if key else None,
            "config_sha256": key.config_sha256 if key else None, "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "calibration_frames": frames, "regions": regions,
            "weights": "int8, symmetric, one scale per output channel",
            "activations": "uint8, one scale and zero point per tensor: min / max over the calibration frames"}


def _set_submodule(module: nn.Module, name: str, value: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, value)
