"""`pipeline run benchmark`: reconstruct the test split with each model and score every frame.

The flags become one `metrics.benchmark.BenchmarkOptions` (every count checked, the models'
specs parsed, the device, workers, protocol and precision resolved, the detectability record
read: UserError before anything is written); metrics.benchmark.run does the work and its
docstring says what is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import UserError
from metrics.benchmark import BenchmarkOptions
from stages.common import add_provenance_flag

PROTOCOLS = ("paper", "project")
COUNTS = ("max_clips", "max_frames", "batch_size", "bootstrap", "workers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset name (vox, taichi, sample, ...)")
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset folder")
    parser.add_argument("--models", required=True,
                        help="NAME=CHECKPOINT[@CONFIG],...; names from fomm/families.py")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--pose", default=None, help="pose backend (default: the dataset's; 'none')")
    parser.add_argument("--identity", default=None, help="identity backend (default: the dataset's; 'none')")
    parser.add_argument("--protocol", default=None, choices=list(PROTOCOLS),
                        help="paper: pose-evaluation's arithmetic (squared-L2 AED; the default for "
                             "datasets of the paper's Table 3); project: L2 AED (default otherwise)")
    parser.add_argument("--lpips", action="store_true", help="also LPIPS (needs the lpips package)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-clips", type=int, default=None)
    parser.add_argument("--max-frames", type=int, default=None, help="first N frames of each clip")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--workers", type=int, default=None,
                        help="models loaded at once, each scoring its share of the clips: one per GPU "
                             "(the default: every GPU when --device is cuda, else 1); 1 without "
                             "--ray-address runs in this process, more run as Ray actors")
    parser.add_argument("--ray-address", default=None, help="score on this Ray cluster (its workers "
                        "must read --data at the same path) instead of here")
    add_provenance_flag(parser)
    parser.add_argument("--precision", default="fp32", help="fp32 (default: scores comparable across "
                        "machines), bf16 or auto (core/devices.py)")
    parser.add_argument("--detectability", type=Path, default=None,
                        help="a detectability.json (pipeline run detect detectability): adds each model's "
                             "held-out-family detector AUC to the table")


def check_counts(args: argparse.Namespace) -> None:
    """Every count, before anything is written: UserError on the first bad one."""
    for option in COUNTS:
        value = getattr(args, option, None)
        if value is not None and value < 1:
            raise UserError(f"--{option.replace('_', '-')} {value}: expected a positive number")


def command_line(values: dict) -> list[str]:
    """The `pipeline run benchmark` arguments that repeat this run (`values`: the parsed
    flags with the device, workers and protocol resolved)."""
    argv = [] if values.get("provenance", True) else ["--no-provenance"]
    for key, value in values.items():
        if key in ("command", "stage", "verbose", "provenance") or value is None or value is False:
            continue
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


def options(args: argparse.Namespace) -> BenchmarkOptions:
    """The typed, resolved options of `args`; UserError naming the flag on a bad value."""
    import torch

    from core import devices
    from metrics import clip_scores, paper
    check_counts(args)
    protocol = getattr(args, "protocol", None)
    if protocol is not None and protocol not in PROTOCOLS:  # argparse checks it; the app may not
        raise UserError(f"--protocol {protocol!r}: expected one of {list(PROTOCOLS)}")
    protocol = protocol or ("paper" if paper.paper_dataset(args.dataset) else "project")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device_type = torch.device(device).type
    except (RuntimeError, ValueError):
        device_type = None
    if device_type not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r}: expected cpu or cuda (cuda:N for one GPU)")
    workers = args.workers or (torch.cuda.device_count() if device_type == "cuda" else 1) or 1
    precision = devices.resolve(getattr(args, "precision", "fp32"), device, calibrates=False)
    specs = tuple(clip_scores.parse_models(args.models))
    detectability = None
    if getattr(args, "detectability", None) is not None:
        from metrics.detectability import read_detectability
        detectability = read_detectability(args.detectability)
    values = {**vars(args), "device": device, "workers": workers, "protocol": protocol,
              "ray_address": getattr(args, "ray_address", None)}
    return BenchmarkOptions(
        dataset=args.dataset, data=Path(args.data), models=specs, out=Path(args.out), protocol=protocol,
        device=device, workers=workers, precision=precision, pose=args.pose, identity=args.identity,
        lpips=bool(args.lpips), split=args.split, max_clips=args.max_clips, max_frames=args.max_frames,
        batch_size=args.batch_size, bootstrap=args.bootstrap, seed=args.seed,
        ray_address=getattr(args, "ray_address", None), provenance=getattr(args, "provenance", True),
        detectability=detectability,
        detectability_source=Path(args.detectability) if detectability is not None else None,
        argv=tuple(command_line(values)))


def run(options: BenchmarkOptions) -> dict:
    """What benchmark.json records."""
    from metrics import benchmark
    return benchmark.run(options)


def main(args: argparse.Namespace) -> int:
    chosen = options(args)
    record = run(chosen)
    print((chosen.out / "comparison.md").read_text())
    if "motion" in record["tables"]:
        print(Path(record["tables"]["motion"]["md"]).read_text())
    return 0
