"""`pipeline run reconstruct`: the command line of fomm/reconstruction.py's runner.

    pipeline run reconstruct --config C --checkpoint K --data D --out O [--model NAME] [--workers N]

`options(args)` resolves the arguments into one `fomm.reconstruction.ReconstructOptions` (the
config from --config or the checkpoint, paths, counts checked, the numeric path resolved)
before anything is written; `run(options)` is `fomm.reconstruction.reconstruct_run`, which
prints the one-line summary.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import UserError
from fomm.families import NAMES
from fomm.reconstruction import ReconstructOptions
from stages.common import add_provenance_flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config name or yaml (default: the config inside the checkpoint)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (ours or a released FOMM one)")
    parser.add_argument("--data", help="dataset root; its test split is reconstructed")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--model", choices=list(NAMES), help="model family (default: the config's)")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--batch-size", type=int, default=16, help="driving frames per forward pass")
    parser.add_argument("--num-videos", type=int, help="at most this many clips (default: reconstruction_params.num_videos)")
    parser.add_argument("--precision", default="fp32", help="fp32 (default: L1 comparable across machines), "
                        "bf16 or auto (core/devices.py)")
    parser.add_argument("--workers", type=int, default=None,
                        help="models loaded at once, each writing its share of the clips (default: one per "
                             "GPU, else 1); 1 without --ray-address runs in this process, more run as Ray actors")
    parser.add_argument("--ray-address", default=None, help="write on this Ray cluster (its workers must "
                        "reach --data and --out at the same paths) instead of here")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    add_provenance_flag(parser)


def options(args: argparse.Namespace) -> ReconstructOptions:
    """The run `args` ask for, resolved and checked (UserError, one line, nothing written)."""
    import torch

    from core.config import config_to_dict, replace
    from core.devices import resolve
    from core.errors import check_count
    from fomm.checkpoint import checkpoint_config, load_checkpoint_file, released_config
    from fomm.config import config_from_dict, load_config
    from fomm.reconstruction import claim_output
    if args.num_videos is not None and args.num_videos < 1:
        raise UserError(f"--num-videos must be a positive number of clips, got {args.num_videos}")
    check_count("--batch-size", args.batch_size)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be a positive number, got {args.workers}")
    claim_output(args.out, args.data, args.checkpoint, args.config)  # checks only: the folder is held by run
    if args.config:
        config = load_config(args.config, list(args.overrides))
    else:
        # A project checkpoint's own config, or a released file's family default (by its layout).
        checkpoint = load_checkpoint_file(args.checkpoint)
        config = checkpoint_config(checkpoint) or released_config(checkpoint, args.checkpoint)
        config = config_from_dict(config_to_dict(config), list(args.overrides))
    if args.model and args.model != config.model_params.name:
        config = replace(config, model_params=replace(config.model_params, name=args.model))
    data = args.data or config.dataset_params.root_dir
    if not data:
        raise UserError("no data: pass --data or set dataset_params.root_dir")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve(args.precision, device, calibrates=False)
    workers = args.workers or (torch.cuda.device_count() if device == "cuda" else 1) or 1
    return ReconstructOptions(config=config, checkpoint=Path(args.checkpoint), data=Path(data), out=Path(args.out),
                              precision=precision, device=device, split=args.split, batch_size=args.batch_size,
                              num_videos=args.num_videos, workers=workers, ray_address=args.ray_address or None,
                              provenance=args.provenance, config_source=args.config)


def run(opts: ReconstructOptions) -> list[dict]:
    """`fomm.reconstruction.reconstruct_run`: the l1.csv rows."""
    from fomm.reconstruction import reconstruct_run
    return reconstruct_run(opts)


def main(args: argparse.Namespace) -> int:
    run(options(args))
    return 0
