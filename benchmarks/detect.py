"""Detecting the project's generators on the sample dataset: each family's video AUC for a
detector trained on the other families' fakes (leave one family out), the cross-family matrix,
and each detector's false-positive rate on every real video of ../shared/data/faces.

    python -m benchmarks.detect [--generator-steps 60] [--steps 400] [--work DIR]
    python -m benchmarks.detect --models fomm=K1,monkey-net=K2,x2face=K3   # your checkpoints

The commands it runs, in order (each the stage the README documents):
1. `pipeline run prepare --dataset sample` (12 clips of 8 photographs, 32 frames, 64 px);
2. `pipeline run train` of every registered family's tiny config for `--generator-steps`
   steps (unless `--models` gives checkpoints);
3. `pipeline run fakes --split all` (identity-disjoint splits of the fakes dataset: half of the
   8 identities are test; per clip and family a reconstruction and a cross-identity animation,
   unmarked and marked);
4. `pipeline run detect detectability` (a tiny Xception per held-out family, trained on the
   other families' unmarked train-split fakes and the train split's real clips);
5. `pipeline run detect train --families F` per family and `pipeline run detect eval` of them
   together: the cross-family matrix;
6. `pipeline run detect score` of every real video of ../shared/data/faces with each
   leave-one-out detector: the share scored "generated" at its threshold (0.5) is its
   false-positive rate there (whole frames resized to the detector's 64 px, as it was trained).
Rewrites the `detect` section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def stage(*argv: str) -> None:
    from stages.run_all import run_stage
    started = time.perf_counter()
    run_stage(argv[0], list(argv[1:]))
    print(f"{argv[0]} {argv[1] if len(argv) > 1 and not argv[1].startswith('-') else ''}: "
          f"{time.perf_counter() - started:.0f} s", flush=True)


def train_generators(work: Path, steps: int) -> str:
    """Every registered family's tiny config trained `steps` steps on the sample data, as `run all` does."""
    from fomm.families import NAMES
    from stages.run_all import train_config
    items = []
    for family in sorted(NAMES):
        folder = work / "train" / family
        checkpoint = folder / "checkpoints" / f"step-{steps:07d}.pt"
        if not checkpoint.is_file():
            stage("train", "--config", train_config(family), "--model", family,
                  "--data", str(work / "data"), "--out", str(folder), "--overwrite",
                  f"train_params.max_steps={steps}", f"train_params.num_epochs={steps}",
                  "train_params.batch_size=8", f"train_params.checkpoint_every={steps}",
                  f"train_params.checkpoint_freq={steps}", f"train_params.image_every={steps}",
                  f"train_params.log_every={max(1, steps // 10)}")
        items.append(f"{family}={checkpoint}")
    return ",".join(items)


def detector_flags(args) -> list[str]:
    return ["--width", str(args.width), "--size", str(args.size), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--frames-per-clip", str(args.frames_per_clip),
            "--threads", str(args.threads)]


def false_positives(models: dict[str, Path], frames: int) -> dict[str, dict]:
    """Per detector: every real video of ../shared/data/faces scored, and how many are called generated."""
    from detect.detector import load_detector
    videos = sorted((DATA / "faces").rglob("*.mp4"))
    out = {}
    for name, path in models.items():
        detector = load_detector(path)
        probabilities = {str(v.relative_to(DATA)): detector.video_probability(v, frames)[0] for v in videos}
        called = [v for v, p in probabilities.items() if p >= detector.threshold]
        out[name] = {"videos": len(videos), "called_generated": len(called), "threshold": detector.threshold,
                     "probabilities": probabilities, "highest": max(probabilities.values())}
        print(f"false positives of {name}: {len(called)}/{len(videos)}", flush=True)
    return out


def interval(value, ci) -> str:
    return "n/a" if value is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--models", default=None, help="NAME=CHECKPOINT,... instead of training generators")
    parser.add_argument("--generator-steps", type=int, default=60)
    parser.add_argument("--frames", type=int, default=32, help="frames per clip in the fakes dataset")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames-per-clip", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("MOTION_TRANSFER_CONFIG", tempfile.mkdtemp(prefix="motion-transfer-bench-"))
    work = args.work or Path(tempfile.mkdtemp(prefix="detect-bench-"))
    began = time.perf_counter()
    stage("prepare", "--dataset", "sample", "--out", str(work / "data"), "--no-progress")
    models = args.models or train_generators(work, args.generator_steps)
    stage("fakes", "--data", str(work / "data"), "--models", models, "--out", str(work / "fakes"), "--split", "all",
          "--frames", str(args.frames), "--test-fraction", "0.5")
    stage("detect", "detectability", "--data", str(work / "fakes"), "--out", str(work / "lofo"),
          *detector_flags(args), "--bootstrap", str(args.bootstrap))
    record = json.loads((work / "lofo" / "detectability.json").read_text())
    families = list(record["families"])
    for family in families:
        stage("detect", "train", "--data", str(work / "fakes"), "--out", str(work / "single" / family),
              "--families", family, *detector_flags(args))
    stage("detect", "eval", "--model", *[str(work / "single" / f) for f in families], "--data", str(work / "fakes"),
          "--out", str(work / "cross"), "--frames-per-clip", str(args.frames_per_clip), "--bootstrap",
          str(args.bootstrap))
    cross = json.loads((work / "cross" / "eval.json").read_text())["cross_family"]
    fp = false_positives({f"without {f}": Path(record["families"][f]["model"]) for f in families}, 32)
    (work / "false_positives.json").write_text(json.dumps(fp, indent=2))
    total = time.perf_counter() - began
    manifest_counts = json.loads((work / "fakes" / "summary.json").read_text())["by_split"]
    seconds = {f: json.loads((work / "lofo" / "detectability.json").read_text())["families"][f] for f in families}
    lines = ["| held-out family | detector trained on | test videos (generated / real) | video AUC (unmarked) | "
             "video AUC (marked copies) | frame AUC | video accuracy at 0.5 | real faces videos called generated |",
             "|" + "---|" * 8]
    for family in families:
        entry = seconds[family]
        false = fp[f"without {family}"]
        lines.append(f"| {family} | {', '.join(entry['trained_on'])} | {entry['generated_videos']} / "
                     f"{entry['real_videos']} | {interval(entry['video_auc'], entry['video_auc_ci'])} | "
                     f"{interval(entry['marked_video_auc'], entry['marked_video_auc_ci'])} | "
                     f"{interval(entry['frame_auc'], entry['frame_auc_ci'])} | {entry['video_accuracy']:.3f} | "
                     f"{false['called_generated']}/{false['videos']} (highest p {false['highest']:.2f}) |")
    matrix = ["| trained on \\ tested on | " + " | ".join(cross["columns"]) + " |",
              "|" + "---|" * (len(cross["columns"]) + 1)]
    for row in cross["rows"]:
        matrix.append(f"| {', '.join(row['trained_on'])} | "
                      + " | ".join(interval(row["auc"][c], row["auc_ci"][c]) for c in cross["columns"]) + " |")
    detector = record["detector"]
    generators = (f"checkpoints given with --models ({models})" if args.models else
                  f"every registered family's tiny config trained {args.generator_steps} steps on the sample "
                  "data (batch 8), as `pipeline run all` trains")
    body = (f"`python -m benchmarks.detect --generator-steps {args.generator_steps} --frames {args.frames} --width "
            f"{args.width} --size {args.size} --steps {args.steps}`; {total / 60:.0f} min in all, load average "
            f"{os.getloadavg()[0]:.1f} (2 cores shared with other jobs).\n\n"
            f"Generators: {generators}. Fakes: `pipeline run fakes --split all --frames {args.frames}` on the "
            f"sample dataset: {manifest_counts['train']['real']} real / {manifest_counts['train']['generated']} "
            f"generated clips in train, {manifest_counts['test']['real']} / {manifest_counts['test']['generated']} "
            "in test (unmarked and marked variants counted), identities disjoint. Detector: Xception width "
            f"{detector['width']} at {detector['size']} px, {detector['steps']} steps of batch {detector['batch_size']}, "
            f"{detector['frames_per_clip']} frames per training clip, random initialisation, unmarked frames only, "
            "threshold 0.5 on the video probability (the mean of 16 frames). Intervals: 95 % bootstrap over "
            f"videos, {args.bootstrap} resamples.\n\n"
            "**Leave one family out** (the benchmark's detectability column): a detector trained on every other "
            "family scores the held-out family's test fakes against the real test clips; its false positives on "
            "the 10 real talking-face videos of ../shared/data/faces (32 frames each, whole frames at 64 px: "
            "real faces, not the sample's photographs, so this also measures how far a detector trained on the "
            "sample carries):\n\n" + "\n".join(lines) + "\n\n"
            "**Cross-family** (video AUC, unmarked; a detector per family, trained on that family's fakes alone):\n\n"
            + "\n".join(matrix) + "\n")
    from benchmarks._results import write_section
    print(body)
    print(f"wrote {write_section('detect', body)}; work folder {work}")


if __name__ == "__main__":
    main()
