"""The fp32 CPU inference path against the original demo's frame loop, model alone; writes
the `fp32-path` section of RESULTS.md.

    python -m benchmarks.fp32_path                     # about 10 min on 2 busy cores
    python -m benchmarks.fp32_path --frames 8 --repeats 3 --batches 2 4 8

vox-256 FOMM with random weights (speed does not depend on them), the portrait
faces/fomm-demo/02.png animated by the first `--frames` frames of faces/fomm-demo/04.mp4
(256 px), relative motion with adapt scale, on the same frames in one run:

- `demo loop`: the original demo.py's loop, fp32, `torch.no_grad`, batch 1, the model as
  built (contiguous, BatchNorm layers as they are), the source re-encoded for every frame;
- the steps of the fp32 path one at a time at batch 4: inference_mode and batching, then
  the source encoded once per batch (fomm/generator.py), then channels_last, then the
  BatchNorms folded into their convolutions (core/devices.Precision.inference_model);
- the whole path at other batch sizes, and the Animator itself at its default batch on
  the inference copy (its `self.model = model = self.precision.inference_model(model)`).

Repeats are interleaved (every variant once, then again), and the medians are reported,
so a load that comes and goes hits every row alike; ratios are to the demo loop (higher
is faster). Every row's predictions are compared with the demo loop's (max abs diff).
The whole-process comparison, startup and video coding included, is benchmarks/animate.py.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._results import markdown_table, write_section

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DRIVING = SHARED / "faces/fomm-demo/04.mp4"
SOURCE = SHARED / "faces/fomm-demo/02.png"


def load_frames(count: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, H, W) source and (count, 3, H, W) driving frames in [0, 1]."""
    from core.frames import to_tensor
    from core.media import iter_frames, load_image
    from fomm import source_crop
    cpu = torch.device("cpu")
    source = to_tensor(source_crop.resize(load_image(SOURCE), size)[np.newaxis], cpu)
    driving = to_tensor(np.stack([source_crop.resize(f, size) for f in iter_frames(DRIVING, 0, count)]), cpu)
    return source, driving


def demo_loop(model, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
    """demo.py's make_animation: one frame per call, the batch-1 source each time."""
    with torch.no_grad():
        kp_source, kp_initial = model.detect(source), model.detect(driving[:1])
        predictions = []
        for index in range(driving.shape[0]):
            kp_driving = model.detect(driving[index:index + 1])
            kp_norm = model.transfer(kp_source, kp_driving, kp_initial, relative=True,
                                     relative_jacobian=True, adapt_movement_scale=True)
            predictions.append(model.generate(source, kp_source, kp_norm)["prediction"])
    return torch.cat(predictions)


def batched_path(model, source: torch.Tensor, driving: torch.Tensor, batch: int, channels_last: bool,
                 shared_source: bool) -> torch.Tensor:
    """What the Animator does per batch, with the layout and the source's sharing chosen:
    `shared_source=False` hands the generator B real copies of the source (encoded B times)."""
    from core.devices import Precision
    from fomm.animation import expand_motion
    path = Precision("cpu", "fp32", channels_last)
    source = path.prepare_input(source)
    with path.keypoint_context():
        kp_source, kp_initial = model.detect(source), model.detect(path.prepare_input(driving[:1]))
    predictions = []
    for start in range(0, driving.shape[0], batch):
        frames = path.prepare_input(driving[start:start + batch])
        size = frames.shape[0]
        with path.keypoint_context():
            kp_driving = model.detect(frames)
        with path.context():
            kp_norm = model.transfer(expand_motion(kp_source, size), kp_driving, expand_motion(kp_initial, size),
                                     relative=True, relative_jacobian=True, adapt_movement_scale=True)
            sources = source.expand(size, -1, -1, -1)
            if not shared_source:
                sources = sources.contiguous(memory_format=path.memory_format)
            predictions.append(model.generate(sources, expand_motion(kp_source, size), kp_norm)["prediction"])
    return torch.cat(predictions)


def animator_path(model, source: torch.Tensor, driving: torch.Tensor):
    """The Animator (fp32, default batch) on the inference copy, as it runs with the one-line
    hook in; built once (its model copy and the source's keypoints are set-up, not per frame)."""
    from core.devices import module_copy
    from fomm.animation import AnimateOptions, Animator, batch_size
    cpu = torch.device("cpu")
    options = AnimateOptions(precision="fp32", adapt_scale=True)
    given = module_copy(model)  # without the hook the Animator changes its model's layout in place
    animator = Animator(given, source, driving[:1], options, cpu)
    if animator.model is given:  # the hook is not in: take the inference copy here
        animator.model = animator.precision.inference_model(model)
    size = batch_size(options, cpu)

    def run(_source: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return torch.cat([animator(frames[i:i + size])["prediction"] for i in range(0, frames.shape[0], size)])
    return run


def variants(model, batches: tuple[int, ...], source: torch.Tensor, driving: torch.Tensor) -> dict:
    """name -> function(source, driving) -> predictions."""
    from core.devices import DEFAULT_BATCH, module_copy, resolve
    channels_last = module_copy(model).to(memory_format=torch.channels_last)
    folded = resolve("fp32", "cpu").inference_model(model)
    default = DEFAULT_BATCH[("cpu", "fp32")]
    rows = {
        "demo loop (fp32, batch 1, no_grad)": lambda s, d: demo_loop(model, s, d),
        "batch 4, inference_mode, source encoded per frame": lambda s, d: batched_path(model, s, d, 4, False, False),
        "+ source encoded once per batch": lambda s, d: batched_path(model, s, d, 4, False, True),
        "+ channels_last": lambda s, d: batched_path(channels_last, s, d, 4, True, True),
        "+ BatchNorm folded (the fp32 path), batch 4": lambda s, d: batched_path(folded, s, d, 4, True, True),
    }
    for batch in batches:
        if batch != 4:
            rows[f"the fp32 path, batch {batch}"] = (
                lambda s, d, b=batch: batched_path(folded, s, d, b, True, True))
    rows[f"Animator, fp32, default batch ({default})"] = animator_path(model, source, driving)
    return rows


def measure(runs: dict, source: torch.Tensor, driving: torch.Tensor, repeats: int) -> list[dict]:
    count = driving.shape[0]
    outputs = {name: run(source, driving) for name, run in runs.items()}  # warm-up and outputs
    reference = outputs[next(iter(runs))]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run(source, driving)
            times[name].append(((time.perf_counter() - wall) / count, (time.process_time() - cpu) / count))
    rows = []
    for name, samples in times.items():
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        rows.append({"run": name, "wall s/frame": wall, "cpu s/frame": cpu,
                     "max abs diff to demo loop": float((outputs[name] - reference).abs().max())})
    for row in rows:
        row["x demo loop (wall)"] = rows[0]["wall s/frame"] / row["wall s/frame"]
        row["x demo loop (cpu)"] = rows[0]["cpu s/frame"] / row["cpu s/frame"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="driving frames per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians reported)")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8], help="batch sizes of the path")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print only, leave RESULTS.md")
    args = parser.parse_args()
    from core.devices import keep_freed_memory
    from fomm.animation import load_animation_model
    from fomm.config import load_config
    keep_freed_memory()  # as the CLI stages do
    config = load_config("vox-256")
    torch.manual_seed(0)
    model = load_animation_model(config, None, torch.device("cpu"))
    source, driving = load_frames(args.frames, tuple(config.dataset_params.frame_shape[:2]))
    load_before = os.getloadavg()[0]
    rows = measure(variants(model, tuple(args.batches), source, driving), source, driving, args.repeats)
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores"
    table = markdown_table(rows)
    print(table)
    print(load)
    if args.write:
        write_section("fp32-path", f"`python -m benchmarks.fp32_path --frames {args.frames} --repeats {args.repeats}"
                      f" --batches {' '.join(map(str, args.batches))}`: vox-256, random weights, {args.frames} real"
                      f" 256 px frames, medians of {args.repeats} interleaved repeats ({load}; a busy machine"
                      " inflates wall time, so the CPU-time column is the steadier one).\n\n" + table)


if __name__ == "__main__":
    main()
