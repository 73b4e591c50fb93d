"""`pipeline run export`: a model's networks as ONNX graphs (FOMM here; MRAA and TPSMM by their hooks).
Its command line is stages/export.py; this module is the library (export_checkpoint, export_onnx,
open_export, OnnxFomm, check_frames).

    pipeline run export --config vox-256 --checkpoint vox-cpk.pth.tar --format onnx --out vox-onnx/ \\
        [--check-frames driving.mp4]
    pipeline run animate --backend onnxruntime vox-onnx/ --source photo.jpg --driving video.mp4 --out a.mp4

The folder holds `kp_detector.onnx` (frames (B, 3, H, W) in [0, 1] -> keypoints `value`
(B, K, 2) and `jacobian` (B, K, 2, 2), FOMM Eq. 4), `generator.onnx` (source and the
source and driving keypoints -> `prediction` (B, 3, H, W), the dense motion of Eq. 5-6 and
the occlusion-aware generator of §3.3 inside), the resolved `config.yaml`, and
`export.json` with the parity check. Batch is a dynamic axis of every input and output;
the frame size is the config's.

The relative motion transfer (§3.5, Eq. 8) stays outside the graphs, in Python, so
animating with onnxruntime follows the same code as with torch (`OnnxFomm.transfer`).
Before the folder appears, both graphs are run by onnxruntime on real frames
(`--check-frames`; a smooth synthetic image otherwise) against the torch modules; a max abs
difference above 1e-4 is an error and nothing is written.

Graphs are traced in fp32 by torch's TorchScript exporter at opset 17: it measured exact
(max diff ~1e-7) where the dynamo exporter's graph was ~6e-3 off on the generator. ONNX has
no matrix inverse, so while tracing `torch.inverse` of the 2x2 jacobians is the closed form
adj(J)/det(J).

Other families export through two hooks of their model class: `write_onnx(staging, frames)`
traces the family's graphs into the staging folder and returns their parity with the torch
model, and `onnx_runner(folder, threads)` runs them behind the model contract. This module
does the rest for every family (the staging folder, config, report, tolerance and the
rename), and `open_export` picks the runner by the folder's config. MRAA: fomm/mraa/export.py
(closed-form SVD and inverses); TPSMM: fomm/tpsmm/onnx.py (its TPS solves become Gauss-Jordan
elimination while tracing). Monkey-Net and X2Face are not exported yet.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.config import config_to_yaml
from core.errors import UserError
from core.frames import to_tensor
from fomm.blocks import inverse_2x2
from fomm.config import Config, load_config

logger = logging.getLogger(__name__)

KP_FILE, GENERATOR_FILE, CONFIG_FILE, REPORT_FILE = ("kp_detector.onnx", "generator.onnx", "config.yaml",
                                                     "export.json")
GENERATOR_INPUTS = ("source", "kp_source_value", "kp_source_jacobian", "kp_driving_value",
                    "kp_driving_jacobian")
TOLERANCE = 1e-4
OPSET = 17
# Families with graphs: FOMM here, the others through their model's write_onnx / onnx_runner.
EXPORTED = ("fomm", "mraa", "tpsmm")
# What an export folder may hold: every family's graphs, the config and the report (an earlier
# export is replaced only when it holds nothing else: core.outputs.check_only_own_files).
EXPORT_FILES = (KP_FILE, GENERATOR_FILE, "region_predictor.onnx", "avd_network.onnx", CONFIG_FILE, REPORT_FILE)
EARLIER = (REPORT_FILE, KP_FILE, "region_predictor.onnx")  # an export from before the stage marks


# --------------------------------------------------------------------------- graphs
class KeypointGraph(nn.Module):
    """The keypoint detector with tuple outputs (ONNX graphs have no dicts)."""

    def __init__(self, kp_detector: nn.Module):
        super().__init__()
        self.kp_detector = kp_detector

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kp = self.kp_detector(frames)
        return kp["value"], kp["jacobian"]  # (B, K, 2), (B, K, 2, 2)


class GeneratorGraph(nn.Module):
    """The occlusion-aware generator taking keypoints as flat tensors; returns the prediction."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, source, kp_source_value, kp_source_jacobian, kp_driving_value, kp_driving_jacobian):
        out = self.generator(source, kp_driving={"value": kp_driving_value, "jacobian": kp_driving_jacobian},
                             kp_source={"value": kp_source_value, "jacobian": kp_source_jacobian})
        return out["prediction"]  # (B, 3, H, W)

# (Both wrappers are put in eval mode before export: the exporter restores the wrapper's
# mode afterwards, recursively, and a wrapper left in train mode would leave the wrapped
# BatchNorms in train mode too.)


@contextlib.contextmanager
def traceable_inverse():
    """`torch.inverse` as `inverse_2x2` while tracing (the dense motion network inverts the
    driving jacobians, FOMM Eq. 4); restored afterwards."""
    original = torch.inverse

    def inverse(matrix, *args, **kwargs):
        return inverse_2x2(matrix) if matrix.shape[-2:] == (2, 2) else original(matrix, *args, **kwargs)

    torch.inverse = inverse
    try:
        yield
    finally:
        torch.inverse = original


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
                          opset_version=OPSET, dynamo=False)


def export_onnx(model, config: Config, out_dir: str | Path, check_frames: np.ndarray,
                inputs: dict | None = None) -> dict:
    """Write the graphs, config and parity report of `model` to `out_dir`.

    `check_frames` (N >= 2, H, W, 3) uint8 at the config's size: frame 0 is the source,
    the others drive it. `out_dir` must be new, empty or an earlier export holding nothing
    else (core.outputs); `inputs` (name -> path) must lie outside it. The folder is written
    beside `out_dir` and switched in whole only when onnxruntime matches torch within
    TOLERANCE. Returns the report (max abs differences per output)."""
    from core import outputs
    name = getattr(model, "name", None)
    write = getattr(model, "write_onnx", None) if name != "fomm" else (lambda staging, frames:
                                                                        _write_fomm(model, staging, frames))
    if write is None:
        families = ", ".join(EXPORTED[:-1]) + f" and {EXPORTED[-1]}"
        raise UserError(f"export supports the {families} families; {getattr(model, 'name', model)!r} "
                        "is not exported yet")
    if name == "fomm" and model.kp_detector.jacobian is None:
        raise UserError("export needs common_params.estimate_jacobian: true (the graphs take jacobians)")
    with outputs.claim(out_dir, "export", inputs or {}, earlier=EARLIER) as out_dir:
        outputs.check_only_own_files(out_dir, EXPORT_FILES)
        report = _export_into(write, name, config, out_dir, to_tensor(check_frames))
    return report


def _export_into(write, name: str, config: Config, out_dir: Path, frames: torch.Tensor) -> dict:
    from core import outputs
    from core.media import temp_dir
    staging = temp_dir(out_dir.parent, f".{out_dir.name}.part-")
    try:
        diffs = write(staging, frames)
        report = {"frames": int(frames.shape[0]), "batches": sorted({1, int(frames.shape[0]) - 1}),
                  "max_abs_diff": diffs, "tolerance": TOLERANCE, "opset": OPSET}
        (staging / CONFIG_FILE).write_text(config_to_yaml(config))
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2))
        worst = _nan_max(report["max_abs_diff"].values())
        if not worst <= TOLERANCE:  # NaN compares false: a NaN output never passes
            if worst != worst:
                raise UserError(f"the parity check found NaN or infinite outputs ({report['max_abs_diff']}); "
                                "expected finite outputs from finite weights; nothing written")
            raise UserError(f"onnxruntime differs from torch by {worst:.2e} (> {TOLERANCE:g}) on the check "
                            f"frames: {report['max_abs_diff']}; nothing written")
        outputs.write_marker(staging, "export")
        # the earlier export (only its own files: checked) is renamed aside, then deleted
        old = out_dir.parent / f".{out_dir.name}.part-old-{os.getpid()}"
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("export: %s graphs in %s, max abs diff %.2e", name, out_dir, worst)
    return report


def _write_fomm(model, staging: Path, frames: torch.Tensor) -> dict[str, float]:
    """FOMM's two graphs into `staging`; their parity with the torch modules."""
    kp_detector = copy.deepcopy(model.kp_detector).float().eval()
    generator = copy.deepcopy(model.generator).float().eval()
    source, driving = frames[:1], frames[1:]
    with torch.no_grad():
        kp_source, kp_driving = kp_detector(source), kp_detector(driving)
    batch = driving.shape[0]
    generator_args = (source.expand(batch, -1, -1, -1).contiguous(),
                      kp_source["value"].expand(batch, -1, -1).contiguous(),
                      kp_source["jacobian"].expand(batch, -1, -1, -1).contiguous(),
                      kp_driving["value"], kp_driving["jacobian"])
    with torch.no_grad(), traceable_inverse():
        _export(KeypointGraph(kp_detector).eval(), (driving,), staging / KP_FILE, ["frames"], ["value", "jacobian"])
        _export(GeneratorGraph(generator).eval(), generator_args, staging / GENERATOR_FILE,
                list(GENERATOR_INPUTS), ["prediction"])
    return check_parity(staging, kp_detector, generator, frames)["max_abs_diff"]


def export_config(folder: str | Path) -> Config:
    """The config an export folder was written with (UserError where it is not an export)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--backend onnxruntime {str(folder)!r} is not a folder; expected a folder "
                        "written by `pipeline run export`")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"--backend onnxruntime {str(folder)!r}: expected a folder written by `pipeline run "
                        f"export`; {CONFIG_FILE} missing")
    return load_config(config_path)


def open_export(folder: str | Path, threads: int | None = None) -> nn.Module:
    """The onnxruntime runner of an export folder: the family its config.yaml names."""
    folder = Path(folder)
    from fomm.registry import model_class
    config = export_config(folder)
    runner = getattr(model_class(config.model_params.name), "onnx_runner", None)
    if runner is None:
        return OnnxFomm(folder, threads)
    model = runner(folder, threads)
    model.config = config
    return model


def _nan_max(values) -> float:
    """The largest of `values`, NaN when any is NaN (the builtin max drops a NaN that comes
    second: max(0.0, nan) is 0.0)."""
    values = [float(v) for v in values]
    return float("nan") if any(v != v for v in values) else max(values)


def _abs_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max |got - want|, NaN when either side holds a NaN or an infinite value."""
    if not (bool(torch.isfinite(got).all()) and bool(torch.isfinite(want).all())):
        return float("nan")
    return float((got - want).abs().max())


def check_parity(folder: Path, kp_detector: nn.Module, generator: nn.Module, frames: torch.Tensor) -> dict:
    """Max abs differences between onnxruntime and torch on `frames` (0: source, rest: driving),
    run at two batch sizes to exercise the dynamic axis."""
    runner = OnnxFomm(folder, check_config=False)
    source, driving = frames[:1], frames[1:]
    diffs = {"value": 0.0, "jacobian": 0.0, "prediction": 0.0}
    for batch in sorted({1, driving.shape[0]}):
        chunk = driving[:batch]
        with torch.no_grad():
            want_kp = kp_detector(chunk)
            want_source = kp_detector(source)
            want = generator(source.expand(batch, -1, -1, -1), kp_driving=want_kp,
                             kp_source={k: v.expand(batch, *v.shape[1:]) for k, v in want_source.items()})
        got_kp = runner.detect(chunk)
        got = runner.generate(source, runner.detect(source), got_kp)
        for key in ("value", "jacobian"):
            diffs[key] = _nan_max([diffs[key], _abs_diff(got_kp[key], want_kp[key])])
        diffs["prediction"] = _nan_max([diffs["prediction"], _abs_diff(got["prediction"], want["prediction"])])
    return {"frames": int(frames.shape[0]), "batches": sorted({1, int(driving.shape[0])}),
            "max_abs_diff": diffs, "tolerance": TOLERANCE, "opset": OPSET}


# --------------------------------------------------------------------------- runtime
class OnnxFomm(nn.Module):
    """The exported graphs behind the model contract animate uses (detect, transfer,
    generate, keypoints), on the CPU with onnxruntime. No parameters: nothing for torch to run."""

    name = "fomm"

    def __init__(self, folder: str | Path, threads: int | None = None, check_config: bool = True):
        super().__init__()
        import onnxruntime as ort
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"--backend onnxruntime {str(folder)!r} is not a folder; expected a folder "
                            "written by `pipeline run export`")
        missing = [f for f in (KP_FILE, GENERATOR_FILE) + ((CONFIG_FILE,) if check_config else ())
                   if not (folder / f).is_file()]
        if missing:
            raise UserError(f"--backend onnxruntime {str(folder)!r}: expected a folder written by "
                            f"`pipeline run export`; {missing} missing")
        self.config = load_config(folder / CONFIG_FILE) if check_config else None
        self.weights_source = f"--backend onnxruntime {str(folder)!r}"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.kp_session = _session(folder / KP_FILE, options, ["frames"], ["value", "jacobian"])
        self.generator_session = _session(folder / GENERATOR_FILE, options, list(GENERATOR_INPUTS), ["prediction"])

    def _run(self, session, feeds: dict) -> list:
        """One graph run; onnxruntime's error (a graph that does not fit the config's frames)
        as one line naming the folder."""
        try:
            return session.run(None, feeds)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidArgument/RuntimeException types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"{self.weights_source}: onnxruntime cannot run the graph on these frames "
                            f"({first[:200]}); expected graphs exported for this config") from None

    def detect(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        value, jacobian = self._run(self.kp_session, {"frames": _numpy(frames)})
        return {"value": torch.from_numpy(value), "jacobian": torch.from_numpy(jacobian)}

    def generate(self, source: torch.Tensor, motion_source: dict, motion_driving: dict) -> dict[str, torch.Tensor]:
        batch = motion_driving["value"].shape[0]
        feeds = [source.expand(batch, -1, -1, -1), motion_source["value"].expand(batch, -1, -1),
                 motion_source["jacobian"].expand(batch, -1, -1, -1), motion_driving["value"],
                 motion_driving["jacobian"]]
        (prediction,) = self._run(self.generator_session, {n: _numpy(t) for n, t in zip(GENERATOR_INPUTS, feeds)})
        return {"prediction": torch.from_numpy(prediction)}

    def transfer(self, motion_source, motion_driving, motion_initial, relative=True, relative_jacobian=True,
                 adapt_movement_scale=False, avd=False):
        """FOMM's relative transfer (§3.5), the very code the torch model runs."""
        from fomm.model import FirstOrderModel
        if avd:
            raise UserError("--mode avd: the exported FOMM graphs have no AVD network; expected --mode standard "
                            "or relative")
        if not relative:
            return dict(motion_driving)
        return FirstOrderModel._relative(dict(motion_driving), motion_source, motion_driving, motion_initial,
                                         relative_jacobian, adapt_movement_scale)

    def keypoints(self, motion: dict) -> torch.Tensor:
        return motion["value"]


def _session(path: Path, options, inputs: list[str], outputs: list[str]):
    """An onnxruntime session of `path` whose graph has exactly these input and output names;
    UserError (one line naming the file) for a file onnxruntime cannot load or another graph."""
    import onnxruntime as ort
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--backend onnxruntime: {str(path)!r} is not a graph onnxruntime can load "
                        f"({first[:200]}); expected a file written by `pipeline run export`") from None
    got_inputs = [i.name for i in session.get_inputs()]
    got_outputs = [o.name for o in session.get_outputs()]
    if got_inputs != inputs or got_outputs != outputs:
        raise UserError(f"--backend onnxruntime: {str(path)!r} has inputs {got_inputs} and outputs "
                        f"{got_outputs}; expected {inputs} -> {outputs} as `pipeline run export` writes")
    return session


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy())


# --------------------------------------------------------------------------- check frames
def check_frames(path: str | Path | None, size: tuple[int, int], count: int = 5) -> np.ndarray:
    """(count, H, W, 3) uint8: the first `count` frames of a video (or an image repeated with
    shifts), resized to `size`; without a path, a smooth synthetic image and shifted copies."""
    from fomm import source_crop
    if path is None:
        logger.warning("export: no --check-frames; checking parity on a synthetic image")
        y, x = np.mgrid[0:size[0], 0:size[1]] / max(size)
        base = np.stack([np.sin(6 * x), np.cos(5 * y), np.sin(4 * (x + y))], -1) * 0.5 + 0.5
        return np.stack([np.roll((base * 255).astype(np.uint8), 3 * i, axis=1) for i in range(count)])
    from core.media import iter_frames
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--check-frames {str(path)!r} does not exist; expected a video or an image")
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
        image = source_crop.resize(source_crop.load_source(path), size)
        return np.stack([np.roll(image, 3 * i, axis=1) for i in range(count)])
    frames = [source_crop.resize(frame, size) for frame in iter_frames(path, 0, count)]
    if len(frames) < 2:
        raise UserError(f"--check-frames {str(path)!r} has {len(frames)} frames; expected at least 2")
    return np.stack(frames)


# --------------------------------------------------------------------------- the stage
def export_checkpoint(config: Config, checkpoint: str | Path | None, out: str | Path,
                      frames_path: str | Path | None = None, inputs: dict | None = None) -> dict:
    """`pipeline run export` (stages/export.py): the model of `config` with the weights of
    `checkpoint` (None: random weights, for benchmarks and tests) exported to `out` by
    export_onnx, its parity checked on `frames_path`'s frames (check_frames); returns the
    report. `inputs` (flag -> path) must lie outside `out`."""
    from fomm.animation import load_animation_model
    model = load_animation_model(config, None if checkpoint is None else str(checkpoint), torch.device("cpu"))
    frames = check_frames(frames_path, tuple(config.dataset_params.frame_shape[:2]))
    return export_onnx(model, config, out, frames, inputs)
