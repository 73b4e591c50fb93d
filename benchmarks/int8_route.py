"""Which int8 route is faster on this CPU: PyTorch's own x86 quantisation or onnxruntime's
quantised kernels; writes the `int8-route` section of RESULTS.md.

    python -m benchmarks.int8_route                  # a few minutes idle (PT2E compiles for ~1-2 min)
    python -m benchmarks.int8_route --no-pt2e        # without torchao's PT2E route

vox-256 FOMM's generator (dense motion network and occlusion-aware generator, the part the
int8 path quantises) with random weights, on the keypoints of real frames
(faces/liveportrait/d12.mp4, 256 px), batch 4, BatchNorm folded, medians of interleaved
repeats; every route's prediction against the fp32 one (max abs, in 1/255):

- torch fp32 and bf16 (autocast): the float paths of core/devices.py;
- torch eager int8: every convolution of the quantised regions as oneDNN's
  `quantized::conv2d` (int8 weights, a scale per output channel; uint8 activations
  calibrated on the same frames), quantised and dequantised around each convolution;
- torch PT2E int8: torch.export, torchao's X86InductorQuantizer (the PT2E successor of
  torch.ao's), torch.compile (inductor fuses the quantise / dequantise and the ReLUs into
  oneDNN's int8 convolutions); export, quantisation and compile seconds reported;
- onnxruntime int8: the generator run by the int8 path itself (core/quantize.py: its regions
  in onnxruntime's QDQ kernels, the rest in torch fp32); calibration seconds reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from benchmarks._results import markdown_table, write_section

BATCH = 4


def setup():
    from benchmarks.animate import ERROR_CLIP, clip_frames
    from core.devices import resolve
    from core.frames import to_tensor
    from fomm.animation import load_animation_model
    from fomm.config import load_config
    torch.manual_seed(0)
    model = load_animation_model(load_config("vox-256"), None, torch.device("cpu"))
    folded = resolve("fp32", "cpu").inference_model(model)
    frames = to_tensor(clip_frames(ERROR_CLIP, BATCH + 1, (256, 256)))
    with torch.inference_mode():
        kp_source, kp_driving = folded.detect(frames[:1]), folded.detect(frames[1:])
    source = frames[:1].expand(BATCH, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    kp_source = {key: value.expand(BATCH, *value.shape[1:]).contiguous() for key, value in kp_source.items()}
    return folded, source, kp_source, kp_driving


class EagerInt8Conv(nn.Module):
    """A convolution as oneDNN's quantized::conv2d: uint8 input (calibrated scale), int8
    weights with a scale per output channel, float output."""

    def __init__(self, conv: nn.Conv2d, low: float, high: float, out_low: float, out_high: float):
        super().__init__()
        weight = conv.weight.detach().float().contiguous()
        scales = (weight.abs().amax(dim=(1, 2, 3)).clamp_min(1e-8) / 127).double()
        quantised = torch.quantize_per_channel(weight, scales, torch.zeros_like(scales, dtype=torch.long), 0,
                                               torch.qint8)
        bias = conv.bias.detach().float() if conv.bias is not None else None
        self.packed = torch.ops.quantized.conv2d_prepack(quantised, bias, list(conv.stride), list(conv.padding),
                                                         list(conv.dilation), conv.groups)
        self.scale, self.zero_point = _affine(low, high)
        self.out_scale, self.out_zero_point = _affine(out_low, out_high)

    def forward(self, x):
        q = torch.quantize_per_tensor(x.float(), self.scale, self.zero_point, torch.quint8)
        return torch.ops.quantized.conv2d(q, self.packed, self.out_scale, self.out_zero_point).dequantize()


def _affine(low: float, high: float) -> tuple[float, int]:
    """uint8 scale and zero point covering [low, high] (and 0)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / 255, 1e-8)
    return scale, int(round(-low / scale))


def eager_int8(folded, run) -> nn.Module:
    """The folded model with every wide generator convolution swapped for EagerInt8Conv,
    ranges from one calibration pass."""
    from core.devices import module_copy
    from core.quantize import MIN_INT8_CHANNELS
    ranges, hooks = {}, []

    def record(name):
        def hook(module, args, output) -> None:  # None: the output stays as it is
            ranges[name] = (float(args[0].min()), float(args[0].max()), float(output.min()), float(output.max()))
        return hook
    for name, module in folded.generator.named_modules():
        if isinstance(module, nn.Conv2d) and module.out_channels >= MIN_INT8_CHANNELS:
            hooks.append(module.register_forward_hook(record(name)))
    run(folded)
    for hook in hooks:
        hook.remove()
    copy = module_copy(folded)
    torch.backends.quantized.engine = "onednn"
    for name, bounds in ranges.items():
        parent, _, leaf = name.rpartition(".")
        holder = copy.generator.get_submodule(parent) if parent else copy.generator
        setattr(holder, leaf, EagerInt8Conv(getattr(holder, leaf), *bounds))
    return copy


class GeneratorGraph(nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, source, source_value, source_jacobian, driving_value, driving_jacobian):
        return self.generator(source, {"value": driving_value, "jacobian": driving_jacobian},
                              {"value": source_value, "jacobian": source_jacobian})["prediction"]


def pt2e_int8(folded, args: tuple) -> tuple[object, dict]:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    seconds = {}
    start = time.perf_counter()
    graph = GeneratorGraph(folded.generator).eval()
    exported = torch.export.export(graph, args).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    prepared(*args)
    converted = convert_pt2e(prepared)
    seconds["export + quantise s"] = time.perf_counter() - start
    start = time.perf_counter()
    compiled = torch.compile(converted)
    compiled(*args)
    seconds["compile s"] = time.perf_counter() - start
    return compiled, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-pt2e", dest="pt2e", action="store_false", help="leave torchao's PT2E route out")
    parser.add_argument("--no-write", dest="write", action="store_false")
    args = parser.parse_args()
    from core import quantize
    folded, source, kp_source, kp_driving = setup()
    flat = (source, kp_source["value"], kp_source["jacobian"], kp_driving["value"], kp_driving["jacobian"])

    def generate(model, autocast=False):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model.generate(source, kp_source, kp_driving)["prediction"].float()

    runs, setup_seconds = {"torch fp32": lambda: generate(folded),
                           "torch bf16 (autocast)": lambda: generate(folded, True)}, {}
    eager = eager_int8(folded, generate)
    runs["torch eager int8 (oneDNN quantized::conv2d per convolution)"] = lambda: generate(eager)
    if args.pt2e:
        try:
            with torch.no_grad():
                compiled, seconds = pt2e_int8(folded, flat)
            name = "torch PT2E int8 (torchao X86InductorQuantizer + inductor)"
            runs[name] = lambda: compiled(*flat)
            setup_seconds[name] = seconds
        except ImportError as err:
            print(f"PT2E route left out: {err}")
    start = time.perf_counter()
    halves = {quantize.RANGES: slice(0, BATCH // 2), quantize.BUDGET: slice(BATCH // 2, BATCH)}
    calibrated = quantize.calibrate(folded, lambda: None, lambda model, part: generate(model)[halves[part]], None)
    name = "onnxruntime int8 (core/quantize.py regions)"
    runs[name] = lambda: generate(calibrated[0])
    setup_seconds[name] = {"calibrate s": time.perf_counter() - start}
    reference = runs["torch fp32"]()
    outputs = {name: run() for name, run in runs.items()}  # warm-up
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append(((time.perf_counter() - wall) / BATCH, (time.process_time() - cpu) / BATCH))
    rows = []
    for name in runs:
        wall = statistics.median(t[0] for t in times[name])
        rows.append({"route": name, "wall s/frame": wall, "cpu s/frame": statistics.median(t[1] for t in times[name]),
                     "max abs to fp32 (/255)": float((outputs[name] - reference).detach().abs().max() * 255),
                     **{key: f"{value:.1f}" for key, value in setup_seconds.get(name, {}).items()}})
    for row in rows:
        row["x torch bf16 (wall)"] = rows[1]["wall s/frame"] / row["wall s/frame"]
        row["x torch bf16 (cpu)"] = rows[1]["cpu s/frame"] / row["cpu s/frame"]
    columns = list(dict.fromkeys(key for row in rows for key in row))  # the set-up columns of some rows too
    table = markdown_table(rows, columns)
    load = f"load average {load_before:.1f} before the timed repeats, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores"
    print(table)
    print(load)
    if args.write:
        write_section("int8-route", f"`python -m benchmarks.int8_route --repeats {args.repeats}`: vox-256 generator, "
                      f"random weights, keypoints of {BATCH} real 256 px frames, batch {BATCH}, medians of "
                      f"{args.repeats} interleaved repeats ({load}; under load the ratios are the figures to read)."
                      "\n\n" + table)


if __name__ == "__main__":
    main()
