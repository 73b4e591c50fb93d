"""Training a detector on a fakes dataset: one plain loop.

The train split's real clips against its generated clips of the chosen families, unmarked
and as generated (transform `none`) unless told otherwise: the watermark would be a shortcut
(REFERENCE §10), and a detector trained on marked frames would be measured on the mark.
`frames_per_clip` evenly spaced frames of every clip are read once, at the input size. Each
batch is half real, half generated frames, the clip drawn uniformly within its class (so
neither the larger generated pool nor a long clip dominates), then a frame of it, flipped
left-right at random. Cross-entropy on the two classes, Adam (FaceForensics++ trains its
Xception with Adam at 2e-4). Class-balanced batches make 0.5 on the probability the natural
threshold, recorded in the detector file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from detect.dataset import clip_frames, families_of, read_manifest, select
from detect.detector import MODEL_FILE, Detector, initial_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    families: tuple[str, ...] | None = None  # generated clips of these families (None: all)
    transforms: tuple[str, ...] = ("none",)
    width: float = 1.0                       # Xception channel multiplier (1: the reference network)
    size: int = 299                          # input side (FaceForensics++: 299)
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-4
    frames_per_clip: int = 16
    seed: int = 0
    weights: str | None = None               # published Xception weights to start from
    device: str = "cpu"
    threads: int | None = None               # torch CPU threads (None: torch's default)
    log_every: int = 50

    def check(self) -> None:
        for name in ("size", "steps", "batch_size", "frames_per_clip", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected 1 or more")
        if self.size < 32:
            raise UserError(f"--size {self.size}: Xception needs at least 32 px")
        if self.batch_size < 2:
            raise UserError(f"--batch-size {self.batch_size}: expected 2 or more (half real, half generated)")
        if not 0 < self.width <= 1:
            raise UserError(f"--width {self.width}: expected a fraction in (0, 1]")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise UserError(f"--lr {self.lr}: expected a positive number")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads}: expected 1 or more")
        if self.weights is not None and self.width != 1:
            raise UserError(f"--weights needs --width 1 (published weights are the full network), got {self.width}")


def manifest_sha256(data: str | Path) -> str:
    return hashlib.sha256((Path(data) / "manifest.parquet").read_bytes()).hexdigest()


def training_rows(data: str | Path, options: TrainOptions):
    manifest = read_manifest(data)
    known = families_of(manifest)
    unknown = sorted(set(options.families or ()) - set(known))
    if unknown:
        raise UserError(f"--families {','.join(options.families)}: {unknown[0]!r} has no clips in "
                        f"{str(data)!r} (its families: {', '.join(known)})")
    rows = select(manifest, "train", families=list(options.families) if options.families else None,
                  marked=False, transforms=list(options.transforms))
    counts = rows["label"].value_counts()
    if counts.get("real", 0) == 0 or counts.get("generated", 0) == 0:
        raise UserError(f"{str(data)!r}: the train split holds {counts.get('real', 0)} real and "
                        f"{counts.get('generated', 0)} generated clips with transforms "
                        f"{list(options.transforms)}; training needs both")
    return rows


def load_pools(data: str | Path, rows, options: TrainOptions) -> dict[int, list[np.ndarray]]:
    """label -> list of (n, size, size, 3) uint8 frame arrays, one per clip."""
    pools: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for _, row in rows.iterrows():
        pools[int(row["label"] == "generated")].append(clip_frames(data, row, options.frames_per_clip, options.size))
    return pools


def sample_batch(pools: dict[int, list[np.ndarray]], batch_size: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(B, size, size, 3) uint8 frames and (B,) labels: half of each class."""
    frames, labels = [], []
    for label, count in ((0, batch_size // 2), (1, batch_size - batch_size // 2)):
        clips = pools[label]
        for clip in rng.integers(0, len(clips), count):
            frame = clips[clip][rng.integers(0, len(clips[clip]))]
            frames.append(frame[:, ::-1] if rng.random() < 0.5 else frame)
            labels.append(label)
    return np.stack(frames), np.array(labels)


def train_detector(data: str | Path, options: TrainOptions, log_path: Path | None = None) -> Detector:
    """A detector trained as the module docstring says; `log_path` gets a JSON line per log step."""
    from core.frames import to_tensor
    options.check()
    rows = training_rows(data, options)
    began = time.perf_counter()
    pools = load_pools(data, rows, options)
    log.info("detector training data: %d real and %d generated clips (%d frames) in %.1f s",
             len(pools[0]), len(pools[1]), sum(len(c) for p in pools.values() for c in p),
             time.perf_counter() - began)
    if options.threads is not None:
        # small convolutions on a busy CPU: more threads than free cores spin far more than they compute
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    detector = Detector.build(options.width, options.size)
    if options.weights:
        initial_weights(detector.net, options.weights)
    device = torch.device(options.device)
    net = detector.net.to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=options.lr)
    handle = open(log_path, "w") if log_path is not None else None
    try:
        for step in range(1, options.steps + 1):
            frames, labels = sample_batch(pools, options.batch_size, rng)
            logits = net(to_tensor(frames, device))                        # (B, 2)
            target = torch.from_numpy(labels).to(device)
            loss = torch.nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % options.log_every == 0 or step == options.steps:
                hits = (logits.argmax(1) == target).float().mean()
                record = {"step": step, "loss": float(loss.detach()), "accuracy": float(hits),
                          "time": round(time.perf_counter() - began, 2)}
                log.info("detector step %d/%d loss %.4f accuracy %.2f", step, options.steps, record["loss"],
                         record["accuracy"])
                if handle is not None:
                    handle.write(json.dumps(record) + "\n")
                    handle.flush()
    finally:
        if handle is not None:
            handle.close()
    net.eval()
    detector.trained_on = {
        "data": str(Path(data).resolve()), "manifest_sha256": manifest_sha256(data), "split": "train",
        "families": sorted(rows.loc[rows["label"] == "generated", "family"].unique().tolist()),
        "clips": {"real": len(pools[0]), "generated": len(pools[1])},
        "frames": int(sum(len(c) for p in pools.values() for c in p)), "marked": False,
        "transforms": list(options.transforms), "seconds": round(time.perf_counter() - began, 2)}
    detector.settings = asdict(options)
    return detector


def train_into(data: str | Path, out: str | Path, options: TrainOptions) -> tuple[Detector, Path]:
    """A detector trained on the fakes dataset `data`, written into the folder `out` (claimed
    for the `detect` stage: `detector.pt` and `train.jsonl`); the detector and its file."""
    from core import outputs
    with outputs.claim(out, "detect", {"--data": data, "--weights": options.weights},
                       earlier=(MODEL_FILE, "train.jsonl")) as folder:
        detector = train_detector(data, options, folder / "train.jsonl")
        path = detector.save(folder / MODEL_FILE)
    return detector, path
