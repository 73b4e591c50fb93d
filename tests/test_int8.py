"""`--precision int8` (core/quantize.py) on real face frames from ../shared/data, with a tiny
FOMM trained on real face frames: what runs in int8 and what stays float, the error budget
against fp32, the calibration stored beside the checkpoint and read back, and auto's
fallback to float when the budget does not hold.

The CPU flags are faked to name AVX512-VNNI (as tests/test_precision.py fakes them), so the
int8 path runs on every machine; onnxruntime's integer kernels run on any x86-64 CPU."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from core import devices, quantize
from core.config import config_to_yaml
from core.frames import to_tensor
from core.media import ffmpeg_exe, iter_frames
from fomm import source_crop
from fomm.animation import CALIBRATION_PHOTOS, AnimateOptions, Animator, load_animation_model
from fomm.train import resolve_run_config, train

CPU = torch.device("cpu")
# The perceptual loss's VGG19 would triple each step on 2 shared cores: L1 + equivariance
# (as tests/test_train.py does) teach the tiny model enough to move real faces.
FAST = ["train_params.loss_weights.perceptual=[0,0,0,0,0]", "train_params.loss_weights.reconstruction_l1=10"]
STEPS = 24


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    """(config, checkpoint): the tiny FOMM after STEPS steps on three real face clips (64 px)."""
    root = tmp_path_factory.mktemp("faces")
    run = tmp_path_factory.mktemp("run")  # a run folder apart from its data
    for name in ("00", "08", "10"):
        folder = root / "train" / f"demo{name}"
        folder.mkdir(parents=True)
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(shared_data / f"faces/fomm-demo/{name}.mp4"),
                        "-frames:v", "40", "-vf", "scale=64:64", str(folder / "%05d.png")], check=True)
    config = resolve_run_config("tiny", FAST + [f"train_params.max_steps={STEPS}", "train_params.num_repeats=100",
                                                f"train_params.checkpoint_every={STEPS}",
                                                "train_params.image_every=1000"], None)
    train(config, root, run)
    return config, run / "checkpoints" / f"step-{STEPS:07d}.pt"


@pytest.fixture(scope="module")
def frames(shared_data) -> torch.Tensor:
    """(13, 3, 64, 64) frames of a real face clip the model did not train on: 0 is the source."""
    clip = shared_data / "faces" / "liveportrait" / "d12.mp4"
    return to_tensor(np.stack([source_crop.resize(f, (64, 64)) for f in iter_frames(clip, 0, 13)]), CPU)


@pytest.fixture
def vnni(monkeypatch):
    """A CPU with AVX512-VNNI and AVX512-BF16: auto means int8, its fallback bf16."""
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset(("avx2", "avx512f", "avx512_vnni", "avx512_bf16")))


@pytest.fixture
def checkpoint(trained, tmp_path):
    """A copy of the trained checkpoint in a fresh folder: its calibration starts absent."""
    config, path = trained
    copy = tmp_path / "tiny.pt"
    shutil.copy(path, copy)
    return config, copy


def animate(model, frames, precision: str) -> tuple[Animator, torch.Tensor]:
    """Relative motion with adapt scale, frame 1 the initial driving frame, one batch."""
    animator = Animator(model, frames[:1], frames[1:2], AnimateOptions(precision=precision, adapt_scale=True), CPU)
    return animator, animator(frames[1:])["prediction"]


def regions_of(model) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, quantize.OnnxRegion)]


def test_int8_calibrates_on_real_frames_within_the_budget(checkpoint, frames, vnni):
    config, path = checkpoint
    model = load_animation_model(config, path, CPU)
    animator, int8 = animate(model, frames, "int8")
    _, fp32 = animate(model, frames, "fp32")
    assert animator.precision.int8
    means, p99 = quantize.frame_errors(int8, fp32)
    assert means.max() <= 1 / 255 and p99.max() <= 4 / 255, (means.max() * 255, p99.max() * 255)
    assert (int8 - fp32).abs().max() > 1e-4  # the int8 kernels did run

    # motion detection stays float, the generating blocks run in int8, the narrow heads float
    regions = regions_of(animator.model)
    assert not any(name.startswith("kp_detector") for name in regions)
    assert {"generator.dense_motion_network.hourglass", "generator.bottleneck", "generator.first"} <= set(regions)
    for head in ("generator.final", "generator.dense_motion_network.mask", "generator.dense_motion_network.occlusion"):
        assert isinstance(animator.model.get_submodule(head), torch.nn.Conv2d), head
    assert model.generator.bottleneck.__class__ is torch.nn.Sequential  # the caller's model untouched

    # stored beside the checkpoint, keyed by its sha256 and the config's, as JSON and ONNX only
    key = f"{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}-" \
          f"{hashlib.sha256(config_to_yaml(config).encode()).hexdigest()[:12]}"
    folder = path.with_name(path.name + ".int8") / key
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [entry["module"] for entry in manifest["regions"]] == regions
    assert {p.suffix for p in folder.iterdir()} == {".json", ".onnx"}
    # six of the twelve frames and each stock photograph as a source set the ranges
    assert manifest["budget"]["worst_mean"] <= 1 / 255
    assert manifest["calibration_frames"] == 6 + len(CALIBRATION_PHOTOS) and manifest["budget"]["frames"] == 6

    # per output channel weight scales, one scale per activation tensor
    graph = onnx.load(folder / manifest["regions"][regions.index("generator.bottleneck")]["file"]).graph
    initial = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    weight_scales = {initial[p.input[1]].shape for n in convs for p in graph.node
                     if p.op_type == "DequantizeLinear" and p.output[0] == n.input[1]}
    width = model.generator.bottleneck[0].conv1.out_channels
    assert weight_scales == {(width,)}
    activation_scales = [initial[p.input[1]] for n in convs for p in graph.node
                         if p.op_type == "DequantizeLinear" and p.output[0] == n.input[0]]
    assert activation_scales and all(scale.shape == () and scale > 0 for scale in activation_scales)


def test_a_stored_calibration_is_read_back_not_redone(checkpoint, frames, vnni, monkeypatch, caplog):
    config, path = checkpoint
    model = load_animation_model(config, path, CPU)
    _, first = animate(model, frames, "auto")

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated again although a calibration is stored")
    with monkeypatch.context() as patch:
        patch.setattr(quantize, "calibrate", no_calibration)
        again, second = animate(load_animation_model(config, path, CPU), frames, "auto")
    assert again.precision.int8 and regions_of(again.model)
    torch.testing.assert_close(second, first, atol=1e-6, rtol=0)

    # a graph that is not the one the manifest names is not run: calibrated again, with a warning
    graph = next(path.with_name(path.name + ".int8").glob("*/region00.onnx"))
    graph.write_bytes(graph.read_bytes() + b"\0")
    calls = []
    real = quantize.calibrate
    monkeypatch.setattr(quantize, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level(logging.WARNING):
        redone, third = animate(load_animation_model(config, path, CPU), frames, "auto")
    assert calls == [1] and "unreadable" in caplog.text
    assert redone.precision.int8
    quantize.Calibration.read(graph.parent)  # the broken one replaced by the new calibration


def test_default_output_is_within_the_budget_of_fp32(trained, frames):
    """Whatever `auto` picks on this CPU (int8, bf16 or fp32)."""
    config, path = trained
    model = load_animation_model(config, None, CPU)
    model.load_state_dict(load_animation_model(config, path, CPU).state_dict())  # no stored calibration
    _, default = animate(model, frames, "auto")
    _, fp32 = animate(model, frames, "fp32")
    means, p99 = quantize.frame_errors(default, fp32)
    assert means.max() <= 1 / 255 and p99.max() <= 4 / 255, (means.max() * 255, p99.max() * 255)


def test_auto_falls_back_to_float_when_the_budget_breaks(trained, frames, vnni, monkeypatch, caplog):
    config, path = trained
    model = load_animation_model(config, None, CPU)
    model.load_state_dict(load_animation_model(config, path, CPU).state_dict())
    monkeypatch.setattr(quantize, "BUDGET_MEAN", 0.0)  # no int8 output can be that close
    with caplog.at_level(logging.WARNING, logger="core.devices"):
        auto, out = animate(model, frames, "auto")
    assert auto.precision == devices.resolve("bf16", "cpu") and not regions_of(auto.model)
    assert len([r for r in caplog.records if f"running {auto.precision} instead" in r.message]) == 1
    _, bf16 = animate(model, frames, "bf16")
    torch.testing.assert_close(out, bf16)
    asked, _ = animate(model, frames, "int8")  # asked for: int8 stays, with a warning
    assert asked.precision.int8 and regions_of(asked.model)
    assert "running int8 as asked" in caplog.text


# --------------------------------------------------------------------------- a whole clip
def clip_plan(model, config, shared_data, tmp_path, precision: str, frames: int = 48, source: str = "fomm-demo/02.png",
              driving: str = "liveportrait/d12.mp4"):
    """fomm.animation.prepare on a real clip (its first `frames` frames) and a real portrait
    (default d12.mp4 and fomm-demo/02.png): what `pipeline run animate` builds."""
    from fomm.animation import prepare
    options = AnimateOptions(precision=precision, adapt_scale=True, max_frames=frames)
    return prepare(model, config, shared_data / "faces" / source, shared_data / "faces" / driving,
                   tmp_path / f"{precision}.mp4", options)


def clip_outputs(plan) -> torch.Tensor:
    """The plan's predictions for every frame it animates, batch after batch, as run_plan feeds them."""
    size = tuple(plan.config.dataset_params.frame_shape[:2])
    frames = [source_crop.prepare(f, None, size) for f in iter_frames(plan.driving_path, 0, plan.num_frames)]
    step = plan.animator.batch_size
    return torch.cat([plan.animator(to_tensor(np.stack(frames[i:i + step]), CPU))["prediction"]
                      for i in range(0, len(frames), step)])


def test_auto_calibrates_on_frames_spread_over_the_clip_within_the_budget(checkpoint, shared_data, vnni, tmp_path,
                                                                          monkeypatch):
    """The default path on a model trained on real faces, over a whole real clip: int8
    calibrated on frames spread over it (not its first batch), every frame within the budget."""
    from fomm import animation
    config, path = checkpoint
    model = load_animation_model(config, path, CPU)
    seen = []
    real = animation.Animator.calibrate
    monkeypatch.setattr(animation.Animator, "calibrate", lambda self, frames: seen.append(frames) or real(self, frames))
    plan = clip_plan(model, config, shared_data, tmp_path, "auto")
    assert plan.animator.precision.int8 and regions_of(plan.animator.model)
    size = tuple(config.dataset_params.frame_shape[:2])
    clip = [source_crop.prepare(f, None, size) for f in iter_frames(plan.driving_path, 0, plan.num_frames)]
    spread = np.linspace(0, plan.num_frames - 1, animation.CALIBRATION_FRAMES).round().astype(int)
    assert len(seen) == 1 and len(seen[0]) == animation.CALIBRATION_FRAMES
    assert all(np.array_equal(frame, clip[i]) for frame, i in zip(seen[0], spread)), "not the clip's spread frames"
    manifest = json.loads(next(path.with_name(path.name + ".int8").glob("*/manifest.json")).read_text())
    assert manifest["calibration_frames"] == animation.CALIBRATION_FRAMES // 2 + len(CALIBRATION_PHOTOS)

    default = clip_outputs(plan)
    fp32 = clip_outputs(clip_plan(load_animation_model(config, path, CPU), config, shared_data, tmp_path, "fp32"))
    means, p99 = quantize.frame_errors(default, fp32)
    assert len(means) == 48
    assert means.max() <= 1 / 255 and p99.max() <= 4 / 255, (means.max() * 255, p99.max() * 255)
    assert (default - fp32).abs().max() > 1e-4  # the int8 kernels did run


def test_a_batch_beyond_the_calibrated_ranges_runs_on_the_float_path(checkpoint, frames, vnni, monkeypatch, caplog):
    config, path = checkpoint
    model = load_animation_model(config, path, CPU)
    animator, inside = animate(model, frames, "auto")
    assert animator.guarded and animator.frames_outside == 0
    _, bf16 = animate(model, frames, "bf16")
    assert (inside - bf16).abs().max() > 1e-4  # int8 ran
    # every input counts as outside its range: the batch runs on auto's float path, bf16
    monkeypatch.setattr(quantize, "GUARD", -1.0)
    with caplog.at_level(logging.WARNING, logger="fomm.animation"):
        outside = animator(frames[1:])["prediction"]
        animator(frames[1:])
    torch.testing.assert_close(outside, bf16, atol=1e-6, rtol=0)
    assert animator.frames_outside == 2 * (len(frames) - 1) and animator.precision.int8
    warned = [r.message for r in caplog.records if "calibrated range" in r.message]
    assert len(warned) == 1 and "run bf16" in warned[0], warned
    # int8 asked for by name runs int8 whatever the inputs
    asked, forced = animate(load_animation_model(config, path, CPU), frames, "int8")
    assert not asked.guarded and asked.frames_outside == 0
    torch.testing.assert_close(forced, inside, atol=1e-6, rtol=0)


def test_region_boundaries_are_nhwc_and_take_channels_last_tensors_without_a_copy(checkpoint, frames, vnni):
    config, path = checkpoint
    animator, _ = animate(load_animation_model(config, path, CPU), frames, "int8")
    region = animator.model.get_submodule("generator.bottleneck")
    width = animator.float_model.generator.bottleneck[0].conv1.in_channels
    folder = next(path.with_name(path.name + ".int8").glob("*/"))
    entry = next(e for e in json.loads((folder / "manifest.json").read_text())["regions"]
                 if e["module"] == "generator.bottleneck")
    declared = [d.dim_value or d.dim_param for d in onnx.load(folder / entry["file"]).graph.input[0].type.tensor_type.shape.dim]
    assert len(declared) == 4 and declared[3] == width and entry["nhwc_inputs"] == [True]  # N H W C
    x = torch.rand(2, width, 16, 16).contiguous(memory_format=torch.channels_last)
    fed = {}
    session = region.session

    class Spy:
        def run(self, names, feed):
            fed.update(feed)
            return session.run(names, feed)
    region.session = Spy()
    out = region(x)
    (array,) = fed.values()
    assert array.shape == (2, 16, 16, width) and array.ctypes.data == x.data_ptr()  # the same memory
    assert out.shape == (2, width, 16, 16) and out.is_contiguous(memory_format=torch.channels_last)
    region.session = session


def test_beyond_range_is_the_fraction_of_the_width_outside():
    values = torch.tensor([[-1.0, 0.5], [2.0, 3.0]])
    assert quantize.beyond_range(values, -1.0, 3.0) == 0.0
    assert quantize.beyond_range(values, 0.0, 2.0) == pytest.approx(0.5)  # 1 below, 1 above a width of 2
    assert quantize.beyond_range(values, -2.0, 2.0) == pytest.approx(0.25)


@pytest.mark.parametrize("source, driving", [("fomm-demo/05.png", "liveportrait/d12.mp4"),
                                             ("sadtalker/people_0.png", "liveportrait/d0.mp4"),
                                             ("liveportrait/s1.jpg", "fomm-demo/04.mp4")])
def test_a_stored_calibration_serves_another_photo_and_clip_within_the_budget(checkpoint, shared_data, vnni, tmp_path,
                                                                             source, driving):
    """Calibrated (and stored) with one portrait and clip; the next run animates another
    portrait with another clip from the stored calibration: still within the budget."""
    config, path = checkpoint
    clip_outputs(clip_plan(load_animation_model(config, path, CPU), config, shared_data, tmp_path, "auto", 16))
    plan = clip_plan(load_animation_model(config, path, CPU), config, shared_data, tmp_path, "auto", 40, source, driving)
    assert not plan.animator.calibrating and plan.animator.precision.int8  # the stored one
    default = clip_outputs(plan)
    fp32 = clip_outputs(clip_plan(load_animation_model(config, path, CPU), config, shared_data, tmp_path, "fp32", 40,
                                  source, driving))
    means, p99 = quantize.frame_errors(default, fp32)
    assert means.max() <= 1 / 255 and p99.max() <= 4 / 255, (means.max() * 255, p99.max() * 255,
                                                                  plan.animator.frames_outside)
    print(source, driving, "worst p99", float(p99.max() * 255), "frames outside", plan.animator.frames_outside)


def test_a_stored_calibration_is_verified_on_each_runs_inputs(checkpoint, shared_data, vnni, tmp_path, monkeypatch,
                                                             caplog):
    """auto with a stored calibration checks int8 against fp32 on this run's source and two of
    its driving frames, once per inputs (the verdict kept beside the calibration); where that
    breaks the budget the run is float, with a warning."""
    from fomm import animation
    config, path = checkpoint

    def plan(precision, source="liveportrait/s1.jpg", driving="fomm-demo/04.mp4", frames=40):
        return clip_plan(load_animation_model(config, path, CPU), config, shared_data, tmp_path, precision, frames,
                         source, driving)
    first = plan("auto", "fomm-demo/02.png", "liveportrait/d12.mp4", 16)
    assert first.animator.stored is None  # calibrated in this run: its budget was measured on this run's inputs
    measured = []
    real = animation.Animator._measure_budget
    monkeypatch.setattr(animation.Animator, "_measure_budget",
                        lambda self, frames: measured.append(len(frames)) or real(self, frames))
    again = plan("auto")
    assert measured == [animation.VERIFY_FRAMES] and again.animator.stored and again.animator.precision.int8
    verdicts = json.loads((again.animator.stored / quantize.VERDICTS).read_text())
    assert len(verdicts) == 1 and next(iter(verdicts.values()))["frames"] == animation.VERIFY_FRAMES
    assert plan("auto").animator.precision.int8 and measured == [animation.VERIFY_FRAMES]  # the same inputs: kept

    outside = quantize.Budget(2, 1.0, 1.0)  # as if these inputs broke the budget
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, logger="core.devices"):
        patch.setattr(quantize.Budget, "measure", classmethod(lambda cls, fast, reference: outside))
        broken = plan("auto", "fomm-demo/05.png")
    assert broken.animator.precision == devices.resolve("bf16", "cpu") and not regions_of(broken.animator.model)
    assert "this run's source" in caplog.text and "running bf16" in caplog.text
    assert plan("auto", "fomm-demo/05.png").animator.precision.name == "bf16"  # the kept verdict, not measured again
    assert len(measured) == 2
    assert plan("int8", "fomm-demo/05.png").animator.precision.int8 and len(measured) == 2  # asked for: not checked

    # a verdicts file that is not JSON is measured again, and replaced
    (again.animator.stored / quantize.VERDICTS).write_text("{not json")
    assert plan("auto").animator.precision.int8 and len(measured) == 3
    assert len(json.loads((again.animator.stored / quantize.VERDICTS).read_text())) == 1


@pytest.mark.parametrize("change", ["format 1", "no ranges", "ranges not numbers", "layout not booleans"])
def test_an_old_or_malformed_manifest_is_calibrated_again(checkpoint, frames, vnni, caplog, change):
    """A format-1 calibration (NCHW boundaries, no ranges) or a manifest whose layout or
    ranges are missing or malformed is not run: calibrated again (one warning) and replaced."""
    config, path = checkpoint
    animate(load_animation_model(config, path, CPU), frames, "auto")
    manifest_path = next(path.with_name(path.name + ".int8").glob("*/manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["regions"][0]
    if change == "format 1":
        manifest["format"] = 1
    elif change == "no ranges":
        del entry["input_ranges"]
    elif change == "ranges not numbers":
        entry["input_ranges"] = [["0", "1"]] * len(entry["nhwc_inputs"])
    else:
        entry["nhwc_inputs"] = ["yes"] * len(entry["nhwc_inputs"])
    manifest_path.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        again, _ = animate(load_animation_model(config, path, CPU), frames, "auto")
    assert "unreadable" in caplog.text and again.precision.int8 and again.stored is None  # calibrated in this run
    assert quantize.Calibration.read(manifest_path.parent).manifest["format"] == quantize.FORMAT
