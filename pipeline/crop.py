"""Cropping and resizing clips, as the original video-preprocessing scripts define a clip:

- frames: real frame i of a video at `fps_real` belongs to the clip when
  start / fps_manifest <= i / fps_real < end / fps_manifest (the manifest counts frames
  at its own fps; the file keeps its own rate); rates within 0.1 % are taken as equal,
  since manifests round 30000/1001 to 29.97 and the rule would then add a frame;
- bbox: given in the manifest's width x height, rescaled to the real resolution with
  int(v * real / manifest), then clamped to the frame (the original numpy slicing);
- resize (`RESIZES`): "original" is load_videos.py's arithmetic (core/skimage014.py: scikit-image
  0.14's Gaussian anti-aliasing with zero padding, then bilinear, in RGB) on frames ffmpeg
  decodes to RGB, as imageio did for the original; "ffmpeg" crops and resizes inside ffmpeg
  (`scale` with flags=area, in YUV), 1.4/255 off on average (more on the outer pixels) and
  faster. Either way, one PNG per frame.

`prepare_video` is the body of one Ray task: fetch the video once, cut each of its clips
into a temporary folder, publish the folder whole, record the clip's row.
"""
from __future__ import annotations

import logging
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from core.errors import UserError
from core.media import ffmpeg_exe
from pipeline import clips as clips_mod

log = logging.getLogger(__name__)


# zlib level 2 with Paeth prediction: 8 % larger than level 6 at a third of its CPU time
# (measured on d0.mp4 crops at 256 px; ffmpeg's default made PNG writing 5x slower than
# decoding the frames).
PNG_LEVEL = 2
BATCH = 16  # clips of one video cut by one ffmpeg run (one decode, BATCH outputs)
# Bumped whenever the crop/resize above changes the frames it writes: rows record it (in
# their settings digest), so clips cut by an older rule are redone on the next run.
CROP_VERSION = 1
# "original": load_videos.py's scikit-image 0.14 resize; "ffmpeg": ffmpeg's area filter.
RESIZES = ("original", "ffmpeg")


# How a failed row says that the video file itself is damaged (a cached download of it is
# then removed, so that a rerun fetches it again).
DAMAGED = "the file is truncated or damaged"


class CropError(Exception):
    """This clip cannot be cut from this video (bbox outside, no frames, ffmpeg failed)."""


def frame_range(start: int, end: int | None, fps_manifest: float | None, fps_real: float,
                num_frames: int) -> tuple[int, int]:
    """Real frame indices [first, stop) of manifest frames [start, end) (see module doc)."""
    ratio = 1.0 if fps_manifest is None else fps_real / fps_manifest
    if abs(ratio - 1) < 1e-3:  # manifests round 30000/1001 to 29.97: same rate, same frames
        first, stop = start, num_frames if end is None else end
    else:
        first = math.ceil(start * ratio - 1e-6)
        stop = num_frames if end is None else math.ceil(end * ratio - 1e-6)
    return first, min(stop, num_frames)


def scaled_bbox(bbox: tuple[int, int, int, int], manifest_size: tuple[int, int] | None,
                real_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, w, h) in real pixels of a manifest ltrb bbox; CropError if nothing is left."""
    real_w, real_h = real_size
    ref_w, ref_h = manifest_size or real_size
    left, top, right, bottom = bbox
    left, right = int(left * real_w / ref_w), int(right * real_w / ref_w)
    top, bottom = int(top * real_h / ref_h), int(bottom * real_h / ref_h)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(right, real_w), min(bottom, real_h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise CropError(f"bbox {'-'.join(map(str, bbox))} (in {ref_w}x{ref_h}) lies outside the "
                        f"{real_w}x{real_h} frame: rescaled to {left}-{top}-{right}-{bottom}")
    if (x0, y0, x1, y1) != (left, top, right, bottom):
        log.warning("bbox %s clamped to the %dx%d frame", bbox, real_w, real_h)
    return x0, y0, x1 - x0, y1 - y0


def crop_command(video: Path, cuts: list[tuple[int, int, tuple | None, Path]], size: int,
                 threads: int = 1, pad_square: bool = False) -> list[str]:
    """ffmpeg argument list cutting several clips from one decode of `video`: for each
    (first, stop, box, folder), frames [first, stop) cropped to box (x, y, w, h; None =
    whole frame), resized to size x size, written as folder/0000000.png, ...
    Decoder, filters and PNG encoder get `threads` each: a Ray worker is one CPU.
    `pad_square` pads a whole frame with white to a centred square first (fashion)."""
    import ffmpeg
    source = ffmpeg.input(str(video), threads=threads)
    branches = source.filter_multi_output("split", len(cuts)) if len(cuts) > 1 else None
    outputs = []
    for index, (first, stop, box, folder) in enumerate(cuts):
        stream = source if branches is None else branches.stream(index)
        stream = stream.trim(start_frame=first, end_frame=stop).setpts("PTS-STARTPTS")
        if box is not None:
            x, y, w, h = box
            stream = stream.crop(x, y, w, h, exact=1)  # exact: odd offsets are not rounded
        elif pad_square:
            stream = stream.filter("pad", "max(iw,ih)", "max(iw,ih)", "(ow-iw)/2", "(oh-ih)/2",
                                   color="white")
        stream = stream.filter("scale", size, size, flags="area")
        outputs.append(stream.output(str(Path(folder) / "%07d.png"), start_number=0,
                                     fps_mode="passthrough", pix_fmt="rgb24", threads=threads,
                                     compression_level=PNG_LEVEL, pred="paeth", f="image2"))
    args = ffmpeg.merge_outputs(*outputs).compile(cmd=ffmpeg_exe())
    args[1:1] = ["-hide_banner", "-nostdin", "-loglevel", "error",
                 "-filter_threads", str(threads)]
    return args


def cut_clips(video: Path, cuts: list[tuple[int, int, tuple | None, Path]], size: int,
              pad_square: bool = False, resize: str = "ffmpeg", info=None) -> list[int]:
    """Run one ffmpeg for all `cuts` of a video; the number of PNGs written for each.
    `resize` is one of RESIZES; "original" needs the video's `info` (probed if None)."""
    from core.media import dies_with_parent
    if resize == "original":
        return cut_clips_original(video, cuts, size, pad_square, info)
    if resize != "ffmpeg":
        raise ValueError(f"resize {resize!r}: expected one of {RESIZES}")
    result = subprocess.run(crop_command(video, cuts, size, pad_square=pad_square),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=dies_with_parent)
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise CropError(f"ffmpeg exited with {result.returncode}: {' | '.join(tail)}")
    return [sum(1 for _ in Path(folder).glob("*.png")) for *_, folder in cuts]


def cut_clip(video: Path, first: int, stop: int, box, size: int, folder: Path,
             resize: str = "ffmpeg") -> int:
    """One clip: frames [first, stop) of `video` into `folder`; the number of PNGs."""
    return cut_clips(video, [(first, stop, box, folder)], size, resize=resize)[0]


# --------------------------------------------------------------------------- original resize
def merged_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of frame ranges [first, stop) as sorted, disjoint ranges."""
    merged: list[list[int]] = []
    for first, stop in sorted(r for r in ranges if r[1] > r[0]):
        if merged and first <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([first, stop])
    return [(first, stop) for first, stop in merged]


def decode_command(video: Path, ranges: list[tuple[int, int]], threads: int = 1) -> list[str]:
    """ffmpeg arguments writing frames `ranges` (disjoint [first, stop)) of `video` to stdout
    as raw RGB24 at the coded size, in order, and stopping after the last one. ffmpeg's own
    YUV -> RGB conversion, as imageio's ffmpeg reader gave the original script its frames."""
    from core.media import ffmpeg_exe
    select = "+".join(f"between(n,{first},{stop - 1})" for first, stop in ranges)
    total = sum(stop - first for first, stop in ranges)
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-noautorotate",
            "-threads", str(threads), "-i", str(video), "-map", "0:v:0",
            "-filter_threads", str(threads), "-vf", f"select='{select}'",
            "-fps_mode", "passthrough", "-frames:v", str(total),
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]


def iter_decoded(video: Path, ranges: list[tuple[int, int]], width: int, height: int):
    """(frame index, (height, width, 3) uint8 frame) for every frame of the disjoint
    `ranges` that ffmpeg decodes; CropError when ffmpeg fails (after the frames it gave)."""
    import tempfile

    import numpy as np

    from core.media import dies_with_parent
    indices = iter(i for first, stop in ranges for i in range(first, stop))
    frame_bytes = width * height * 3
    # stderr to a file, not a pipe: a damaged stream's error flood must not block ffmpeg
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(decode_command(video, ranges), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=errors,
                                   preexec_fn=dies_with_parent)
        try:
            for index in indices:
                data = process.stdout.read(frame_bytes)
                if len(data) < frame_bytes:  # ffmpeg stopped early: the caller counts frames
                    break
                yield index, np.frombuffer(data, np.uint8).reshape(height, width, 3)
        finally:
            process.stdout.close()
            code = process.wait()
        if code != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip().splitlines()[-3:]
            raise CropError(f"ffmpeg exited with {code}: {' | '.join(tail)}")


def pad_to_square(frame, value: int = 255):
    """A whole frame padded with `value` to a centred square (ffmpeg pad's (ow-iw)/2)."""
    import numpy as np
    height, width = frame.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return np.pad(frame, ((top, side - height - top), (left, side - width - left), (0, 0)),
                  constant_values=value)


def save_png(frame, path: Path) -> None:
    from PIL import Image
    Image.fromarray(frame).save(path, format="PNG", compress_level=PNG_LEVEL)


def cut_clips_original(video: Path, cuts: list[tuple[int, int, tuple | None, Path]], size: int,
                       pad_square: bool = False, info=None) -> list[int]:
    """`cut_clips` with load_videos.py's resize: one ffmpeg decodes the union of the cuts'
    frames to RGB; each cut's crop (numpy slicing of the box) is resized with scikit-image
    0.14's arithmetic and written as PNG. The number of PNGs written for each cut."""
    from core import skimage014
    from core.media import probe
    info = info or probe(video)
    counts = [0] * len(cuts)
    ranges = merged_ranges([(first, stop) for first, stop, _, _ in cuts])
    for index, frame in iter_decoded(video, ranges, info.width, info.height):
        for number, (first, stop, box, folder) in enumerate(cuts):
            if not first <= index < stop:
                continue
            if box is not None:
                x, y, w, h = box
                crop = frame[y:y + h, x:x + w]
            else:
                crop = pad_to_square(frame) if pad_square else frame
            target = Path(folder) / clips_mod.frame_name(index - first)
            save_png(skimage014.resize(crop, (size, size)), target)
            counts[number] += 1
    return counts


def resize_frame_folder(source: Path, size: int, folder: Path, resize: str = "ffmpeg") -> int:
    """A folder of frame images (any names; natural order) resized to size x size PNGs:
    PIL's box (down) or bicubic (up) filter, or with resize="original" load_videos.py's."""
    import re

    from PIL import Image

    from core import skimage014
    from core.media import load_image

    def natural(path: Path):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]
    frames = sorted((p for p in source.iterdir()
                     if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")), key=natural)
    for index, path in enumerate(frames):
        if resize == "original":
            save_png(skimage014.resize(load_image(path), (size, size)), folder / clips_mod.frame_name(index))
            continue
        image = Image.fromarray(load_image(path))
        method = Image.Resampling.BOX if image.width > size else Image.Resampling.BICUBIC
        image.resize((size, size), method).save(folder / clips_mod.frame_name(index),
                                                format="PNG", compress_level=6)
    return len(frames)


def plan_cut(clip: clips_mod.Clip, info) -> tuple[int, int, tuple | None, int]:
    """Real frames [first, stop), crop box, and the fewest frames the cut must yield (a
    frame less than planned where the stop is the container's count, which may be off by
    one); CropError if the clip has no frame in this video."""
    first, stop = frame_range(clip.start, clip.end, clip.fps, info.fps, info.num_frames)
    if stop <= first:
        raise CropError(f"frames [{clip.start}, {clip.end}) at {clip.fps} fps are beyond "
                        f"the video's {info.num_frames} frames at {info.fps:.3f} fps")
    wanted = stop if clip.end is None else frame_range(clip.start, clip.end, clip.fps, info.fps, sys.maxsize)[1]
    if wanted > info.num_frames + 1:  # a clip cut short is no clip of the manifest's (one frame: count slack)
        raise CropError(f"frames [{clip.start}, {clip.end}) at {clip.fps} fps need the video's frames up to "
                        f"{wanted}; it has {info.num_frames} at {info.fps:.3f} fps: the video is shorter than "
                        f"the clip's range")
    box = None if clip.bbox is None else scaled_bbox(
        clip.bbox, None if clip.width is None else (clip.width, clip.height),
        (info.width, info.height))
    expected = stop - first - (1 if stop >= info.num_frames else 0)
    return first, stop, box, max(expected, 1)


def _publish(clip: clips_mod.Clip, staging: Path, count: int, expected: int, out: Path,
             video: Path, size: int) -> dict:
    """Check the decoded frames against the plan, then move the folder into place. A
    short clip (a truncated file whose header promises more frames) fails, whole."""
    if count == 0:
        raise CropError(f"no frame decoded in the clip's range of {video.name}")
    if count < expected:
        raise CropError(f"decoded {count} of {expected} frames of the clip's range of "
                        f"{video.name}: {DAMAGED}")
    final = clips_mod.clip_dir(out, clip.split, clip.name)
    clips_mod.publish_dir(staging, final)
    return clips_mod.result_row(clip, status="done", num_frames=count, source=str(video),
                                bytes=clips_mod.folder_bytes(final), size=size)


def _cut_batch(video: Path, batch: list, stagings: list[Path], size: int,
               pad_square: bool, resize: str, info) -> list[int | CropError]:
    """PNG counts of a batch cut by one ffmpeg run; if that run fails, each clip is cut
    alone, so one clip ffmpeg cannot cut fails alone, not its whole video."""
    cuts = [(first, stop, box, staging) for (_, first, stop, box, _), staging in zip(batch, stagings)]
    try:
        return cut_clips(video, cuts, size, pad_square, resize, info)
    except CropError as err:
        if len(cuts) == 1:
            return [err]
    results: list[int | CropError] = []
    for cut in cuts:
        for stale in Path(cut[3]).glob("*.png"):
            stale.unlink()
        try:
            results.append(cut_clips(video, [cut], size, pad_square, resize, info)[0])
        except CropError as err:
            results.append(err)
    return results


def cut_video_clips(clips: list[clips_mod.Clip], video: Path, info, size: int,
                    out: Path, finish=lambda row: None, pad_square: bool = False,
                    resize: str = "ffmpeg") -> list[dict]:
    """Rows for `clips` of one video: bad ranges/boxes fail alone, the others are cut in
    batches of BATCH clips per ffmpeg run (one decode serves the batch), each clip
    staged in its own temporary folder, checked for its frame count and published whole;
    `finish(row)` records each row as soon as its clip is final."""
    rows, planned = [], []
    for clip in clips:
        try:
            planned.append((clip, *plan_cut(clip, info)))
        except CropError as err:
            rows.append(clips_mod.result_row(clip, status="failed", error=str(err),
                                             source=str(video)))
            finish(rows[-1])
    for offset in range(0, len(planned), BATCH):
        batch = planned[offset:offset + BATCH]
        began = time.perf_counter()
        stagings = [clips_mod.staging_dir(out, clip.split, clip.name) for clip, *_ in batch]
        results = _cut_batch(video, batch, stagings, size, pad_square, resize, info)
        seconds = (time.perf_counter() - began) / len(batch)
        for (clip, *_, expected), staging, result in zip(batch, stagings, results):
            try:
                if isinstance(result, CropError):
                    raise result
                row = _publish(clip, staging, result, expected, out, video, size)
            except CropError as err:
                row = clips_mod.result_row(clip, status="failed", error=str(err), source=str(video))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            row["crop_s"] = seconds
            rows.append(row)
            finish(row)
    return rows


def _resize_folder_clip(clip: clips_mod.Clip, folder: Path, size: int, out: Path,
                        resize: str) -> dict:
    began = time.perf_counter()
    staging = clips_mod.staging_dir(out, clip.split, clip.name)
    try:
        count = resize_frame_folder(folder, size, staging, resize)
        row = _publish(clip, staging, count, count, out, folder, size)
    except CropError as err:
        row = clips_mod.result_row(clip, status="failed", error=str(err), source=str(folder))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    row["crop_s"] = time.perf_counter() - began
    return row


def prepare_video(job, settings) -> list[dict]:
    """Fetch one video (once) and cut all of `job.clips` from it; one row per clip, each
    also written to disk as soon as it is final."""
    from core.media import probe
    from pipeline import download
    out = Path(settings.out)
    began = time.perf_counter()
    rows = []
    keys = {clip.name: clips_mod.settings_key(clip, settings.shaping) for clip in job.clips}

    def finish(row: dict, fetched: float = 0.0, fps: float | None = None) -> None:
        row.update(download_s=fetched, frames_fps=fps, settings_key=keys[row["clip"]])
        row["total_s"] = row["crop_s"] + row["download_s"]
        clips_mod.write_row(out, row)
        rows.append(row)

    try:
        local = Path(job.video_path) if job.video_path and Path(job.video_path).exists() else None
        cached = local is None and not settings.source_dir  # our download: a damaged one is fetched again
        if local is None:
            url = job.video_path if job.video_path else None  # url_list jobs carry their URL
            local = download.fetch_video(job.key, Path(settings.cache_dir), settings.url_template,
                                         settings.source_dir, url, settings.stall_timeout)
    except download.Unavailable as err:
        seconds = time.perf_counter() - began
        for clip in job.clips:
            finish(clips_mod.result_row(clip, status="unavailable", error=str(err)), seconds)
        return rows
    fetched = time.perf_counter() - began
    info = None
    if not local.is_dir():
        try:
            info = probe(local)
        except UserError as err:
            again = "; the download was removed, a rerun fetches it again" if cached else ""
            if cached:
                download.discard(local, Path(settings.cache_dir))
            for clip in job.clips:
                finish(clips_mod.result_row(clip, status="failed", source=str(local),
                                            error=f"corrupt or unreadable video: {err}{again}"), fetched)
            return rows
    if local.is_dir():
        for clip in job.clips:
            finish(_resize_folder_clip(clip, local, settings.size, out, settings.resize), fetched)
    else:
        cut_video_clips(job.clips, local, info, settings.size, out,
                        lambda row: finish(row, fetched, info.fps), settings.pad_square,
                        settings.resize)
        if cached and any(row["status"] == "failed" and DAMAGED in str(row.get("error")) for row in rows):
            download.discard(local, Path(settings.cache_dir))  # truncated: a rerun fetches it again
    return rows
