"""The fakes dataset as the detector reads it: its manifest, a selection of its clips, and
evenly spaced frames of a clip at the detector's input size.

A clip is a PNG folder (lossless) or an mp4 (a re-encoding), `path` relative to the dataset
(detect/fakes.py). Frames are whole frames resized (the prepared data are already crops of
the subject, as FaceForensics++'s detectors see face crops).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError

log = logging.getLogger(__name__)

LABELS = {"real": 0, "generated": 1}


def read_manifest(data: str | Path) -> pd.DataFrame:
    """The done rows of `<data>/manifest.parquet`; UserError when it is not a fakes dataset."""
    path = Path(data) / "manifest.parquet"
    if not path.is_file():
        raise UserError(f"--data {str(data)!r} holds no manifest.parquet; expected the output of "
                        "`pipeline run fakes`")
    table = pd.read_parquet(path)
    missing = {"id", "split", "label", "family", "marked", "transform", "path", "status"} - set(table.columns)
    if missing:
        raise UserError(f"{str(path)!r} lacks columns {sorted(missing)}; expected a fakes manifest")
    return table[table["status"] == "done"].reset_index(drop=True)


def families_of(manifest: pd.DataFrame) -> list[str]:
    return sorted(manifest["family"].dropna().unique().tolist())


def select(manifest: pd.DataFrame, split: str | None = None, families: list[str] | None = None,
           marked: bool | None = False, transforms: list[str] | None = ("none",),
           real: bool = True) -> pd.DataFrame:
    """Rows of `split` (None: both); generated clips of `families` (None: all); real clips
    unless `real` is False; `marked` True / False / None (both); `transforms` None for all."""
    rows = manifest if split is None else manifest[manifest["split"] == split]
    if transforms is not None:
        rows = rows[rows["transform"].isin(list(transforms))]
    generated = rows["label"] == "generated"
    keep_generated = generated & (rows["family"].isin(families) if families is not None else True)
    if marked is not None:
        keep_generated &= rows["marked"] == marked
    keep = keep_generated | ((~generated) & real)
    return rows[keep].reset_index(drop=True)


def spaced(total: int, count: int | None) -> list[int]:
    """`count` frame indices spread evenly over `total` (all of them when None or more)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted(set(np.linspace(0, total - 1, count).round().astype(int).tolist()))


def read_frames_of(path: Path, count: int | None, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8: `count` evenly spaced frames of a clip folder, video or image."""
    from core.frames import resize
    from core.media import load_image
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")
                       and not p.name.startswith("."))
        if not files:
            raise UserError(f"clip folder {str(path)!r} holds no frames")
        frames = [load_image(files[i]) for i in spaced(len(files), count)]
    elif path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        frames = [load_image(path)]
    else:
        frames = _spaced_video_frames(path, count)
    return np.stack([resize(frame, (size, size)) for frame in frames])


def _spaced_video_frames(path: Path, count: int | None) -> list[np.ndarray]:
    """`count` evenly spaced frames of a video, decoded in one pass and kept only when chosen
    (a long video is never held whole); the container's frame count picks them."""
    from core.media import iter_frames, probe
    wanted = set(spaced(max(probe(path).num_frames, 1), count))
    frames = [frame for index, frame in enumerate(iter_frames(path)) if count is None or index in wanted]
    if not frames:
        raise UserError(f"{str(path)!r} has no frames")
    return frames


def clip_frames(data: str | Path, row, count: int | None, size: int) -> np.ndarray:
    return read_frames_of(Path(data) / row["path"], count, size)
