"""Face clips from one's own videos, as the original crop-video script defines them, but
cropped for real: detect faces with dlib (every Nth frame), link the boxes into tubes by
IoU with each tube's first box (a box under 0.25 IoU with every tube starts a new one; a
tube ends at the first detection frame where none of its boxes matches), take the union
box of a tube, enlarge it (10 % each side, grown to a square where the frame allows),
keep tubes of at least `min_frames` frames, and cut each with ffmpeg.
"""
from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import clips as clips_mod

log = logging.getLogger(__name__)

DETECT_SIDE = 360  # detection runs on frames whose shorter side is at most this


@dataclass
class Tube:
    first_box: np.ndarray   # (4,) ltrb: the reference for IoU
    union_box: np.ndarray   # (4,) ltrb: every box of the tube joined
    start: int              # first frame
    end: int                # last detection frame (inclusive)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ltrb boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def link_tubes(detections: list[tuple[int, np.ndarray]], iou_threshold: float,
               last_frame: int) -> list[Tube]:
    """Tubes from per-frame boxes [(frame, (N, 4))], frames in increasing order."""
    active: list[Tube] = []
    finished: list[Tube] = []
    for frame, boxes in detections:
        still = []
        for tube in active:  # a tube lives while some box overlaps its first box
            if any(iou(tube.first_box, box) >= iou_threshold for box in boxes):
                still.append(tube)
            else:
                finished.append(tube)
        active = still
        for box in boxes:
            scores = [iou(tube.first_box, box) for tube in active]
            best = int(np.argmax(scores)) if scores else -1
            if best < 0 or scores[best] < iou_threshold:
                active.append(Tube(box.copy(), box.copy(), frame, frame))
            else:
                tube = active[best]
                tube.end = frame
                tube.union_box = np.concatenate([np.minimum(tube.union_box[:2], box[:2]),
                                                 np.maximum(tube.union_box[2:], box[2:])])
    for tube in active:  # still alive at the end of the video: runs to the last frame
        tube.end = max(tube.end, last_frame)
    return finished + active


def enlarge(box: np.ndarray, amount: float, frame_w: int, frame_h: int) -> tuple[int, int, int, int]:
    """Grow an ltrb box by `amount` of its size on each side, more along its short side
    so it turns square where possible, then clamp to the frame: (x, y, w, h)."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    grow_w = max(amount, ((1 + 2 * amount) * height - width) / (2 * width))
    grow_h = max(amount, ((1 + 2 * amount) * width - height) / (2 * height))
    left, right = int(left - grow_w * width), int(right + grow_w * width)
    top, bottom = int(top - grow_h * height), int(bottom + grow_h * height)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, frame_w), min(bottom, frame_h)
    return left, top, right - left, bottom - top


def detect_boxes(video: Path, every: int) -> tuple[list[tuple[int, np.ndarray]], int, tuple[int, int]]:
    """dlib boxes (in full-resolution pixels) on every `every`-th frame; also the number of
    frames and the (width, height). Only the frames used are converted to RGB."""
    import av
    from core import faces
    detections = []
    count = 0
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        scale = min(1.0, DETECT_SIDE / min(width, height))
        small = (max(1, round(width * scale)), max(1, round(height * scale)))
        for index, frame in enumerate(container.decode(video=0)):
            count = index + 1
            if index % every:
                continue
            image = frame.to_ndarray(format="rgb24", width=small[0], height=small[1])
            boxes = faces.detect_faces(image, upsample=0 if scale < 1 else 1) / scale
            detections.append((index, boxes))
    return detections, count, (width, height)


def video_id_of(path: Path) -> str:
    """A plain name (pipeline.clips.check_name) from a file name: other characters become
    '_', and a leading '.' or nothing at all too."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", path.stem)[:200]
    return "_" + name[1:] if not name or name[0] == "." else name


def prepare_video(video: Path, out: Path, size: int, policy,
                  finished: tuple[Path, str] | None = None) -> list[dict]:
    """Find, link and cut the face tubes of one video; one row per tube (or one failed
    row naming the video when it has none). When every tube is done (or there is none),
    `finished` = (marker, text) records the video as finished."""
    import av
    from core.errors import UserError
    from core.media import probe
    from pipeline.crop import CropError, cut_clip
    began = time.perf_counter()
    video_id = video_id_of(video)
    try:
        detections, num_frames, (width, height) = detect_boxes(video, policy.detect_every)
        fps = probe(video).fps
    except (av.error.FFmpegError, UserError, OSError, IndexError) as err:
        # unreadable video (IndexError: no video stream): a failed row, the others go on
        row = clips_mod.result_row(clips_mod.Clip(video_id, video_id, None, policy.split),
                                   status="failed", source=str(video),
                                   error=f"cannot read video: {type(err).__name__}: {err}")
        clips_mod.write_row(out, row)
        return [row]
    detect_s = time.perf_counter() - began
    tubes = [t for t in link_tubes(detections, policy.iou_threshold, num_frames - 1)
             if t.end + 1 - t.start >= policy.min_frames]
    log.info("%s: %d frame(s), %d tube(s) of >= %d frames", video.name, num_frames, len(tubes),
             policy.min_frames)
    rows = []
    for tube in tubes:
        stop = tube.end + 1
        clip = clips_mod.Clip(clips_mod.clip_name(video_id, tube.start, stop), video_id, None,
                              policy.split, tube.start, stop, None,
                              tuple(int(v) for v in tube.union_box), width, height)
        crop_began = time.perf_counter()
        staging = clips_mod.staging_dir(out, clip.split, clip.name)
        try:
            box = enlarge(tube.union_box, policy.enlarge, width, height)
            count = cut_clip(video, tube.start, stop, box, size, staging)
            final = clips_mod.clip_dir(out, clip.split, clip.name)
            clips_mod.publish_dir(staging, final)
            row = clips_mod.result_row(clip, status="done", num_frames=count, source=str(video),
                                       bytes=clips_mod.folder_bytes(final), size=size)
        except CropError as err:
            shutil.rmtree(staging, ignore_errors=True)
            row = clips_mod.result_row(clip, status="failed", error=str(err), source=str(video))
        row.update(download_s=detect_s, crop_s=time.perf_counter() - crop_began, frames_fps=fps)
        row["total_s"] = row["download_s"] + row["crop_s"]
        clips_mod.write_row(out, row)
        rows.append(row)
    if not tubes:
        row = clips_mod.result_row(clips_mod.Clip(video_id, video_id, None, policy.split),
                                   status="failed", source=str(video), total_s=detect_s,
                                   error=f"no face tube of at least {policy.min_frames} frames "
                                         f"({len(detections)} frames checked)")
        clips_mod.write_row(out, row)
        rows.append(row)
    if finished is not None and (all(r["status"] == "done" for r in rows) or not tubes):
        marker, text = finished
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(text)
    return rows
