"""Animation speed on CPU against the original demo, the fast path's error budget, ONNX
parity; writes the `animate` section of RESULTS.md.

    python -m benchmarks.animate                       # everything (about 10-20 min on 2 cores)
    python -m benchmarks.animate --frames 40 --no-sweep
    python -m benchmarks.animate --frames 4 --no-sweep --train-steps 2 --no-write   # a quick check

What is measured, in one run, on the same frames (the first `--frames` frames of the real
256 px clip faces/fomm-demo/04.mp4, cut to a file of their own, and the portrait
faces/fomm-demo/02.png), vox-256 FOMM with random weights (speed does not depend on them),
relative motion with adapt scale:

1. whole processes, timed from the outside (wall, user and system CPU seconds of the child):
   - `demo loop`: a re-creation of the original first-order-model `demo.py --cpu`: the whole
     video read into memory as float frames, fp32, `torch.no_grad`, batch 1, one frame at a
     time through the keypoint detector, `normalize_kp` and the generator, the frames
     collected in memory and written at the end (`python -m benchmarks.animate --demo-loop`);
   - `pipeline run animate` with its defaults (`--precision auto`, measured batch), then each
     forced precision, then `--backend onnxruntime` on the exported graphs;
   ratios are to the demo loop (higher is faster);
2. a batch sweep of the model alone (keypoints, transfer, generator) per precision: frames/s
   and CPU seconds per frame, the basis of core/devices.DEFAULT_BATCH;
3. the error budget of the bf16 path against fp32 on real frames (faces/liveportrait/d12.mp4):
   per frame mean and 99th percentile of |bf16 - fp32| over the predicted pixels in [0, 1],
   with a tiny FOMM trained on real face frames (`--error-checkpoint`, else trained here for
   `--train-steps`) and, for scale, vox-256 with random weights; budget: mean <= 1/255 and
   p99 <= 4/255 in every frame;
4. the vox-256 ONNX export: onnxruntime against torch on real frames (max abs diff).
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

import numpy as np
import torch

from benchmarks._results import markdown_table, write_section

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DRIVING = SHARED / "faces/fomm-demo/04.mp4"
SOURCE = SHARED / "faces/fomm-demo/02.png"
ERROR_CLIP = SHARED / "faces/liveportrait/d12.mp4"
TRAIN_CLIPS = ("00", "08", "10")  # fomm-demo clips the error-budget checkpoint learns from
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


# --------------------------------------------------------------------------- the demo loop
def demo_loop(config_name: str, source_path: Path, driving_path: Path, out_path: Path, seed: int = 0) -> int:
    """The original demo.py's `make_animation` as it ran on CPU, on this project's modules.

    Kept as the original did it: frames as float arrays in [0, 1] after resizing, the whole
    driving video on the model's side as one (1, 3, T, H, W) tensor, fp32, no_grad, one
    frame per call, `relative=True, adapt_movement_scale=True`, predictions gathered in a list
    and written when the loop is done.
    """
    from core.media import VideoWriter, iter_frames, load_image, probe
    from fomm import source_crop
    from fomm.animation import load_animation_model
    from fomm.config import load_config
    config = load_config(config_name)
    size = tuple(config.dataset_params.frame_shape[:2])
    torch.manual_seed(seed)
    model = load_animation_model(config, None, torch.device("cpu"))
    source_image = source_crop.resize(load_image(source_path), size).astype(np.float32) / 255
    driving_video = [source_crop.resize(f, size).astype(np.float32) / 255 for f in iter_frames(driving_path)]
    with torch.no_grad():
        predictions = []
        source = torch.tensor(source_image[np.newaxis]).permute(0, 3, 1, 2)
        driving = torch.tensor(np.array(driving_video)[np.newaxis]).permute(0, 4, 1, 2, 3)
        kp_source = model.detect(source)
        kp_driving_initial = model.detect(driving[:, :, 0])
        for frame_idx in range(driving.shape[2]):
            driving_frame = driving[:, :, frame_idx]
            kp_driving = model.detect(driving_frame)
            kp_norm = model.transfer(kp_source, kp_driving, kp_driving_initial, relative=True,
                                     relative_jacobian=True, adapt_movement_scale=True)
            out = model.generate(source, kp_source, kp_norm)
            predictions.append(np.transpose(out["prediction"].data.cpu().numpy(), [0, 2, 3, 1])[0])
    with VideoWriter(out_path, probe(driving_path).fps) as writer:
        for frame in predictions:
            writer.write((np.clip(frame, 0, 1) * 255).round().astype(np.uint8))
    return len(predictions)


# --------------------------------------------------------------------------- whole processes
def timed(command: list[str]) -> dict:
    """Run `command`; wall seconds and the child's user/system CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-2000:]}")
    return {"wall s": wall, "user s": after.ru_utime - before.ru_utime, "sys s": after.ru_stime - before.ru_stime}


def process_rows(clip: Path, frames: int, onnx_dir: Path, tmp: Path) -> list[dict]:
    animate = [sys.executable, "-m", "pipeline.cli", "run", "animate", "--config", "vox-256", "--random-weights",
               "--source", str(SOURCE), "--driving", str(clip), "--adapt-scale", "--device", "cpu"]
    runs = [
        ("demo loop (original demo.py re-created: fp32, batch 1)",
         [sys.executable, "-m", "benchmarks.animate", "--demo-loop", str(tmp / "demo.mp4"), "--clip", str(clip)]),
        ("pipeline run animate (defaults: --precision auto)", animate + ["--out", str(tmp / "auto.mp4")]),
        ("pipeline run animate --precision fp32", animate + ["--out", str(tmp / "fp32.mp4"), "--precision", "fp32"]),
        ("pipeline run animate --precision bf16", animate + ["--out", str(tmp / "bf16.mp4"), "--precision", "bf16"]),
        ("pipeline run animate --backend onnxruntime",
         [sys.executable, "-m", "pipeline.cli", "run", "animate", "--backend", "onnxruntime", str(onnx_dir),
          "--source", str(SOURCE), "--driving", str(clip), "--adapt-scale", "--device", "cpu",
          "--out", str(tmp / "ort.mp4")]),
    ]
    rows = []
    for name, command in runs:
        row = {"run": name, **timed(command)}
        row["frames/s"] = frames / row["wall s"]
        row["x demo loop"] = rows[0]["wall s"] / row["wall s"] if rows else 1.0
        print(markdown_table([row]).splitlines()[-1], flush=True)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- batch sweep
def sweep(model, batches: tuple[int, ...], frames: int) -> list[dict]:
    from core.devices import cpu_has_native_bf16
    from fomm.animation import AnimateOptions, Animator
    rows = []
    cpu = torch.device("cpu")
    image = torch.rand(1, 3, 256, 256)
    for name in ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",):
        for batch in batches:
            animator = Animator(model, image, image, AnimateOptions(precision=name, adapt_scale=True), cpu)
            driving = torch.rand(batch, 3, 256, 256)
            animator(driving)  # warm-up: kernel selection per shape
            steps = max(1, frames // batch)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                animator(driving)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            rows.append({"precision": str(animator.precision), "batch": batch, "frames/s": steps * batch / seconds,
                         "cpu s/frame": cpu_seconds / (steps * batch)})
            print(markdown_table([rows[-1]]).splitlines()[-1], flush=True)
        model.to(memory_format=torch.contiguous_format)
    return rows


# --------------------------------------------------------------------------- error budget
def error_budget(model, frames: np.ndarray, label: str) -> dict:
    """Per-frame |bf16 - fp32| of the animated frames (prediction in [0, 1]): the worst
    frame's mean and 99th percentile, in 1/255 units, and whether the budget holds."""
    from core.frames import to_tensor
    from fomm.animation import AnimateOptions, Animator
    cpu = torch.device("cpu")
    images = to_tensor(frames, cpu)
    source, driving = images[:1], images[1:]
    outputs = {}
    for name in ("fp32", "bf16"):
        animator = Animator(model, source, driving[:1], AnimateOptions(precision=name, adapt_scale=True), cpu)
        outputs[name] = torch.cat([animator(driving[i:i + 4])["prediction"] for i in range(0, len(driving), 4)])
        model.to(memory_format=torch.contiguous_format)
    diff = (outputs["bf16"] - outputs["fp32"]).abs().flatten(1)  # (T, 3 H W)
    means = diff.mean(dim=1) * 255
    p99 = torch.quantile(diff.double(), 0.99, dim=1) * 255
    return {"model": label, "frames": len(driving), "worst mean (/255)": float(means.max()),
            "median mean (/255)": float(means.median()), "worst p99 (/255)": float(p99.max()),
            "max (/255)": float(diff.max() * 255),
            "within budget": bool(means.max() <= 1 and p99.max() <= 4)}


def train_error_checkpoint(steps: int, tmp: Path) -> Path:
    """The tiny FOMM trained `steps` steps on real face frames (three fomm-demo clips)."""
    from core.media import ffmpeg_exe
    data = tmp / "faces"
    for name in TRAIN_CLIPS:
        folder = data / "train" / f"demo{name}"
        folder.mkdir(parents=True)
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(SHARED / f"faces/fomm-demo/{name}.mp4"),
                        "-frames:v", "120", "-vf", "scale=128:128", str(folder / "%05d.png")], check=True)
    run = tmp / "tiny-run"
    timed([sys.executable, "-m", "pipeline.cli", "run", "train", "--config", "tiny", "--data", str(data),
           "--out", str(run), f"train_params.max_steps={steps}", "train_params.num_repeats=1000",
           f"train_params.checkpoint_every={steps}", "train_params.image_every=100000"])
    return max(run.rglob("*.pt*"), key=lambda p: p.stat().st_mtime)


def clip_frames(path: Path, count: int, size: tuple[int, int]) -> np.ndarray:
    from core.media import iter_frames
    from fomm import source_crop
    return np.stack([source_crop.resize(f, size) for f in iter_frames(path, 0, count)])


# --------------------------------------------------------------------------- main
def cpu_description() -> str:
    from core.devices import cpu_flags
    flags = cpu_flags()
    shown = ", ".join(f for f in CPU_FLAGS if f in flags) or "none of " + ", ".join(CPU_FLAGS)
    return f"CPU flags that matter here: {shown}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def load_text() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40, help="driving frames per whole-process run")
    parser.add_argument("--sweep-frames", type=int, default=8, help="frames per batch-sweep measurement")
    parser.add_argument("--no-sweep", dest="do_sweep", action="store_false")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print only, leave RESULTS.md")
    parser.add_argument("--error-checkpoint", help="trained tiny FOMM checkpoint for the error budget")
    parser.add_argument("--train-steps", type=int, default=60, help="without --error-checkpoint: steps to train one")
    parser.add_argument("--demo-loop", metavar="OUT", help=argparse.SUPPRESS)  # the child of row 1
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.demo_loop:
        demo_loop("vox-256", SOURCE, Path(args.clip), Path(args.demo_loop))
        return
    from core.devices import keep_freed_memory
    from core.media import ffmpeg_exe
    from fomm.animation import load_animation_model
    from fomm.config import load_config
    from fomm.export import export_onnx
    keep_freed_memory()
    load_start = load_text()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        clip = tmp / f"driving-{args.frames}.mp4"
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(DRIVING), "-frames:v", str(args.frames),
                        "-an", "-c:v", "libx264", "-crf", "10", str(clip)], check=True)
        config = load_config("vox-256")
        torch.manual_seed(0)
        model = load_animation_model(config, None, torch.device("cpu"))
        export_start = time.perf_counter()
        onnx_report = export_onnx(model, config, tmp / "vox-onnx", clip_frames(ERROR_CLIP, 5, (256, 256)))
        onnx_report["export s"] = time.perf_counter() - export_start
        print("vox-256 onnx:", json.dumps(onnx_report["max_abs_diff"]), flush=True)
        checkpoint = Path(args.error_checkpoint) if args.error_checkpoint else train_error_checkpoint(
            args.train_steps, tmp)
        tiny_config = load_config("tiny")
        tiny = load_animation_model(tiny_config, checkpoint, torch.device("cpu"))
        errors = [error_budget(tiny, clip_frames(ERROR_CLIP, 41, (64, 64)), f"tiny, trained ({checkpoint.name})"),
                  error_budget(model, clip_frames(ERROR_CLIP, 17, (256, 256)), "vox-256, random weights")]
        print(markdown_table(errors), flush=True)
        sweep_rows = sweep(model, (1, 2, 4, 8), args.sweep_frames) if args.do_sweep else []
        del model
        rows = process_rows(clip, args.frames, tmp / "vox-onnx", tmp)
    load_end = load_text()
    body = [
        f"Command: `python -m benchmarks.animate --frames {args.frames}`. {cpu_description()}. "
        f"Load average (1/5/15 min) at the start {load_start}, at the end {load_end}, on {os.cpu_count()} cores: "
        "other jobs shared the CPU, so absolute times are pessimistic; the rows ran one after the other "
        "in the same conditions as far as that goes.",
        "",
        f"### Whole process: {args.frames} frames of faces/fomm-demo/04.mp4 (256 px), vox-256 random weights, "
        "relative motion with adapt scale",
        markdown_table(rows),
        "",
        "### Error budget of the bf16 path against fp32 on real frames (faces/liveportrait/d12.mp4)",
        "Per frame: mean and 99th percentile of |bf16 - fp32| over the predicted pixels, in 1/255; budget "
        "mean <= 1 and p99 <= 4 in every frame. The trained model is the one the budget is for; random "
        "weights exaggerate.",
        markdown_table(errors),
        "",
        "### vox-256 ONNX export: onnxruntime against torch (real frames, batches 1 and 4)",
        markdown_table([{**onnx_report["max_abs_diff"], "tolerance": onnx_report["tolerance"],
                         "export s": onnx_report["export s"]}]),
    ]
    if sweep_rows:
        body += ["", "### Model alone (keypoints, transfer, generator) per batch: the default batch sizes",
                 markdown_table(sweep_rows)]
    text = "\n".join(body)
    print(text)
    if args.write:
        print(f"written to {write_section('animate', text)}")


if __name__ == "__main__":
    main()
