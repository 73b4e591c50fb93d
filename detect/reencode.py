"""The re-encodings a shared video goes through, named as `--transforms` takes them:
`crf23`, `crf35`, `scale75+crf28`, `scale50+crf23`, `fps15+crf23`: steps joined by `+`, each
at most once; `scaleP` resizes to P % of each side (even sizes, bicubic), `fpsN` keeps N
frames a second, `crfN` is the H.264 quality (libx264, yuv420p; 23, x264's default, when
absent). `none` is the clip as generated, written losslessly (PNG frames).
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from core.errors import UserError

NONE = "none"
STEP = re.compile(r"^(crf|scale|fps)(\d+)$")
LIMITS = {"crf": (0, 51), "scale": (10, 100), "fps": (1, 120)}
DEFAULT_CRF = 23


@dataclass(frozen=True)
class Transform:
    name: str                 # as given, e.g. scale75+crf28
    crf: int = DEFAULT_CRF
    scale: int | None = None  # percent of each side
    fps: int | None = None

    def ffmpeg_args(self) -> list[str]:
        """Output arguments of the re-encoding (after the input)."""
        filters = []
        if self.scale is not None:
            filters.append(f"scale=trunc(iw*{self.scale}/200)*2:trunc(ih*{self.scale}/200)*2:flags=bicubic")
        else:
            filters.append("pad=ceil(iw/2)*2:ceil(ih/2)*2")  # yuv420p needs even sizes
        if self.fps is not None:
            filters.append(f"fps={self.fps}")
        return ["-vf", ",".join(filters), "-c:v", "libx264", "-preset", "veryfast", "-crf", str(self.crf),
                "-pix_fmt", "yuv420p", "-threads", "1", "-f", "mp4"]


def parse_transform(text: str) -> Transform:
    """A `--transforms` item; UserError naming it and the grammar when it is not one."""
    values: dict[str, int] = {}
    for step in text.split("+"):
        match = STEP.match(step)
        if not match or match.group(1) in values:
            raise UserError(f"--transforms item {text!r}: expected steps crfN, scaleP, fpsN joined by '+', "
                            f"each at most once (e.g. crf23, scale75+crf28)")
        kind, value = match.group(1), int(match.group(2))
        low, high = LIMITS[kind]
        if not low <= value <= high:
            raise UserError(f"--transforms item {text!r}: {kind} {value} is outside {low}..{high}")
        values[kind] = value
    return Transform(text, values.get("crf", DEFAULT_CRF), values.get("scale"), values.get("fps"))


def parse_transforms(text: str | None) -> list[Transform]:
    """`none` first (always written), then each comma-separated item once."""
    items = [item.strip() for item in (text or "").split(",") if item.strip() and item.strip() != NONE]
    if len(set(items)) != len(items):
        raise UserError(f"--transforms {text!r} names a transform twice")
    return [Transform(NONE)] + [parse_transform(item) for item in items]


def write_reencoded(path: Path, frames: Iterable[np.ndarray], fps: float, transform: Transform) -> Path:
    """RGB uint8 frames re-encoded as `transform` says into the mp4 `path`, atomically (one
    thread, so the same frames give the same bytes)."""
    from core.media import ffmpeg_exe, temp_file
    frames = list(frames)
    height, width = frames[0].shape[:2]
    tmp = temp_file(path.parent, f".{path.stem}.", ".part.mp4")
    command = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", f"{fps:.6f}", "-i", "-", *transform.ffmpeg_args(),
               "-fflags", "+bitexact", "-flags:v", "+bitexact", str(tmp)]
    try:
        result = subprocess.run(command, input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames),
                                capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg failed re-encoding {path.name} ({transform.name}): "
                               f"{result.stderr.decode(errors='replace').strip()[-300:]}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
