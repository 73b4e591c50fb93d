"""A real-vs-generated video dataset from a prepared dataset and the project's own
generators, for training and testing detectors (`pipeline run fakes`, whose flags
stages/fakes.py turns into the `FakesOptions` that `run` takes).

    pipeline run fakes --data data/vox --models fomm=K1,monkey-net=K2,x2face=K3 --out fakes/vox
        [--split test|train|all] [--frames 64] [--animations 1] [--transforms crf23,scale75+crf28]
        [--no-marked] [--test-fraction 0.5] [--seed 0]

For every clip of the chosen split of `--data` (the generators' held-out test split by
default), the dataset holds:
- the real frames (the clip's first `--frames`);
- each model's reconstruction: the paper's protocol (fomm/reconstruction.py), the clip's
  first frame animated by all of its frames with absolute motion; same identity;
- `--animations` cross-identity animations per model: the first frame of a clip of another
  identity animated by this clip with relative motion (Eq. 8), as `pipeline run animate` does.
Generated frames are resized to the real frames' size, so size tells nothing. Every clip is
written unmarked; each generated one again marked (the watermark of core/watermark.py in
every frame, as `animate` embeds it), a separate variant (`--no-marked` leaves it out); and
every variant again through each `--transforms` re-encoding (detect/reencode.py), real and
generated alike, so that a detector cannot learn the codec (REFERENCE §10).

Splits are the fakes dataset's own, identity-disjoint: the identities (a clip name before its
first '#') are taken in the order of a hash of the identity and `--seed`, each joining test
while test holds at most `--test-fraction` of the clips (at least one identity in each split).
An animation takes its source from another identity of the same split, so no identity is in
both.

Writes under `--out`: `clips/{train,test}/<id>/0000000.png...` (lossless frames) or
`clips/{train,test}/<id>.mp4` (a re-encoding), `manifest.parquet` (one row per clip: id, split,
label real|generated, family, kind real|reconstruction|animation, marked, transform, identity,
driving identity, source and driving clip, checkpoint and its sha256, config hash, frames, size,
fps, path, status, error, settings key), `settings.json`, `summary.json`.

A dataset stage like `prepare`: one writer per `--out` (a lock); Ray tasks, one per model and
chunk of clips (the model loaded once per task); every clip published whole and its row
recorded the moment it is done; the manifest written last. A killed run rerun does only what
is missing, to the same files (inference in float32 on one thread, x264 on one thread); a
finished run rerun does nothing; a rerun with other settings redoes the clips they change.
Exit 1 when a clip failed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
CHOICES = ("test", "train", "all")
FORMAT = "motion-transfer-fakes/1"
ROW_FIELDS = ("id", "split", "label", "family", "kind", "marked", "transform", "identity",
              "driving_identity", "source_clip", "driving_clip", "data_split", "checkpoint",
              "checkpoint_sha256", "config_hash", "frames", "height", "width", "fps", "path",
              "status", "error", "settings_key")


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Source:
    """A clip of the data: its name, the data split it is in, its identity, its fakes split."""
    clip: str
    data_split: str
    identity: str
    split: str


@dataclass(frozen=True)
class Base:
    """Frames to make once: the real clip, or a model's reconstruction or animation of it."""
    kind: str                      # real | reconstruction | animation
    driving: Source
    source: Source                 # the clip whose first frame is animated (itself unless animation)
    family: str | None = None


@dataclass(frozen=True)
class Variant:
    """One clip of the dataset: a base's frames, marked or not, through one transform."""
    base: Base
    marked: bool
    transform: str                 # detect.reencode name, "none" for the lossless frames

    @property
    def id(self) -> str:
        facts = json.dumps([self.base.kind, self.base.family, self.base.driving.clip, self.base.source.clip])
        digest = hashlib.sha256(facts.encode()).hexdigest()[:12]
        name = f"{self.base.family or 'real'}-{self.base.kind[:3]}-{digest}"
        name += "-marked" if self.marked else ""
        return name + ("" if self.transform == "none" else "-" + self.transform.replace("+", "_"))


@dataclass(frozen=True)
class ModelEntry:
    """A model to generate with: registry name, checkpoint, its sha256 and config hash."""
    name: str
    checkpoint: str
    config: str | None
    sha256: str
    config_hash: str


@dataclass(frozen=True)
class Settings:
    """What every task needs besides its job; picklable."""
    out: str
    data: str
    frames: int
    transforms: tuple[str, ...]
    batch_size: int
    driver: tuple[int, str] = (0, "")


@dataclass(frozen=True)
class FakesOptions:
    """Everything a fakes run needs, checked (stages.fakes.options builds it from the flags)."""
    data: Path                                  # a prepared dataset (a folder)
    models: tuple                               # metrics.clip_scores.ModelSpec, checkpoints checked
    out: Path                                   # not the data nor inside it
    split: str = "test"                         # CHOICES: the data's clips to use
    frames: int = 64                            # first N frames of each clip
    animations: int = 1                         # cross-identity animations per clip and model
    transforms: tuple[str, ...] = ("none",)     # detect.reencode names, "none" first
    marked: bool = True                         # a watermarked variant of each generated clip
    test_fraction: float = 0.5
    seed: int = 0
    max_clips: int | None = None
    batch_size: int = 8                         # frames per model call
    chunk: int = 8                              # clips per Ray task
    workers: int | None = None
    ray_address: str | None = None


def model_entries(specs) -> list[ModelEntry]:
    """The models (metrics.clip_scores.ModelSpec, as `--models` parses them: the benchmark's
    syntax) as entries with their checkpoint's sha256 and config hash."""
    from core.config import config_hash
    from core.media import sha256_of
    from metrics.clip_scores import model_config
    return [ModelEntry(spec.name, str(spec.checkpoint.resolve()), spec.config, sha256_of(spec.checkpoint),
                       config_hash(model_config(spec))) for spec in specs]


def identity_splits(clips_per_identity: dict[str, int], test_fraction: float, seed: int) -> dict[str, str]:
    """identity -> train | test, whole identities: in the order of a seeded hash, each identity
    joins test while the test split stays within `test_fraction` of the clips (at least one
    identity in each split)."""
    if len(clips_per_identity) < 2:
        raise UserError(f"the data holds {len(clips_per_identity)} identity ({', '.join(clips_per_identity)}); "
                        "identity-disjoint splits need at least 2")
    order = sorted(clips_per_identity, key=lambda name: hashlib.sha256(f"{seed}\x1f{name}".encode()).hexdigest())
    target = test_fraction * sum(clips_per_identity.values())
    test, count = set(), 0
    for name in order[:-1]:  # the last identity in hash order stays in train whatever happens
        if not test or count + clips_per_identity[name] <= target:
            test.add(name)
            count += clips_per_identity[name]
    return {name: "test" if name in test else "train" for name in order}


def data_sources(data: Path, choice: str, max_clips: int | None, test_fraction: float,
                 seed: int) -> list[Source]:
    """The data's clips of `choice` in name order, each with its identity and fakes split."""
    from fomm.data import identity_of, open_clips
    found = []
    for data_split in (SPLITS if choice == "all" else (choice,)):
        try:
            store = open_clips(data, data_split)
        except UserError:
            if choice != "all":
                raise
            continue  # `all` takes the splits the data has
        found += [(clip, data_split) for clip in store.clips]
    if not found:
        raise UserError(f"--data {str(data)!r} holds no clips in its train or test split")
    found = sorted(found)[:max_clips] if max_clips else sorted(found)
    counts: dict[str, int] = {}
    for clip, _ in found:
        counts[identity_of(clip)] = counts.get(identity_of(clip), 0) + 1
    splits = identity_splits(counts, test_fraction, seed)
    return [Source(clip, data_split, identity_of(clip), splits[identity_of(clip)]) for clip, data_split in found]


def animation_sources(driving: Source, sources: list[Source], count: int, seed: int) -> list[Source]:
    """`count` clips of other identities of the same split (one per identity, in a seeded
    order of the identities), whose first frames the driving clip animates."""
    others: dict[str, Source] = {}
    for source in sources:
        if source.split == driving.split and source.identity != driving.identity:
            others.setdefault(source.identity, source)
    order = sorted(others, key=lambda name: hashlib.sha256(
        f"{seed}\x1f{driving.clip}\x1f{name}".encode()).hexdigest())
    return [others[name] for name in order[:count]]


def plan(sources: list[Source], models: list[ModelEntry], animations: int, marked: bool,
         transforms: list[str], seed: int) -> list[tuple[ModelEntry | None, list[Variant]]]:
    """(model or None for the real clips, its variants), every variant of the dataset once."""
    def variants(base: Base) -> list[Variant]:
        marks = (False, True) if marked and base.kind != "real" else (False,)
        return [Variant(base, mark, transform) for mark in marks for transform in transforms]
    jobs: list[tuple[ModelEntry | None, list[Variant]]] = [
        (None, [v for source in sources for v in variants(Base("real", source, source))])]
    for model in models:
        chosen = []
        for source in sources:
            chosen += variants(Base("reconstruction", source, source, model.name))
            for other in animation_sources(source, sources, animations, seed):
                chosen += variants(Base("animation", source, other, model.name))
        jobs.append((model, chosen))
    return jobs


def settings_key(variant: Variant, model: ModelEntry | None, settings: Settings) -> str:
    """A digest of everything that shapes a clip's file; a done row with another key is redone."""
    facts = [asdict(variant), model.sha256 if model else None, model.config_hash if model else None,
             settings.frames, FORMAT]
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- files and rows
def clip_path(out: Path, variant: Variant) -> Path:
    folder = Path(out) / "clips" / variant.base.driving.split
    return folder / (variant.id if variant.transform == "none" else f"{variant.id}.mp4")


def row_path(out: Path, clip_id: str) -> Path:
    from pipeline.clips import check_name
    return Path(out) / ".rows" / f"{check_name(clip_id, 'clip id')}.json"


def read_row(out: Path, clip_id: str) -> dict | None:
    path = row_path(out, clip_id)
    return json.loads(path.read_text()) if path.is_file() else None


def write_row(out: Path, row: dict) -> None:
    from core.media import atomic_path
    with atomic_path(row_path(out, row["id"])) as tmp:
        tmp.write_text(json.dumps(row))


def is_done(out: Path, row: dict | None, key: str) -> bool:
    """Done with these settings and its file complete (a folder with every frame, or the mp4)."""
    if row is None or row.get("status") != "done" or row.get("settings_key") != key:
        return False
    path = Path(out) / row["path"]
    if path.suffix == ".mp4":
        return path.is_file()
    return path.is_dir() and sum(1 for _ in path.glob("*.png")) == row["frames"]


def base_row(variant: Variant, model: ModelEntry | None, key: str) -> dict:
    base = variant.base
    return {"id": variant.id, "split": base.driving.split,
            "label": "real" if base.kind == "real" else "generated", "family": base.family,
            "kind": base.kind, "marked": variant.marked, "transform": variant.transform,
            "identity": base.source.identity, "driving_identity": base.driving.identity,
            "source_clip": base.source.clip, "driving_clip": base.driving.clip,
            "data_split": base.driving.data_split, "checkpoint": model.checkpoint if model else None,
            "checkpoint_sha256": model.sha256 if model else None,
            "config_hash": model.config_hash if model else None, "frames": 0, "height": None,
            "width": None, "fps": None, "path": None, "status": None, "error": None, "settings_key": key}


def write_frames(out: Path, variant: Variant, frames: np.ndarray, fps: float) -> Path:
    """The variant's file: a PNG folder published whole, or a re-encoded mp4 (atomic)."""
    from PIL import Image
    from core.media import temp_dir
    from detect.reencode import parse_transform, write_reencoded
    from pipeline.clips import frame_name, publish_dir
    final = clip_path(out, variant)
    final.parent.mkdir(parents=True, exist_ok=True)
    if variant.transform != "none":
        return write_reencoded(final, frames, fps, parse_transform(variant.transform))
    staging = temp_dir(final.parent, ".tmp-")
    try:
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(staging / frame_name(index), format="PNG", compress_level=3)
        publish_dir(staging, final)
    finally:
        if staging.exists():
            import shutil
            shutil.rmtree(staging, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- generating
class Generator:
    """One model loaded once (in a task), making reconstructions and animations of clips."""

    def __init__(self, model: ModelEntry, batch_size: int):
        from metrics.clip_scores import ModelSpec, load_model
        spec = ModelSpec(model.name, Path(model.checkpoint), model.config)
        self.model, self.config = load_model(spec, "cpu")
        self.size = tuple(self.config.dataset_params.frame_shape[:2])
        self.batch_size = batch_size

    def reconstruction(self, frames: np.ndarray) -> np.ndarray:
        """The paper's protocol on (T, H, W, 3) uint8 frames: (T, h, w, 3) at the model's size."""
        from core.frames import resize, to_tensor
        from fomm.animation import batched
        from fomm.reconstruction import reconstruct_clip
        batches = (to_tensor(resize(np.stack(batch), self.size)) for batch in batched(frames, self.batch_size))
        return reconstruct_clip(self.model, batches, "cpu", "fp32").fake

    def animation(self, source: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """`source` (H, W, 3) animated by (T, H, W, 3) frames with relative motion (Eq. 8)."""
        from core.frames import resize
        from fomm.animation import AnimateOptions, Animator, batched
        driving = resize(frames, self.size)
        options = AnimateOptions(relative=True, precision="fp32", provenance=False, batch_size=self.batch_size)
        animator = Animator.from_frames(self.model, resize(source[None], self.size)[0], driving[0], options)
        return np.concatenate([animator.predict(batch)[0] for batch in batched(driving, self.batch_size)])

    def marker(self, base: Base):
        from core.provenance import Generation
        return Generation.of(self.config, "fakes", base.driving.clip, base.source.clip).marker()


def make_job(model: ModelEntry | None, variants: list[Variant], settings: Settings) -> list[dict]:
    """Body of one Ray task: every base's frames made once, each of its pending variants
    written and its row recorded as it finishes. Same files when run twice."""
    import torch
    from pipeline.prepare import _watch_driver
    _watch_driver(settings.driver)
    torch.set_num_threads(1)  # the same float sums whatever the worker: a resumed run repeats a clean one
    out = Path(settings.out)
    keys = {v.id: settings_key(v, model, settings) for v in variants}
    pending = [v for v in variants if not is_done(out, read_row(out, v.id), keys[v.id])]
    for variant in pending:
        _remove_old_file(out, read_row(out, variant.id), clip_path(out, variant))
    by_base: dict[Base, list[Variant]] = {}
    for variant in pending:
        by_base.setdefault(variant.base, []).append(variant)
    generator = Generator(model, settings.batch_size) if model is not None and by_base else None
    stores: dict[str, object] = {}
    rows = []
    for base, chosen in by_base.items():
        rows += make_base(base, chosen, generator, stores, settings, keys, model)
    return rows


def make_base(base: Base, variants: list[Variant], generator: Generator | None, stores: dict,
              settings: Settings, keys: dict, model: ModelEntry | None) -> list[dict]:
    """One base's frames and its variants' files and rows; a failure is a failed row each."""
    from core.frames import resize
    from fomm.data import open_clips
    out, began = Path(settings.out), time.perf_counter()

    def store(source: Source):
        if source.data_split not in stores:
            stores[source.data_split] = open_clips(settings.data, source.data_split)
        return stores[source.data_split]
    rows = []
    try:
        driving_store = store(base.driving)
        count = min(settings.frames, driving_store.num_frames(base.driving.clip))
        real = driving_store.read(base.driving.clip, range(count))           # (T, H, W, 3)
        fps = float(driving_store.fps(base.driving.clip))
        if base.kind == "real":
            frames = real
        elif base.kind == "reconstruction":
            frames = resize(generator.reconstruction(real), real.shape[1:3])
        else:
            source = store(base.source).read(base.source.clip, [0])[0]
            frames = resize(generator.animation(source, real), real.shape[1:3])
    except Exception as err:  # noqa: BLE001 - a broken clip or model is this clip's row, the run goes on
        log.exception("%s %s of %s failed", base.family or "real", base.kind, base.driving.clip)
        return [_failed(out, v, model, keys[v.id], err) for v in variants]
    marked = None
    for variant in variants:
        row = base_row(variant, model, keys[variant.id])
        try:
            if variant.marked and marked is None:
                marker = generator.marker(base)
                marked = np.stack([marker(frame) for frame in frames])
            path = write_frames(out, variant, marked if variant.marked else frames, fps)
            row.update(status="done", frames=len(frames), height=int(frames.shape[1]),
                       width=int(frames.shape[2]), fps=fps, path=str(path.relative_to(out)))
        except Exception as err:  # noqa: BLE001
            log.exception("writing %s failed", variant.id)
            row = _failed(out, variant, model, keys[variant.id], err)
            rows.append(row)
            continue
        write_row(out, row)
        rows.append(row)
    log.info("%s %s of %s: %d clip(s) in %.1f s", base.family or "real", base.kind, base.driving.clip,
             len(variants), time.perf_counter() - began)
    return rows


def _remove_old_file(out: Path, row: dict | None, new_path: Path) -> None:
    """A clip redone with other settings may move (another split): its old file goes."""
    import shutil
    if row is None or not row.get("path") or out / row["path"] == new_path:
        return
    old = out / row["path"]
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def _failed(out: Path, variant: Variant, model: ModelEntry | None, key: str, err: Exception) -> dict:
    row = base_row(variant, model, key)
    row.update(status="failed", error=f"{type(err).__name__}: {err}"[:500])
    write_row(out, row)
    return row


# --------------------------------------------------------------------------- running
def _chunks(jobs, size: int):
    for model, variants in jobs:
        bases = list(dict.fromkeys(v.base for v in variants))
        for start in range(0, len(bases), size):
            chosen = set(bases[start:start + size])
            yield model, [v for v in variants if v.base in chosen]


def execute(jobs, settings: Settings, chunk: int, workers: int | None) -> list[dict]:
    """Every chunk as a Ray task, at most two per worker in flight."""
    import ray
    task = ray.remote(num_cpus=1, max_retries=2)(make_job)
    settings_ref = ray.put(settings)
    queue = list(_chunks(jobs, chunk))
    limit = workers or int(ray.available_resources().get("CPU", 1))
    running, rows = {}, []
    while queue or running:
        while queue and len(running) < 2 * limit:
            model, variants = queue.pop(0)
            running[task.remote(model, variants, settings_ref)] = (model, variants)
        done, _ = ray.wait(list(running), num_returns=1)
        model, variants = running.pop(done[0])
        try:
            rows += ray.get(done[0])
        except Exception as err:  # a dead worker after Ray's retries: its clips say so
            log.error("task for %s failed: %s", model.name if model else "real clips", err)
            out = Path(settings.out)
            rows += [_failed(out, v, model, settings_key(v, model, settings), err) for v in variants
                     if not is_done(out, read_row(out, v.id), settings_key(v, model, settings))]
    return rows


def remove_stale(out: Path, wanted: set[str]) -> None:
    """Rows and files of clips no longer planned (another --models or --transforms), and
    staging folders a killed run left."""
    import shutil
    for path in (out / ".rows").glob("*.json"):
        if path.stem not in wanted:
            row = json.loads(path.read_text())
            target = out / row["path"] if row.get("path") else None
            if target is not None and target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            elif target is not None:
                target.unlink(missing_ok=True)
            path.unlink()
    for staging in (out / "clips").glob("*/.tmp-*"):
        shutil.rmtree(staging, ignore_errors=True)
    for partial in (out / "clips").glob("*/.*.part.mp4"):
        partial.unlink(missing_ok=True)


def write_outputs(out: Path, variants: list[Variant], settings_record: dict, seconds: float) -> dict:
    """manifest.parquet (one row per planned clip, from the rows on disk) and summary.json."""
    import pandas as pd
    from core.media import atomic_path
    rows = [read_row(out, v.id) for v in variants]
    missing = [v.id for v, row in zip(variants, rows) if row is None]
    if missing:
        raise RuntimeError(f"{len(missing)} clip(s) have no row after the run (first {missing[0]})")
    table = pd.DataFrame(rows, columns=list(ROW_FIELDS))
    for column in ("frames", "height", "width"):
        table[column] = table[column].astype("Int64")
    with atomic_path(out / "manifest.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    done = table[table["status"] == "done"]
    summary = {
        "clips": len(table), "done": int(len(done)), "failed": int((table["status"] == "failed").sum()),
        "by_split": {s: {label: int(((done["split"] == s) & (done["label"] == label)).sum())
                         for label in ("real", "generated")} for s in SPLITS},
        "identities": {s: sorted(set(done.loc[done["split"] == s, "identity"])
                                 | set(done.loc[done["split"] == s, "driving_identity"])) for s in SPLITS},
        "families": sorted(done["family"].dropna().unique().tolist()),
        "frames": int(done["frames"].sum()), "time_s": round(seconds, 2),
        "errors": [f"{r.id}: {r.error}" for r in table[table["status"] == "failed"].itertuples()][:20],
        "settings": settings_record}
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(options: FakesOptions) -> dict:
    """The stage as a function; returns summary.json's content (`out` added)."""
    import socket
    from core.media import atomic_path
    from core.ray_runner import init_ray, shutdown_ray
    from core import outputs
    began = time.perf_counter()
    transforms = list(options.transforms)
    models = model_entries(options.models)
    sources = data_sources(options.data, options.split, options.max_clips, options.test_fraction, options.seed)
    jobs = plan(sources, models, options.animations, options.marked, transforms, options.seed)
    variants = [v for _, chosen in jobs for v in chosen]
    data = options.data.resolve()
    record = {"format": FORMAT, "data": str(data), "split": options.split,
              "frames": options.frames, "animations": options.animations, "marked": options.marked,
              "transforms": transforms, "test_fraction": options.test_fraction, "seed": options.seed,
              "max_clips": options.max_clips, "models": [asdict(m) for m in models],
              "splits": {s.identity: s.split for s in sources}}
    inputs = {"--data": options.data, **{f"--models {m.name}": m.checkpoint for m in models}}
    with outputs.claim(options.out, "fakes", inputs, earlier=("settings.json",)) as out:
        settings = Settings(str(out), str(data), options.frames, tuple(transforms),
                            options.batch_size, (os.getpid(), socket.gethostname()))
        with atomic_path(out / "settings.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        remove_stale(out, {v.id for v in variants})
        todo = [(model, [v for v in chosen if not is_done(out, read_row(out, v.id),
                                                            settings_key(v, model, settings))])
                for model, chosen in jobs]
        todo = [(model, chosen) for model, chosen in todo if chosen]
        log.info("fakes: %d clips planned, %d to make", len(variants), sum(len(c) for _, c in todo))
        if todo:
            import ray
            started_here = not ray.is_initialized()
            init_ray(options.ray_address, num_cpus=options.workers)
            try:
                execute(todo, settings, options.chunk, options.workers)
            finally:
                if started_here:
                    shutdown_ray()
        summary = write_outputs(out, variants, record, time.perf_counter() - began)
    summary["out"] = str(out)
    return summary
