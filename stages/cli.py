"""The `pipeline` command: `pipeline run <stage> [options]`.

Each stage is a module of stages/ (the front door, see stages/__init__.py), which provides
`add_arguments(parser)`, `options(args)`, `run(options)` and `main(args) -> int`; modules are
imported only when their stage runs, so `pipeline run prepare` never imports torch's models
and `pipeline --help` is instant.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from core.errors import UserError

# OSErrors that say what the machine lets a stage do (a full disk, a read-only file system, a
# file the user may not read or write), not that the stage is wrong: one line, exit 2, as bad
# input. Every stage writes through temporary names, so nothing half-written is left.
ENVIRONMENT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)

# stage name -> (module, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "prepare": ("stages.prepare", "download, crop and shard a dataset from its manifest"),
    "train": ("stages.train", "train FOMM or a baseline from prepared data"),
    "reconstruct": ("stages.reconstruct", "reconstruct test clips (first frame drives the rest)"),
    "animate": ("stages.animate", "animate a photo with the motion of a driving video"),
    "app": ("stages.app", "a web page to animate a photo"),
    "benchmark": ("stages.benchmark", "reconstruct with each model and score L1, AKD, MKR, AED"),
    "evaluate": ("stages.evaluate", "score generated frames or videos against real ones"),
    "report": ("stages.report", "write the HTML and Markdown report of a run"),
    "export": ("stages.export", "export a model's networks as ONNX graphs"),
    "verify": ("stages.verify", "check that videos or images carry the generated-content marks"),
    "fakes": ("stages.fakes", "build a real-vs-generated video dataset with the project's generators"),
    "detect": ("stages.detect", "train, evaluate and run a detector of generated video"),
    "all": ("stages.run_all", "prepare, train all models, benchmark and report"),
}


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one stage")
    stages = run.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module_name, help_text) in STAGES.items():
        sub = stages.add_parser(name, help=help_text, description=help_text)
        if name == stage:  # only the chosen stage's module is imported
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def _chosen_stage(argv: list[str]) -> str | None:
    words = [a for a in argv if not a.startswith("-")]
    if len(words) >= 2 and words[0] == "run" and words[1] in STAGES:
        return words[1]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stage = _chosen_stage(argv)
    args = build_parser(stage).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    module = importlib.import_module(STAGES[args.stage][0])
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRORS:
            raise
        where = f" ({err.filename!r})" if err.filename else ""
        print(f"error: {err.strerror}{where}; nothing half-written was kept: free space or fix the "
              f"permissions, then rerun", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
