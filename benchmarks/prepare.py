"""Benchmark of the prepare stage's crop + resize + PNG write, per worker.

    python -m benchmarks.prepare [--frames 78] [--repeats 3]

On a real 512 px clip (../shared/data/faces/liveportrait/d0.mp4) and on a 1080p clip
made by upscaling a real one (d12.mp4) with ffmpeg into a temp dir, it measures:
- frames/s of `pipeline.crop.cut_clip` (decode, crop, area resize to 256, PNG) on one
  ffmpeg thread, as one prepare worker runs it;
- frames/s of a plain ffmpeg decode of the same frames (`-f null`), and the ratio
  (target: crop+resize+write within 2x of the plain decode);
- the speed-up from 1 to 2 Ray workers over 4 clips of the same video;
- peak memory of one worker: the Python worker's RSS and its ffmpeg child's, measured
  in a fresh process with getrusage (target: under 1 GiB at 1080p).
Writes the `prepare` section of benchmarks/RESULTS.md. `--part shards` measures instead the
bytes read per training pair from the shards (the layout write_shards writes against the
former one row group per shard) and writes the `prepare-shards` section. `--part resize`
times the two resizes side by side (`--resize original`, load_videos.py's scikit-image 0.14
arithmetic, against `--resize ffmpeg`, the area filter), interleaved, in wall and CPU time of
the whole process and its children, and measures how far the ffmpeg frames are from the
original's; it writes the `prepare-resize` section.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._results import markdown_table, write_section
from core.media import ffmpeg_exe, probe
from pipeline.crop import cut_clip, cut_clips

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SIZE = 256


def make_1080p(source: Path, folder: Path) -> Path:
    """Upscale a real clip to 1920x1080 h264 (lanczos), as a stand-in for a 1080p download."""
    target = folder / "upscaled-1080p.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-i", str(source), "-an", "-vf", "scale=1920:1080:flags=lanczos",
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
                    str(target)], check=True)
    return target


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = int(min(width, height) * 0.6)
    return (width - side) // 2, (height - side) // 4, side, side


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _best_of(repeats: int, run) -> tuple[float, float]:
    """Best wall time and best CPU time (of ffmpeg children) of `run()` over `repeats`: the
    machine is shared, so CPU time is the steadier of the two."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        began, cpu_began = time.perf_counter(), _children_cpu()
        run()
        wall = min(wall, time.perf_counter() - began)
        cpu = min(cpu, _children_cpu() - cpu_began)
    return wall, cpu


def time_crop(video: Path, frames: int, repeats: int) -> tuple[float, float]:
    """(wall, cpu) seconds of cut_clip: decode, crop, resize, PNG write."""
    info = probe(video)

    def run() -> None:
        with tempfile.TemporaryDirectory() as folder:
            count = cut_clip(video, 0, frames, centre_box(info.width, info.height), SIZE, Path(folder))
            assert count == frames, (count, frames)
    return _best_of(repeats, run)


def time_decode(video: Path, frames: int, repeats: int) -> tuple[float, float]:
    """(wall, cpu) seconds of a plain single-thread ffmpeg decode of the same frames."""
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-threads", "1",
               "-i", str(video), "-frames:v", str(frames), "-f", "null", "-"]
    return _best_of(repeats, lambda: subprocess.run(command, check=True))


def batching_gain(video: Path, frames: int, repeats: int) -> float:
    """CPU time of 4 clips (quarters of the range) cut by 4 ffmpeg runs over that of one
    run whose decode serves all 4 (what prepare does for clips of one video)."""
    info = probe(video)
    box = centre_box(info.width, info.height)
    quarter = frames // 4
    ranges = [(i * quarter, (i + 1) * quarter) for i in range(4)]

    def separate() -> None:
        for first, stop in ranges:
            with tempfile.TemporaryDirectory() as folder:
                cut_clips(video, [(first, stop, box, Path(folder))], SIZE)

    def batched() -> None:
        with tempfile.TemporaryDirectory() as folder:
            folders = [Path(folder) / str(i) for i in range(4)]
            for sub in folders:
                sub.mkdir()
            cut_clips(video, [(f, s, box, sub) for (f, s), sub in zip(ranges, folders)], SIZE)
    return _best_of(repeats, separate)[1] / _best_of(repeats, batched)[1]


def worker_memory(video: Path, frames: int) -> dict:
    """Peak RSS (MiB) of a fresh worker process cutting one clip, and of its ffmpeg child."""
    code = (
        "import json, resource, sys, tempfile\n"
        "from pathlib import Path\n"
        "from pipeline.crop import cut_clip\n"
        "from core.media import probe\n"
        "from benchmarks.prepare import centre_box, SIZE\n"
        "video, frames = Path(sys.argv[1]), int(sys.argv[2])\n"
        "info = probe(video)\n"
        "with tempfile.TemporaryDirectory() as folder:\n"
        "    cut_clip(video, 0, frames, centre_box(info.width, info.height), SIZE, Path(folder))\n"
        "print(json.dumps({'worker_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,\n"
        "                  'ffmpeg_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(video), str(frames)], cwd=REPO,
                            check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def ray_speedup(video: Path, frames: int, clips: int = 6) -> tuple[float, float]:
    """Wall time of `clips` crops as Ray tasks with 1, then 2, in flight."""
    import ray
    from core.ray_runner import init_ray, shutdown_ray
    info = probe(video)
    box = centre_box(info.width, info.height)

    def one(index: int) -> int:
        with tempfile.TemporaryDirectory() as folder:
            return cut_clip(video, 0, frames, box, SIZE, Path(folder))

    init_ray(num_cpus=2)
    try:
        task = ray.remote(num_cpus=1)(one)
        ray.get(task.remote(0))  # warm the workers
        times = []
        for in_flight in (1, 2):
            began = time.perf_counter()
            pending, submitted = [], 0
            while submitted < clips or pending:
                while submitted < clips and len(pending) < in_flight:
                    pending.append(task.remote(submitted))
                    submitted += 1
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)
            times.append(time.perf_counter() - began)
    finally:
        shutdown_ray()
    return times[0], times[1]


def _rchar() -> int:
    """Bytes this process received from read() calls (page cache or disk): /proc/self/io."""
    return int(Path("/proc/self/io").read_text().split()[1])


def shard_reads(folder: Path, items: int) -> list[dict]:
    """Bytes read and items/s of training pairs (FramePairs, cache off: the worst case, a
    miss on every item) from shards of real 256 px clips, in the layout write_shards writes
    (clip-aligned groups of <= 8 frames) and in the former one (one row group per shard)."""
    import pyarrow.parquet as pq
    from core.config import DatasetParams
    from fomm.data import EpochSampler, FramePairs, ParquetStore
    from pipeline.shards import write_shards
    video = SHARED / "faces" / "liveportrait" / "d11.mp4"
    info = probe(video)
    box = centre_box(info.width, info.height)
    clip_folders = []
    for index in range(8):  # 8 clips of 25 frames, one decode
        clip_folders.append((f"id{index}#d11#{index * 25:06d}#{index * 25 + 25:06d}",
                             folder / "png" / str(index)))
        clip_folders[-1][1].mkdir(parents=True)
    cut_clips(video, [(i * 25, i * 25 + 25, box, f) for i, (_, f) in enumerate(clip_folders)], SIZE)
    new = write_shards(folder / "new", "train", clip_folders, target_bytes=4 * 2**20)
    old_rows = [(clip, int(p.stem), p.read_bytes()) for clip, f in clip_folders
                for p in sorted(f.glob("*.png"))]
    import pyarrow as pa
    (folder / "old").mkdir()
    old = [folder / "old" / "train-00000.parquet"]
    pq.write_table(pa.table({"clip": [r[0] for r in old_rows],
                             "frame_index": pa.array([r[1] for r in old_rows], pa.int32()),
                             "png": [r[2] for r in old_rows]}),
                   old[0], row_group_size=len(old_rows), compression="none")
    rows = []
    for label, paths in (("clip-aligned groups of <= 8 frames (now)", new),
                         ("one row group per shard (before)", old)):
        store = ParquetStore(folder / "none", "train", paths)
        store.CACHE_GROUPS = 0
        pairs = FramePairs(store, DatasetParams(frame_shape=(SIZE, SIZE, 3)), num_repeats=100)
        keys = EpochSampler(len(pairs), seed=0).keys()[:items]
        pairs[keys[0]]
        for shard in range(len(paths)):
            store._file(shard)
        began, before, groups = time.perf_counter(), _rchar(), store.groups_read
        for key in keys:
            pairs[key]
        seconds = time.perf_counter() - began
        rows.append({"layout": label, "shards": len(paths),
                     "shard MiB": sum(p.stat().st_size for p in paths) / len(paths) / 2**20,
                     "KiB read per item": (_rchar() - before) / items / 1024,
                     "row groups per item": (store.groups_read - groups) / items,
                     "items/s": items / seconds})
        print(json.dumps(rows[-1]))
    return rows


def shards_main(items: int) -> None:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        rows = shard_reads(Path(folder), items)
    body = (f"`python -m benchmarks.prepare --part shards --items {items}`: {items} training "
            f"pairs (`fomm.data.FramePairs`, {SIZE} px, random clip and frames) read from "
            f"Parquet shards of 8 real clips of 25 frames (d11.mp4, centre crop, {SIZE} px PNG), "
            f"with the store's group cache off, so every item misses (what random pairs over a "
            f"dataset much larger than the cache do). `KiB read per item`: bytes the process got "
            f"from read() calls (/proc/self/io rchar), footers read beforehand. A 256 MiB shard "
            f"in the old layout would make every miss read 256 MiB. CPU only. Load average at "
            f"the start: {load:.1f} on {os.cpu_count()} cores.\n\n" + markdown_table(rows))
    write_section("prepare-shards", body)


def _cpu_all() -> float:
    """CPU seconds of this process and its finished children (the original resize runs in
    the worker itself, the ffmpeg one mostly in its ffmpeg child)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def resize_rows(video: Path, frames: int, repeats: int, label: str) -> dict:
    """Best-of-`repeats` wall and CPU seconds of cut_clip with each resize, the two runs
    interleaved in every repeat (the machine is shared: a ratio of neighbours), and the
    per-pixel difference of the ffmpeg frames from the original's."""
    import numpy as np
    from PIL import Image
    info = probe(video)
    box = centre_box(info.width, info.height)
    best = {"original": [float("inf")] * 2, "ffmpeg": [float("inf")] * 2}
    with tempfile.TemporaryDirectory() as folder:
        outputs = {name: Path(folder) / name for name in best}
        for _ in range(repeats):
            for name, target in outputs.items():
                if target.exists():
                    for png in target.glob("*.png"):
                        png.unlink()
                target.mkdir(exist_ok=True)
                began, cpu = time.perf_counter(), _cpu_all()
                count = cut_clip(video, 0, frames, box, SIZE, target, resize=name)
                assert count == frames, (count, frames)
                best[name][0] = min(best[name][0], time.perf_counter() - began)
                best[name][1] = min(best[name][1], _cpu_all() - cpu)
        diffs, border, worst = [], [], 0
        for png in sorted(outputs["original"].glob("*.png")):
            ours = np.asarray(Image.open(png)).astype(np.int16)
            fast = np.asarray(Image.open(outputs["ffmpeg"] / png.name)).astype(np.int16)
            diff = np.abs(ours - fast)
            ring = np.ones(diff.shape[:2], bool)
            ring[2:-2, 2:-2] = False
            diffs.append(diff.mean())
            border.append(diff[ring].mean())
            worst = max(worst, int(diff.max()))
    return {"source": label, "crop": f"{box[2]}x{box[3]} -> {SIZE}",
            "original fps": frames / best["original"][0], "ffmpeg fps": frames / best["ffmpeg"][0],
            "original / ffmpeg wall": best["original"][0] / best["ffmpeg"][0],
            "original / ffmpeg CPU": best["original"][1] / best["ffmpeg"][1],
            "ffmpeg vs original: mean abs diff /255": float(np.mean(diffs)),
            "outer 2 px: mean abs diff /255": float(np.mean(border)), "max abs diff /255": worst}


def resize_main(frames: int, repeats: int) -> None:
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        videos = {"512 px (d0.mp4)": SHARED / "faces" / "liveportrait" / "d0.mp4",
                  "1080p (d12.mp4 upscaled)": make_1080p(SHARED / "faces" / "liveportrait" / "d12.mp4",
                                                         Path(folder))}
        for label, video in videos.items():
            rows.append(resize_rows(video, frames, repeats, label))
            print(json.dumps(rows[-1]))
    body = (f"`python -m benchmarks.prepare --part resize --frames {frames} --repeats {repeats}`: "
            f"frames [0, {frames}) cropped (centre 60 % box) and resized to {SIZE}x{SIZE} PNG by "
            f"`pipeline.crop.cut_clip` with `resize=\"original\"` (ffmpeg decodes to RGB, then "
            f"load_videos.py's scikit-image 0.14 arithmetic in numpy/scipy, core/skimage014.py, "
            f"and PIL's PNG writer) and with `resize=\"ffmpeg\"` (crop and area scale inside "
            f"ffmpeg), one thread each, the two interleaved in each of {repeats} repeats, best "
            f"time of each; CPU = user + system of the process and its ffmpeg children. The "
            f"difference columns compare the two outputs frame for frame (the original's "
            f"arithmetic is checked against the old library's formulas in "
            f"tests/test_prepare_original.py). CPU only. Load average at the start: {load:.1f} "
            f"on {os.cpu_count()} cores (the machine is shared: the ratios are of neighbouring "
            f"runs, the fps figures suffer from the load).\n\n" + markdown_table(rows))
    write_section("prepare-resize", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=78, help="frames per clip (d0 has 78)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part", choices=["crop", "shards", "resize"], default="crop",
                        help="crop: the crop/resize figures; shards: reads per training item; "
                             "resize: the original resize against ffmpeg's, side by side")
    parser.add_argument("--items", type=int, default=200, help="training items (--part shards)")
    args = parser.parse_args()
    if args.part == "shards":
        shards_main(args.items)
        return
    if args.part == "resize":
        resize_main(args.frames, args.repeats)
        return
    rows = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        videos = {"512 px (d0.mp4)": SHARED / "faces" / "liveportrait" / "d0.mp4",
                  "1080p (d12.mp4 upscaled)": make_1080p(SHARED / "faces" / "liveportrait" / "d12.mp4",
                                                         Path(folder))}
        for label, video in videos.items():
            crop_s, crop_cpu = time_crop(video, args.frames, args.repeats)
            decode_s, decode_cpu = time_decode(video, args.frames, args.repeats)
            one, two = ray_speedup(video, args.frames)
            gain = batching_gain(video, args.frames, args.repeats)
            memory = worker_memory(video, args.frames)
            rows.append({
                "source": label,
                "crop+resize+write fps/worker": args.frames / crop_s,
                "plain decode fps": args.frames / decode_s,
                "crop / decode wall": crop_s / decode_s,
                "crop / decode CPU": crop_cpu / decode_cpu,
                "speed-up 1->2 workers": one / two,
                "4 clips: separate / one decode (CPU)": gain,
                "worker peak MiB": memory["worker_mib"],
                "ffmpeg peak MiB": memory["ffmpeg_mib"],
            })
            print(json.dumps(rows[-1]))
    body = (f"`python -m benchmarks.prepare --frames {args.frames} --repeats {args.repeats}`: "
            f"frames [0, {args.frames}) cropped (centre 60 % box) and resized to {SIZE}x{SIZE} "
            f"PNG by `pipeline.crop.cut_clip` (ffmpeg, 1 thread, scale flags=area), best of "
            f"{args.repeats}; plain decode = `ffmpeg -threads 1 -i clip -frames:v N -f null -`. "
            f"Speed-up: 6 clips as Ray tasks, 1 vs 2 in flight. One task already keeps about "
            f"(crop/decode CPU) / (crop/decode wall) cores busy (ffmpeg decodes and scales while "
            f"the worker encodes PNGs), so with {os.cpu_count()} cores the 1->2 speed-up is bounded "
            f"by cores / that figure; it shows scaling only where cores exceed workers times it. Peak memory: getrusage maxrss of a fresh worker process "
            f"and of its ffmpeg child. Targets: crop/decode <= 2; worker + ffmpeg < 1024 MiB at "
            f"1080p. `4 clips`: CPU time of cutting four quarter-range clips with four ffmpeg "
            f"runs over one run whose single decode serves all four (prepare batches the clips "
            f"of a video so). CPU only (no GPU path in this stage). Load average at the start: {load:.1f} "
            f"on {os.cpu_count()} cores (wall-time figures and the speed-up suffer from it; the "
            f"CPU-time ratio does not).\n\n" + markdown_table(rows))
    write_section("prepare", body)


if __name__ == "__main__":
    main()
