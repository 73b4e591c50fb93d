"""`pipeline run verify FILE... [--json] [--max-frames N]`: whether each video or image
carries the generated-content marks (pipeline/verify.py reads them).

One line per file; with `--json` also a JSON report on stdout. Exit 0 when every file is
marked, 1 when any is not, 2 when a file is missing or unreadable.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError


@dataclass(frozen=True)
class VerifyOptions:
    files: tuple[Path, ...]          # every one an existing file
    json: bool = False               # also a JSON report on stdout
    max_frames: int | None = None    # the watermark read in the first N frames (None: all)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="videos (mp4, gif, ...) or images")
    parser.add_argument("--json", action="store_true", help="also print a JSON report on stdout")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="read the watermark in the first N frames only (default: all)")


def options(args: argparse.Namespace) -> VerifyOptions:
    """--max-frames and every file checked before any is read: bad input is exit 2."""
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames {args.max_frames}: expected 1 or more")
    for name in args.files:
        if not Path(name).is_file():
            raise UserError(f"{name!r} does not exist (expected a video or image file)")
    return VerifyOptions(tuple(Path(name) for name in args.files), bool(args.json), args.max_frames)


def run(options: VerifyOptions) -> list:
    """Each file's `pipeline.verify.Verdict`, in order."""
    from pipeline.verify import verify_files
    return verify_files(options.files, options.max_frames)


def main(args: argparse.Namespace) -> int:
    chosen = options(args)
    verdicts = run(chosen)
    for verdict in verdicts:
        print(verdict.line())
    if chosen.json:
        print(json.dumps({"files": [v.to_dict() for v in verdicts],
                          "all_marked": all(v.marked for v in verdicts)}, indent=2))
    return 0 if all(v.marked for v in verdicts) else 1
