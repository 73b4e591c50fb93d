"""Cropping and resizing clips with ffmpeg (through ffmpeg-python), as the original
video-preprocessing scripts define a clip:

- frames: real frame i of a video at `fps_real` belongs to the clip when
  start / fps_manifest <= i / fps_real < end / fps_manifest (the manifest counts frames
  at its own fps; the file keeps its own rate);
- bbox: given in the manifest's width x height, rescaled to the real resolution with
  int(v * real / manifest), then clamped to the frame (the original numpy slicing);
- resize: anti-aliased (ffmpeg `scale` with flags=area) to size x size, PNG per frame.

`prepare_video` is the body of one Ray task: fetch the video once, cut each of its clips
into a temporary folder, publish the folder whole, record the clip's row.
"""
from __future__ import annotations

import logging
import math
import shutil
import subprocess
import time
from pathlib import Path

from pipeline import clips as clips_mod
from pipeline.errors import UserError
from pipeline.media import ffmpeg_exe

log = logging.getLogger(__name__)


# zlib level 2 with Paeth prediction: 8 % larger than level 6 at a third of its CPU time
# (measured on d0.mp4 crops at 256 px; ffmpeg's default made PNG writing 5x slower than
# decoding the frames).
PNG_LEVEL = 2


class CropError(Exception):
    """This clip cannot be cut from this video (bbox outside, no frames, ffmpeg failed)."""


def frame_range(start: int, end: int | None, fps_manifest: float | None, fps_real: float,
                num_frames: int) -> tuple[int, int]:
    """Real frame indices [first, stop) of manifest frames [start, end) (see module doc)."""
    if fps_manifest is None:
        first, stop = start, num_frames if end is None else end
    else:
        ratio = fps_real / fps_manifest
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


def crop_command(video: Path, first: int, stop: int, box: tuple[int, int, int, int] | None,
                 size: int, pattern: Path, threads: int = 1) -> list[str]:
    """ffmpeg argument list writing frames [first, stop) of `video`, cropped to `box`
    (x, y, w, h; None = whole frame) and resized to size x size, as numbered PNGs."""
    import ffmpeg
    stream = ffmpeg.input(str(video), threads=threads)
    stream = stream.trim(start_frame=first, end_frame=stop).setpts("PTS-STARTPTS")
    if box is not None:
        x, y, w, h = box
        stream = stream.crop(x, y, w, h, exact=1)  # exact: odd offsets are not rounded
    stream = stream.filter("scale", size, size, flags="area")
    output = stream.output(str(pattern), start_number=0, fps_mode="passthrough",
                           filter_threads=threads, pix_fmt="rgb24", compression_level=PNG_LEVEL,
                           pred="paeth", f="image2")
    args = output.compile(cmd=ffmpeg_exe())
    args[1:1] = ["-hide_banner", "-nostdin", "-loglevel", "error"]
    return args


def cut_clip(video: Path, first: int, stop: int, box, size: int, folder: Path) -> int:
    """Run ffmpeg into `folder`; returns the number of PNG frames written."""
    args = crop_command(video, first, stop, box, size, folder / "%07d.png")
    result = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise CropError(f"ffmpeg exited with {result.returncode}: {' | '.join(tail)}")
    return sum(1 for _ in folder.glob("*.png"))


def resize_frame_folder(source: Path, size: int, folder: Path) -> int:
    """A folder of frame images (any names; natural order) resized to size x size PNGs."""
    from PIL import Image
    from pipeline.media import load_image

    def natural(path: Path):
        return [int(t) if t.isdigit() else t for t in __import__("re").split(r"(\d+)", path.name)]
    frames = sorted((p for p in source.iterdir()
                     if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")), key=natural)
    for index, path in enumerate(frames):
        image = Image.fromarray(load_image(path)).resize((size, size), Image.Resampling.BOX
                                                         if Image.open(path).width > size
                                                         else Image.Resampling.BICUBIC)
        image.save(folder / clips_mod.frame_name(index), format="PNG", compress_level=6)
    return len(frames)


def _cut_one(clip: clips_mod.Clip, video: Path, info, size: int, out: Path) -> dict:
    began = time.perf_counter()
    staging = clips_mod.staging_dir(out, clip.split, clip.name)
    try:
        if video.is_dir():
            count = resize_frame_folder(video, size, staging)
            first, stop = 0, count
        else:
            first, stop = frame_range(clip.start, clip.end, clip.fps, info.fps, info.num_frames)
            if stop <= first:
                raise CropError(f"frames [{clip.start}, {clip.end}) at {clip.fps} fps are beyond "
                                f"the video's {info.num_frames} frames at {info.fps:.3f} fps")
            box = None if clip.bbox is None else scaled_bbox(
                clip.bbox, None if clip.width is None else (clip.width, clip.height),
                (info.width, info.height))
            count = cut_clip(video, first, stop, box, size, staging)
        if count == 0:
            raise CropError(f"no frame decoded in [{first}, {stop}) of {video.name}")
        if count < stop - first:
            log.warning("%s: %d of %d frames (the video ends early)", clip.name, count, stop - first)
        final = clips_mod.clip_dir(out, clip.split, clip.name)
        clips_mod.publish_dir(staging, final)
        return clips_mod.result_row(clip, status="done", num_frames=count,
                                    bytes=clips_mod.folder_bytes(final), source=str(video),
                                    crop_s=time.perf_counter() - began)
    except CropError as err:
        return clips_mod.result_row(clip, status="failed", error=str(err), source=str(video),
                                    crop_s=time.perf_counter() - began)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_video(job, settings) -> list[dict]:
    """Fetch one video (once) and cut all of `job.clips` from it; one row per clip, each
    also written to disk as soon as it is final."""
    from pipeline import download
    from pipeline.media import probe
    out = Path(settings.out)
    began = time.perf_counter()
    rows = []

    def finish(row: dict) -> None:
        row["total_s"] = row["crop_s"] + row["download_s"]
        clips_mod.write_row(out, row)
        rows.append(row)

    try:
        local = Path(job.video_path) if job.video_path and Path(job.video_path).exists() else None
        if local is None:
            url = job.video_path if job.video_path else None  # url_list jobs carry their URL
            local = download.fetch_video(job.key, Path(settings.cache_dir), settings.url_template,
                                         settings.source_dir, url)
    except download.Unavailable as err:
        seconds = time.perf_counter() - began
        for clip in job.clips:
            finish(clips_mod.result_row(clip, status="unavailable", error=str(err),
                                        download_s=seconds))
        return rows
    fetched = time.perf_counter() - began
    info = None
    if not local.is_dir():
        try:
            info = probe(local)
        except UserError as err:
            for clip in job.clips:
                finish(clips_mod.result_row(clip, status="failed", source=str(local),
                                            error=f"corrupt or unreadable video: {err}",
                                            download_s=fetched))
            return rows
    for clip in job.clips:
        row = _cut_one(clip, local, info, settings.size, out)
        row["download_s"] = fetched
        row["frames_fps"] = info.fps if info is not None else clip.fps
        finish(row)
    return rows
