"""Write one benchmark's section of benchmarks/RESULTS.md, leaving the others as they are.

Each script owns the block between `<!-- BEGIN name -->` and `<!-- END name -->` and
replaces it whole, stamped with the machine and the date.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = ("# Benchmark results\n\nEach section is written by the script it names; rerun the script "
          "to refresh it. Ratios are measured side by side in one run; absolute times are "
          "only comparable on the same machine.\n")


def machine() -> str:
    """CPU model, core count, memory and GPU (if any) of this machine, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        pass
    gpu = "no GPU"
    try:
        import torch
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
        version = f", torch {torch.__version__}"
    except ImportError:
        version = ""
    return f"{cpu}, {os.cpu_count()} cores{memory}, {gpu}{version}"


def write_section(name: str, body: str) -> Path:
    """Replace (or append) section `name` of RESULTS.md with `body` (Markdown)."""
    stamp = f"_{datetime.date.today().isoformat()}, {machine()}_"
    block = f"<!-- BEGIN {name} -->\n## {name}\n\n{stamp}\n\n{body.strip()}\n<!-- END {name} -->"
    RESULTS.touch()
    with open(RESULTS, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        text = handle.read() or HEADER
        pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
        handle.seek(0)
        handle.write(text)
        handle.truncate()
    return RESULTS


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table of `rows` (dicts), floats to 3 significant figures."""
    columns = columns or list(rows[0])
    def fmt(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
