"""Frames per second of each metric and each available metric backend on CPU.

    python -m benchmarks.metrics [--frames 24] [--repeats 2]

Real frames: faces/fomm-demo/04.mp4 (256x256) for the face backends and the pixel metrics,
bodies/dwnet-taichi/1 (256x256) for the body backends. Each measurement is the best of
`--repeats` runs over `--frames` frames, on one thread, with dlib's face-box cache cleared
before each run. Both wall-clock and process CPU time are reported: on a shared machine the
CPU time is the better estimate of what one idle core would do. Backends that cannot run here
are listed with the reason. Writes the "metrics" section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

SHARED_DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def best_seconds(run, repeats: int) -> tuple[float, float]:
    """Best (wall, CPU) seconds of `repeats` cold runs."""
    from metrics.backends.dlib68 import clear_face_boxes
    walls, cpus = [], []
    for _ in range(repeats):
        clear_face_boxes()
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def face_frames(count: int) -> np.ndarray:
    from core.media import read_frames
    return read_frames(SHARED_DATA / "faces/fomm-demo/04.mp4", 0, count)  # (T, 256, 256, 3)


def body_frames(count: int) -> np.ndarray:
    from core.media import load_image
    files = sorted((SHARED_DATA / "bodies/dwnet-taichi/1").glob("*.png"))[:count]
    return np.stack([load_image(path) for path in files])  # (T, 256, 256, 3)


def measure(frames_count: int, repeats: int) -> list[dict]:
    from metrics import backends, frame_metrics
    from metrics.evaluate import score_clip
    faces, bodies = face_frames(frames_count), body_frames(frames_count)
    shifted = np.roll(faces, 4, axis=(1, 2))
    rows = []

    def add(name, scheme, frames, run, note=""):
        wall, cpu = best_seconds(run, repeats)
        rows.append(dict(metric=name, scheme=scheme, frames=len(frames), fps_cpu=len(frames) / cpu,
                         fps_wall=len(frames) / wall, cpu_ms_per_frame=1000 * cpu / len(frames), note=note))

    add("L1", "-", faces, lambda: frame_metrics.l1(faces, shifted))
    add("SSIM (7x7 uniform)", "skimage", faces, lambda: frame_metrics.ssim(faces, shifted))
    add("SSIM (11x11 Gaussian)", "skimage", faces, lambda: frame_metrics.ssim(faces, shifted, gaussian_weights=True))
    add("PSNR", "skimage", faces, lambda: frame_metrics.psnr(faces, shifted))
    status = frame_metrics.lpips_status()
    if status == "available":
        add("LPIPS (alex)", "lpips", faces, lambda: frame_metrics.get_lpips()(faces, shifted))
    else:
        rows.append(dict(metric="LPIPS (alex)", scheme="lpips", note=status))
    for row in backends.available_backends():
        name, kind = row["name"], row["kind"]
        label = f"{kind}: {name}"
        if not row["available"]:
            rows.append(dict(metric=label, scheme=row["scheme"], note=row["reason"]))
            continue
        frames = bodies if name in ("mediapipe-pose", "mediapipe-openpose-18", "body-pose",
                                    "body-appearance") else faces
        backend = (backends.get_pose_backend if kind == "pose" else backends.get_identity_backend)(name)
        run = backend.detect if kind == "pose" else backend.embed
        add(label, row["scheme"], frames, lambda: run(frames),
            note="detector + predictor" if name.startswith("dlib") else "")
    add("score_clip faces: L1+SSIM+PSNR+dlib68+dlib-face, real and fake", "dlib-68 + dlib-128", faces,
        lambda: score_clip(faces, shifted, pose="dlib68", identity="dlib-face"))
    openface_row(rows, add, faces)
    return rows


def openface_row(rows: list, add, faces: np.ndarray) -> None:
    """OpenFace's cost does not depend on its weights: where the user's openface.pth is absent,
    time the architecture with the golden file's random weights (float32, as the backend runs)."""
    import torch
    from metrics.backends.openface import OpenFaceNet, load_openface_state, preprocess
    golden = SHARED_DATA.parent / "reference" / "openface-golden.pt"
    if not golden.is_file():
        rows.append(dict(metric="identity: openface (architecture)", note=f"{golden} missing"))
        return
    state = torch.load(golden, weights_only=True)["state_dict"]
    model = load_openface_state(OpenFaceNet(), state).float().eval()

    def run():
        with torch.no_grad():
            model(torch.from_numpy(preprocess(faces)).float())
    add("identity: openface (architecture, random weights)", "openface-nn4.small2.v1", faces, run,
        note="whole frame: skimage resize to 96 + network; batch of all frames")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    from benchmarks._results import markdown_table, write_section
    load_before = os.getloadavg()[0]
    rows = measure(args.frames, args.repeats)
    load_after = os.getloadavg()[0]
    table = markdown_table(rows, ["metric", "scheme", "frames", "fps_cpu", "fps_wall", "cpu_ms_per_frame", "note"])
    body = (f"Command: `python -m benchmarks.metrics --frames {args.frames} --repeats {args.repeats}` "
            f"(one thread, best of {args.repeats} cold runs; 256x256 frames; fps_cpu = frames per "
            "CPU-second of this process, fps_wall = frames per wall-clock second; face backends on "
            "faces/fomm-demo/04.mp4, body backends on bodies/dwnet-taichi/1). "
            f"CPU load average during the run: {load_before:.1f} -> {load_after:.1f} on "
            f"{os.cpu_count()} cores (shared machine: the figures are lower bounds).\n\n{table}\n\n"
            "Not measured here: face-alignment, mediapipe, LPIPS, and the weights of openface and "
            "body-pose (rtpose) are missing on this offline CPU machine (rows above say which); the "
            "openface architecture is timed with the golden file's random weights instead; no GPU timings.")
    print(body)
    write_section("metrics", body)


if __name__ == "__main__":
    main()
