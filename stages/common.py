"""Flags several stages share, and how their values become typed options."""
from __future__ import annotations

import argparse

from core.provenance import OPT_OUT_HELP


def add_provenance_flag(parser: argparse.ArgumentParser) -> None:
    """The opt-out flag, the same on every stage that writes generated media."""
    parser.add_argument("--no-provenance", dest="provenance", action="store_false", help=OPT_OUT_HELP)
