"""`pipeline run evaluate`: score any method's output against the real frames (REFERENCE §8).

    pipeline run evaluate --real PATH --generated PATH --out DIR [--pose B] [--identity B]
                          [--protocol paper|project] [--kind faces|bodies|other]

PATH is one video, one folder of frames, or a folder of clips matched by name between the
two sides; metrics.evaluate.evaluate does the work and its docstring says what is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import UserError
from metrics import protocol as paper_protocol
from metrics.evaluate import SUMMARY_METRICS, EvaluateOptions, evaluate, find_clips, match_clips

KINDS = ("faces", "bodies", "other")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--real", required=True, type=Path, help="real video, frame folder or folder of clips")
    parser.add_argument("--generated", required=True, type=Path, help="generated, laid out like --real")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--pose", default=None, help="pose backend (default: the kind's; 'none')")
    parser.add_argument("--identity", default=None, help="identity backend (default: the kind's; 'none')")
    parser.add_argument("--protocol", default="paper", choices=paper_protocol.PROTOCOLS,
                        help="paper: pose-evaluation's arithmetic (default); project: L2 AED")
    parser.add_argument("--kind", default="faces", choices=KINDS,
                        help="what the clips show; picks the default backends")


def options(args: argparse.Namespace) -> EvaluateOptions:
    """The typed options: both sides found and their clips paired (UserError before any file
    is written)."""
    if args.protocol not in paper_protocol.PROTOCOLS:  # argparse checks it; run all and the app may not
        raise UserError(f"--protocol {args.protocol!r}: expected one of {list(paper_protocol.PROTOCOLS)}")
    if args.kind not in KINDS:
        raise UserError(f"--kind {args.kind!r}: expected one of {list(KINDS)}")
    real, generated = Path(args.real), Path(args.generated)
    pairs = match_clips(find_clips(real, "real"), find_clips(generated, "generated"))
    return EvaluateOptions(real=real, generated=generated, out=Path(args.out), pose=args.pose,
                           identity=args.identity, protocol=args.protocol, kind=args.kind, pairs=tuple(pairs))


def run(options: EvaluateOptions) -> dict:
    """What summary.json holds."""
    return evaluate(options)


def main(args: argparse.Namespace) -> int:
    chosen = options(args)
    summary = run(chosen)
    numbers = ", ".join(f"{m} {summary[m]:.4f}" if summary[m] is not None else f"{m} n/a" for m in SUMMARY_METRICS)
    backends_text = ", ".join(f"{role} {b['name'] if b else 'none'}" for role, b in summary["backends"].items())
    print(f"{len(summary['clips'])} clips, protocol {summary['protocol']} ({backends_text}): {numbers}")
    if not summary["comparable_with_paper"]:
        print("not comparable with the paper's numbers: a substitute backend or the project protocol was used")
    print(f"-> {chosen.out / 'summary.json'}")
    return 0
