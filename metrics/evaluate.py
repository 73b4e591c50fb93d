"""Score generated frames against real ones: one clip (`score_clip`) or any method's output
(`evaluate`, what `pipeline run evaluate` runs; REFERENCE §2 and §8).

    score_clip(real, fake, pose="dlib68", identity="dlib-face", protocol="paper") -> DataFrame
        frame, l1, ssim, psnr, akd, mkr, aed, [lpips], akd_skip, mkr_skip, aed_skip (why a
        frame has no value), joints_real, joints_fake (joints found per frame),
        identity_real, identity_fake (bool), jitter, jitter_skip, flicker, flicker_skip
        (metrics/jitter.py: keypoint acceleration error, static-region flicker)

L1, SSIM, PSNR and LPIPS compare the frames at their own size (metrics/frame_metrics.py).
Keypoints are detected on frames resized to 256x256, so AKD is in pixels at 256x256 as in
the paper. NaN marks a frame where a backend found nothing; the counts of missing
detections are in the `joints_*` / `identity_*` columns and in `frame.attrs`.

    evaluate(EvaluateOptions(real, generated, out, pose, identity, protocol, kind, pairs))

scores another method's output (TPSMM, LivePortrait, ...) against the real frames: each side
is one video, one folder of frames (any image names, natural order), or a folder of clips
(videos or frame folders) matched by name (file stem) between the two sides (`find_clips`,
`match_clips`). Both sides are brought to 256x256, as pose-evaluation's `extract.py
--image_shape 256,256` does, and scored frame by frame with `score_clip` under the chosen
protocol ("paper" by default: pose-evaluation's arithmetic, metrics.protocol). It writes
OUT/per_frame.parquet (clip, frame, metrics, why a frame has no value) and OUT/summary.json:
one number per metric (l1, akd, mkr, aed, and jitter and flicker from metrics/jitter.py;
null where no backend applies), the protocol and backends, and the frames behind each number.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from core.frames import resize
from metrics import frame_metrics
from metrics import jitter as jitter_metrics
from metrics import keypoints as keypoint_metrics
from metrics import protocol as paper_protocol
from metrics.backends import (BackendUnavailable, IdentityBackend, PoseBackend, default_backends,
                              get_identity_backend, get_pose_backend)

log = logging.getLogger(__name__)

KEYPOINT_SIZE = 256


def resize_frames(frames: np.ndarray, size: int = KEYPOINT_SIZE) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) with the metrics' filter (core.frames.resize
    "bicubic": exact anti-aliased PIL bicubic); unchanged if already that size."""
    return resize(frames, (size, size), "bicubic")


def keypoints_at_256(pose: PoseBackend, frames: np.ndarray) -> np.ndarray:
    """Keypoints (T, J, 2) in pixels of the frames resized to 256x256 (the paper's AKD scale)."""
    return pose.detect(resize_frames(frames))


def _pose(pose) -> PoseBackend | None:
    return get_pose_backend(pose) if isinstance(pose, str) else pose


def _identity(identity) -> IdentityBackend | None:
    return get_identity_backend(identity) if isinstance(identity, str) else identity


def _lpips_column(real, fake, lpips) -> tuple[np.ndarray, str]:
    """LPIPS per frame and a status; NaN and 'unavailable: ...' when the package cannot load."""
    try:
        model = frame_metrics.get_lpips() if lpips is True else lpips
        return model(real, fake), "available"
    except BackendUnavailable as error:
        log.warning("LPIPS unavailable, column left NaN: %s", error)
        return np.full(len(real), np.nan), f"unavailable: {error}"


def score_clip(real: np.ndarray, fake: np.ndarray, pose: PoseBackend | str | None = None,
               identity: IdentityBackend | str | None = None, lpips=False, aed_squared: bool | None = None,
               real_keypoints: np.ndarray | None = None,
               real_embeddings: np.ndarray | None = None, protocol: str = "project",
               l1: np.ndarray | None = None) -> pd.DataFrame:
    """Per-frame metrics of `fake` against `real`, both (T, H, W, 3) uint8 of the same shape.

    pose / identity: a backend, its registry name, or None (columns akd, mkr / aed are NaN).
    lpips: False, True (the default LPIPS model) or an `LPIPS` instance; an LPIPS that cannot
    load leaves the column NaN with `attrs['lpips_status']` saying why, never raises.
    protocol: "paper" (pose-evaluation's arithmetic, metrics.protocol: squared-L2 AED, no
    MKR for faces) or "project" (L2 AED); aed_squared overrides the AED distance.
    real_keypoints / real_embeddings: the real clip's detections at 256x256, when scoring
    several models against the same real clip (computed here otherwise).
    l1: per-frame L1 the caller already has from the model's float output (the reconstruction
    protocol, fomm.reconstruction); taken from the uint8 frames when None.
    Columns `akd_skip`, `mkr_skip`, `aed_skip` give the reason a frame's value is missing.
    """
    real, fake = frame_metrics.check_pair(real, fake)
    protocol = paper_protocol.check_protocol(protocol)
    squared = protocol == "paper" if aed_squared is None else aed_squared
    pose, identity = _pose(pose), _identity(identity)
    count = len(real)
    table = pd.DataFrame({"frame": np.arange(count, dtype=np.int64),
                          "l1": frame_metrics.l1(real, fake) if l1 is None else np.asarray(l1, np.float64),
                          "ssim": frame_metrics.ssim(real, fake),
                          "psnr": frame_metrics.psnr(real, fake)})
    attrs = {"protocol": protocol}
    no_backend = ["no backend"] * count
    table["akd"], table["mkr"] = np.nan, np.nan
    table["akd_skip"], table["mkr_skip"] = no_backend, no_backend
    table["joints_real"], table["joints_fake"] = 0, 0
    if pose is not None:
        kp_real = keypoints_at_256(pose, real) if real_keypoints is None else real_keypoints
        kp_fake = keypoints_at_256(pose, fake)  # (T, J, 2)
        akd, mkr = keypoint_scores(kp_real, kp_fake, pose, protocol)
        table["akd"], table["akd_skip"] = akd.values, akd.reasons
        table["mkr"], table["mkr_skip"] = mkr.values, mkr.reasons
        table["joints_real"] = keypoint_metrics.found(kp_real).sum(axis=1)
        table["joints_fake"] = keypoint_metrics.found(kp_fake).sum(axis=1)
        attrs.update(pose_backend=pose.name, pose_scheme=pose.scheme)
    _jitter_columns(table, real, fake, (kp_real, kp_fake) if pose is not None else None)
    table["aed"], table["aed_skip"] = np.nan, no_backend
    table["identity_real"], table["identity_fake"] = False, False
    if identity is not None:
        emb_real = identity.embed(resize_frames(real)) if real_embeddings is None else real_embeddings
        emb_fake = identity.embed(resize_frames(fake))  # (T, D)
        aed = paper_protocol.aed(emb_real, emb_fake, squared=squared)
        table["aed"], table["aed_skip"] = aed.values, aed.reasons
        table["identity_real"] = np.isfinite(emb_real).all(axis=1)
        table["identity_fake"] = np.isfinite(emb_fake).all(axis=1)
        attrs.update(identity_backend=identity.name, identity_scheme=identity.scheme,
                     aed_distance="squared-l2" if squared else "l2")
    if lpips is not False:
        table["lpips"], attrs["lpips_status"] = _lpips_column(real, fake, lpips)
    table.attrs.update(attrs)
    table.attrs.update(missing_counts(table))
    return table


def _jitter_columns(table: pd.DataFrame, real: np.ndarray, fake: np.ndarray, keypoints) -> None:
    """jitter (the pose backend's landmarks at 256x256; "no backend" without one) and flicker
    (the frames at their own size), metrics/jitter.py."""
    table["jitter"], table["jitter_skip"] = np.nan, ["no backend"] * len(table)
    if keypoints is not None:
        scores = jitter_metrics.acceleration_error(*keypoints)
        table["jitter"], table["jitter_skip"] = scores.values, scores.reasons
    scores = jitter_metrics.static_flicker(real, fake)
    table["flicker"], table["flicker_skip"] = scores.values, scores.reasons


FACES_HAVE_NO_MKR = "faces: pose-evaluation reports no MKR"


def keypoint_scores(kp_real: np.ndarray, kp_fake: np.ndarray, pose: PoseBackend,
                    protocol: str) -> tuple[paper_protocol.FrameScores, paper_protocol.FrameScores]:
    """(AKD, MKR) per frame from (T, J, 2) keypoints with NaN for joints not found.

    68 landmarks are a face: AKD as cmp_kp.py (a frame whose generated face is missing is
    skipped); under the paper protocol MKR is left out, since pose-evaluation has none for
    faces. Other schemes go through cmp_with_missing.py's arithmetic (missing joints as -1).
    """
    mkr, akd = paper_protocol.body_mkr_akd(paper_protocol.openpose_values(kp_real),
                                           paper_protocol.openpose_values(kp_fake))
    if pose.num_joints == 68:
        akd = paper_protocol.face_akd(paper_protocol.face_values(kp_real), paper_protocol.face_values(kp_fake))
        if protocol == "paper":
            mkr = paper_protocol.FrameScores(np.full(len(kp_real), np.nan), [FACES_HAVE_NO_MKR] * len(kp_real))
    return akd, mkr


def embeddings_at_256(identity: IdentityBackend, frames: np.ndarray) -> np.ndarray:
    """Identity embeddings (T, D) of the frames resized to 256x256, as score_clip computes them."""
    return identity.embed(resize_frames(frames))


def missing_counts(table: pd.DataFrame) -> dict:
    """Frames where the pose backend found nothing and where the identity backend found no subject."""
    has_pose = "pose_backend" in table.attrs
    has_identity = "identity_backend" in table.attrs
    return {
        "frames": int(len(table)),
        "pose_missing_real": int((table["joints_real"] == 0).sum()) if has_pose else None,
        "pose_missing_fake": int((table["joints_fake"] == 0).sum()) if has_pose else None,
        "identity_missing_real": int((~table["identity_real"]).sum()) if has_identity else None,
        "identity_missing_fake": int((~table["identity_fake"]).sum()) if has_identity else None,
    }


# --------------------------------------------------------------------------- clips of another method
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
    if name == "none":
        return None
    if name is None:
        return default
    return get_pose_backend(name) if kind == "pose" else get_identity_backend(name)


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


# --------------------------------------------------------------------------- another method's output
@dataclass(frozen=True)
class EvaluateOptions:
    """What `evaluate` scores, resolved (stages/evaluate.py builds it from the command line)."""
    real: Path
    generated: Path
    out: Path
    pose: str | None = None        # a pose backend's name, 'none', or None for the kind's default
    identity: str | None = None    # likewise for the identity backend
    protocol: str = "paper"        # metrics.protocol.PROTOCOLS
    kind: str = "faces"            # faces | bodies | other: picks the default backends
    pairs: tuple[tuple[str, Path, Path], ...] = ()  # (name, real, generated): match_clips; () pairs them here


def evaluate(options: EvaluateOptions) -> dict:
    """Score every pair of `options.pairs` (when empty, the clips of both sides paired by name)
    into `options.out`, claimed by the output policy (core.outputs); returns what summary.json
    holds."""
    from core import outputs
    from core.media import atomic_path
    pairs = options.pairs or tuple(match_clips(find_clips(options.real, "real"),
                                               find_clips(options.generated, "generated")))
    with outputs.claim(options.out, "evaluate", {"--real": options.real, "--generated": options.generated},
                       earlier=("summary.json", "per_frame.parquet")) as out:
        default_pose, default_identity = (None, None)
        if options.pose is None or options.identity is None:
            default_pose, default_identity = default_backends(options.kind)
        pose = _backend("pose", options.pose, default_pose)
        identity = _backend("identity", options.identity, default_identity)
        parts = []
        for name, real_path, fake_path in pairs:
            real, fake = read_clip(real_path), read_clip(fake_path)
            if len(real) != len(fake):
                raise UserError(f"clip {name!r}: {len(real)} real and {len(fake)} generated frames; "
                                "expected the same number (pose-evaluation compares frame by frame)")
            table = score_clip(real, fake, pose=pose, identity=identity, protocol=options.protocol)
            table.insert(0, "clip", name)
            parts.append(pd.DataFrame(table))
            log.info("%s: %d frames, L1 %.4f", name, len(table), float(table["l1"].mean()))
        per_frame = pd.concat(parts, ignore_index=True)
        with atomic_path(out / "per_frame.parquet") as tmp:
            per_frame.to_parquet(tmp, index=False)
        summary = summarise(per_frame, {"pose": backend_record(pose), "identity": backend_record(identity)},
                            options.protocol)
        summary.update(real=str(options.real.resolve()), generated=str(options.generated.resolve()),
                       clips=[name for name, _, _ in pairs], size=SIZE)
        with atomic_path(out / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
    return summary
