"""The `pipeline run reconstruct` stage: the paper's reconstruction protocol (§4.1).

    pipeline run reconstruct --config C --checkpoint K --data D --out O [--model NAME]

For each test clip the first frame is the source and every frame (the first included) is
the driving frame, with absolute motion (`model.reconstruct`). Outputs:
`O/<clip>/0000000.png ...` (predicted frames), `O/<clip>.mp4`, and `O/l1.csv` with one row
per clip (clip, num_frames, l1 = mean |prediction - driving| over pixels and frames,
values in [0, 1], on the model's float output). The protocol itself is fomm/reconstruction.py,
which `pipeline run benchmark` runs too. Frames go through the model in batches of
`--batch-size`, so memory does not grow with clip length. A clip's folder and video appear
only when complete; a rerun skips clips already in l1.csv with their video.
"""
from __future__ import annotations

import argparse
import csv
import logging
import shutil
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
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    from core.provenance import add_argument
    add_argument(parser)


def read_l1_csv(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {row["clip"]: row for row in csv.DictReader(handle)}


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


def reconstruct(model, config: Config, data_root: str | Path, out_dir: str | Path, split: str = "test",
                batch_size: int = 16, num_videos: int | None = None, device: str | None = None,
                provenance: bool = True, precision: str = "fp32") -> list[dict]:
    """Run the protocol over a split; returns the l1.csv rows (also written)."""
    from core.provenance import generation_or_warn
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    device = device or next(model.parameters()).device.type
    model = model.to(device).eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path, config_text = out_dir / "config.yaml", config_to_yaml(config)
    if not config_path.is_file() or config_path.read_text() != config_text:
        config_path.write_text(config_text)
    store = open_clips(data_root, split)
    clips = ReconstructionClips(store, config.dataset_params.frame_shape, batch_size,
                                num_videos if num_videos is not None else config.reconstruction_params.num_videos)
    csv_path = out_dir / "l1.csv"
    generation = generation_or_warn(provenance, config, "reconstruct", split)
    done = read_l1_csv(csv_path)
    rows = []
    for clip, batches in clips:
        if clip in done and (out_dir / f"{clip}.mp4").is_file() and (out_dir / clip).is_dir():
            rows.append({k: done[clip][k] for k in L1_FIELDS})
            continue
        row = write_clip(model, clip, batches, out_dir, store.fps(clip), device, generation, precision)
        log.info("%s: %d frames, L1 %.4f", clip, row["num_frames"], row["l1"])
        rows.append(row)
        write_l1_csv(csv_path, rows + [r for c, r in done.items() if c not in {x["clip"] for x in rows}])
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
    from fomm.checkpoint import checkpoint_config, load_checkpoint_file, load_model
    if args.num_videos is not None and args.num_videos < 1:  # checked before anything is written
        raise UserError(f"--num-videos must be a positive number of clips, got {args.num_videos}")
    check_count("--batch-size", args.batch_size)
    claim_output(args.out, args.data, args.checkpoint, args.config)  # checked before any work
    if args.config:
        config = load_config(args.config, args.overrides)
    else:
        config = checkpoint_config(load_checkpoint_file(args.checkpoint))
        if config is None:
            raise UserError(f"{args.checkpoint!r} carries no config (a released checkpoint): pass --config")
        config = config_from_dict(config_to_dict(config), args.overrides)
    if args.model and args.model != config.model_params.name:
        config = replace(config, model_params=replace(config.model_params, name=args.model))
    data = args.data or config.dataset_params.root_dir
    if not data:
        raise UserError("no data: pass --data or set dataset_params.root_dir")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with claim_output(args.out, data, args.checkpoint, args.config):
        model = load_model(config, args.checkpoint, device=device)
        reconstruct(model, config, data, args.out, args.split, args.batch_size, args.num_videos, device,
                    args.provenance, args.precision)
    return 0
