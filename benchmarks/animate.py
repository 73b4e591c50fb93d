"""Animation throughput and live latency; writes the `animate` section of RESULTS.md.

    python -m benchmarks.animate                 # CPU: vox-256 frames/s, tiny --stream latency
    python -m benchmarks.animate --frames 64     # more frames per measurement

What is measured:
- model frames/s at 256x256 with the vox-256 FOMM (random weights: speed does not depend
  on them), per batch size: keypoints of the driving batch, relative transfer (Eq. 8) and
  the generator, i.e. `fomm.animate.Animator`, after one warm-up batch;
- end-to-end `animate()` frames/s on a real 512 px clip (decode, crop/resize, model,
  h264 encode, audio mux);
- on CUDA (when present): fp32 against bf16 autocast at batch 1 and 32, with peak memory;
- `--stream` latency on CPU with the tiny model reading a real clip paced at its own rate.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._results import markdown_table, write_section
from fomm.animate import AnimateOptions, Animator, animate, load_animation_model
from pipeline.config import load_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DRIVING = SHARED / "faces/liveportrait/d12.mp4"
SOURCE = SHARED / "faces/sadtalker/happy.png"


def model_fps(model, device: torch.device, batch: int, frames: int, precision: str = "fp32") -> dict:
    """Frames/s of the Animator at `batch` on random 256x256 frames; peak memory on CUDA."""
    size = model.config.dataset_params.frame_shape[:2]
    source = torch.rand(1, 3, *size, device=device)
    driving = torch.rand(batch, 3, *size, device=device)
    animator = Animator(model, source, source, AnimateOptions(precision=precision), device)
    animator(driving)  # warm-up: kernel selection, allocator
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    steps = max(1, frames // batch)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        animator(driving)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    row = {"device": device.type, "precision": precision, "batch": batch,
           "frames": steps * batch, "frames/s": steps * batch / seconds,
           "ms/frame": 1000 * seconds / (steps * batch)}
    if device.type == "cpu":  # CPU-seconds per frame: less sensitive to other jobs than wall time
        row["cpu s/frame"] = cpu_seconds / (steps * batch)
    if device.type == "cuda":
        row["peak GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def end_to_end(model, config, frames: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mp4"
        result = animate(model, config, SOURCE, DRIVING, out,
                         AnimateOptions(max_frames=frames, batch_size=4))
    return {"clip": DRIVING.name, "frames": result.num_frames, "seconds": result.seconds,
            "frames/s": result.frames_per_second}


def stream_latency(frames: int) -> dict:
    from fomm import stream
    from pipeline.media import ffmpeg_exe
    config = load_config("tiny")
    torch.manual_seed(0)
    model = load_animation_model(config, None, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.ts"
        subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(DRIVING), "-frames:v",
                        str(frames), "-an", "-c:v", "libx264", "-f", "mpegts", str(clip)], check=True)
        report = stream.run_stream(model, config, SOURCE, str(clip), Path(tmp) / "live.mp4",
                                   AnimateOptions(batch_size=4), realtime=True, queue_size=4)
    return {"model": "tiny (64x64)", "source fps": 25, "frames in": report.frames_in,
            "written": report.frames_out, "dropped": report.dropped,
            "p50 ms": 1000 * report.percentile(50), "p95 ms": 1000 * report.percentile(95),
            "max ms": 1000 * max(report.latencies), "model ms/batch (median)":
            1000 * sorted(report.steps)[len(report.steps) // 2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="frames per CPU measurement")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config("vox-256")
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    model = load_animation_model(config, None, cpu)
    rows = [model_fps(model, cpu, batch, args.frames) for batch in (1, 4)]
    e2e = end_to_end(model, config, args.frames)
    gpu_rows = []
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        model = model.to(gpu)
        gpu_rows = [model_fps(model, gpu, batch, 256, precision)
                    for batch in (1, 32) for precision in ("fp32", "bf16")]
    latency = stream_latency(50)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    body = [
        f"Command: `python -m benchmarks.animate --frames {args.frames} --threads {args.threads}`. "
        f"Load average at the end: {load} on {os.cpu_count()} cores: the CPU was shared with other "
        "jobs, so wall-clock CPU figures are lower bounds (`cpu s/frame` is the process's CPU time).",
        "",
        "### Model, vox-256 FOMM at 256x256 (random weights)",
        markdown_table(rows),
        "",
        "### End to end `animate()` (decode 512 px, resize, model, h264 encode), vox-256, CPU",
        markdown_table([e2e]),
        "",
        "### GPU: fp32 against bf16 autocast at batch 1 and 32, peak memory",
        markdown_table(gpu_rows) if gpu_rows else
        "Not measured: this machine has no GPU. The branch runs when CUDA is present "
        "(`model_fps(..., precision='bf16')` uses `torch.autocast('cuda', torch.bfloat16)`). "
        "Targets on one GPU: 30 frames/s or more at batch 1, 300 frames/s or more batched.",
        "",
        "### `--stream` latency, CPU, tiny model, real clip paced at 25 fps (queue 4, batch up to 4)",
        markdown_table([latency]),
    ]
    path = write_section("animate", "\n".join(body))
    print("\n".join(body))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
