"""`--precision auto|fp32|bf16`: what `auto` picks from the CPU's flags (detection
monkeypatched, so every machine checks both branches), and what each path runs."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from core import devices as precision
from core.errors import UserError
from fomm.animation import AnimateOptions, Animator, batch_size


@pytest.fixture
def cpu_with(monkeypatch):
    def set_flags(*flags):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(("avx2", "avx512f", *flags)))
    return set_flags


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_auto_takes_bf16_and_channels_last_on_a_native_bf16_cpu(cpu_with, flag):
    cpu_with(flag)
    chosen = precision.resolve("auto", "cpu")
    assert (chosen.name, chosen.channels_last) == ("bf16", True)
    assert precision.default_batch_size(chosen) == precision.DEFAULT_BATCH[("cpu", "bf16")]


def test_auto_is_fp32_channels_last_on_a_cpu_without_bf16(cpu_with):
    cpu_with()  # AVX-512 without its bf16 extension: oneDNN would emulate bf16
    chosen = precision.resolve("auto", "cpu")
    assert (chosen.name, chosen.channels_last) == ("fp32", True)
    assert not isinstance(chosen.autocast(), torch.autocast)


def test_forced_paths_and_bad_names(cpu_with, caplog):
    cpu_with("amx_bf16")
    assert precision.resolve("fp32", "cpu").name == "fp32"
    cpu_with()
    precision._warn_emulated_bf16.cache_clear()
    assert precision.resolve("bf16", "cpu").name == "bf16"  # allowed, with a warning
    assert "emulated" in caplog.text
    with pytest.raises(UserError, match="fp16"):
        precision.resolve("fp16", "cpu")


def test_cpu_flags_come_from_proc_cpuinfo():
    flags = precision.cpu_flags()
    with open("/proc/cpuinfo") as handle:
        text = handle.read()
    assert flags and all(flag in text for flag in flags)
    assert precision.cpu_has_native_bf16() == any(f in flags for f in ("amx_bf16", "avx512_bf16"))


def test_animator_runs_the_resolved_path(model, cpu_with):
    """Without native bf16 the animator's tensors stay fp32 (channels_last); with it, the
    model runs channels_last under bf16 autocast while keypoints and jacobians stay fp32."""
    image = torch.rand(1, 3, 64, 64)
    cpu_with()
    plain = Animator(model, image, image, AnimateOptions(), torch.device("cpu"))
    assert plain.precision.name == "fp32" and plain.source.is_contiguous(memory_format=torch.channels_last)
    assert plain(image.expand(2, -1, -1, -1))["prediction"].dtype == torch.float32
    assert batch_size(AnimateOptions(), torch.device("cpu")) == precision.DEFAULT_BATCH[("cpu", "fp32")]
    cpu_with("amx_bf16")
    fast = Animator(model, image, image, AnimateOptions(), torch.device("cpu"))
    assert fast.precision.name == "bf16"
    assert fast.source.is_contiguous(memory_format=torch.channels_last)
    out = fast(image.expand(2, -1, -1, -1))
    assert out["prediction"].dtype == torch.float32
    assert out["motion_driving"]["value"].dtype == torch.float32
    assert out["motion_transferred"]["jacobian"].dtype == torch.float32
    model.to(memory_format=torch.contiguous_format)


def test_keypoints_are_detected_in_fp32_on_the_bf16_path(model, cpu_with, shared_data):
    """The detector runs with autocast off on every path (a bf16 detector alone broke the
    error budget): on real frames the bf16 path's keypoints and jacobians equal the fp32
    path's to float32 rounding (only the memory layout differs), while its predictions do
    differ (the generator does run in bf16)."""
    from core.frames import to_tensor
    from core.media import iter_frames
    from fomm import source_crop
    clip = shared_data / "faces" / "fomm-demo" / "04.mp4"
    frames = to_tensor(np.stack([source_crop.resize(f, (64, 64)) for f in iter_frames(clip, 0, 6)]),
                       torch.device("cpu"))
    outputs = {}
    for flag, name in ((None, "fp32"), ("amx_bf16", "bf16")):
        cpu_with(*([flag] if flag else []))
        animator = Animator(model, frames[:1], frames[1:2], AnimateOptions(), torch.device("cpu"))
        assert animator.precision.name == name
        outputs[name] = animator(frames[1:])
        model.to(memory_format=torch.contiguous_format)
    for key in ("value", "jacobian"):
        torch.testing.assert_close(outputs["bf16"]["motion_driving"][key], outputs["fp32"]["motion_driving"][key],
                                   atol=1e-5, rtol=1e-5)
    assert (outputs["bf16"]["prediction"] - outputs["fp32"]["prediction"]).abs().max() > 1e-4


def test_allocator_keeps_freed_memory():
    assert precision.keep_freed_memory() is True  # glibc on the Linux test machines


# --------------------------------------------------------------------------- the fp32 path
@pytest.fixture(scope="module")
def real_frames(shared_data):
    """(7, 3, 64, 64) real face frames: the first is the source."""
    from core.frames import to_tensor
    from core.media import iter_frames
    from fomm import source_crop
    clip = shared_data / "faces" / "fomm-demo" / "04.mp4"
    return to_tensor(np.stack([source_crop.resize(f, (64, 64)) for f in iter_frames(clip, 0, 7)]),
                     torch.device("cpu"))


@pytest.fixture(scope="module")
def normalised_model(config, real_frames):
    """The tiny FOMM with BatchNorm statistics of real frames (forward passes in training mode)
    and scales and shifts away from 1 and 0, so that folding them changes the weights."""
    from fomm.registry import build_model
    torch.manual_seed(1)
    model = build_model(config)
    with torch.no_grad():
        for _ in range(3):
            kp = model.detect(real_frames)
            model.generate(real_frames, kp, model.detect(real_frames.flip(0)))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def predictions(model, frames: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Relative motion with adapt scale, the source expanded over the batch as the Animator does."""
    from fomm.animation import expand_motion
    frames = frames.contiguous(memory_format=memory_format)
    source, driving = frames[:1], frames[1:]
    batch = driving.shape[0]
    with torch.inference_mode():
        kp_source, kp_initial = model.detect(source), model.detect(driving[:1])
        kp_norm = model.transfer(expand_motion(kp_source, batch), model.detect(driving),
                                 expand_motion(kp_initial, batch), adapt_movement_scale=True)
        return model.generate(source.expand(batch, -1, -1, -1), expand_motion(kp_source, batch),
                              kp_norm)["prediction"]


def test_inference_copy_equals_the_model_to_float32_rounding(normalised_model, real_frames):
    """The fp32 path's inference copy (BatchNorms folded, channels_last) predicts what the
    model does on real frames to <= 1e-4 (sigmoid outputs in [0, 1]): folding only reorders
    fp32 products and sums, an error of a few float32 ulps per layer (measured ~1e-6 here),
    the same size as the differences between oneDNN's kernels on different CPUs."""
    state = {key: value.clone() for key, value in normalised_model.state_dict().items()}
    path = precision.resolve("fp32", "cpu")
    copy = path.inference_model(normalised_model)
    norms = [m for m in copy.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    residual_norms = [m for m in copy.generator.bottleneck.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms == residual_norms  # all folded but the residual blocks' first (after the skip, no conv)
    expected = predictions(normalised_model, real_frames)
    folded = predictions(copy, real_frames, path.memory_format)
    assert 0 < (folded - expected).abs().max() <= 1e-4
    # the caller's model is untouched: same tensors, layout and BatchNorms
    for key, value in normalised_model.state_dict().items():
        assert torch.equal(value, state[key]) and value.is_contiguous(), key
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in normalised_model.modules()) > len(norms)


def test_a_model_in_training_mode_is_not_folded(normalised_model):
    normalised_model.train()
    try:
        copy = precision.resolve("fp32", "cpu").inference_model(normalised_model)
    finally:
        normalised_model.eval()
    assert (sum(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules())
            == sum(isinstance(m, torch.nn.BatchNorm2d) for m in normalised_model.modules()))


def test_an_expanded_source_is_encoded_once(normalised_model, real_frames):
    """The generator encodes one source expanded over the batch once, with the same result
    as encoding each of B real copies."""
    batches = []
    hook = normalised_model.generator.first.register_forward_hook(
        lambda module, inputs, output: batches.append(inputs[0].shape[0]))
    try:
        shared = predictions(normalised_model, real_frames)
        generator = normalised_model.generator
        with torch.inference_mode():
            copies = generator.encode(real_frames[:1].repeat(4, 1, 1, 1))
            once = generator.encode(real_frames[:1].expand(4, -1, -1, -1))
    finally:
        hook.remove()
    assert batches == [1, 4, 1]
    assert shared.shape[0] == real_frames.shape[0] - 1
    torch.testing.assert_close(once, copies, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- int8
@pytest.mark.parametrize("flag", ["avx512_vnni", "avx_vnni", "amx_int8"])
def test_auto_takes_int8_where_the_cpu_has_8_bit_dot_products(cpu_with, flag):
    cpu_with(flag, "avx512_bf16")
    chosen = precision.resolve("auto", "cpu")
    assert chosen.int8 and chosen.channels_last and not isinstance(chosen.autocast(), torch.autocast)
    assert chosen.fallback == precision.resolve("bf16", "cpu")  # the budget decides between them
    cpu_with(flag)
    assert precision.resolve("auto", "cpu").fallback == precision.resolve("fp32", "cpu")
    assert not precision.resolve("int8", "cpu").budget_decides  # asked for: kept whatever the budget


@pytest.mark.parametrize("flags, best", [((), "fp32"), (("avx512_bf16",), "bf16")])
def test_int8_on_a_cpu_without_vnni_or_amx_falls_back_with_one_log_line(cpu_with, caplog, flags, best):
    cpu_with(*flags)
    precision._warn_no_int8.cache_clear()
    with caplog.at_level(logging.INFO, logger="core.devices"):
        chosen = [precision.resolve("int8", "cpu") for _ in range(3)]
        auto = precision.resolve("auto", "cpu")
    assert all(path == precision.resolve(best, "cpu") for path in chosen) and auto.name == best
    records = [r for r in caplog.records if r.name == "core.devices"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "avx512_vnni" in records[0].message and f"running {best} instead" in records[0].message


def test_int8_without_onnxruntime_falls_back(cpu_with, monkeypatch, caplog):
    cpu_with("avx512_vnni")
    monkeypatch.setattr(precision, "onnxruntime_available", lambda: False)
    precision._warn_no_int8.cache_clear()
    assert precision.resolve("int8", "cpu") == precision.resolve("fp32", "cpu")
    assert "no onnxruntime" in caplog.text


def test_int8_is_a_cpu_path_and_compile_is_a_float_option(cpu_with):
    with pytest.raises(UserError, match="int8 runs on CPUs"):
        precision.resolve("int8", "cuda")
    cpu_with("avx512_vnni")
    assert precision.resolve("fp32", "cpu", compiled=True).compiled
    assert not precision.resolve("auto", "cpu", compiled=True).compiled  # int8: onnxruntime graphs
    assert precision.resolve("auto", "cpu", compiled=True).fallback.compiled


def test_the_budget_decides_auto_int8_only(cpu_with):
    cpu_with("avx512_vnni")
    auto, asked = precision.resolve("auto", "cpu"), precision.resolve("int8", "cpu")
    assert auto.within_budget(True, "fine") is auto
    assert auto.within_budget(False, "too far") == precision.resolve("fp32", "cpu")
    assert asked.within_budget(False, "too far") is asked
