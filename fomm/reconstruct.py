"""The `pipeline run reconstruct` stage: the paper's reconstruction protocol (§4.1).

    pipeline run reconstruct --config C --checkpoint K --data D --out O [--model NAME] [--workers N]

For each test clip the first frame is the source and every frame (the first included) is
the driving frame, with absolute motion (`model.reconstruct`). Outputs:
`O/<clip>/0000000.png ...` (predicted frames), `O/<clip>.mp4`, and `O/l1.csv` with one row
per clip (clip, num_frames, l1 = mean |prediction - driving| over pixels and frames,
values in [0, 1], on the model's float output). The protocol itself is fomm/reconstruction.py,
which `pipeline run benchmark` runs too. Frames go through the model in batches of
`--batch-size`, so memory does not grow with clip length.

Resumable per clip, as `benchmark`: one run at a time holds `O/.lock`; what a killed run left
half-written (`.<clip>.part` folders, `.<clip>.*.part.mp4` files) is removed first; a clip's
folder and video appear only when complete, and its row (`O/.rows/<clip>.json`, with a
digest of the weights and every setting that changes the frames) is written last, so a
rerun skips exactly the clips finished with the same model and settings. `l1.csv` is
written at the end from the rows, in clip order. Clips run in this process, or with
`--workers N` / `--ray-address` on Ray actors that each hold the loaded model (one per GPU
or CPU slot; on a cluster `O` and the data must be on a shared file system).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.config import config_to_dict, config_to_yaml, replace
from core.errors import UserError
from fomm.config import Config, config_from_dict, load_config
from fomm.data import ReconstructionClips, open_clips
from fomm.families import NAMES
from fomm.reconstruction import frame_weighted_l1, reconstruct_batches

log = logging.getLogger(__name__)

L1_FIELDS = ["clip", "num_frames", "l1"]
ROWS = ".rows"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config name or yaml (default: the config inside the checkpoint)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (ours or a released FOMM one)")
    parser.add_argument("--data", help="dataset root; its test split is reconstructed")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--model", choices=list(NAMES), help="model family (default: the config's)")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--batch-size", type=int, default=16, help="driving frames per forward pass")
    parser.add_argument("--num-videos", type=int, help="at most this many clips (default: reconstruction_params.num_videos)")
    parser.add_argument("--precision", default="fp32", help="fp32 (default: L1 comparable across machines), "
                        "bf16 or auto (core/devices.py)")
    parser.add_argument("--workers", type=int, default=None,
                        help="models loaded at once, each writing its share of the clips (default: one per "
                             "GPU, else 1); 1 without --ray-address runs in this process, more run as Ray actors")
    parser.add_argument("--ray-address", default=None, help="write on this Ray cluster (its workers must "
                        "reach --data and --out at the same paths) instead of here")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    from core.provenance import add_argument
    add_argument(parser)


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
                provenance: bool = True, precision: str = "fp32", workers: int = 1,
                ray_address: str | None = None, checkpoint: str | Path | None = None) -> list[dict]:
    """Run the protocol over a split; returns the l1.csv rows (also written). With more than
    one worker or a Ray address, the workers load `checkpoint` themselves (it must hold the
    weights of `model`, which this process hashes for the rows' digest)."""
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


def main(args: argparse.Namespace) -> int:
    from core.errors import check_count
    from fomm.checkpoint import checkpoint_config, load_checkpoint_file, load_model, released_config
    if args.num_videos is not None and args.num_videos < 1:  # checked before anything is written
        raise UserError(f"--num-videos must be a positive number of clips, got {args.num_videos}")
    check_count("--batch-size", args.batch_size)
    claim_output(args.out, args.data, args.checkpoint, args.config)  # checked before any work
    if args.config:
        config = load_config(args.config, args.overrides)
    else:
        # A project checkpoint's own config, or a released file's family default (by its layout).
        checkpoint = load_checkpoint_file(args.checkpoint)
        config = checkpoint_config(checkpoint) or released_config(checkpoint, args.checkpoint)
        config = config_from_dict(config_to_dict(config), args.overrides)
    if args.model and args.model != config.model_params.name:
        config = replace(config, model_params=replace(config.model_params, name=args.model))
    data = args.data or config.dataset_params.root_dir
    if not data:
        raise UserError("no data: pass --data or set dataset_params.root_dir")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    workers = args.workers or (torch.cuda.device_count() if device == "cuda" else 1) or 1
    with claim_output(args.out, data, args.checkpoint, args.config):
        model = load_model(config, args.checkpoint, device=device)
        reconstruct(model, config, data, args.out, args.split, args.batch_size, args.num_videos, device,
                    args.provenance, args.precision, workers, args.ray_address, args.checkpoint)
    return 0
