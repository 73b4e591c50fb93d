"""`pipeline run fakes`: the flags of a fakes run, turned into one `FakesOptions`
(detect/fakes.py), which `detect.fakes.run` runs.

    pipeline run fakes --data data/vox --models fomm=K1,monkey-net=K2,x2face=K3 --out fakes/vox
        [--split test|train|all] [--frames 64] [--animations 1] [--transforms crf23,scale75+crf28]
        [--no-marked] [--test-fraction 0.5] [--seed 0]

Exit 1 when a clip failed.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from core.errors import UserError
from detect.fakes import CHOICES, FakesOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="a prepared dataset (pipeline run prepare)")
    parser.add_argument("--models", required=True,
                        help="NAME=CHECKPOINT[@CONFIG],...; names from the model registry")
    parser.add_argument("--out", required=True, type=Path, help="output folder of the fakes dataset")
    parser.add_argument("--split", default="test", choices=CHOICES,
                        help="the data's clips to use (default: test, the generators' held-out clips)")
    parser.add_argument("--frames", type=int, default=64, help="first N frames of each clip (default 64)")
    parser.add_argument("--animations", type=int, default=1,
                        help="cross-identity animations per clip and model (default 1; 0: none)")
    parser.add_argument("--transforms", default="",
                        help="re-encodings, comma-separated: crf23,crf35,scale75+crf28,fps15+crf23 ...")
    parser.add_argument("--no-marked", dest="marked", action="store_false",
                        help="no watermarked variant of the generated clips")
    parser.add_argument("--test-fraction", type=float, default=0.5,
                        help="share of the clips in the test split, whole identities (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="split and animation-source seed")
    parser.add_argument("--max-clips", type=int, default=None, help="first N clips of the data only")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per model call")
    parser.add_argument("--chunk", type=int, default=8, help="clips per Ray task")
    parser.add_argument("--workers", type=int, default=None, help="parallel tasks (default: CPUs)")
    parser.add_argument("--ray-address", help="join this Ray cluster instead of starting one")


def options(args: argparse.Namespace) -> FakesOptions:
    """Every number, the folders, the transforms and the models' specs (their checkpoints
    exist) before any work: UserError on the first bad one."""
    from detect.reencode import parse_transforms
    from metrics.clip_scores import parse_models
    for option in ("frames", "batch_size", "chunk"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')} {getattr(args, option)}: expected 1 or more")
    if args.animations < 0:
        raise UserError(f"--animations {args.animations}: expected 0 or more")
    if args.max_clips is not None and args.max_clips < 1:
        raise UserError(f"--max-clips {args.max_clips}: expected 1 or more")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected 1 or more")
    if not (math.isfinite(args.test_fraction) and 0 < args.test_fraction < 1):
        raise UserError(f"--test-fraction {args.test_fraction}: expected a share between 0 and 1")
    data_arg, out_arg = Path(args.data), Path(args.out)
    if not data_arg.is_dir():
        raise UserError(f"--data {str(args.data)!r} is not a folder; expected a prepared dataset")
    data, out = data_arg.resolve(), out_arg.resolve()
    if out == data or data in out.parents:
        raise UserError(f"--out {str(args.out)!r} is inside --data {str(args.data)!r}; expected a folder of its own")
    transforms = tuple(t.name for t in parse_transforms(args.transforms))
    models = tuple(parse_models(args.models))
    return FakesOptions(data=data_arg, models=models, out=out_arg, split=args.split, frames=args.frames,
                        animations=args.animations, transforms=transforms, marked=bool(args.marked),
                        test_fraction=float(args.test_fraction), seed=args.seed, max_clips=args.max_clips,
                        batch_size=args.batch_size, chunk=args.chunk, workers=args.workers,
                        ray_address=args.ray_address)


def run(options: FakesOptions) -> dict:
    """The fakes run; summary.json's content and `out`."""
    from detect.fakes import run as make_fakes
    return make_fakes(options)


def main(args: argparse.Namespace) -> int:
    summary = run(options(args))
    split = summary["by_split"]
    print(f"fakes: {summary['done']} of {summary['clips']} clips done ({summary['failed']} failed); "
          f"train {split['train']['real']} real / {split['train']['generated']} generated, "
          f"test {split['test']['real']} real / {split['test']['generated']} generated; "
          f"families {', '.join(summary['families'])}; {summary['out']}/manifest.parquet")
    for line in summary["errors"][:10]:
        print(f"  failed {line}")
    return 1 if summary["failed"] else 0
