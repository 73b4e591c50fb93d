"""`pipeline run export`: the command line of fomm/export.py.

    pipeline run export --config vox-256 --checkpoint vox-cpk.pth.tar --format onnx --out vox-onnx/ \\
        [--check-frames driving.mp4]

`options(args)` resolves the arguments into one `ExportOptions` (the config loaded, paths,
the format checked, the output folder checked usable) before any work; `run(options)` is
`fomm.export.export_checkpoint`, and `main` prints the parity line.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from fomm.config import Config

FORMATS = ("onnx",)


@dataclass(frozen=True)
class ExportOptions:
    """What `pipeline run export` runs, resolved: the config (with its --set overrides), the
    checkpoint (None: random weights), the format, the output folder and the video or image
    the parity check runs on (None: a synthetic image). `config_source` is the --config name
    or file, kept apart from the output folder."""
    config: Config
    checkpoint: Path | None
    out: Path
    format: str = "onnx"
    check_frames: Path | None = None
    config_source: str | None = None

    @property
    def inputs(self) -> dict[str, str | None]:
        """The files the output folder must lie apart from, by flag (core.outputs)."""
        return {"--checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "--check-frames": None if self.check_frames is None else str(self.check_frames),
                "--config": self.config_source}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config name (vox-256) or yaml path")
    parser.add_argument("--checkpoint", help="checkpoint file (ours or a released FOMM one)")
    parser.add_argument("--random-weights", action="store_true", help="no checkpoint (benchmarks, tests)")
    parser.add_argument("--format", default="onnx", help="onnx (the only format so far)")
    parser.add_argument("--out", required=True, help="output folder (replaced when the check passes)")
    parser.add_argument("--check-frames", help="video or image whose frames the parity check runs on")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override")


def options(args: argparse.Namespace) -> ExportOptions:
    """The export `args` ask for, resolved and checked (UserError, one line, nothing written)."""
    from core import outputs
    from fomm.config import load_config
    from fomm.export import EARLIER, EXPORT_FILES
    if args.format not in FORMATS:
        raise UserError(f"--format {args.format!r}: expected onnx")
    if args.checkpoint is None and not args.random_weights:
        raise UserError("--checkpoint is required (or --random-weights for a smoke test)")
    out = Path(args.out)
    inputs = {"--checkpoint": args.checkpoint, "--check-frames": args.check_frames, "--config": args.config}
    outputs.check_out_folder(out, "export", inputs, earlier=EARLIER)  # before any work
    if out.is_dir():
        outputs.check_only_own_files(out, EXPORT_FILES)
    config = load_config(args.config, list(args.overrides))
    return ExportOptions(config=config, checkpoint=None if args.checkpoint is None else Path(args.checkpoint),
                         out=out, format=args.format,
                         check_frames=None if args.check_frames is None else Path(args.check_frames),
                         config_source=args.config)


def run(opts: ExportOptions) -> dict:
    """`fomm.export.export_checkpoint`: the parity report (max abs differences per output)."""
    from fomm.export import export_checkpoint
    return export_checkpoint(opts.config, opts.checkpoint, opts.out, opts.check_frames, opts.inputs)


def main(args: argparse.Namespace) -> int:
    from fomm.export import TOLERANCE
    opts = options(args)
    report = run(opts)
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in report["max_abs_diff"].items())
    graphs = ", ".join(sorted(path.name for path in opts.out.glob("*.onnx")))
    print(f"{opts.out}: {graphs}; onnxruntime vs torch max abs diff {diffs} "
          f"(tolerance {TOLERANCE:g})")
    return 0
