"""Parquet shards of a prepared dataset: `<out>/shards/{split}-NNNNN.parquet`, one row per
frame (`clip` str, `frame_index` int32, `png` binary), that training can stream.

Shards are rebuilt from the finished PNG folders in clip-name order, so their content
does not depend on the order in which Ray finished the clips; each file is written
under a temporary name and renamed into place.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from pipeline.media import atomic_path

log = logging.getLogger(__name__)

SCHEMA_FIELDS = (("clip", "string"), ("frame_index", "int32"), ("png", "binary"))
DEFAULT_TARGET_BYTES = 256 * 2**20


def _schema():
    import pyarrow as pa
    return pa.schema([(name, getattr(pa, kind)()) for name, kind in SCHEMA_FIELDS])


def shard_path(out: Path, split: str, index: int) -> Path:
    return Path(out) / "shards" / f"{split}-{index:05d}.parquet"


def _write(path: Path, rows: list[tuple[str, int, bytes]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    clips, indices, pngs = zip(*rows)
    table = pa.table({"clip": list(clips), "frame_index": list(indices), "png": list(pngs)},
                     schema=_schema())
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="none")  # PNG bytes do not compress further


def write_shards(out: Path, split: str, clip_folders: list[tuple[str, Path]],
                 target_bytes: int = DEFAULT_TARGET_BYTES) -> list[Path]:
    """Pack the PNGs of `clip_folders` [(clip, folder)] into shards of about `target_bytes`
    (a shard closes once it reaches the target; a clip may span two shards). Older shards
    of the split beyond the new count are removed."""
    if target_bytes <= 0:
        raise ValueError(f"target shard size must be positive, got {target_bytes}")
    written: list[Path] = []
    rows: list[tuple[str, int, bytes]] = []
    size = 0
    for clip, folder in sorted(clip_folders):
        for frame in sorted(Path(folder).glob("*.png")):
            data = frame.read_bytes()
            rows.append((clip, int(frame.stem), data))
            size += len(data)
            if size >= target_bytes:
                written.append(shard_path(out, split, len(written)))
                _write(written[-1], rows)
                rows, size = [], 0
    if rows:
        written.append(shard_path(out, split, len(written)))
        _write(written[-1], rows)
    for stale in sorted((Path(out) / "shards").glob(f"{split}-*.parquet")):
        if stale not in written:
            stale.unlink()
    log.info("%s: %d shard(s)", split, len(written))
    return written


def iter_shard_frames(out: Path, split: str) -> Iterator[tuple[str, int, bytes]]:
    """Stream (clip, frame_index, png bytes) from a split's shards, batch by batch."""
    import pyarrow.parquet as pq
    for path in sorted((Path(out) / "shards").glob(f"{split}-*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            columns = batch.to_pydict()
            yield from zip(columns["clip"], columns["frame_index"], columns["png"])
