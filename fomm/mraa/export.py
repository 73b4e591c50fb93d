"""MRAA's ONNX graphs for `pipeline run export --format onnx` (fomm/export.py's staging folder
gets them through `MRAA.write_onnx`) and their onnxruntime runner for `animate --backend onnxruntime`.

The folder holds `region_predictor.onnx` (frames (B, 3, H, W) in [0, 1] -> shift (B, K, 2),
covar and affine (B, K, 2, 2)), `generator.onnx` (the source and both frames' region
parameters -> prediction (B, 3, H, W): the pixelwise flow predictor and the generator inside,
no background motion, as animate.py), `avd_network.onnx` where the model has trained AVD
weights (source and driving shift and affine -> the AVD network's shift, affine, covar), the
resolved `config.yaml` and `export.json` with the parity check. The SVD and the 2x2 inverses
are closed forms (fomm/mraa/linalg.py), so the graphs are plain ONNX arithmetic. The relative
mode's convex-hull scale stays outside, in Python, the very code the torch model runs
(`fomm.mraa.transfer.relative_motion`). Batch is a dynamic axis; the frame size is the config's.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import UserError


REGION_FILE, GENERATOR_FILE, AVD_FILE = "region_predictor.onnx", "generator.onnx", "avd_network.onnx"
REGION_OUTPUTS = ("shift", "covar", "affine")
GENERATOR_INPUTS = ("source", "source_shift", "source_covar", "source_affine",
                    "driving_shift", "driving_covar", "driving_affine")
AVD_INPUTS = ("source_shift", "source_affine", "driving_shift", "driving_affine")
AVD_OUTPUTS = ("shift", "affine", "covar")


class RegionGraph(nn.Module):
    """The region predictor with tuple outputs (ONNX graphs have no dicts)."""

    def __init__(self, region_predictor: nn.Module):
        super().__init__()
        self.region_predictor = region_predictor

    def forward(self, frames: torch.Tensor):
        regions = self.region_predictor(frames)
        return tuple(regions[key] for key in REGION_OUTPUTS)


class GeneratorGraph(nn.Module):
    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, source, source_shift, source_covar, source_affine, driving_shift, driving_covar, driving_affine):
        out = self.generator(source, {"shift": driving_shift, "covar": driving_covar, "affine": driving_affine},
                             {"shift": source_shift, "covar": source_covar, "affine": source_affine})
        return out["prediction"]


class AvdGraph(nn.Module):
    def __init__(self, avd_network: nn.Module):
        super().__init__()
        self.avd_network = avd_network

    def forward(self, source_shift, source_affine, driving_shift, driving_affine):
        out = self.avd_network({"shift": source_shift, "affine": source_affine},
                               {"shift": driving_shift, "affine": driving_affine})
        return tuple(out[key] for key in AVD_OUTPUTS)


def _motion(regions: dict, keys=("shift", "covar", "affine")) -> dict:
    return {key: regions[key] for key in keys}


def write_graphs(model, staging: Path, frames: torch.Tensor) -> dict[str, float]:
    """Trace the graphs of an MRAA `model` into `staging` (fomm/export.py's staging folder) and
    return their max abs differences from the torch modules on `frames` (0: the source)."""
    from fomm.export import _export
    region_predictor = copy.deepcopy(model.region_predictor).float().eval()
    generator = copy.deepcopy(model.generator).float().eval()
    avd_network = None if model.avd_weights == "absent" else copy.deepcopy(model.avd_network).float().eval()
    source, driving = frames[:1], frames[1:]
    batch = driving.shape[0]
    with torch.no_grad():
        regions_source, regions_driving = _motion(region_predictor(source)), _motion(region_predictor(driving))
    expanded = {k: v.expand(batch, *v.shape[1:]).contiguous() for k, v in regions_source.items()}
    generator_args = (source.expand(batch, -1, -1, -1).contiguous(), expanded["shift"], expanded["covar"],
                      expanded["affine"], regions_driving["shift"], regions_driving["covar"], regions_driving["affine"])
    with torch.no_grad():
        _export(RegionGraph(region_predictor).eval(), (driving,), staging / REGION_FILE, ["frames"],
                list(REGION_OUTPUTS))
        _export(GeneratorGraph(generator).eval(), generator_args, staging / GENERATOR_FILE,
                list(GENERATOR_INPUTS), ["prediction"])
        if avd_network is not None:
            _export(AvdGraph(avd_network).eval(), (expanded["shift"], expanded["affine"], regions_driving["shift"],
                                                   regions_driving["affine"]),
                    staging / AVD_FILE, list(AVD_INPUTS), [f"avd_{key}" for key in AVD_OUTPUTS])
    return check_parity(staging, region_predictor, generator, avd_network, frames)


def check_parity(folder: Path, region_predictor, generator, avd_network, frames: torch.Tensor) -> dict[str, float]:
    """Max abs differences between onnxruntime and torch on `frames` (0: source, rest: driving)
    at two batch sizes, for the region parameters, the prediction and (with it) the AVD output."""
    from fomm.export import _abs_diff, _nan_max
    runner = OnnxMraa(folder, check_config=False)
    source, driving = frames[:1], frames[1:]
    diffs = {key: 0.0 for key in REGION_OUTPUTS + ("prediction",)}
    if avd_network is not None:
        diffs.update({f"avd_{key}": 0.0 for key in AVD_OUTPUTS})
    for batch in sorted({1, driving.shape[0]}):
        chunk = driving[:batch]
        with torch.no_grad():
            want = region_predictor(chunk)
            want_source = {k: v.expand(batch, *v.shape[1:]) for k, v in _motion(region_predictor(source)).items()}
            prediction = generator(source.expand(batch, -1, -1, -1), _motion(want), want_source)["prediction"]
        got, got_source = runner.detect(chunk), runner.detect(source)
        for key in REGION_OUTPUTS:
            diffs[key] = _nan_max([diffs[key], _abs_diff(got[key], want[key])])
        got_prediction = runner.generate(source, got_source, got)["prediction"]
        diffs["prediction"] = _nan_max([diffs["prediction"], _abs_diff(got_prediction, prediction)])
        if avd_network is not None:
            with torch.no_grad():
                want_avd = avd_network(want_source, want)
            got_avd = runner.transfer({k: v.expand(batch, *v.shape[1:]) for k, v in got_source.items()}, got, got,
                                      avd=True)
            for key in AVD_OUTPUTS:
                diffs[f"avd_{key}"] = _nan_max([diffs[f"avd_{key}"], _abs_diff(got_avd[key], want_avd[key])])
    return diffs


class OnnxMraa(nn.Module):
    """The exported graphs behind the model contract animate uses (detect, transfer, generate,
    keypoints), on the CPU with onnxruntime. No parameters: nothing for torch to run."""

    name = "mraa"

    def __init__(self, folder: str | Path, threads: int | None = None, check_config: bool = True):
        super().__init__()
        import onnxruntime as ort

        from fomm.config import load_config
        from fomm.export import CONFIG_FILE
        folder = Path(folder)
        missing = [f for f in (REGION_FILE, GENERATOR_FILE) + ((CONFIG_FILE,) if check_config else ())
                   if not (folder / f).is_file()]
        if missing:
            raise UserError(f"--backend onnxruntime {str(folder)!r}: expected a folder written by "
                            f"`pipeline run export` for an MRAA model; {missing} missing")
        self.config = load_config(folder / CONFIG_FILE) if check_config else None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        session = lambda name: ort.InferenceSession(str(folder / name), options,  # noqa: E731
                                                    providers=["CPUExecutionProvider"])
        self.region_session, self.generator_session = session(REGION_FILE), session(GENERATOR_FILE)
        self.avd_session = session(AVD_FILE) if (folder / AVD_FILE).is_file() else None

    def detect(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.region_session.run(None, {"frames": _numpy(frames)})
        return {key: torch.from_numpy(value) for key, value in zip(REGION_OUTPUTS, outputs)}

    def generate(self, source: torch.Tensor, motion_source: dict, motion_driving: dict) -> dict[str, torch.Tensor]:
        batch = motion_driving["shift"].shape[0]
        feeds = [source.expand(batch, -1, -1, -1)]
        feeds += [motion_source[key].expand(batch, *motion_source[key].shape[1:]) for key in REGION_OUTPUTS]
        feeds += [motion_driving[key] for key in REGION_OUTPUTS]
        (prediction,) = self.generator_session.run(None, {n: _numpy(t) for n, t in zip(GENERATOR_INPUTS, feeds)})
        return {"prediction": torch.from_numpy(prediction)}

    def transfer(self, motion_source, motion_driving, motion_initial, relative=True, relative_jacobian=True,
                 adapt_movement_scale=False, avd=False):
        """MRAA's modes (fomm.mraa.model.MRAA.transfer): standard, relative, avd."""
        from fomm.mraa.transfer import relative_motion
        if avd:
            if self.avd_session is None:
                raise UserError("--mode avd: this export has no avd_network.onnx (its checkpoint had no AVD "
                                "network); expected --mode standard or relative")
            feeds = [motion_source["shift"], motion_source["affine"], motion_driving["shift"], motion_driving["affine"]]
            outputs = self.avd_session.run(None, {n: _numpy(t) for n, t in zip(AVD_INPUTS, feeds)})
            return {key: torch.from_numpy(value) for key, value in zip(AVD_OUTPUTS, outputs)}
        if not relative:
            return dict(motion_driving)
        return relative_motion(motion_source, motion_driving, motion_initial)

    def keypoints(self, motion: dict) -> torch.Tensor:
        return motion["shift"]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy())
