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

Each command's flags become one typed options object (`options(args)` picks it by the
command); `run(options)` calls the one library function of that command (detect.train.
train_into, detect.evaluate.evaluate_into, detect.detector.score_files, detect.detectability.
detectability_into).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import UserError

if TYPE_CHECKING:
    from detect.train import TrainOptions


@dataclass(frozen=True)
class DetectTrainOptions:
    """`detect train`: a detector trained on the fakes dataset `data`, written into `out`."""
    data: Path
    out: Path
    training: TrainOptions               # checked (TrainOptions.check)


@dataclass(frozen=True)
class DetectEvalOptions:
    """`detect eval`: detectors (folders or files, as given) scored on `data`'s test split."""
    models: tuple[Path, ...]
    data: Path
    out: Path
    frames_per_clip: int = 16
    threshold: float | None = None       # None: each detector's own
    bootstrap: int = 1000                # resamples
    seed: int = 0                        # bootstrap seed
    device: str = "cpu"


@dataclass(frozen=True)
class DetectScoreOptions:
    """`detect score`: each file's probability of being generated."""
    model: Path
    files: tuple[str, ...]               # existing paths, named as given in the output
    frames: int = 32                     # spread over each video
    json: bool = False                   # a JSON list instead of lines
    device: str = "cpu"


@dataclass(frozen=True)
class DetectabilityOptions:
    """`detect detectability`: leave one family out, into `out`."""
    data: Path
    out: Path
    training: TrainOptions               # checked; its seed is the bootstrap's too
    frames_per_clip_scored: int = 16
    bootstrap: int = 1000


DetectOptions = DetectTrainOptions | DetectEvalOptions | DetectScoreOptions | DetectabilityOptions


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


def training_options(args: argparse.Namespace) -> TrainOptions:
    """The training flags as checked TrainOptions (UserError on the first bad one)."""
    from detect.train import TrainOptions
    families = tuple(f for f in (args.families or "").split(",") if f) or None
    transforms = tuple(t for t in args.transforms.split(",") if t) or ("none",)
    training = TrainOptions(families=families, transforms=transforms, width=args.width, size=args.size,
                            steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            frames_per_clip=args.frames_per_clip, seed=args.seed, weights=args.weights,
                            device=args.device, threads=args.threads)
    training.check()
    return training


def options(args: argparse.Namespace) -> DetectOptions:
    """The chosen command's options, every value checked before any work."""
    command = args.detect_command
    if command == "train":
        return DetectTrainOptions(Path(args.data), Path(args.out), training_options(args))
    if command == "eval":
        if args.bootstrap < 1 or args.frames_per_clip < 1:
            raise UserError("--bootstrap and --frames-per-clip: expected 1 or more")
        return DetectEvalOptions(tuple(Path(m) for m in args.model), Path(args.data), Path(args.out),
                                 args.frames_per_clip, args.threshold, args.bootstrap, args.seed, args.device)
    if command == "score":
        if args.frames < 1:
            raise UserError(f"--frames {args.frames}: expected 1 or more")
        for name in args.files:  # every file checked before any is read: bad input is exit 2
            if not Path(name).exists():
                raise UserError(f"{name!r} does not exist (expected a video, image or frame folder)")
        return DetectScoreOptions(Path(args.model), tuple(args.files), args.frames, bool(args.json), args.device)
    if command == "detectability":
        training = training_options(args)
        if args.bootstrap < 1 or args.frames_per_clip_scored < 1:
            raise UserError("--bootstrap and --frames-per-clip-scored: expected 1 or more")
        return DetectabilityOptions(Path(args.data), Path(args.out), training, args.frames_per_clip_scored,
                                    args.bootstrap)
    raise UserError(f"unknown detect command {command!r}; expected train, eval, score or detectability")


def run(options: DetectOptions):
    """The command's one library call: (detector, its file) for train, eval.json's content
    (and `markdown`) for eval, {threshold, results} for score, detectability.json's content."""
    if isinstance(options, DetectTrainOptions):
        from detect.train import train_into
        return train_into(options.data, options.out, options.training)
    if isinstance(options, DetectEvalOptions):
        from detect.evaluate import evaluate_into
        return evaluate_into(options.models, options.data, options.out, options.frames_per_clip,
                             options.bootstrap, options.seed, options.threshold, options.device)
    if isinstance(options, DetectScoreOptions):
        from detect.detector import score_files
        return score_files(options.model, options.files, options.frames, options.device)
    from detect.detectability import detectability_into
    return detectability_into(options.data, options.out, options.training, options.frames_per_clip_scored,
                              options.bootstrap, options.training.seed)


def main(args: argparse.Namespace) -> int:
    chosen = options(args)
    result = run(chosen)
    if isinstance(chosen, DetectTrainOptions):
        detector, path = result
        trained = detector.trained_on
        print(f"detector: {path} (trained on {trained['clips']['real']} real and "
              f"{trained['clips']['generated']} generated clips of {', '.join(trained['families'])})")
    elif isinstance(chosen, DetectEvalOptions):
        print(result["markdown"])
    elif isinstance(chosen, DetectScoreOptions):
        if chosen.json:
            print(json.dumps(result["results"], indent=2))
        else:
            for entry in result["results"]:
                print(f"{entry['file']}: {entry['probability']:.4f} {entry['label']} "
                      f"(threshold {result['threshold']:.2f})")
    else:
        from detect.detectability import FILE
        for family, entry in result["families"].items():
            marked = entry["marked_video_auc"]
            print(f"{family}: video AUC {entry['video_auc']:.3f} [{entry['video_auc_ci'][0]:.3f}, "
                  f"{entry['video_auc_ci'][1]:.3f}] (detector trained on {', '.join(entry['trained_on'])}; "
                  f"marked copies: {'n/a' if marked is None else f'{marked:.3f}'})")
        print(f"wrote {chosen.out / FILE}")
    return 0
