"""Clips: reading and validating an upstream crop manifest into `Clip`s, clip naming,
the per-clip result row, and publishing a clip's PNG folder whole.

Upstream manifests (video-preprocessing's vox/taichi csv) have one row per clip with
columns `video_id,start,end,bbox,fps,width,height,partition[,person_id]`: frames
[start, end) at `fps` of a `width` x `height` video, bbox = left-top-right-bottom pixels.
MRAA's ted-metadata.csv writes its rows as `video_id#start#end` with start = end = 0 in the
columns; such a row's range is read from its id (`ID_RANGE`).

A clip's frames live in `<out>/png/<split>/<clip>.mp4/0000000.png ...`: the folder name the
original loaders glob for (`<clip>.mp4`). Outputs of earlier versions named the folder
`<clip>` alone; `adopt_legacy_folders` renames those in place.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("video_id", "start", "end", "bbox", "fps", "width", "height", "partition")
SPLITS = ("train", "test")
STATUSES = ("done", "failed", "unavailable")
# A clip listed in both splits, or a video whose clips are in different splits:
# "first" gives every clip of a video the split of the video's first manifest row (what
# load_videos.py does: upstream vox's 3 clips listed in both splits go to train); "test"
# keeps a clip listed in both in test only; "error" refuses them.
SPLIT_POLICIES = ("first", "test", "error")
FOLDER_SUFFIX = ".mp4"  # clip folders are named `<clip>.mp4`, as the original loaders glob


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


# MRAA's TED manifest: `youtube-id#start#end` in the video_id column, 0 in start and end.
ID_RANGE = re.compile(r"^(?P<video>[^#]+)#(?P<start>\d{1,9})#(?P<end>\d{1,9})$")


# A name that becomes one path component: no separator, no '..', no leading dot (hidden and
# staging names start with one), no '#' (it separates a clip name's parts).
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,199}$")


def check_name(value: str, what: str) -> str:
    """`value` if it is a plain file name ([A-Za-z0-9_-][A-Za-z0-9_.-]*), else UserError."""
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value):  # fullmatch: `$` passes "x\n"
        raise UserError(f"{what} {value!r} is not a plain name; expected letters, digits, '_', "
                        f"'-' and '.' (not first), at most 200 characters")
    return value


def _parse_bbox(text: str, line: int) -> tuple[int, int, int, int]:
    parts = str(text).split("-") if isinstance(text, str) else []
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise UserError(f"manifest row {line}: bbox {text!r} is not 'left-top-right-bottom' "
                        f"finite integers")
    left, top, right, bottom = (int(v) for v in values)
    return left, top, right, bottom


def _split_of(partition: str, line: int) -> str:
    value = str(partition).strip().lower()
    if value not in SPLITS:
        raise UserError(f"manifest row {line}: partition {partition!r} is not one of {SPLITS}")
    return value


def _read_table(path: Path):
    import pandas as pd
    try:
        return pd.read_csv(path, dtype={"video_id": str, "person_id": str, "bbox": str},
                           encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"manifest {str(path)!r} is not UTF-8 text (byte {err.start}: "
                        f"{err.object[err.start:err.start + 1]!r}); expected a csv file") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"manifest {str(path)!r} is empty; expected a csv header "
                        f"{','.join(REQUIRED_COLUMNS)}[,person_id] and rows") from None
    except pd.errors.ParserError as err:
        raise UserError(f"manifest {str(path)!r} is not a readable csv: "
                        f"{str(err).splitlines()[0]}") from None


def _row_numbers(row, line: int, path: Path,
                 id_range: tuple[int, int] | None = None) -> tuple[int, int, float, int, int]:
    """start, end, fps, width, height of a row; `id_range` (from the video id) stands in
    for start and end when both columns are 0."""
    try:
        fps = float(row.fps)
        start, end, width, height = (int(float(v)) for v in (row.start, row.end, row.width,
                                                               row.height))
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"manifest {str(path)!r} row {line}: start/end/fps/width/height must "
                        f"be finite numbers, got {row.start!r},{row.end!r},{row.fps!r},"
                        f"{row.width!r},{row.height!r}") from None
    if id_range is not None and start == end == 0:
        start, end = id_range
    if not math.isfinite(fps) or end <= start or start < 0 or fps <= 0 or width <= 0 \
            or height <= 0:
        raise UserError(f"manifest {str(path)!r} row {line}: expected 0 <= start < end and "
                        f"finite positive fps/width/height, got start={start} end={end} "
                        f"fps={fps} size={width}x{height}")
    return start, end, fps, width, height


def _video_of(raw, line: int) -> tuple[str, tuple[int, int] | None]:
    """The plain video id of a manifest row and the range its id carries, if any."""
    match = ID_RANGE.match(raw) if isinstance(raw, str) else None
    if match is None:
        return check_name(raw, f"manifest row {line}: video_id"), None
    video_id = check_name(match["video"], f"manifest row {line}: video_id {raw!r}: video")
    return video_id, (int(match["start"]), int(match["end"]))


def read_manifest(path: str | Path, split_conflicts: str = "first",
                  id_range_bbox_size: tuple[int, int] | None = None) -> list[Clip]:
    """All clips of an upstream csv manifest, in file order. UserError names a missing
    column or the first malformed row (line numbers count the header as line 1): ids that
    are not plain names, numbers that are not finite, one clip listed twice with different
    facts. Rows repeated exactly are kept once (upstream vox repeats about 300).

    Splits follow `split_conflicts` (SPLIT_POLICIES): "first" gives each video's clips the
    partition (and person_id) of the video's first row, as load_videos.py does; "test" keeps
    a clip listed in both splits (upstream vox has 3) in test only; "error" refuses it.

    A row `video#start#end` with 0 in its start and end columns (MRAA's ted-metadata.csv)
    is the clip [start, end) of `video` in the file's own frames (fps=None), its bbox in the
    pixels of an `id_range_bbox_size` (w, h) frame when given, else of its width x height."""
    if split_conflicts not in SPLIT_POLICIES:
        raise UserError(f"split conflicts policy {split_conflicts!r}: expected one of "
                        f"{list(SPLIT_POLICIES)}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest {str(path)!r} does not exist")
    table = _read_table(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"manifest {str(path)!r} lacks column(s) {missing}; expected "
                        f"{','.join(REQUIRED_COLUMNS)}[,person_id], got {','.join(table.columns)}")
    if table.empty:
        raise UserError(f"manifest {str(path)!r} has a header but no rows; expected one row "
                        f"per clip")
    has_person = "person_id" in table.columns
    clips: dict[tuple[str, str], Clip] = {}
    lines: dict[tuple[str, str], int] = {}
    first_row: dict[str, tuple[str, str | None]] = {}  # raw video id -> (split, person)
    moved = 0
    for index, row in enumerate(table.itertuples(index=False)):
        line = index + 2
        video_id, id_range = _video_of(row.video_id, line)
        start, end, fps, width, height = _row_numbers(row, line, path, id_range)
        person = row.person_id if has_person and isinstance(row.person_id, str) else None
        if person is not None:
            check_name(person, f"manifest row {line}: person_id")
        split = _split_of(row.partition, line)
        if split_conflicts == "first":
            first_split, person = first_row.setdefault(row.video_id, (split, person))
            moved += first_split != split
            split = first_split
        if id_range is not None and (start, end) == id_range:  # the range came from the id
            fps = None
            if id_range_bbox_size is not None:
                width, height = id_range_bbox_size
        clip = Clip(clip_name(video_id, start, end, person), video_id, person,
                    split, start, end, fps, _parse_bbox(row.bbox, line), width, height)
        key = (clip.split, clip.name)
        if key in clips and clips[key] != clip:
            raise UserError(f"manifest {str(path)!r}: clip {clip.name} is listed twice with "
                            f"different facts (rows {lines[key]} and {line}); expected each "
                            f"clip once")
        clips.setdefault(key, clip)
        lines.setdefault(key, line)
    if moved:
        log.warning("%d manifest row(s) list another split than their video's first row: "
                    "given the first row's split, as load_videos.py does", moved)
    both = sorted(name for split, name in clips if split == "train" and ("test", name) in clips)
    if both and split_conflicts == "error":
        raise UserError(f"manifest {str(path)!r}: {len(both)} clip(s) are listed in both train "
                        f"and test ({', '.join(both[:3])}{', ...' if len(both) > 3 else ''}); "
                        f"expected each clip in one split (--split-conflicts first gives them "
                        f"their video's first split, test keeps them in test only)")
    for name in both:
        log.warning("%s is listed in train and test: kept in test only", name)
        del clips[("train", name)]
    return sorted(clips.values(), key=lambda clip: lines[(clip.split, clip.name)])


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
           "error": None, "size": None, "settings_key": None,
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


CLIP_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-#]{0,254}$")


def _checked(split: str, name: str) -> tuple[str, str]:
    """Every path below is built from a split and a clip name: refuse anything that could
    leave its folder (callers validate ids first; this is the last line)."""
    if split not in SPLITS or not isinstance(name, str) or not CLIP_NAME.fullmatch(name):
        raise ValueError(f"unsafe clip path part: split {split!r}, clip {name!r}")
    return split, name


def clip_dir(out: Path, split: str, name: str) -> Path:
    """`<out>/png/<split>/<clip>.mp4`: a clip's frame folder."""
    split, name = _checked(split, name)
    return Path(out) / "png" / split / f"{name}{FOLDER_SUFFIX}"


def legacy_clip_dir(out: Path, split: str, name: str) -> Path:
    """`<out>/png/<split>/<clip>`: where earlier versions put a clip's frames."""
    split, name = _checked(split, name)
    return Path(out) / "png" / split / name


def adopt_legacy_folders(out: Path) -> int:
    """Rename every clip folder of an earlier version's output (`<clip>`, with a row in
    `.rows/`) to `<clip>.mp4`, in place; the number renamed. Each rename is atomic, so a run
    killed half way leaves every clip in one of the two names and the next run finishes the
    job. A legacy folder whose `.mp4` twin exists is a leftover and is removed."""
    renamed = 0
    for split in SPLITS:
        for row in (Path(out) / ".rows" / split).glob("*.json"):
            name = row.name[:-len(".json")]
            if not CLIP_NAME.match(name):
                continue
            legacy, current = legacy_clip_dir(out, split, name), clip_dir(out, split, name)
            if not legacy.is_dir() or legacy.is_symlink():
                continue
            if current.exists():
                shutil.rmtree(legacy)
            else:
                os.replace(legacy, current)
                renamed += 1
    if renamed:
        log.info("%s: %d clip folder(s) renamed to <clip>%s (the original loaders' names)",
                 out, renamed, FOLDER_SUFFIX)
    return renamed


def frame_name(index: int) -> str:
    return f"{index:07d}.png"


def row_path(out: Path, split: str, name: str) -> Path:
    """Where a worker records its clip's row the moment the clip is finished (JSON), so a
    killed driver loses nothing; clips.parquet is assembled from these at the end. Rows
    are keyed by (split, clip)."""
    split, name = _checked(split, name)
    return Path(out) / ".rows" / split / f"{name}.json"


def write_row(out: Path, row: dict) -> None:
    from core.media import temp_file
    path = row_path(out, row["split"], row["clip"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path.parent, ".", ".json.part")
    tmp.write_text(json.dumps(row))
    os.replace(tmp, path)


def read_row(out: Path, split: str, name: str) -> dict | None:
    path = row_path(out, split, name)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def all_rows(out: Path) -> list[dict]:
    """Every recorded row under `out`, sorted by (split, clip)."""
    rows = [json.loads(p.read_text()) for split in SPLITS
            for p in (Path(out) / ".rows" / split).glob("*.json")]
    return sorted(rows, key=lambda row: (row["split"], row["clip"]))


def settings_key(clip: Clip, settings: dict) -> str:
    """A digest of everything that shapes a clip's frames: its manifest facts (range, fps,
    bbox and the size the bbox refers to) and the run's settings (size, padding, policy).
    A done row whose key differs from the current one is redone."""
    facts = [getattr(clip, name, None) for name in
             ("video_id", "start", "end", "fps", "bbox", "width", "height", "seed", "num_frames")]
    text = json.dumps([facts, settings], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header, without decoding it."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return (0, 0)
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def is_done(out: Path, row: dict | None, key: str | None = None) -> bool:
    """A clip counts as done only if its row says so, was made with the settings `key`
    (when given), and its folder holds every frame at the row's size."""
    if row is None or row.get("status") != "done":
        return False
    if key is not None and row.get("settings_key") != key:
        return False
    folder = clip_dir(out, row["split"], row["clip"])
    count = int(row.get("num_frames") or 0)
    if count <= 0 or not all((folder / frame_name(i)).is_file() for i in (0, count - 1)):
        return False
    size = row.get("size")
    if size is not None and png_size(folder / frame_name(0)) != (size, size):
        return False
    return sum(1 for _ in folder.glob("*.png")) == count


def staging_dir(out: Path, split: str, name: str) -> Path:
    """A fresh temporary folder beside the clip's final folder (same file system)."""
    from core.media import temp_dir
    parent = clip_dir(out, split, name).parent
    parent.mkdir(parents=True, exist_ok=True)
    return temp_dir(parent, ".tmp-")


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished clip folder into place whole, replacing any earlier one (the old
    one is first renamed aside, so a kill never leaves a half-deleted folder at `final`)."""
    if final.exists():
        old = tmp.parent / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
        return
    os.replace(tmp, final)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.png"))
