"""One (model, clip) of `pipeline run benchmark`: scored by a `ClipScorer`, kept as a file.

A `ClipScorer` is Ray Data's callable class: built once per (model, worker) with the model
loaded, then called once per test clip (core.ray_runner.map_items runs it in this process or
as Ray actors). A call runs the reconstruction protocol (fomm/reconstruction.py: the first
frame is the source, every frame drives it) and scores every frame with
`metrics.evaluate.score_clip`; it returns the rows and the real clip's detections, which the
driver hands to the next model scored at the same frame size.

`ClipResults` keeps each (model, clip) result as its own Parquet file, written whole by the
driver the moment it arrives: `<out>/clips/<model>-<digest>/<clip>.parquet`, where the
digest covers everything that changes a model's numbers (the checkpoint's bytes, its
config, the data folder, the split, frames per clip, batch size, device, precision,
protocol, backends, LPIPS). A rerun with the same settings finds the finished files and
scores only the missing clips; other settings get another folder. Files appear by rename
only, so a killed run leaves none half-written under its final name.

The test-clip list's identity is `clip_list_sha256`: the sha256 of the sorted clip names
and their frame counts, so two benchmarks with the same hash scored the same clips.
"""
from __future__ import annotations

import hashlib
import json
import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError

log = logging.getLogger(__name__)

RESULT_FORMAT = 1  # bump when a per-clip file's content changes meaning: old folders are not reused
SAMPLE_COUNT = 4   # frames of the first clip kept as the report's sample grid


# --------------------------------------------------------------------------- model specs
@dataclass(frozen=True)
class ModelSpec:
    name: str          # a family's name (fomm/families.py)
    checkpoint: Path
    config: str | None  # a config name or yaml path for checkpoints that embed none


def parse_models(text: str) -> list[ModelSpec]:
    """`fomm=CKPT,monkey-net=CKPT@CONFIG,...` -> specs (family names, files checked)."""
    from fomm.families import NAMES
    specs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, rest = item.partition("=")
        if not sep or not rest:
            raise UserError(f"--models item {item!r}: expected NAME=CHECKPOINT[@CONFIG]")
        if name not in NAMES:
            raise UserError(f"--models item {item!r}: unknown model {name!r}; expected one of {sorted(NAMES)}")
        checkpoint, _, config = rest.partition("@")
        if not Path(checkpoint).is_file():
            raise UserError(f"--models item {item!r}: checkpoint {checkpoint!r} does not exist")
        specs.append(ModelSpec(name, Path(checkpoint), config or None))
    if not specs:
        raise UserError(f"--models {text!r}: expected at least one NAME=CHECKPOINT")
    if len({s.name for s in specs}) != len(specs):
        raise UserError(f"--models {text!r} names a model twice")
    return specs


def model_config(spec: ModelSpec):
    """The config a checkpoint was trained with: `@CONFIG` if given, else the embedded one,
    with `model_params.name` set to the spec's family."""
    from core.config import replace
    from fomm.checkpoint import checkpoint_config, load_checkpoint_file
    from fomm.config import load_config
    config = load_config(spec.config) if spec.config else checkpoint_config(load_checkpoint_file(spec.checkpoint))
    if config is None:
        raise UserError(f"checkpoint {str(spec.checkpoint)!r} embeds no config (a released checkpoint?); "
                        f"pass {spec.name}={spec.checkpoint}@CONFIG, e.g. @vox-256")
    if config.model_params.name != spec.name:
        config = replace(config, model_params=replace(config.model_params, name=spec.name))
    return config


def load_model(spec: ModelSpec, device: str = "cpu"):
    """(model in eval mode on `device`, its Config) from a released or project checkpoint."""
    from fomm.checkpoint import load_model as load_checkpoint_model
    config = model_config(spec)
    return load_checkpoint_model(config, spec.checkpoint, device=device), config


def frame_size(config) -> tuple[int, int]:
    """(H, W) the model runs at."""
    return tuple(config.dataset_params.frame_shape[:2])


# --------------------------------------------------------------------------- test clips
def open_test_clips(data: str | Path, split: str, max_clips: int | None):
    """(store, clip names): the split's clips in name order, from any layout that
    `fomm.data.open_clips` reads (shards, png folders, the original layouts)."""
    from fomm.data import open_clips
    store = open_clips(data, split)
    return store, list(store.clips[:max_clips] if max_clips else store.clips)


def clip_batches(store, clip: str, size: tuple[int, int], batch_size: int, max_frames: int | None = None):
    """(n, 3, H, W) float batches of `clip`'s first `max_frames` frames (all when None) at
    `size`, as `pipeline run reconstruct` reads them (`fomm.data.ReconstructionClips`)."""
    from fomm.data import ReconstructionClips
    left = max_frames
    for batch in ReconstructionClips(store, size, min(batch_size, max_frames or batch_size)).frames(clip):
        if left is not None:
            batch, left = batch[:left], left - min(left, len(batch))
        if len(batch):
            yield batch
        if left == 0:
            return


def truth_grid(data: str | Path, split: str, clip: str) -> np.ndarray | None:
    """The sample dataset's true backward grid (T, 64, 64, 2) of `clip`, or None."""
    path = Path(data) / "truth" / split / f"{clip}.npz"
    if not path.is_file():
        return None
    with np.load(path) as archive:
        return archive["backward_grid"].astype(np.float32)


def clip_list_sha256(clip_frames: dict[str, int]) -> str:
    """sha256 of the sorted clip names with their frame counts (one `name<TAB>frames` line
    each, UTF-8): equal for two benchmarks exactly when they scored the same clips."""
    lines = "".join(f"{name}\t{int(frames)}\n" for name, frames in sorted(clip_frames.items()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- motion error
def identity_grid(size: int) -> np.ndarray:
    """(size, size, 2) normalised (x, y) of pixel centres (align_corners=False)."""
    from fomm.blocks import identity_grid as grid
    return grid((size, size), align_corners=False).numpy()


def motion_epe(deformation: np.ndarray, truth: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """Per-frame mean end-point error in pixels between a predicted backward grid and the truth.

    deformation (T, h, w, 2) and truth (T, g, g, 2) hold normalised source (x, y) in [-1, 1];
    the prediction is resized to g x g (bilinear, align_corners=False, as pixel centres), and
    a normalised unit is W/2 (x) or H/2 (y) pixels of the scored frames `frame_shape` (H, W).
    """
    import torch
    import torch.nn.functional as F
    count = min(len(deformation), len(truth))
    grid = torch.from_numpy(np.ascontiguousarray(deformation[:count])).permute(0, 3, 1, 2)  # (T, 2, h, w)
    grid = F.interpolate(grid, size=truth.shape[1:3], mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).numpy()  # (T, g, g, 2)
    scale = np.array([frame_shape[1] / 2, frame_shape[0] / 2], np.float32)
    error = np.linalg.norm((grid - truth[:count]) * scale, axis=-1)  # (T, g, g)
    out = np.full(len(deformation), np.nan)
    out[:count] = error.mean(axis=(1, 2))
    return out


# --------------------------------------------------------------------------- backends
def resolve_backends(dataset: str, pose: str | None, identity: str | None):
    """(pose, identity) backends: the named ones, 'none' for none, the dataset's default when None."""
    from metrics import backends
    default_pose, default_identity = (None, None)
    if pose is None or identity is None:
        default_pose, default_identity = backends.default_backends(dataset)
    pose_backend = (None if pose == "none" else backends.get_pose_backend(pose) if pose else default_pose)
    identity_backend = (None if identity == "none" else backends.get_identity_backend(identity)
                        if identity else default_identity)
    return pose_backend, identity_backend


def backend_label(backend) -> str:
    if backend is None:
        return "none"
    kind = "the paper's network" if backend.paper_equivalent else "substitute"
    return f"{backend.name} (scheme {backend.scheme}, {kind})"


# --------------------------------------------------------------------------- the per-clip work
@dataclass(frozen=True)
class ScoringSettings:
    """What every ClipScorer of a benchmark needs besides its model; picklable. `pose` and
    `identity` are backend names ('none' for none), resolved once by the driver."""
    data: str
    split: str
    max_frames: int | None
    batch_size: int
    device: str
    precision: str
    protocol: str
    pose: str
    identity: str
    lpips: bool
    sample_clip: str  # the clip whose frames make the report's sample grid


@dataclass
class ClipItem:
    """One clip to score, with the real clip's detections when another model found them."""
    clip: str
    real_keypoints: np.ndarray | None = None
    real_embeddings: np.ndarray | None = None


@dataclass
class ClipResult:
    clip: str
    scores: pd.DataFrame              # one row per scored frame (model, clip, frame, metrics)
    clip_frames: int                  # frames of the clip in the data (scored or not)
    real_keypoints: np.ndarray | None
    real_embeddings: np.ndarray | None
    samples: dict | None = None       # the sample clip only: frames, source, real, fake


class ClipScorer:
    """Scores clips with one model (built once, in the worker that calls it)."""

    def __init__(self, spec: ModelSpec, settings: ScoringSettings):
        from fomm.data import open_clips
        from metrics import backends
        self.spec, self.settings = spec, settings
        self.model, config = load_model(spec, settings.device)
        self.size = frame_size(config)
        self.store = open_clips(settings.data, settings.split)
        self.pose = None if settings.pose == "none" else backends.get_pose_backend(settings.pose)
        self.identity = None if settings.identity == "none" else backends.get_identity_backend(settings.identity)

    def __call__(self, item: ClipItem) -> ClipResult:
        from fomm.reconstruction import reconstruct_clip
        from metrics.evaluate import embeddings_at_256, keypoints_at_256, score_clip
        settings, clip = self.settings, item.clip
        batches = clip_batches(self.store, clip, self.size, settings.batch_size, settings.max_frames)
        # the paper protocol scores the PNGs the original wrote: predictions truncated to uint8
        out = reconstruct_clip(self.model, batches, settings.device, settings.precision,
                               truncate=settings.protocol == "paper")
        real_kp, real_emb = item.real_keypoints, item.real_embeddings
        if self.pose is not None and real_kp is None:
            real_kp = keypoints_at_256(self.pose, out.real)
        if self.identity is not None and real_emb is None:
            real_emb = embeddings_at_256(self.identity, out.real)
        scores = score_clip(out.real, out.fake, pose=self.pose, identity=self.identity, lpips=settings.lpips,
                            real_keypoints=real_kp, real_embeddings=real_emb, protocol=settings.protocol,
                            l1=out.l1).reset_index(drop=True)
        scores.attrs = {}
        scores["motion_epe"] = np.nan
        truth = truth_grid(settings.data, settings.split, clip)
        if truth is not None and out.deformation is not None:
            scores["motion_epe"] = motion_epe(out.deformation, truth, out.real.shape[1:3])
        scores.insert(0, "clip", clip)
        scores.insert(0, "model", self.spec.name)
        log.info("%s: %s, L1 %.4f", self.spec.name, clip, float(scores["l1"].mean()))
        samples = sample_frames(out.real, out.fake) if clip == settings.sample_clip else None
        return ClipResult(clip, scores, self.store.num_frames(clip), real_kp, real_emb, samples)


def sample_frames(real: np.ndarray, fake: np.ndarray, count: int = SAMPLE_COUNT) -> dict:
    """`count` evenly spaced frames of a clip: their numbers, the source, the real and the generated."""
    picks = sorted(set(np.linspace(0, len(real) - 1, count).round().astype(int).tolist()))
    return {"frames": np.array(picks), "source": real[0], "real": real[picks], "fake": fake[picks]}


# --------------------------------------------------------------------------- per-clip files
def settings_digest(spec: ModelSpec, config, settings: ScoringSettings) -> str:
    """What decides one model's per-clip numbers, hashed (the folder name's suffix)."""
    from core.config import config_hash
    from core.media import sha256_of
    fields = {"format": RESULT_FORMAT, "checkpoint_sha256": sha256_of(spec.checkpoint),
              "config": config_hash(config), "data": str(Path(settings.data).resolve()),
              "split": settings.split, "max_frames": settings.max_frames, "batch_size": settings.batch_size,
              "device": settings.device, "precision": settings.precision, "protocol": settings.protocol,
              "pose": settings.pose, "identity": settings.identity, "lpips": settings.lpips}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def file_name(clip: str) -> str:
    """A clip name as a file name: percent-encoded where it is not a plain name, never hidden."""
    name = urllib.parse.quote(clip, safe="#@+=,-_.~")
    return "%2E" + name[1:] if name.startswith(".") else name


class ClipResults:
    """The per-clip result files of one model under one settings digest (module docstring)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def of(cls, out: Path, model: str, digest: str) -> ClipResults:
        return cls(Path(out) / "clips" / f"{file_name(model)}-{digest[:16]}")

    def _scores_path(self, clip: str) -> Path:
        return self.folder / f"{file_name(clip)}.parquet"

    def _samples_path(self) -> Path:
        return self.folder / "samples.npz"

    def done(self, clip: str, sample_clip: str) -> bool:
        """Scored with these settings (and, for the sample clip, its sample frames kept)."""
        if not self._scores_path(clip).is_file():
            return False
        if clip != sample_clip:
            return True
        samples = self.samples()
        return samples is not None and str(samples["clip"]) == clip

    def write(self, result: ClipResult) -> None:
        """The result's files, each complete or absent; the scores last, since they mark it done."""
        from core.media import atomic_path
        self.folder.mkdir(parents=True, exist_ok=True)
        if result.samples is not None:
            with atomic_path(self._samples_path()) as tmp:
                with open(tmp, "wb") as handle:
                    np.savez(handle, clip=np.array(result.clip), **result.samples)
        table = result.scores.copy()
        table["clip_frames"] = result.clip_frames
        with atomic_path(self._scores_path(result.clip)) as tmp:
            table.to_parquet(tmp, index=False)

    def read(self, clip: str) -> tuple[pd.DataFrame, int]:
        """(the clip's per-frame rows, the clip's frame count in the data)."""
        table = pd.read_parquet(self._scores_path(clip))
        return table.drop(columns="clip_frames"), int(table["clip_frames"].iloc[0])

    def samples(self) -> dict | None:
        path = self._samples_path()
        if not path.is_file():
            return None
        with np.load(path) as archive:
            return {key: archive[key] for key in archive.files}
