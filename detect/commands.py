"""`pipeline run detect train|eval|score|detectability`: the detector's command line.

    pipeline run detect train --data F --out M [--families fomm,x2face] [--width 1] [--size 299] [--weights W]
    pipeline run detect eval --model M [M2 ...] --data F --out E
    pipeline run detect score --model M FILE... [--json]
    pipeline run detect detectability --data F --out D      (leave one family out, for the benchmark)

`train` writes `M/detector.pt` (the network, its input size, threshold and what it was trained
on) and `M/train.jsonl`; `--model` takes that folder or the file. `eval` writes `E/eval.json`,
`E/eval.md` and `E/per_clip.parquet`; given several models it adds the cross-family matrix.
`score` prints one line per file (the probability that it is generated, and the label at the
detector's threshold); `--json` prints a list of {file, probability, label} instead. Whole
frames are resized to the detector's input: crop the subject first where it is small.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from core.errors import UserError

log = logging.getLogger(__name__)

MODEL_FILE = "detector.pt"


def _training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="a fakes dataset (pipeline run fakes)")
    parser.add_argument("--families", default=None, help="train on these families' fakes (default: all)")
    parser.add_argument("--transforms", default="none",
                        help="the re-encodings of the dataset to train on, comma-separated (default: none)")
    parser.add_argument("--width", type=float, default=1.0, help="Xception channel multiplier (1: the reference)")
    parser.add_argument("--size", type=int, default=299, help="input side in px (FaceForensics++: 299)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--frames-per-clip", type=int, default=16, help="frames of each clip read for training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None,
                        help="published Xception weights to start from (pretrainedmodels ImageNet or a "
                             "FaceForensics++ state dict; default: random initialisation)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is fastest on a busy machine)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="detect_command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train a detector on a fakes dataset")
    _training_arguments(train)
    train.add_argument("--out", required=True, type=Path, help="output folder (detector.pt, train.jsonl)")
    evaluate = commands.add_parser("eval", help="AUC, AP, EER, accuracy on a fakes dataset's test split")
    evaluate.add_argument("--model", required=True, nargs="+", type=Path, help="detector folder(s) or file(s)")
    evaluate.add_argument("--data", required=True, type=Path)
    evaluate.add_argument("--out", required=True, type=Path)
    evaluate.add_argument("--frames-per-clip", type=int, default=16)
    evaluate.add_argument("--threshold", type=float, default=None, help="default: the detector's")
    evaluate.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    evaluate.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    evaluate.add_argument("--device", default="cpu")
    score = commands.add_parser("score", help="the probability that each video or image is generated")
    score.add_argument("--model", required=True, type=Path)
    score.add_argument("files", nargs="+", metavar="FILE")
    score.add_argument("--frames", type=int, default=32, help="frames spread over each video (default 32)")
    score.add_argument("--json", action="store_true", help="a JSON list instead of lines")
    score.add_argument("--device", default="cpu")
    lofo = commands.add_parser("detectability", help="leave-one-family-out video AUC per family (benchmark)")
    _training_arguments(lofo)
    lofo.add_argument("--out", required=True, type=Path, help="output folder (detectability.json, models/)")
    lofo.add_argument("--frames-per-clip-scored", type=int, default=16)
    lofo.add_argument("--bootstrap", type=int, default=1000)


def model_path(path: Path) -> Path:
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def train_options(args: argparse.Namespace):
    from detect.train import TrainOptions
    families = tuple(f for f in (args.families or "").split(",") if f) or None
    transforms = tuple(t for t in args.transforms.split(",") if t) or ("none",)
    return TrainOptions(families=families, transforms=transforms, width=args.width, size=args.size,
                        steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        frames_per_clip=args.frames_per_clip, seed=args.seed, weights=args.weights,
                        device=args.device, threads=args.threads)


def run_train(args: argparse.Namespace) -> int:
    from detect.train import train_detector
    from core import outputs
    options = train_options(args)
    options.check()
    with outputs.claim(args.out, "detect", {"--data": args.data, "--weights": args.weights},
                       earlier=(MODEL_FILE, "train.jsonl")) as out:
        detector = train_detector(args.data, options, out / "train.jsonl")
        path = detector.save(out / MODEL_FILE)
    trained = detector.trained_on
    print(f"detector: {path} (trained on {trained['clips']['real']} real and {trained['clips']['generated']} "
          f"generated clips of {', '.join(trained['families'])})")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import pandas as pd
    from core.media import atomic_path
    from detect.detector import load_detector
    from detect.evaluate import cross_family, evaluate, markdown
    if args.bootstrap < 1 or args.frames_per_clip < 1:
        raise UserError("--bootstrap and --frames-per-clip: expected 1 or more")
    detectors = [load_detector(model_path(m), args.device) for m in args.model]
    results = [evaluate(d, args.data, args.frames_per_clip, args.bootstrap, args.seed, args.threshold)
               for d in detectors]
    matrix = cross_family(results) if len(results) > 1 else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(markdown(result, matrix if index == len(results) - 1 else None)
                     for index, result in enumerate(results))
    with atomic_path(out / "eval.json") as tmp:
        tmp.write_text(json.dumps({"models": [str(m) for m in args.model], "results": results,
                                   "cross_family": matrix}, indent=1) + "\n")
    with atomic_path(out / "eval.md") as tmp:
        tmp.write_text(text)
    table = pd.DataFrame([{**row, "model": str(model)} for model, result in zip(args.model, results)
                          for row in result["per_clip"]])
    with atomic_path(out / "per_clip.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    print(text)
    return 0


def run_score(args: argparse.Namespace) -> int:
    from detect.detector import load_detector
    if args.frames < 1:
        raise UserError(f"--frames {args.frames}: expected 1 or more")
    for name in args.files:  # every file checked before any is read: bad input is exit 2
        if not Path(name).exists():
            raise UserError(f"{name!r} does not exist (expected a video, image or frame folder)")
    detector = load_detector(model_path(args.model), args.device)
    results = []
    for name in args.files:
        probability, _ = detector.video_probability(Path(name), args.frames)
        results.append({"file": name, "probability": round(probability, 6),
                        "label": "generated" if probability >= detector.threshold else "real"})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(f"{result['file']}: {result['probability']:.4f} {result['label']} "
                  f"(threshold {detector.threshold:.2f})")
    return 0


def run_detectability(args: argparse.Namespace) -> int:
    from detect.detectability import FILE, leave_one_family_out
    from core import outputs
    options = train_options(args)
    options.check()
    if args.bootstrap < 1 or args.frames_per_clip_scored < 1:
        raise UserError("--bootstrap and --frames-per-clip-scored: expected 1 or more")
    with outputs.claim(args.out, "detectability", {"--data": args.data, "--weights": args.weights},
                       earlier=(FILE,)) as out:
        record = leave_one_family_out(args.data, out, options, args.frames_per_clip_scored, args.bootstrap,
                                      args.seed)
    for family, entry in record["families"].items():
        marked = entry["marked_video_auc"]
        print(f"{family}: video AUC {entry['video_auc']:.3f} [{entry['video_auc_ci'][0]:.3f}, "
              f"{entry['video_auc_ci'][1]:.3f}] (detector trained on {', '.join(entry['trained_on'])}; "
              f"marked copies: {'n/a' if marked is None else f'{marked:.3f}'})")
    print(f"wrote {Path(args.out) / FILE}")
    return 0


COMMANDS = {"train": run_train, "eval": run_eval, "score": run_score, "detectability": run_detectability}


def main(args: argparse.Namespace) -> int:
    return COMMANDS[args.detect_command](args)
