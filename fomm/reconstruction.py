"""The paper's reconstruction protocol (§4.1), written once, and the resumable runner of
`pipeline run reconstruct` (its command line: stages/reconstruct.py); `pipeline run benchmark`
(metrics/benchmark.py, metrics/clip_scores.py) runs the same protocol.

For each clip the first frame is the source and every frame, the first included, drives it
with absolute motion (`model.reconstruct`). Frames come in batches of (n, 3, H, W) floats at
the model's size, as `fomm.data.ReconstructionClips` makes them (core.frames.resize
"bilinear", rounded to uint8 like the stored frames the original reads), so memory does not
grow with clip length.

L1 is the mean |prediction - driving| of a frame with values in [0, 1], on the model's float
output as the original's reconstruction.py computes it (not on the uint8 frames written to
disk, which would lower it by up to 0.5/255); a set of clips scores the mean over all their
frames, the paper's number (REFERENCE §2, `frame_weighted_l1`).

    pipeline run reconstruct --config C --checkpoint K --data D --out O [--model NAME] [--workers N]

writes `O/<clip>/0000000.png ...` (predicted frames), `O/<clip>.mp4`, and `O/l1.csv` with one
row per clip (clip, num_frames, l1). It is resumable per clip, as `benchmark`: one run at a
time holds `O/.lock`; what a killed run left half-written (`.<clip>.part` folders,
`.<clip>.*.part.mp4` files) is removed first; a clip's folder and video appear only when
complete, and its row (`O/.rows/<clip>.json`, with a digest of the weights and every setting
that changes the frames) is written last, so a rerun skips exactly the clips finished with the
same model and settings. `l1.csv` is written at the end from the rows, in clip order. Clips
run in this process, or with `--workers N` / `--ray-address` on Ray actors that each hold the
loaded model (one per GPU or CPU slot; on a cluster `O` and the data must be on a shared file
system).

Layer: fomm/ (models), on core/.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from core.config import config_to_yaml
from core.devices import Precision
from core.errors import UserError
from core.frames import to_uint8
from fomm.config import Config
from fomm.data import ReconstructionClips, open_clips

log = logging.getLogger(__name__)

L1_FIELDS = ["clip", "num_frames", "l1"]
ROWS = ".rows"


@dataclass
class Reconstructed:
    """Frames of a clip and their reconstruction."""
    real: np.ndarray                  # (n, H, W, 3) uint8 driving frames
    fake: np.ndarray                  # (n, H, W, 3) uint8 predictions
    l1: np.ndarray                    # (n,) float64, per frame (`frame_l1`)
    deformation: np.ndarray | None    # (n, h, w, 2) float32, for families that output one

    @staticmethod
    def concat(parts: list[Reconstructed]) -> Reconstructed:
        """One clip's batches joined along the frames."""
        has_motion = all(p.deformation is not None for p in parts)
        return Reconstructed(np.concatenate([p.real for p in parts]), np.concatenate([p.fake for p in parts]),
                             np.concatenate([p.l1 for p in parts]),
                             np.concatenate([p.deformation for p in parts]) if has_motion else None)


def frame_l1(prediction: torch.Tensor, driving: torch.Tensor) -> np.ndarray:
    """(n,) mean |prediction - driving| of each frame of (n, 3, H, W) tensors in [0, 1]: the
    difference in float32, as the original takes it, averaged in float64."""
    difference = (prediction.float() - driving.float()).abs()  # (n, 3, H, W)
    return difference.double().mean(dim=(1, 2, 3)).cpu().numpy()


def reconstruct_batches(model, batches: Iterable[torch.Tensor], device: str = "cpu",
                        precision: str | Precision = "fp32", truncate: bool = False) -> Iterator[Reconstructed]:
    """The protocol over one clip's frames, batch by batch: the first frame of the first
    batch is the source of every frame. `precision` is a core.devices path, resolved or by
    name (fp32 keeps L1 comparable across machines). `truncate`: the uint8 predictions are `(255 * p)` truncated,
    the PNGs the original reconstruction.py wrote and pose-evaluation read (else rounded)."""
    from core.devices import resolve
    from fomm.checkpoint import check_finite_output
    path = precision if isinstance(precision, Precision) else resolve(precision, device, calibrates=False)
    path.prepare_model(model)
    source = None
    for driving in batches:
        driving = path.prepare_input(driving.to(device))  # (n, 3, H, W)
        if source is None:
            source = driving[:1]  # (1, 3, H, W)
        with path.context():  # left before the yield: the caller's code must not run under it
            out = model.reconstruct(source.expand(len(driving), -1, -1, -1), driving)
            prediction = out["prediction"].float()  # (n, 3, H, W)
            check_finite_output(prediction, model, f"a batch of {len(driving)} frames")
            deformation = out.get("deformation")
            batch = Reconstructed(to_uint8(driving), to_uint8(prediction, truncate), frame_l1(prediction, driving),
                                  None if deformation is None else deformation.float().cpu().numpy())
        yield batch


def frame_weighted_l1(num_frames: Iterable[int], clip_l1: Iterable[float]) -> tuple[int, float]:
    """(frames, L1 over every frame of every clip) from each clip's frame count and mean L1:
    clips weigh by their length, as in the paper's number, not one clip one vote."""
    counts = np.array(list(num_frames), dtype=np.float64)
    values = np.array(list(clip_l1), dtype=np.float64)
    return int(counts.sum()), float((values * counts).sum() / counts.sum())


def reconstruct_clip(model, batches: Iterable[torch.Tensor], device: str = "cpu",
                     precision: str | Precision = "fp32", truncate: bool = False) -> Reconstructed:
    """`reconstruct_batches` over a whole clip, joined: for clips that fit in memory."""
    return Reconstructed.concat(list(reconstruct_batches(model, batches, device, precision, truncate)))


# --------------------------------------------------------------------------- the runner
def write_l1_csv(path: Path, rows: list[dict]) -> None:
    from core.media import atomic_path
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=L1_FIELDS)
            writer.writeheader()
            writer.writerows(rows)


def save_frame(path: Path, frame: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(frame).save(path, format="PNG")


def write_clip(model, clip: str, batches, out_dir: Path, fps: float, device: str,
               generation=None, precision: str = "fp32") -> dict:
    """Reconstruct one clip batch by batch (fomm.reconstruction); returns its l1.csv row. L1
    and the png frames come from the unmarked output; the mp4 carries the provenance marks
    of `generation`."""
    from core import provenance
    from core.media import VideoWriter
    final_dir = out_dir / clip
    part_dir = out_dir / f".{clip}.part"
    shutil.rmtree(part_dir, ignore_errors=True)
    part_dir.mkdir(parents=True)
    l1, index = [], 0
    try:
        with VideoWriter(out_dir / f"{clip}.mp4", fps) as video:
            writer = provenance.marking(video, generation)
            for batch in reconstruct_batches(model, batches, device, precision):
                l1.append(batch.l1)
                for image in batch.fake:
                    save_frame(part_dir / f"{index:07d}.png", image)
                    writer.write(image)
                    index += 1
        if index == 0:
            raise UserError(f"clip {clip!r} has no frames")
        provenance.finalize(out_dir / f"{clip}.mp4", generation)
        shutil.rmtree(final_dir, ignore_errors=True)
        part_dir.rename(final_dir)
    finally:
        shutil.rmtree(part_dir, ignore_errors=True)
    return {"clip": clip, "num_frames": index, "l1": float(np.concatenate(l1).mean())}


# --------------------------------------------------------------------------- the per-clip work
@dataclass(frozen=True)
class ClipSettings:
    """What every ClipWriter of a run needs besides its model; picklable."""
    out: str
    data: str
    split: str
    frame_shape: tuple[int, ...]
    batch_size: int
    device: str
    precision: str
    generation: object  # core.provenance.Generation, or None (--no-provenance)


class ClipWriter:
    """Writes clips with one model (Ray Data's callable class: built once per worker)."""

    def __init__(self, model, settings: ClipSettings):
        self.model = model.to(settings.device).eval()
        self.settings = settings
        self.store = open_clips(settings.data, settings.split)

    def __call__(self, clip: str) -> dict:
        settings = self.settings
        batches = ReconstructionClips(self.store, settings.frame_shape, settings.batch_size).frames(clip)
        row = write_clip(self.model, clip, batches, Path(settings.out), self.store.fps(clip), settings.device,
                         settings.generation, settings.precision)
        log.info("%s: %d frames, L1 %.4f", clip, row["num_frames"], row["l1"])
        return row


def load_clip_writer(config: Config, checkpoint: str, settings: ClipSettings) -> ClipWriter:
    """A ClipWriter with the checkpoint loaded where it runs (a Ray actor)."""
    from fomm.checkpoint import load_model
    return ClipWriter(load_model(config, checkpoint, device=settings.device), settings)


def settings_digest(model, config: Config, settings: ClipSettings) -> str:
    """The weights and every setting that changes a clip's frames, video or L1, hashed."""
    from core.config import config_hash
    digest = hashlib.sha256(json.dumps({
        "config": config_hash(config), "data": str(Path(settings.data).resolve()), "split": settings.split,
        "batch_size": settings.batch_size, "device": settings.device, "precision": settings.precision,
        "generation": repr(settings.generation)}, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _row_path(out: Path, clip: str) -> Path:
    from urllib.parse import quote
    return out / ROWS / f"{quote(clip, safe='#@+=,-_.~')}.json"


def finished_row(out: Path, clip: str, digest: str) -> dict | None:
    """The clip's l1.csv row if it was written whole with these settings, else None."""
    path = _row_path(out, clip)
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    frames = out / clip
    if row.get("digest") != digest or not (out / f"{clip}.mp4").is_file() or not frames.is_dir():
        return None
    if sum(1 for p in frames.iterdir() if p.suffix == ".png") != row["num_frames"]:
        return None
    return {k: row[k] for k in L1_FIELDS}


def _write_row(out: Path, row: dict, digest: str) -> None:
    from core.media import atomic_path
    with atomic_path(_row_path(out, row["clip"])) as tmp:
        tmp.write_text(json.dumps({**row, "digest": digest}))


def reconstruct(model, config: Config, data_root: str | Path, out_dir: str | Path, split: str = "test",
                batch_size: int = 16, num_videos: int | None = None, device: str | None = None,
                provenance: bool = True, precision: str | Precision = "fp32", workers: int = 1,
                ray_address: str | None = None, checkpoint: str | Path | None = None) -> list[dict]:
    """Run the protocol over a split; returns the l1.csv rows (also written). With more than
    one worker or a Ray address, the workers load `checkpoint` themselves (it must hold the
    weights of `model`, which this process hashes for the rows' digest). `precision`: a
    core.devices path or its name (the rows record the name)."""
    from core.media import remove_partial_files
    from core.provenance import generation_or_warn
    from core.ray_runner import map_items
    from core.writer_lock import writer_lock
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if workers < 1:
        raise UserError(f"--workers must be a positive number, got {workers}")
    in_process = workers == 1 and ray_address is None
    if not in_process and checkpoint is None:
        raise UserError("reconstructing on Ray workers needs the checkpoint file they load")
    device = device or next(model.parameters()).device.type
    if isinstance(precision, Precision):  # the settings travel to Ray actors and into the digest by name
        precision = precision.name
    store = open_clips(data_root, split)
    clips = ReconstructionClips(store, config.dataset_params.frame_shape, batch_size,
                                num_videos if num_videos is not None else config.reconstruction_params.num_videos)
    with writer_lock(Path(out_dir)) as out:
        remove_partial_files(out)
        remove_partial_files(out / ROWS)
        config_path, config_text = out / "config.yaml", config_to_yaml(config)
        if not config_path.is_file() or config_path.read_text() != config_text:
            config_path.write_text(config_text)
        settings = ClipSettings(str(out), str(data_root), split, tuple(config.dataset_params.frame_shape),
                                batch_size, device, precision,
                                generation_or_warn(provenance, config, "reconstruct", split))
        digest = settings_digest(model, config, settings)
        done = {clip: finished_row(out, clip, digest) for clip in clips.clips}
        todo = [clip for clip, row in done.items() if row is None]
        log.info("%d of %d clips to reconstruct (%d done in an earlier run)", len(todo), len(done),
                 len(done) - len(todo))

        def keep(clip: str, row: dict) -> None:
            _write_row(out, row, digest)
            done[clip] = row

        if in_process:
            map_items(ClipWriter, (model, settings), todo, keep)
        else:
            map_items(load_clip_writer, (config, str(checkpoint), settings), todo, keep, workers, ray_address,
                      1 if device.startswith("cuda") else 0)
        rows = [done[clip] for clip in clips.clips]
        csv_path = out / "l1.csv"
        write_l1_csv(csv_path, rows)
    frames, mean = frame_weighted_l1([int(r["num_frames"]) for r in rows], [float(r["l1"]) for r in rows])
    print(f"reconstructed {len(rows)} clips ({frames} frames), L1 {mean:.6f} "
          f"(mean over all frames, as the paper and `benchmark`) -> {csv_path}")
    return rows


def claim_output(out: str | Path, data: str | Path | None, checkpoint: str | Path | None = None,
                 config: str | None = None):
    """The output folder as core.outputs.claim holds it: apart from the data, checkpoint and
    config; new, empty, or an earlier reconstruction's (l1.csv)."""
    from core import outputs
    return outputs.claim(out, "reconstruct", {"--data": data, "--checkpoint": checkpoint, "--config": config},
                         earlier=("l1.csv",), scaffolding=("config.yaml",))


# --------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class ReconstructOptions:
    """What `pipeline run reconstruct` runs, resolved (stages/reconstruct.py builds it): the
    config (--config with its overrides, else the checkpoint's own or its released family's
    default, `--model` applied), the checkpoint, data and output paths, the split, counts
    checked, the numeric path resolved for `device`, and `workers` (models loaded at once).
    `config_source` is the --config name or file, kept apart from the output folder."""
    config: Config
    checkpoint: Path
    data: Path
    out: Path
    precision: Precision
    device: str = "cpu"
    split: str = "test"
    batch_size: int = 16
    num_videos: int | None = None
    workers: int = 1
    ray_address: str | None = None
    provenance: bool = True
    config_source: str | None = None


def reconstruct_run(options: ReconstructOptions) -> list[dict]:
    """Claim the output folder (claim_output), load the checkpoint and run `reconstruct`;
    returns the l1.csv rows."""
    from fomm.checkpoint import load_model
    with claim_output(options.out, options.data, options.checkpoint, options.config_source):
        model = load_model(options.config, options.checkpoint, device=options.device)
        return reconstruct(model, options.config, options.data, options.out, options.split, options.batch_size,
                           options.num_videos, options.device, options.provenance, options.precision,
                           options.workers, options.ray_address, options.checkpoint)
