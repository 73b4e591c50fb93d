"""TPSMM as ONNX graphs (`pipeline run export` for a tpsmm model; fomm/export.py calls this).

The folder holds `kp_detector.onnx` (frames (B, 3, H, W) -> `fg_kp` (B, 5K, 2)),
`generator.onnx` (source and the source and driving keypoints -> `prediction`: the dense motion
with its K TPS solves and the inpainting network, demo.py's path without background motion),
`avd_network.onnx` (source and driving keypoints -> the AVD keypoints), `config.yaml` and
`export.json` with the parity check. Batch is a dynamic axis; the frame size is the config's.

ONNX has no linear solve or matrix inverse, so while tracing the TPS systems are solved by
`fomm.tpsmm.tps.pivoted_solve` (Gauss-Jordan elimination with partial pivoting in plain
arithmetic); the parity check compares the graphs with the torch model, which solves with
torch.linalg.solve. The relative transfer (demo.py's relative_kp, the hull areas) stays in
Python, the same code the torch model runs (`OnnxTPSMM.transfer`).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import UserError
from fomm.tpsmm.tps import traceable_solve

KP_FILE, GENERATOR_FILE, AVD_FILE = "kp_detector.onnx", "generator.onnx", "avd_network.onnx"
GENERATOR_INPUTS = ("source", "kp_source", "kp_driving")
AVD_INPUTS = ("kp_source", "kp_driving")


class KeypointGraph(nn.Module):
    def __init__(self, kp_detector: nn.Module):
        super().__init__()
        self.kp_detector = kp_detector

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.kp_detector(frames)["fg_kp"]  # (B, 5K, 2)


class GeneratorGraph(nn.Module):
    """Dense motion (no background motion, no dropout) then inpainting: the prediction."""

    def __init__(self, dense_motion_network: nn.Module, inpainting_network: nn.Module):
        super().__init__()
        self.dense_motion_network = dense_motion_network
        self.inpainting_network = inpainting_network

    def forward(self, source: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        dense = self.dense_motion_network(source, {"fg_kp": kp_driving}, {"fg_kp": kp_source})
        return self.inpainting_network(source, dense)["prediction"]  # (B, 3, H, W)


class AvdGraph(nn.Module):
    def __init__(self, avd_network: nn.Module):
        super().__init__()
        self.avd_network = avd_network

    def forward(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        return self.avd_network({"fg_kp": kp_source}, {"fg_kp": kp_driving})["fg_kp"]


def export_graphs(model, staging: Path, frames: torch.Tensor, export) -> None:
    """Trace the three graphs of `model` (a TPSMM, fp32, eval) into `staging`; `export(module,
    args, path, inputs, outputs)` is fomm/export.py's exporter."""
    if model.name != "tpsmm":
        raise UserError(f"fomm.tpsmm.onnx exports tpsmm models, not {model.name!r}")
    nets = {name: copy.deepcopy(module).float().eval() for name, module in model.named_children()}
    source, driving = frames[:1], frames[1:]
    batch = driving.shape[0]
    with torch.no_grad():
        kp_source = nets["kp_detector"](source)["fg_kp"].expand(batch, -1, -1).contiguous()
        kp_driving = nets["kp_detector"](driving)["fg_kp"]
    with torch.no_grad(), traceable_solve():
        export(KeypointGraph(nets["kp_detector"]).eval(), (driving,), staging / KP_FILE, ["frames"], ["fg_kp"])
        export(GeneratorGraph(nets["dense_motion_network"], nets["inpainting_network"]).eval(),
               (source.expand(batch, -1, -1, -1).contiguous(), kp_source, kp_driving), staging / GENERATOR_FILE,
               list(GENERATOR_INPUTS), ["prediction"])
        export(AvdGraph(nets["avd_network"]).eval(), (kp_source, kp_driving), staging / AVD_FILE,
               list(AVD_INPUTS), ["fg_kp"])


def check_parity(folder: Path, model, frames: torch.Tensor) -> dict[str, float]:
    """Max abs differences between onnxruntime and the torch model on `frames` (0: the
    source), at batch 1 and at all driving frames, for keypoints, the three modes' predictions."""
    from fomm.export import _abs_diff, _nan_max
    runner = OnnxTPSMM(folder, check_config=False)
    source, driving = frames[:1], frames[1:]
    diffs = {"fg_kp": 0.0, "prediction": 0.0, "avd": 0.0}
    model = model.float().eval()
    for batch in sorted({1, driving.shape[0]}):
        chunk = driving[:batch]
        with torch.no_grad():
            want_source, want_kp = model.detect(source), model.detect(chunk)
            sources = {"fg_kp": want_source["fg_kp"].expand(batch, -1, -1)}
            want = model.generate(source.expand(batch, -1, -1, -1), sources, want_kp)["prediction"]
            want_avd = model.transfer(sources, want_kp, want_kp, avd=True)["fg_kp"]
        got_source, got_kp = runner.detect(source), runner.detect(chunk)
        got = runner.generate(source, got_source, got_kp)["prediction"]
        got_avd = runner.transfer({"fg_kp": got_source["fg_kp"].expand(batch, -1, -1)}, got_kp, got_kp,
                                  avd=True)["fg_kp"]
        diffs["fg_kp"] = _nan_max([diffs["fg_kp"], _abs_diff(got_kp["fg_kp"], want_kp["fg_kp"])])
        diffs["prediction"] = _nan_max([diffs["prediction"], _abs_diff(got, want)])
        diffs["avd"] = _nan_max([diffs["avd"], _abs_diff(got_avd, want_avd)])
    return diffs


class OnnxTPSMM(nn.Module):
    """The exported TPSMM graphs behind the model contract animate uses, with onnxruntime on
    the CPU. No parameters: nothing for torch to run."""

    name = "tpsmm"

    def __init__(self, folder: str | Path, threads: int | None = None, check_config: bool = True):
        super().__init__()
        import onnxruntime as ort

        from fomm.export import CONFIG_FILE
        folder = Path(folder)
        missing = [f for f in (KP_FILE, GENERATOR_FILE, AVD_FILE) + ((CONFIG_FILE,) if check_config else ())
                   if not (folder / f).is_file()]
        if missing:
            raise UserError(f"--backend onnxruntime {str(folder)!r}: expected a tpsmm folder written by "
                            f"`pipeline run export`; {missing} missing")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        self.sessions = {name: ort.InferenceSession(str(folder / name), options, providers=providers)
                         for name in (KP_FILE, GENERATOR_FILE, AVD_FILE)}

    def detect(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        (fg_kp,) = self.sessions[KP_FILE].run(None, {"frames": _numpy(frames)})
        return {"fg_kp": torch.from_numpy(fg_kp)}

    def generate(self, source: torch.Tensor, motion_source: dict, motion_driving: dict) -> dict[str, torch.Tensor]:
        batch = motion_driving["fg_kp"].shape[0]
        feeds = (source.expand(batch, -1, -1, -1), motion_source["fg_kp"].expand(batch, -1, -1),
                 motion_driving["fg_kp"])
        (prediction,) = self.sessions[GENERATOR_FILE].run(
            None, {name: _numpy(t) for name, t in zip(GENERATOR_INPUTS, feeds)})
        return {"prediction": torch.from_numpy(prediction)}

    def transfer(self, motion_source, motion_driving, motion_initial, relative=True, relative_jacobian=True,
                 adapt_movement_scale=False, avd=False):
        """demo.py's modes, relative_kp being the torch model's own code."""
        from fomm.tpsmm.transfer import relative_motion
        if avd:
            feeds = (motion_source["fg_kp"], motion_driving["fg_kp"])
            (fg_kp,) = self.sessions[AVD_FILE].run(None, {name: _numpy(t) for name, t in zip(AVD_INPUTS, feeds)})
            return {"fg_kp": torch.from_numpy(fg_kp)}
        if not relative:
            return dict(motion_driving)
        return relative_motion(motion_source, motion_driving, motion_initial, adapt_movement_scale)

    def keypoints(self, motion: dict) -> torch.Tensor:
        return motion["fg_kp"]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy())
