"""`pipeline run evaluate`: score any method's output against the real frames (REFERENCE §8).

    pipeline run evaluate --real PATH --generated PATH --out DIR [--pose B] [--identity B]
                          [--protocol paper|project] [--kind faces|bodies|other]

PATH is one video, one folder of frames (any image names, natural order), or a folder of
clips (videos or frame folders) matched by name (file stem) between the two sides; this is
how other methods' outputs (TPSMM, LivePortrait, ...) get into the same table. Both sides are
brought to 256x256, as pose-evaluation's `extract.py --image_shape 256,256` does, and
scored frame by frame with `metrics.evaluate.score_clip` under the chosen protocol
("paper" by default: pose-evaluation's arithmetic, metrics.protocol).

Writes DIR/per_frame.parquet (clip, frame, metrics, why a frame has no value) and
DIR/summary.json: one number per metric (l1, akd, mkr, aed, and jitter and flicker from
metrics/jitter.py; null where no backend applies), the protocol and backends, and the frames
behind each number.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from metrics import protocol as paper_protocol

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".gif", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SIZE = 256
SUMMARY_METRICS = ("l1", "akd", "mkr", "aed", "jitter", "flicker")  # jitter, flicker: metrics/jitter.py


def _natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=_natural)


def find_clips(path: Path, role: str) -> dict[str, Path]:
    """name -> clip (a video or a frame folder): one clip for a video or a folder of
    frames, else every video and frame folder inside `path`, by stem."""
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise UserError(f"--{role} {str(path)!r}: expected a video ({', '.join(VIDEO_SUFFIXES)}) or a folder")
        return {path.stem: path}
    if not path.is_dir():
        raise UserError(f"--{role} {str(path)!r} does not exist; expected a video or a folder")
    if _images(path):
        return {path.name: path}
    clips = {p.stem: p for p in sorted(path.iterdir())
             if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or (p.is_dir() and _images(p))}
    if not clips:
        raise UserError(f"--{role} {str(path)!r} holds no video, frame or clip folder")
    return clips


def match_clips(real: dict[str, Path], generated: dict[str, Path]) -> list[tuple[str, Path, Path]]:
    """Pairs by name; a single clip on each side pairs whatever the names."""
    if len(real) == 1 and len(generated) == 1:
        (name, real_path), (_, fake_path) = next(iter(real.items())), next(iter(generated.items()))
        return [(name, real_path, fake_path)]
    shared = sorted(set(real) & set(generated))
    if not shared:
        raise UserError(f"no clip name is on both sides (real: {sorted(real)[:3]}..., generated: "
                        f"{sorted(generated)[:3]}...); expected clips matched by file or folder name")
    return [(name, real[name], generated[name]) for name in shared]


def read_clip(path: Path) -> np.ndarray:
    """(T, 256, 256, 3) uint8 frames of a video or a frame folder."""
    from core.media import load_image, read_frames
    from metrics.evaluate import resize_frames
    if path.is_dir():
        frames = [load_image(image) for image in _images(path)]
        shapes = {frame.shape for frame in frames}
        if len(shapes) > 1:
            raise UserError(f"frames of {str(path)!r} have sizes {sorted(shapes)[:2]}; expected one size")
        frames = np.stack(frames)
    else:
        frames = read_frames(path)
    return resize_frames(frames, SIZE)


def _backend(kind: str, name: str | None, default):
    from metrics import backends
    if name == "none":
        return None
    if name is None:
        return default
    return backends.get_pose_backend(name) if kind == "pose" else backends.get_identity_backend(name)


def backend_record(backend) -> dict | None:
    if backend is None:
        return None
    return {"name": backend.name, "scheme": backend.scheme, "paper_equivalent": bool(backend.paper_equivalent)}


def summarise(per_frame: pd.DataFrame, backends_used: dict, protocol: str) -> dict:
    """One number per metric over every frame of every clip, and the frames behind it."""
    summary = {"protocol": protocol, "backends": backends_used}
    counts = {}
    for metric in SUMMARY_METRICS:
        skip = per_frame.get(f"{metric}_skip")
        values = per_frame[metric].to_numpy(dtype=float)
        reasons = list(skip) if skip is not None else ["" if np.isfinite(v) else "undefined" for v in values]
        pooled = paper_protocol.pooled([paper_protocol.FrameScores(values, reasons)])
        summary[metric] = pooled["value"]  # None where no backend applies or no frame is scored
        counts[metric] = {key: pooled[key] for key in ("frames", "scored", "skipped")}
    summary["frames"] = counts
    comparable = protocol == "paper" and all(b is not None and b["paper_equivalent"]
                                             for b in backends_used.values())
    summary["comparable_with_paper"] = comparable
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--real", required=True, type=Path, help="real video, frame folder or folder of clips")
    parser.add_argument("--generated", required=True, type=Path, help="generated, laid out like --real")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--pose", default=None, help="pose backend (default: the kind's; 'none')")
    parser.add_argument("--identity", default=None, help="identity backend (default: the kind's; 'none')")
    parser.add_argument("--protocol", default="paper", choices=paper_protocol.PROTOCOLS,
                        help="paper: pose-evaluation's arithmetic (default); project: L2 AED")
    parser.add_argument("--kind", default="faces", choices=("faces", "bodies", "other"),
                        help="what the clips show; picks the default backends")


def run(args: argparse.Namespace) -> dict:
    from metrics import backends
    from metrics.evaluate import score_clip
    pairs = match_clips(find_clips(args.real, "real"), find_clips(args.generated, "generated"))
    default_pose, default_identity = (None, None)
    if args.pose is None or args.identity is None:
        default_pose, default_identity = backends.default_backends(args.kind)
    pose = _backend("pose", args.pose, default_pose)
    identity = _backend("identity", args.identity, default_identity)
    parts = []
    for name, real_path, fake_path in pairs:
        real, fake = read_clip(real_path), read_clip(fake_path)
        if len(real) != len(fake):
            raise UserError(f"clip {name!r}: {len(real)} real and {len(fake)} generated frames; "
                            "expected the same number (pose-evaluation compares frame by frame)")
        table = score_clip(real, fake, pose=pose, identity=identity, protocol=args.protocol)
        table.insert(0, "clip", name)
        parts.append(pd.DataFrame(table))
        log.info("%s: %d frames, L1 %.4f", name, len(table), float(table["l1"].mean()))
    per_frame = pd.concat(parts, ignore_index=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from core.media import atomic_path
    with atomic_path(out / "per_frame.parquet") as tmp:
        per_frame.to_parquet(tmp, index=False)
    summary = summarise(per_frame, {"pose": backend_record(pose), "identity": backend_record(identity)},
                        args.protocol)
    summary.update(real=str(args.real.resolve()), generated=str(args.generated.resolve()),
                   clips=[name for name, _, _ in pairs], size=SIZE)
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


def main(args: argparse.Namespace) -> int:
    from core import outputs
    with outputs.claim(args.out, "evaluate", {"--real": args.real, "--generated": args.generated},
                       earlier=("summary.json", "per_frame.parquet")):
        summary = run(args)
    numbers = ", ".join(f"{m} {summary[m]:.4f}" if summary[m] is not None else f"{m} n/a" for m in SUMMARY_METRICS)
    backends_text = ", ".join(f"{role} {b['name'] if b else 'none'}" for role, b in summary["backends"].items())
    print(f"{len(summary['clips'])} clips, protocol {summary['protocol']} ({backends_text}): {numbers}")
    if not summary["comparable_with_paper"]:
        print("not comparable with the paper's numbers: a substitute backend or the project protocol was used")
    print(f"-> {Path(args.out) / 'summary.json'}")
    return 0
