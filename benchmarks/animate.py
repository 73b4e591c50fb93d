"""Animation speed on CPU against the original demo, per numeric path, with each path's error
budget and its fraction of the machine's peak; writes the `animate` section of RESULTS.md.

    python -m benchmarks.animate                         # the lead's command: a few minutes idle
    python -m benchmarks.animate --repeats 3 --families all
    python -m benchmarks.animate --frames 8 --repeats 1 --families none --train-steps 4 --no-write  # a quick check

One run, the same inputs everywhere: the first `--frames` frames of the real 256 px clip
faces/fomm-demo/04.mp4 (cut to a file of their own) drive the portrait faces/fomm-demo/02.png,
relative motion with adapt scale; the weights are vox-256's architecture with random values
(seeded, written as a checkpoint so that every process loads the same file and the int8
calibration can be stored beside it; speed does not depend on the values).

1. Whole processes, timed from the outside (wall, user and system CPU seconds of the child):
   - `demo loop`: a re-creation of the original first-order-model `demo.py --cpu`: the whole
     video read into memory as float frames, fp32, `torch.no_grad`, batch 1, one frame at a
     time through the keypoint detector, `normalize_kp` and the generator, the frames
     collected in memory and written at the end (`python -m benchmarks.animate --demo-loop`);
   - `pipeline run animate` with its defaults (`--precision auto`), first on a checkpoint
     without a stored int8 calibration (it calibrates and stores it), then with it stored on
     inputs new to it (auto checks it against fp32 on two of their frames, fomm.animation
     .Animator.verify), then on the same inputs again (every later run: the check's verdict
     is kept); then each forced path, and `--compile` on the best float path
     (inductor's cache warmed by an uncounted run first; the cold compile is a row of its own).
   Every variant runs once per round, rounds repeat `--repeats` times (interleaved, so a load
   that comes and goes hits every row alike); `x demo loop` is the median over rounds of the
   demo loop's wall time over the row's in the same round (higher is faster).
2. The model alone (keypoints, transfer, generator) per path at its default batch: frames/s,
   CPU s/frame, and the fraction of this machine's peak: the model's multiply-adds per frame
   (counted by torch's FLOP counter on the fp32 model: convolutions and matrix products, 2
   operations per multiply-add) over the path's time, against the peak of the instructions
   the path runs on (`peak_ops`: lanes x FMA ports x 2 x cores x clock from /proc/cpuinfo;
   a measured fp32 matrix product for comparison).
3. The error budget of every fast path against `--precision fp32` on real frames
   (faces/liveportrait/d12.mp4): per frame mean and 99th percentile of |path - fp32| over the
   predicted pixels in [0, 1], in 1/255; budget mean <= 1 and p99 <= 4 in every frame; with
   a tiny FOMM trained on real face frames (`--error-checkpoint`, else trained here for
   `--train-steps`) and vox-256 with random weights.
4. Every registered family (`--families`, default all but FOMM, whose rows are above; issue
   18): the demo loop and the default `pipeline run animate`, whole process, same inputs, and
   the bf16 and default paths' error budget against fp32 (random weights).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
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
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
             "amx_tile", "avx512_fp16")
CPU = torch.device("cpu")


# --------------------------------------------------------------------------- the demo loop
def demo_loop(config, checkpoint: Path, source_path: Path, driving_path: Path, out_path: Path) -> int:
    """The original demo.py's `make_animation` as it ran on CPU, on this project's modules.

    Kept as the original did it: frames as float arrays in [0, 1] after resizing, the whole
    driving video on the model's side as one (1, 3, T, H, W) tensor, fp32, no_grad, one
    frame per call, `relative=True, adapt_movement_scale=True`, predictions gathered in a list
    and written when the loop is done.
    """
    from core.media import VideoWriter, iter_frames, load_image, probe
    from fomm import source_crop
    from fomm.animation import load_animation_model
    size = tuple(config.dataset_params.frame_shape[:2])
    model = load_animation_model(config, checkpoint, CPU)
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


# --------------------------------------------------------------------------- inputs
def families() -> list[str]:
    """The registered model families (fomm/families.py), FOMM first."""
    from fomm.families import NAMES
    return sorted(NAMES, key=lambda name: (name != "fomm", name))


def family_config_name(family: str) -> str:
    """The family's vox-256 config: its own file where there is one (fomm.registry.family_config)."""
    from fomm.registry import family_config as config_name
    return config_name("vox-256", family)


def family_config(family: str):
    from fomm.config import load_config
    config = load_config(family_config_name(family))
    if config.model_params.name != family:
        raise SystemExit(f"{family}: no vox-256 config of its own (configs/{family}-vox-256.yaml)")
    return config


def random_checkpoint(family: str, folder: Path, seed: int = 0) -> Path:
    """The family's vox-256 model with seeded random weights, as a project checkpoint."""
    from core.config import config_to_dict
    from fomm.animation import load_animation_model
    from fomm.checkpoint import save_checkpoint
    config = family_config(family)
    torch.manual_seed(seed)
    model = load_animation_model(config, None, CPU)
    return save_checkpoint(folder / f"{family}-vox-256-random.pt",
                           {"config": config_to_dict(config), **model.checkpoint_state()})


def clip_frames(path: Path, count: int, size: tuple[int, int]) -> np.ndarray:
    from core.media import iter_frames
    from fomm import source_crop
    return np.stack([source_crop.resize(f, size) for f in iter_frames(path, 0, count)])


# --------------------------------------------------------------------------- whole processes
def timed(command: list[str], env: dict | None = None) -> dict:
    """Run `command`; wall seconds and the child's user/system CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-2000:]}")
    return {"wall s": wall, "user s": after.ru_utime - before.ru_utime, "sys s": after.ru_stime - before.ru_stime,
            "log": result.stderr}


def animate_command(family: str, checkpoint: Path, clip: Path, out: Path, *extra: str) -> list[str]:
    config = "vox-256" if family == "fomm" else family_config_name(family)
    return [sys.executable, "-m", "stages.cli", "run", "animate", "--config", config, "--model", family,
            "--checkpoint", str(checkpoint), "--source", str(SOURCE), "--driving", str(clip), "--adapt-scale",
            "--device", "cpu", "--out", str(out), *extra]


def demo_command(family: str, checkpoint: Path, clip: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.animate", "--demo-loop", str(out), "--clip", str(clip),
            "--family", family, "--checkpoint", str(checkpoint)]


def interleaved(runs: list[tuple[str, list[str], dict]], frames: int, repeats: int,
                before_each: dict | None = None) -> list[dict]:
    """Every run once per round, `repeats` rounds; medians, and the demo loop's (runs[0])
    wall time over each row's in the same round. `before_each[name]()` runs before that row
    in every round (e.g. removing a calibration so that the row measures the first run)."""
    samples: dict[str, list[dict]] = {name: [] for name, _, _ in runs}
    for round_ in range(repeats):
        for name, command, env in runs:
            if before_each and name in before_each:
                before_each[name]()
            samples[name].append(timed(command, env))
            print(f"round {round_ + 1}: {name}: {samples[name][-1]['wall s']:.1f} s", flush=True)
    demo = [s["wall s"] for s in samples[runs[0][0]]]
    rows = []
    for name, _, _ in runs:
        walls = [s["wall s"] for s in samples[name]]
        rows.append({"run": name, "wall s": statistics.median(walls),
                     "user s": statistics.median(s["user s"] for s in samples[name]),
                     "sys s": statistics.median(s["sys s"] for s in samples[name]),
                     "frames/s": frames / statistics.median(walls),
                     "x demo loop": statistics.median(d / w for d, w in zip(demo, walls)),
                     "path": chosen_path(samples[name][-1]["log"])})
    return rows


def chosen_path(log: str) -> str:
    """What the animate process said it ran (its `animate: <path>, batch N` line, and int8's verdict)."""
    said = [line.split("animate: ", 1)[1] for line in log.splitlines() if "INFO fomm.jobs: animate: " in line
            and ", batch " in line]
    fell_back = [line.split("WARNING ", 1)[1] for line in log.splitlines() if "instead" in line and "WARNING" in line]
    return "; ".join(said[:1] + fell_back[:1]) or "-"


VERIFYING = "animate, defaults, inputs new to the stored calibration (checks it on 2 of their frames)"


def process_rows(checkpoint: Path, clip: Path, frames: int, repeats: int, tmp: Path, compile_rows: bool = True
                 ) -> list[dict]:
    from core.devices import cpu_has_native_bf16, resolve
    calibration = checkpoint.with_name(checkpoint.name + ".int8")
    cache = {"TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor")}
    auto = resolve("auto", "cpu")
    runs = [("demo loop (original demo.py re-created: fp32, batch 1)",
             demo_command("fomm", checkpoint, clip, tmp / "demo.mp4"), {})]
    if auto.int8:
        runs.append(("animate, defaults, first run on the checkpoint (calibrates int8)",
                     animate_command("fomm", checkpoint, clip, tmp / "first.mp4"), {}))
        runs.append((VERIFYING, animate_command("fomm", checkpoint, clip, tmp / "verify.mp4"), {}))
    runs.append(("animate, defaults (--precision auto)", animate_command("fomm", checkpoint, clip, tmp / "auto.mp4"), {}))
    runs.append(("animate --precision fp32", animate_command("fomm", checkpoint, clip, tmp / "fp32.mp4",
                                                           "--precision", "fp32"), {}))
    floats = ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
    if "bf16" in floats:
        runs.append(("animate --precision bf16", animate_command("fomm", checkpoint, clip, tmp / "bf16.mp4",
                                                               "--precision", "bf16"), {}))
    if auto.int8:
        runs.append(("animate --precision int8", animate_command("fomm", checkpoint, clip, tmp / "int8.mp4",
                                                               "--precision", "int8"), {}))
    # compiled: the best float path (a cold compile costs minutes on 2 cores; fp32 and bf16
    # compile alike)
    compiled = [(f"animate --precision {name} --compile (inductor cache warm)",
                 animate_command("fomm", checkpoint, clip, tmp / f"{name}-c.mp4", "--precision", name, "--compile"),
                 cache) for name in floats[-1:] if compile_rows]
    # the cold compiles (empty cache) first: they are also what warms the cache
    cold = []
    for name, command, env in compiled:
        shutil.rmtree(tmp / "inductor", ignore_errors=True)
        cold.append((name.replace("cache warm", "cache empty: the first run"), timed(command, env)))
        print(f"{cold[-1][0]}: {cold[-1][1]['wall s']:.1f} s", flush=True)
    for name, command, env in compiled:  # both warm now
        timed(command, env)
    # the first-run row measures a calibration each round, the next one its check on inputs
    # new to it (its verdicts are removed; it keeps one for the defaults row after it)
    def forget_verdicts():
        for verdicts in calibration.glob("*/verified.json"):
            verdicts.unlink()
    rows = interleaved(runs + compiled, frames, repeats,
                       {runs[1][0]: lambda: shutil.rmtree(calibration, ignore_errors=True),
                        VERIFYING: forget_verdicts} if auto.int8 else None)
    demo_wall = rows[0]["wall s"]
    for name, sample in cold:  # measured once, against the demo loop's median
        rows.append({"run": name, "wall s": sample["wall s"], "user s": sample["user s"], "sys s": sample["sys s"],
                     "frames/s": frames / sample["wall s"], "x demo loop": demo_wall / sample["wall s"],
                     "path": chosen_path(sample["log"])})
    return rows


# --------------------------------------------------------------------------- the machine's peak
FMA_PORTS = 2  # vector FMA pipes per core: Intel server cores since Skylake-SP, AMD Zen 4 and 5


def cpu_mhz() -> float | None:
    try:
        with open("/proc/cpuinfo") as handle:
            values = [float(line.split(":")[1]) for line in handle if line.startswith("cpu MHz")]
    except OSError:
        return None
    return max(values) if values else None


def peak_ops(cores: int, mhz: float | None) -> dict[str, float | None]:
    """Peak multiply-add throughput (2 operations per multiply-add, per second) of each path's
    instructions on `cores` cores at `mhz`: vector lanes per FMA x FMA ports x 2, per cycle.
    fp32: AVX-512 16 lanes (AVX2 8); bf16 (AVX512-BF16 VDPBF16PS): 2 products per fp32 lane;
    int8 (VNNI VPDPBUSD): 4 products per 32-bit lane; AMX tiles: 1024 bf16 / 2048 int8 ops
    per cycle and core (Intel's figures). None where the CPU lacks the instructions."""
    from core.devices import cpu_flags
    flags = cpu_flags()
    if mhz is None:
        return {"fp32": None, "bf16": None, "int8": None}
    lanes = 16 if "avx512f" in flags else 8
    per_cycle = {"fp32": lanes * FMA_PORTS * 2,
                 "bf16": 1024 if "amx_bf16" in flags else lanes * 2 * FMA_PORTS * 2 if "avx512_bf16" in flags else None,
                 "int8": 2048 if "amx_int8" in flags else lanes * 4 * FMA_PORTS * 2
                 if {"avx512_vnni", "avx_vnni"} & flags else None}
    return {name: None if rate is None else rate * cores * mhz * 1e6 for name, rate in per_cycle.items()}


def measured_fp32_gemm(size: int = 2048, repeats: int = 3) -> float:
    """fp32 operations per second of a (size x size) matrix product on all threads."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def model_flops_per_frame(model, batch: int) -> float:
    """Multiply-add operations (x2) per frame of keypoints + transfer + generator, fp32, as the
    Animator runs them at `batch` (the source encoded once per batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fomm.animation import AnimateOptions, Animator
    image = torch.rand(1, 3, 256, 256)
    animator = Animator(model, image, image, AnimateOptions(precision="fp32", adapt_scale=True), CPU)
    with FlopCounterMode(display=False) as counter:
        animator(torch.rand(batch, 3, 256, 256))
    return counter.get_total_flops() / batch


def demo_frame(model, source: torch.Tensor, frame: torch.Tensor, kp_source, kp_initial) -> torch.Tensor:
    """One frame of the demo loop: batch 1, fp32, no_grad, the model as built."""
    with torch.no_grad():
        kp_norm = model.transfer(kp_source, model.detect(frame), kp_initial, relative=True, relative_jacobian=True,
                                 adapt_movement_scale=True)
        return model.generate(source, kp_source, kp_norm)["prediction"]


def demo_rows(model, frames: torch.Tensor, repeats: int, peaks: dict) -> dict:
    """The demo loop's frame, model alone: its operations per frame and fraction of the fp32 peak."""
    from torch.utils.flop_counter import FlopCounterMode
    source, driving = frames[:1], frames[1:]
    with torch.no_grad():
        kp_source, kp_initial = model.detect(source), model.detect(driving[:1])
    with FlopCounterMode(display=False) as counter:
        demo_frame(model, source, driving[:1], kp_source, kp_initial)
    flops = counter.get_total_flops()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(len(driving)):
            demo_frame(model, source, driving[index:index + 1], kp_source, kp_initial)
        walls.append((time.perf_counter() - wall) / len(driving))
        cpus.append((time.process_time() - cpu) / len(driving))
    wall = statistics.median(walls)
    peak = peaks["fp32"]
    return {"path": "demo loop (fp32, batch 1, model as built)", "batch": 1, "frames/s": 1 / wall,
            "cpu s/frame": statistics.median(cpus), "G ops/frame": flops / 1e9, "G ops/s": flops / wall / 1e9,
            "peak G ops/s": peak / 1e9 if peak else float("nan"),
            "fraction of peak": flops / wall / peak if peak else float("nan")}


def model_rows(model, frames: torch.Tensor, repeats: int) -> list[dict]:
    """Each path's Animator at its default batch on real frames, interleaved repeats."""
    from core.devices import cpu_has_native_bf16, resolve
    from fomm.animation import AnimateOptions, Animator
    names = ["fp32"] + (["bf16"] if cpu_has_native_bf16() else []) + (["int8"] if resolve("auto", "cpu").int8 else [])
    source, driving = frames[:1], frames[1:]
    animators = {}
    for name in names:
        animator = Animator(model, source, driving[:1], AnimateOptions(precision=name, adapt_scale=True), CPU)
        animator(driving[:animator.batch_size])  # warm-up (and the int8 calibration)
        animators[name] = animator
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, animator in animators.items():
            size = animator.batch_size
            wall, cpu = time.perf_counter(), time.process_time()
            for start in range(0, len(driving), size):
                animator(driving[start:start + size])
            times[name].append(((time.perf_counter() - wall) / len(driving), (time.process_time() - cpu) / len(driving)))
    flops = model_flops_per_frame(model, animators["fp32"].batch_size)
    cores = torch.get_num_threads()
    peaks = peak_ops(cores, cpu_mhz())
    rows = [demo_rows(model, frames, repeats, peaks)]
    for name, animator in animators.items():
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        peak = peaks.get(name)
        rows.append({"path": str(animator.precision), "batch": animator.batch_size, "frames/s": 1 / wall,
                     "cpu s/frame": cpu, "G ops/frame": flops / 1e9, "G ops/s": flops / wall / 1e9,
                     "peak G ops/s": peak / 1e9 if peak else float("nan"),
                     "fraction of peak": flops / wall / peak if peak else float("nan")})
    return rows


def fp32_only_note(alone: list[dict]) -> str:
    """What a CPU with fp32 only can reach against the demo loop, from the model-alone rows:
    every path there runs the fp32 operations, so the best is the demo loop's operations over
    the fp32 path's, times the ratio of the peak to what the demo loop already reaches."""
    demo, fp32 = alone[0], next(row for row in alone if row["path"].startswith("fp32"))
    if not demo["fraction of peak"] == demo["fraction of peak"]:  # NaN: no clock known
        return ""
    fewer = demo["G ops/frame"] / fp32["G ops/frame"]
    return (f"On a CPU with fp32 only, the model part can be at most {fewer:.2f} (the demo loop's "
            f"{demo['G ops/frame']:.0f} G ops a frame over the fp32 path's {fp32['G ops/frame']:.0f}: the source "
            f"encoded once per batch) x {1 / demo['fraction of peak']:.2f} (the demo loop already runs at "
            f"{demo['fraction of peak']:.0%} of the fp32 peak) = {fewer / demo['fraction of peak']:.2f}x faster than "
            f"the demo loop's, at 100 % of the peak; the fp32 path measured {fp32['frames/s'] / demo['frames/s']:.2f}x "
            f"({fp32['fraction of peak']:.0%} of the peak). Whole processes add start-up, decoding and encoding to "
            "both sides, which lowers the ratio further.")


# --------------------------------------------------------------------------- error budget
def error_budget(model, frames: np.ndarray, label: str, paths: tuple[str, ...] | None = None) -> list[dict]:
    """Per frame |path - fp32| of the animated frames (prediction in [0, 1]) for each fast
    path (default: auto and every path this CPU runs natively, and int8 calibrated on the
    first batch alone, as it was before calibrations sampled the clip): the worst frame's
    mean and 99th percentile, in 1/255 units, and whether the budget holds. int8 paths
    calibrate as `pipeline run animate` does, on CALIBRATION_FRAMES frames spread over the
    clip; auto's batches beyond the calibrated ranges run its float path (counted)."""
    from core.devices import cpu_has_native_bf16, resolve
    from core.frames import to_tensor
    from core.quantize import BUDGET_MEAN, BUDGET_P99, forget_calibrations, frame_errors
    from fomm.animation import CALIBRATION_FRAMES, AnimateOptions, Animator
    int8 = resolve("auto", "cpu").int8
    if paths is None:
        paths = ("auto",) + (("bf16",) if cpu_has_native_bf16() else ()) + (("int8", "int8 first batch") if int8 else ())
    images = to_tensor(frames, CPU)
    source, driving = images[:1], images[1:]
    spread = np.linspace(0, len(driving) - 1, min(CALIBRATION_FRAMES, len(driving))).round().astype(int)
    outputs, ran = {}, {}
    model.calibration_store = None  # each int8 path calibrates afresh, as asked, not from a stored one
    for name in ("fp32",) + tuple(paths):
        asked = name.split()[0]
        forget_calibrations()
        animator = Animator(model, source, driving[:1], AnimateOptions(precision=asked, adapt_scale=True), CPU)
        if name == asked:
            animator.calibrate([frames[1 + i] for i in spread])
        size = animator.batch_size
        outputs[name] = torch.cat([animator(driving[i:i + size])["prediction"] for i in range(0, len(driving), size)])
        ran[name] = str(animator.precision) + (f" ({animator.frames_outside} frames beyond the calibrated ranges ran "
                                               f"{animator.precision.fallback})" if animator.frames_outside else "")
    rows = []
    for name in paths:
        means, p99 = frame_errors(outputs[name], outputs["fp32"])
        rows.append({"model": label, "path": f"{name}: {ran[name]}", "frames": len(driving),
                     "worst mean (/255)": float(means.max() * 255), "median mean (/255)": float(means.median() * 255),
                     "worst p99 (/255)": float(p99.max() * 255),
                     "max (/255)": float((outputs[name] - outputs["fp32"]).abs().max() * 255),
                     "within budget": bool(means.max() <= BUDGET_MEAN and p99.max() <= BUDGET_P99)})
    return rows


# (source photo, driving clip) pairs under ../shared/data/faces for the stored-calibration rows
CROSS_INPUTS = (("fomm-demo/02.png", "liveportrait/d12.mp4"), ("fomm-demo/05.png", "liveportrait/d12.mp4"),
                ("liveportrait/s1.jpg", "liveportrait/d12.mp4"), ("fomm-demo/02.png", "fomm-demo/04.mp4"),
                ("sadtalker/people_0.png", "liveportrait/d0.mp4"), ("fomm-demo/09.png", "fomm-demo/10.mp4"))


def cross_input_rows(checkpoint: Path, tmp: Path, frames: int = 40) -> list[dict]:
    """A calibration stored by a first run (the first pair of CROSS_INPUTS, 16 frames), then
    every pair animated from it as `pipeline run animate` does (fomm.animation.prepare:
    auto's range guard and its check on each run's inputs), against fp32 over `frames`
    frames; and the same with int8 asked for and a calibration on the first run's photo
    alone (no stock photographs): no guard, no check, what a stored calibration did before."""
    from core.frames import to_tensor
    from core.media import iter_frames
    from core.quantize import BUDGET_MEAN, BUDGET_P99, forget_calibrations, frame_errors
    from fomm import animation, source_crop
    from fomm.config import load_config
    config, faces, rows = load_config("tiny"), SHARED / "faces", []
    size = tuple(config.dataset_params.frame_shape[:2])

    def outputs(precision, copy, source, driving, count):
        plan = animation.prepare(animation.load_animation_model(config, copy, CPU), config, faces / source,
                                 faces / driving, tmp / "cross.mp4",
                                 animation.AnimateOptions(precision=precision, adapt_scale=True, max_frames=count))
        clip = [source_crop.prepare(f, None, size) for f in iter_frames(plan.driving_path, 0, plan.num_frames)]
        step = plan.animator.batch_size
        return plan.animator, torch.cat([plan.animator(to_tensor(np.stack(clip[i:i + step]), CPU))["prediction"]
                                         for i in range(0, len(clip), step)])
    for label, photos, precision in (("auto", animation.CALIBRATION_PHOTOS, "auto"),
                                     ("int8 asked, calibrated on one photo", (), "int8")):
        copy = tmp / f"cross-{precision}.pt"
        shutil.copy(checkpoint, copy)
        saved, animation.CALIBRATION_PHOTOS = animation.CALIBRATION_PHOTOS, photos
        animation.calibration_photos.cache_clear()
        forget_calibrations()
        try:
            outputs(precision, copy, *CROSS_INPUTS[0], 16)  # the first run: calibrates, stores
            for source, driving in CROSS_INPUTS:
                animator, fast = outputs(precision, copy, source, driving, frames)
                _, reference = outputs("fp32", copy, source, driving, frames)
                means, p99 = frame_errors(fast, reference)
                rows.append({"path": label, "source": source, "driving": driving, "frames": len(fast),
                             "ran": str(animator.precision) + (f", {animator.frames_outside} frames beyond the ranges "
                                                               f"ran {animator.precision.fallback}"
                                                               if animator.frames_outside else ""),
                             "worst mean (/255)": float(means.max() * 255), "worst p99 (/255)": float(p99.max() * 255),
                             "within budget": bool(means.max() <= BUDGET_MEAN and p99.max() <= BUDGET_P99)})
                print(markdown_table(rows[-1:]), flush=True)
        finally:
            animation.CALIBRATION_PHOTOS = saved
            animation.calibration_photos.cache_clear()
    return rows


def train_error_checkpoint(steps: int, tmp: Path) -> Path:
    """The tiny FOMM trained `steps` steps on real face frames (three fomm-demo clips)."""
    from core.media import ffmpeg_exe
    data = tmp / "faces"
    for name in TRAIN_CLIPS:
        folder = data / "train" / f"demo{name}"
        folder.mkdir(parents=True)
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(SHARED / f"faces/fomm-demo/{name}.mp4"),
                        "-frames:v", "120", "-vf", "scale=64:64", str(folder / "%05d.png")], check=True)
    run = tmp / "tiny-run"
    timed([sys.executable, "-m", "stages.cli", "run", "train", "--config", "tiny", "--data", str(data),
           "--out", str(run), f"train_params.max_steps={steps}", "train_params.num_repeats=1000",
           f"train_params.checkpoint_every={steps}", "train_params.image_every=100000",
           # L1 + equivariance: the perceptual loss's VGG19 would triple each step on 2 cores
           "train_params.loss_weights.perceptual=[0,0,0,0,0]", "train_params.loss_weights.reconstruction_l1=10"])
    return max(run.rglob("*.pt*"), key=lambda p: p.stat().st_mtime)


# --------------------------------------------------------------------------- families
def family_rows(names: list[str], clip: Path, frames: int, tmp: Path) -> tuple[list[dict], list[dict]]:
    """Per family: demo loop and default animate (one interleaved pair), and the budget."""
    from fomm.animation import load_animation_model
    speed, budget = [], []
    error_frames = clip_frames(ERROR_CLIP, 9, (256, 256))
    for family in names:
        checkpoint = random_checkpoint(family, tmp)
        rows = interleaved([(f"{family}: demo loop", demo_command(family, checkpoint, clip, tmp / f"{family}-d.mp4"),
                             {}),
                            (f"{family}: animate, defaults (first run)",
                             animate_command(family, checkpoint, clip, tmp / f"{family}-a.mp4"), {}),
                            (f"{family}: animate, defaults", animate_command(family, checkpoint, clip,
                                                                               tmp / f"{family}-b.mp4"), {})],
                           frames, 1)
        speed += rows
        model = load_animation_model(family_config(family), checkpoint, CPU)
        budget += error_budget(model, error_frames, f"{family}, vox-256, random weights")
        print(markdown_table(budget[-1:]), flush=True)
    return speed, budget


# --------------------------------------------------------------------------- main
def cpu_description() -> str:
    from core.devices import cpu_flags
    flags = cpu_flags()
    shown = ", ".join(f for f in CPU_FLAGS if f in flags) or "none of " + ", ".join(CPU_FLAGS)
    return (f"CPU flags that matter here: {shown}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}; "
            f"cpu MHz (/proc/cpuinfo) {cpu_mhz()}")


def load_text() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48, help="driving frames per whole-process run")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the whole-process rows")
    parser.add_argument("--model-repeats", type=int, default=3, help="interleaved repeats of the model-alone rows")
    parser.add_argument("--families", default="others",
                        help="families timed in section 4: others (every registered family but FOMM), all, none, "
                             "or names joined by commas")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="leave out the --compile rows (their cold compile takes minutes)")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print only, leave RESULTS.md")
    parser.add_argument("--error-checkpoint", help="trained tiny FOMM checkpoint for the error budget")
    parser.add_argument("--train-steps", type=int, default=40, help="without --error-checkpoint: steps to train one")
    parser.add_argument("--demo-loop", metavar="OUT", help=argparse.SUPPRESS)  # the child of the demo rows
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    parser.add_argument("--family", default="fomm", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    return parser.parse_args()


def family_list(choice: str) -> list[str]:
    registered = families()
    if choice == "none":
        return []
    if choice in ("all", "others"):
        return registered if choice == "all" else [f for f in registered if f != "fomm"]
    names = [name.strip() for name in choice.split(",") if name.strip()]
    unknown = [name for name in names if name not in registered]
    if unknown:
        raise SystemExit(f"--families {choice!r}: {unknown} not registered; expected some of {registered}")
    return names


def main() -> None:
    args = parse_args()
    if args.demo_loop:
        demo_loop(family_config(args.family), Path(args.checkpoint), SOURCE, Path(args.clip), Path(args.demo_loop))
        return
    from core.devices import keep_freed_memory
    from core.frames import to_tensor
    from core.media import ffmpeg_exe
    from fomm.animation import load_animation_model
    from fomm.config import load_config
    keep_freed_memory()
    names = family_list(args.families)
    load_start = load_text()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        clip = tmp / f"driving-{args.frames}.mp4"
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(DRIVING), "-frames:v", str(args.frames),
                        "-an", "-c:v", "libx264", "-crf", "10", str(clip)], check=True)
        checkpoint = random_checkpoint("fomm", tmp)
        rows = process_rows(checkpoint, clip, args.frames, args.repeats, tmp, args.compile)
        print(markdown_table(rows), flush=True)
        model = load_animation_model(family_config("fomm"), checkpoint, CPU)
        alone = model_rows(model, to_tensor(clip_frames(clip, 17, (256, 256)), CPU), args.model_repeats)
        print(markdown_table(alone), flush=True)
        gemm = measured_fp32_gemm()
        error_checkpoint = Path(args.error_checkpoint) if args.error_checkpoint else train_error_checkpoint(
            args.train_steps, tmp)
        tiny = load_animation_model(load_config("tiny"), error_checkpoint, CPU)
        errors = (error_budget(tiny, clip_frames(ERROR_CLIP, 41, (64, 64)), f"tiny, trained ({error_checkpoint.name})")
                  + error_budget(model, clip_frames(ERROR_CLIP, 17, (256, 256)), "vox-256, random weights"))
        print(markdown_table(errors), flush=True)
        cross = cross_input_rows(error_checkpoint, tmp)
        del model
        family_speed, family_budget = family_rows(names, clip, args.frames, tmp) if names else ([], [])
    load_end = load_text()
    command = " ".join(["python -m benchmarks.animate"] + sys.argv[1:])
    mhz, cores = cpu_mhz(), torch.get_num_threads()
    body = [
        f"Command: `{command}` ({(time.perf_counter() - started) / 60:.1f} min). {cpu_description()}. "
        f"Load average (1/5/15 min) at the start {load_start}, at the end {load_end}, on {os.cpu_count()} cores. "
        "Whole-process rows ran in interleaved rounds (every row once per round) and `x demo loop` is the median "
        "of the per-round ratios, so a load that comes and goes hits every row alike; absolute seconds are "
        "only as good as the machine was idle.",
        "",
        f"### Whole process: {args.frames} frames of faces/fomm-demo/04.mp4 (256 px), vox-256 random weights "
        "(a checkpoint), relative motion with adapt scale",
        "`path` is what the process logged it ran.",
        markdown_table(rows),
        "",
        "### The model alone (keypoints, transfer, generator) per path, default batch, 16 real frames",
        f"`G ops/frame`: multiply-adds x 2 of the fp32 model per frame (torch.utils.flop_counter: convolutions "
        f"and matrix products). `peak G ops/s`: {cores} threads x {mhz} MHz (/proc/cpuinfo) x the path's "
        f"operations per cycle: fp32 16 lanes x {FMA_PORTS} FMA ports x 2 with AVX-512; bf16 (AVX512-BF16) twice "
        "that; int8 (VNNI) four times that (AMX: 1024 bf16, 2048 int8). The int8 path runs its regions in int8 "
        "and the rest (keypoint detector, heads, warps) in fp32, so its fraction is of the int8 peak. A "
        f"measured fp32 matrix product (2048^2, all threads) reached {gemm / 1e9:.0f} G ops/s"
        + (f", {gemm / peak_ops(cores, mhz)['fp32']:.0%} of the fp32 peak." if mhz else "."),
        markdown_table(alone),
        "",
        fp32_only_note(alone),
        "",
        "### Error budget of each path against --precision fp32 on real frames (faces/liveportrait/d12.mp4)",
        "Per frame: mean and 99th percentile of |path - fp32| over the predicted pixels, in 1/255; budget "
        "mean <= 1 and p99 <= 4 in every frame. The trained model is the one the budget is for; random "
        "weights exaggerate. `auto` is the default path (on an int8 machine: the int8 calibration, or its float "
        "fallback where the budget broke).",
        markdown_table(errors),
        "",
        "### A stored calibration on other photos and clips (tiny FOMM trained on real faces)",
        f"A first run calibrates on {CROSS_INPUTS[0][0]} and {CROSS_INPUTS[0][1]} and stores it; each pair is then "
        "animated from the stored calibration the way `pipeline run animate` does, and compared with fp32 over every "
        "frame. `auto`: the calibration's ranges also set by three stock photographs, its range guard, and its "
        "check on two frames of each run's inputs (both fall back to bf16 where they must). `int8 asked, "
        "calibrated on one photo`: the ranges from the first run's photo alone and none of the checks (how a "
        "stored calibration ran before).",
        markdown_table(cross),
    ]
    if family_speed:
        body += ["", "### Every registered family: whole process (one pair, same inputs) and budget against fp32",
                 "vox-256 configs (the family's own file where it has one), random weights (a checkpoint each).",
                 markdown_table(family_speed), "", markdown_table(family_budget)]
    text = "\n".join(body)
    print(text)
    if args.write:
        print(f"written to {write_section('animate', text)}")


if __name__ == "__main__":
    main()
