"""One command for a GPU: animation throughput and latency, training speed, peak memory;
writes the `gpu` section of RESULTS.md (the `gpu-smoke` section with --smoke).

    python -m benchmarks.gpu            # on one GPU, vox-256: about 5-8 minutes
    python -m benchmarks.gpu --smoke    # anywhere (CPU too): tiny config, a few iterations

Measured, with the vox-256 FOMM (random weights; speed does not depend on them):
- animate (the `fomm.animation.Animator` step: driving keypoints, relative transfer, generator)
  frames/s at batch 1 and at the large batches (32 and 256), for fp32, fp32 channels_last,
  bf16 autocast, bf16 + channels_last, and bf16 + channels_last + `torch.compile`;
  peak memory per row; a batch that does not fit is recorded as OOM;
- p50/p95 latency of one frame at batch 1 (synchronised per call) for fp32 and the fastest path;
- training it/s at batch 40: fp32 eager against bf16 autocast + channels_last
  (benchmarks/train.measure, the step fomm/train.py runs), with peak memory.
Rows stop being added once the time budget (`--budget`, 7 min) is spent; the skipped ones
are listed. In --smoke mode torch.compile uses the `eager` backend (graph capture without
code generation, which alone takes minutes on a CPU).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from benchmarks._results import markdown_table, write_section

VARIANTS = (  # name, precision, channels_last, compiled
    ("fp32", "fp32", False, False),
    ("fp32 channels_last", "fp32", True, False),
    ("bf16", "bf16", False, False),
    ("bf16 channels_last", "bf16", True, False),
    ("bf16 channels_last compile", "bf16", True, True),
)


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds
        self.skipped: list[str] = []

    def allows(self, what: str) -> bool:
        if time.perf_counter() < self.end:
            return True
        self.skipped.append(what)
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # max RSS of the process


def build_animator(model, variant, device, size, smoke: bool):
    """An Animator running `variant`: the path's inference copy of the model (memory format,
    BatchNorm folded), its two networks compiled for the compiled variant."""
    from core.devices import Precision
    from fomm.animation import AnimateOptions, Animator
    _, name, channels_last, compiled = variant
    source = torch.rand(1, 3, *size, device=device)
    animator = Animator(model, source, source, AnimateOptions(precision="fp32"), device)
    # The variant's path set directly, whatever --precision would pick on this device.
    animator.precision = Precision(device.type, name, channels_last)
    animator.model = animator.precision.inference_model(model)
    if compiled:
        backend = "eager" if smoke else "inductor"
        animator.model.kp_detector = torch.compile(animator.model.kp_detector, backend=backend, dynamic=False)
        animator.model.generator = torch.compile(animator.model.generator, backend=backend, dynamic=False)
    animator.source = animator.precision.prepare_input(source)
    return animator, animator.model


def animate_row(model, variant, batch: int, steps: int, device, size, smoke: bool) -> dict:
    row = {"variant": variant[0], "batch": batch}
    try:
        reset_peak(device)
        animator, used = build_animator(model, variant, device, size, smoke)
        driving = torch.rand(batch, 3, *size, device=device)
        for _ in range(1 if smoke else 2):  # warm-up: autotuning, compilation
            animator(driving)
        sync(device)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            animator(driving)
            sync(device)
            times.append(time.perf_counter() - start)
        row.update({"frames/s": batch * len(times) / sum(times), "p50 ms": 1000 * float(np.median(times)),
                    "p95 ms": 1000 * float(np.percentile(times, 95)), "peak GiB": peak_gib(device)})
        used.to(memory_format=torch.contiguous_format)
    except torch.OutOfMemoryError:
        row["frames/s"] = "OOM"
    finally:
        model.to(memory_format=torch.contiguous_format)
        reset_peak(device)
    return row


def training_rows(config_name: str, batch: int, steps: int, device, budget: Budget) -> list[dict]:
    from benchmarks.train import measure
    rows = []
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        label = f"{precision}{' channels_last' if channels_last else ''}"
        if not budget.allows(f"training {label}"):
            continue
        try:
            reset_peak(device)
            result = measure("fomm", config_name, batch, steps, precision, channels_last)
            rows.append({"training": label, "batch": batch, "it/s": result["it_per_s"],
                         "frames/s": result["frames_per_s"], "peak GiB": result["peak_GiB"]})
        except torch.OutOfMemoryError:
            rows.append({"training": label, "batch": batch, "it/s": "OOM"})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny config, a few iterations (any device)")
    parser.add_argument("--budget", type=float, default=420, help="seconds after which rows are skipped")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print only")
    parser.add_argument("--no-training", dest="training", action="store_false", help="animate rows only")
    args = parser.parse_args(argv)
    from fomm.animation import load_animation_model
    from fomm.config import load_config
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.smoke and device.type != "cuda":
        parser.error("no GPU here: run with --smoke for the CPU check")
    config_name, big_batches, steps, train_batch, train_steps = (
        ("tiny", (2,), 2, 2, 1) if args.smoke else ("vox-256", (32, 256), 20, 40, 10))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    budget = Budget(args.budget)
    config = load_config(config_name)
    size = tuple(config.dataset_params.frame_shape[:2])
    torch.manual_seed(0)
    model = load_animation_model(config, None, device)
    start = time.perf_counter()
    animate = []
    for batch in (1, *big_batches):
        for variant in VARIANTS:
            if variant[1] == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
                continue
            if budget.allows(f"animate {variant[0]} batch {batch}"):
                animate.append(animate_row(model, variant, batch, steps if batch == 1 else max(2, steps // 4),
                                           device, size, args.smoke))
                print(markdown_table([animate[-1]], list(animate[-1])).splitlines()[-1], flush=True)
    del model
    training = training_rows(config_name, train_batch, train_steps, device, budget) if args.training else []
    seconds = time.perf_counter() - start
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)"
    columns = ["variant", "batch", "frames/s", "p50 ms", "p95 ms", "peak GiB"]
    body = [f"Command: `python -m benchmarks.gpu{' --smoke' if args.smoke else ''}` on {name}, "
            f"config {config_name}, {seconds:.0f} s in all; load average "
            f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())}.", "",
            "### Animate (keypoints, relative transfer, generator), random weights", 
            markdown_table(animate, columns) if animate else "(none: budget)", "",
            f"### Training step at batch {train_batch} (generator and discriminator sides, Adam)",
            markdown_table(training) if training else "(none: budget)"]
    if budget.skipped:
        body += ["", f"Skipped for the time budget: {', '.join(budget.skipped)}."]
    text = "\n".join(body)
    print(text)
    if args.write:
        print(f"written to {write_section('gpu-smoke' if args.smoke else 'gpu', text)}")
    return {"animate": animate, "training": training, "skipped": budget.skipped, "seconds": seconds}


if __name__ == "__main__":
    main()
