"""Training throughput and peak memory at 256x256 with the vox-256 config, per model family.

    python -m benchmarks.train                      # CPU: batch 2, every family that imports
    python -m benchmarks.train --batch-size 40      # GPU: fp32 eager vs bf16 autocast + channels_last

One training step is `fomm.train.train_step`, the function the loop calls per batch: the
generator-side losses (perceptual VGG19 pyramid, equivariance, GAN terms where the config
has them), backward, Adam steps, and the discriminator step where the config trains one. Frames are real Tai-Chi frames from
../shared/data (random frames if it is absent). Each family runs in its own subprocess
so that peak memory (max RSS on CPU, `torch.cuda.max_memory_allocated` on GPU) is its own.
VGG19 uses the documented random substitute when torchvision's ImageNet weights are not
cached: the cost is the same, only the loss values differ.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_FRAMES = REPO.parent / "shared" / "data" / "bodies" / "dwnet-taichi" / "1"


def _frames(batch_size: int, size: int):
    import numpy as np
    import torch
    from PIL import Image
    files = sorted(SHARED_FRAMES.glob("*.png"))[: 2 * batch_size]
    if len(files) < 2 * batch_size:
        return torch.rand(batch_size, 3, size, size), torch.rand(batch_size, 3, size, size), "random"
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files])
    frames = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return frames[0::2].contiguous(), frames[1::2].contiguous(), "tai-chi"


def _vgg_available(spec: str) -> bool:
    from core.errors import UserError
    from fomm.vgg import resolve_weights
    try:
        return resolve_weights(spec) is not None
    except UserError:
        return False


def measure(name: str, config_name: str, batch_size: int, steps: int, precision: str, channels_last: bool) -> dict:
    """Time `steps` training steps (after one warm-up) of model `name` in this process."""
    import contextlib
    import torch
    from fomm.registry import build_model
    from fomm.train import build_kit, build_optimizers, resolve_run_config, train_step

    overrides = [f"train_params.batch_size={batch_size}"]
    config = resolve_run_config(config_name, overrides, name)
    vgg = config.train_params.vgg19_weights
    if vgg != "random" and not _vgg_available(vgg):
        config = resolve_run_config(config_name, overrides + ["train_params.vgg19_weights=random"], name)
        vgg = "random (ImageNet weights not cached)"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = build_model(config).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizers = build_optimizers(model, config)
    kit = build_kit(config, device)
    source, driving, frames = _frames(batch_size, config.dataset_params.frame_shape[0])
    source = source.to(device).contiguous(memory_format=memory_format)
    driving = driving.to(device).contiguous(memory_format=memory_format)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())

    def step():  # the loop's own step (fomm.train.train_step), on a fixed batch
        train_step(model, optimizers, kit, source, driving, autocast=autocast)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    model.train()
    step()  # warm-up: allocator, cuDNN autotune, lazy init
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"model": name, "device": device, "batch": batch_size, "precision": precision if device == "cuda" else "fp32",
            "channels_last": channels_last, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "it_per_s": 1.0 / seconds, "s_per_it": seconds, "frames_per_s": batch_size / seconds,
            "peak_GiB": peak, "vgg19": vgg, "frames": frames, "threads": torch.get_num_threads()}


def importable_models() -> list[str]:
    import importlib
    from fomm.registry import MODELS
    names = []
    for name, target in MODELS.items():
        module, cls = target.split(":")
        try:
            getattr(importlib.import_module(module), cls)
            names.append(name)
        except (ImportError, AttributeError) as err:
            print(f"skipping {name}: {err}", file=sys.stderr)
    return names


def run_isolated(name: str, args: argparse.Namespace, precision: str, channels_last: bool) -> dict:
    command = [sys.executable, "-m", "benchmarks.train", "--one", name, "--config", args.config,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--precision", precision,
               "--threads", str(args.threads)] + (["--channels-last"] if channels_last else [])
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="vox-256")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 2 on CPU, 40 on GPU")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--models", nargs="*", help="default: every family in fomm.registry.MODELS that imports")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if args.batch_size is None:
        args.batch_size = 40 if cuda else 2
    if args.one:
        print(json.dumps(measure(args.one, args.config, args.batch_size, args.steps, args.precision, args.channels_last)))
        return 0

    variants = [("fp32", False), ("bf16", True)] if cuda else [("fp32", False)]
    rows = []
    for name in args.models or importable_models():
        for precision, channels_last in variants:
            row = run_isolated(name, args, precision, channels_last)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if cuda:
        for row in rows:
            base = next(r for r in rows if r["model"] == row["model"] and r["precision"] == "fp32")
            row["speedup_vs_fp32"] = row["it_per_s"] / base["it_per_s"]
    if not args.no_write:
        write_results(rows, args, cuda)
    return 0


def write_results(rows: list[dict], args: argparse.Namespace, cuda: bool) -> None:
    from benchmarks._results import markdown_table, write_section
    columns = ["model", "device", "batch", "precision", "channels_last", "params_M", "it_per_s", "s_per_it",
               "frames_per_s", "peak_GiB", "threads"] + (["speedup_vs_fp32"] if cuda else [])
    note = (f"Command: `python -m benchmarks.train --config {args.config} --batch-size {args.batch_size} "
            f"--steps {args.steps} --threads {args.threads}`. One step = the loop's own `fomm.train.train_step`: "
            f"generator-side losses (perceptual VGG19 pyramid, equivariance, GAN terms where configured), backward, "
            f"Adam steps and the discriminator step where the config trains one, at 256x256 on real Tai-Chi frames; mean over {args.steps} steps after one warm-up; "
            f"each family in its own process (peak = max RSS on CPU). VGG19: {rows[0]['vgg19']}.")
    if not cuda:
        note += ("\n\nCPU only: this machine has no GPU, so the GPU branch (bf16 autocast + channels_last vs fp32 "
                 "eager at batch 40, peak `torch.cuda.max_memory_allocated`) exists in the script but has not been "
                 "measured; no GPU figures are claimed.")
    note += (f" Load average (1 min) when the run ended: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
             "a machine shared with other jobs makes the absolute times pessimistic.")
    write_section("train", note + "\n\n" + markdown_table(rows, columns))


if __name__ == "__main__":
    sys.exit(main())
