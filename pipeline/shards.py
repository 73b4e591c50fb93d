"""Parquet shards of a prepared dataset: `<out>/shards/{split}-NNNNN.parquet`, one row per
frame (`clip` str, `frame_index` int32, `png` binary), that training can stream.

Layout for random access: a clip never spans two shards, and its frames are split into
row groups of at most `GROUP_FRAMES` frames that hold no other clip, so a reader that
wants two frames of a clip reads at most two small groups, never a whole shard
(fomm/data.ParquetStore).

Shards are rebuilt from the finished PNG folders in clip-name order, so their content
does not depend on the order in which Ray finished the clips. A rebuild writes the new
set into a fresh folder under `<out>/.shard-sets/` and switches `<out>/shards` (a
symbolic link) to it with one rename: a reader, or a run killed at any moment, sees
either the whole old set or the whole new one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

SCHEMA_FIELDS = (("clip", "string"), ("frame_index", "int32"), ("png", "binary"))
DEFAULT_TARGET_BYTES = 256 * 2**20
# 8 frames of 256 px PNGs are about 1 MB: a training pair reads at most two such groups.
GROUP_FRAMES = 8
SETS_DIR = ".shard-sets"


def _schema():
    import pyarrow as pa
    return pa.schema([(name, getattr(pa, kind)()) for name, kind in SCHEMA_FIELDS])


def shard_path(folder: Path, split: str, index: int) -> Path:
    return Path(folder) / f"{split}-{index:05d}.parquet"


def _clip_frames(folder: Path) -> list[tuple[int, bytes]]:
    return [(int(frame.stem), frame.read_bytes()) for frame in sorted(Path(folder).glob("*.png"))]


class _ShardWriter:
    """One shard file being filled, clip by clip (row groups never mix clips)."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq
        self.path, self.size = path, 0
        self.writer = pq.ParquetWriter(path, _schema(), compression="none")  # PNG is compressed

    def add_clip(self, clip: str, frames: list[tuple[int, bytes]]) -> None:
        import pyarrow as pa
        for offset in range(0, len(frames), GROUP_FRAMES):
            chunk = frames[offset:offset + GROUP_FRAMES]
            table = pa.table({"clip": [clip] * len(chunk), "frame_index": [i for i, _ in chunk],
                              "png": [data for _, data in chunk]}, schema=_schema())
            self.writer.write_table(table, row_group_size=len(chunk))
            self.size += sum(len(data) for _, data in chunk)

    def close(self) -> None:
        self.writer.close()


def write_shards(folder: Path, split: str, clip_folders: list[tuple[str, Path]],
                 target_bytes: int = DEFAULT_TARGET_BYTES) -> list[Path]:
    """Pack the PNGs of `clip_folders` [(clip, folder)] into `folder/{split}-NNNNN.parquet`;
    a shard closes at the first clip boundary at or after `target_bytes`. `folder` is a
    fresh set folder (see `new_shard_set`): nothing here is renamed into a live set."""
    if target_bytes <= 0:
        raise ValueError(f"target shard size must be positive, got {target_bytes}")
    Path(folder).mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    current: _ShardWriter | None = None
    for clip, clip_folder in sorted(clip_folders):
        frames = _clip_frames(clip_folder)
        if not frames:
            continue
        if current is None:
            current = _ShardWriter(shard_path(folder, split, len(written)))
            written.append(current.path)
        current.add_clip(clip, frames)
        if current.size >= target_bytes:
            current.close()
            current = None
    if current is not None:
        current.close()
    log.info("%s: %d shard(s)", split, len(written))
    return written


def live_folder(out: Path) -> Path:
    return Path(out) / "shards"


def live_index(out: Path) -> dict:
    """index.json of the live set: per split its signature and files ({} when none)."""
    path = live_folder(out) / "index.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def new_shard_set(out: Path) -> Path:
    """A fresh folder for the next set, beside the live one (same file system)."""
    from core.media import temp_dir
    sets = Path(out) / SETS_DIR
    sets.mkdir(parents=True, exist_ok=True)
    return temp_dir(sets, "set-")


def reuse_split(out: Path, new_set: Path, files: list[str]) -> None:
    """Carry a split that did not change into the new set as hard links (no copy)."""
    for name in files:
        os.link(live_folder(out) / name, new_set / name)


def switch_to(out: Path, new_set: Path, index: dict) -> None:
    """Write the set's index, make it the live set with one rename, then drop older sets."""
    from core.media import atomic_path
    out = Path(out)
    with atomic_path(new_set / "index.json") as tmp:
        tmp.write_text(json.dumps(index))
    live = live_folder(out)
    if live.exists() and not live.is_symlink():  # a folder from an older layout
        os.replace(live, out / SETS_DIR / f"legacy-{os.getpid()}")
    link = out / f".shards-link-{os.getpid()}"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(Path(SETS_DIR) / new_set.name, target_is_directory=True)
    os.replace(link, live)
    remove_stale_sets(out)


def remove_stale_sets(out: Path) -> None:
    """Sets other than the live one: older sets, or one a killed run was writing."""
    sets = Path(out) / SETS_DIR
    if not sets.is_dir():
        return
    live = os.path.realpath(live_folder(out))
    for folder in sets.iterdir():
        if os.path.realpath(folder) != live:
            shutil.rmtree(folder, ignore_errors=True)


def iter_shard_frames(out: Path, split: str) -> Iterator[tuple[str, int, bytes]]:
    """Stream (clip, frame_index, png bytes) from a split's live shards, batch by batch."""
    import pyarrow.parquet as pq
    for path in sorted(live_folder(out).glob(f"{split}-*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            columns = batch.to_pydict()
            yield from zip(columns["clip"], columns["frame_index"], columns["png"])
