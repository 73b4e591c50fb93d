"""`pipeline run report --run DIR`: the HTML page and its Markdown twin describing a run
(metrics/report.py: what the pages hold and where a run's parts are found)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError


@dataclass(frozen=True)
class ReportOptions:
    run: Path  # a `pipeline run all` folder or a benchmark output folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path,
                        help="a `pipeline run all` folder or a benchmark output folder")


def options(args: argparse.Namespace) -> ReportOptions:
    """The typed options; UserError when --run is no folder (before any page is written)."""
    run_folder = Path(args.run)
    if not run_folder.is_dir():
        raise UserError(f"--run {str(run_folder)!r} is not a folder; expected a `pipeline run all` or "
                        "benchmark output folder")
    return ReportOptions(run=run_folder)


def run(options: ReportOptions) -> tuple[Path, Path]:
    """(report.html, report.md) written into the run folder."""
    from metrics.report import write_report
    return write_report(options.run)


def main(args: argparse.Namespace) -> int:
    html_path, md_path = run(options(args))
    print(f"report: {html_path}\nmarkdown: {md_path}")
    return 0
