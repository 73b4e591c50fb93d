"""`pipeline run train`: the command line of fomm/train.py's loop.

    pipeline run train --config tiny --data data/sample --out runs/tiny [--model fomm]
                       [--stage reconstruction|avd --checkpoint K] [--workers N]
                       [--ray-address ADDR] [--resume | --overwrite] [key=value ...]

`options(args)` resolves the arguments into one `fomm.train.TrainOptions` (the config with its
overrides, model family and stage applied; paths; the worker count checked against this
machine) before anything is written; `run(options)` is `fomm.train.train_run`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import UserError
from fomm.families import NAMES
from fomm.train import TrainOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="configs/<name>.yaml name or a yaml path (ours or the original's)")
    parser.add_argument("--data", help="prepared dataset or original layout (default: dataset_params.root_dir)")
    parser.add_argument("--out", required=True, help="run directory: config, metrics, images, checkpoints")
    parser.add_argument("--model", choices=list(NAMES), help="model family (default: the config's)")
    parser.add_argument("--stage", dest="train_stage", default="reconstruction",
                        help="training stage: reconstruction (default), or avd for MRAA's and TPSMM's "
                             "animation-via-disentanglement network, started from --checkpoint")
    parser.add_argument("--checkpoint", help="with --stage avd: the trained reconstruction checkpoint to start from")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP); 1 trains in this process")
    parser.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="--out holds another run: delete its config, metrics, images and checkpoints "
                             "and start afresh (without this or --resume such a folder is refused)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train_params.max_steps=100")


def options(args: argparse.Namespace) -> TrainOptions:
    """The run `args` ask for, resolved and checked (UserError, one line, nothing written)."""
    from fomm.distributed import check_workers
    from fomm.train import check_initial_checkpoint, resolve_run_config
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other: continue the run in --out, or replace it")
    config = resolve_run_config(args.config, list(args.overrides), args.model, args.train_stage)
    data = args.data or config.dataset_params.root_dir
    if not data:
        raise UserError("no data: pass --data or set dataset_params.root_dir")
    init = check_initial_checkpoint(config, args.checkpoint, args.resume)
    ray_address = args.ray_address or None
    if args.workers > 1 and ray_address is None:  # a cluster's slots are counted once train_run joins it
        check_workers(args.workers)
    return TrainOptions(config=config, data=Path(data), out=Path(args.out), init_checkpoint=init,
                        workers=args.workers, ray_address=ray_address, resume=args.resume,
                        overwrite=args.overwrite, config_source=args.config)


def run(opts: TrainOptions):
    """`fomm.train.train_run`: the last step's losses (one process) or the run folder (Ray)."""
    from fomm.train import train_run
    return train_run(opts)


def main(args: argparse.Namespace) -> int:
    run(options(args))
    return 0
