"""Clips: reading and validating an upstream crop manifest into `Clip`s, clip naming,
the per-clip result row, and publishing a clip's PNG folder whole.

Upstream manifests (video-preprocessing's vox/taichi csv) have one row per clip with
columns `video_id,start,end,bbox,fps,width,height,partition[,person_id]`: frames
[start, end) at `fps` of a `width` x `height` video, bbox = left-top-right-bottom pixels.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("video_id", "start", "end", "bbox", "fps", "width", "height", "partition")
SPLITS = ("train", "test")
STATUSES = ("done", "failed", "unavailable")


def clip_name(video_id: str, start: int, end: int, person_id: str | None = None) -> str:
    """`[person_id#]video_id#start#end` with 6-digit frames, as the original training reads."""
    name = f"{video_id}#{int(start):06d}#{int(end):06d}"
    return f"{person_id}#{name}" if person_id else name


@dataclass(frozen=True)
class Clip:
    """One clip to cut: frames [start, end) at `fps` of video `video_id`, bbox in the
    coordinates of a `width` x `height` video (the manifest's, not necessarily the file's).
    `end=None` runs to the video's end, `bbox=None` keeps the whole frame and `fps=None`
    counts frames at the video's own rate (whole-video datasets: fashion, mgif, ...)."""
    name: str
    video_id: str
    person_id: str | None
    split: str
    start: int = 0
    end: int | None = None
    fps: float | None = None
    bbox: tuple[int, int, int, int] | None = None
    width: int | None = None
    height: int | None = None


def _parse_bbox(text: str, line: int) -> tuple[int, int, int, int]:
    parts = str(text).split("-")
    try:
        left, top, right, bottom = (int(float(p)) for p in parts)
    except ValueError:
        raise UserError(f"manifest row {line}: bbox {text!r} is not 'left-top-right-bottom' "
                        f"integers") from None
    return left, top, right, bottom


def _split_of(partition: str, line: int) -> str:
    value = str(partition).strip().lower()
    if value not in SPLITS:
        raise UserError(f"manifest row {line}: partition {partition!r} is not one of {SPLITS}")
    return value


def read_manifest(path: str | Path) -> list[Clip]:
    """All clips of an upstream csv manifest, in file order. UserError names a missing
    column or the first malformed row (line numbers count the header as line 1)."""
    import pandas as pd
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest {str(path)!r} does not exist")
    table = pd.read_csv(path, dtype={"video_id": str, "person_id": str, "bbox": str})
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"manifest {str(path)!r} lacks column(s) {missing}; expected "
                        f"{','.join(REQUIRED_COLUMNS)}[,person_id], got {','.join(table.columns)}")
    has_person = "person_id" in table.columns
    clips = []
    for index, row in enumerate(table.itertuples(index=False)):
        line = index + 2
        try:
            start, end = int(row.start), int(row.end)
            fps, width, height = float(row.fps), int(row.width), int(row.height)
        except (TypeError, ValueError):
            raise UserError(f"manifest {str(path)!r} row {line}: start/end/fps/width/height must "
                            f"be numbers, got {row.start!r},{row.end!r},{row.fps!r},"
                            f"{row.width!r},{row.height!r}") from None
        if end <= start or fps <= 0 or width <= 0 or height <= 0:
            raise UserError(f"manifest {str(path)!r} row {line}: expected start < end and positive "
                            f"fps/width/height, got start={start} end={end} fps={fps} "
                            f"size={width}x{height}")
        person = str(row.person_id) if has_person and isinstance(row.person_id, str) else None
        video_id = str(row.video_id)
        clips.append(Clip(clip_name(video_id, start, end, person), video_id, person,
                          _split_of(row.partition, line), start, end, fps,
                          _parse_bbox(row.bbox, line), width, height))
    return clips


def group_by_video(clips: list[Clip]) -> dict[str, list[Clip]]:
    """Clips grouped by video id, videos in first-appearance order (one download each)."""
    groups: dict[str, list[Clip]] = {}
    for clip in clips:
        groups.setdefault(clip.video_id, []).append(clip)
    return groups


# --------------------------------------------------------------------------- result rows
def result_row(clip: Clip | None = None, **fields) -> dict:
    """One row of `<out>/clips.parquet`: the clip's facts (start, end, fps as the manifest
    gives them), `frames_fps` (the rate of the PNG frames: the video's own), status, error,
    timings."""
    row = {"clip": None, "video_id": None, "person_id": None, "split": None, "start": None,
           "end": None, "fps": None, "frames_fps": None, "bbox": None, "status": None,
           "error": None,
           "num_frames": 0, "bytes": 0, "source": None, "download_s": 0.0, "crop_s": 0.0,
           "total_s": 0.0}
    if clip is not None:
        bbox = None if clip.bbox is None else "-".join(str(v) for v in clip.bbox)
        row.update({"clip": clip.name, "video_id": clip.video_id, "person_id": clip.person_id,
                    "split": clip.split, "start": clip.start, "end": clip.end, "fps": clip.fps,
                    "bbox": bbox})
    unknown = set(fields) - set(row)
    if unknown:
        raise ValueError(f"unknown result fields {sorted(unknown)}")
    row.update(fields)
    if row["status"] not in STATUSES:
        raise ValueError(f"status {row['status']!r} is not one of {STATUSES}")
    return row


def clip_dir(out: Path, split: str, name: str) -> Path:
    return Path(out) / "png" / split / name


def frame_name(index: int) -> str:
    return f"{index:07d}.png"


def row_path(out: Path, name: str) -> Path:
    """Where a worker records its clip's row the moment the clip is finished (JSON), so a
    killed driver loses nothing; clips.parquet is assembled from these at the end."""
    return Path(out) / ".rows" / f"{name}.json"


def write_row(out: Path, row: dict) -> None:
    path = row_path(out, row["clip"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".json.part", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(row, handle)
    os.replace(tmp, path)


def read_row(out: Path, name: str) -> dict | None:
    path = row_path(out, name)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def is_done(out: Path, row: dict | None) -> bool:
    """A clip counts as done only if its row says so and its folder holds every frame."""
    if row is None or row.get("status") != "done":
        return False
    folder = clip_dir(out, row["split"], row["clip"])
    count = int(row.get("num_frames") or 0)
    return count > 0 and all((folder / frame_name(i)).is_file() for i in (0, count - 1)) \
        and sum(1 for _ in folder.glob("*.png")) == count


def staging_dir(out: Path, split: str, name: str) -> Path:
    """A fresh temporary folder beside the clip's final folder (same file system)."""
    parent = clip_dir(out, split, name).parent
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished clip folder into place whole, replacing any earlier one."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.png"))
