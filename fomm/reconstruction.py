"""The paper's reconstruction protocol (§4.1), written once: `pipeline run reconstruct`
(fomm/reconstruct.py) and `pipeline run benchmark` (metrics/benchmark.py) both run it.

For each clip the first frame is the source and every frame, the first included, drives it
with absolute motion (`model.reconstruct`). Frames come in batches of (n, 3, H, W) floats at
the model's size, as `fomm.data.ReconstructionClips` makes them (core.frames.resize
"bilinear", rounded to uint8 like the stored frames the original reads).

L1 is the mean |prediction - driving| of a frame with values in [0, 1], on the model's float
output as the original's reconstruction.py computes it (not on the uint8 frames written to
disk, which would lower it by up to 0.5/255); a set of clips scores the mean over all their
frames, the paper's number (REFERENCE §2, `frame_weighted_l1`).

Layer: fomm/ (models), on core/.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from core.frames import to_uint8

log = logging.getLogger(__name__)


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
                        precision: str = "fp32", truncate: bool = False) -> Iterator[Reconstructed]:
    """The protocol over one clip's frames, batch by batch: the first frame of the first
    batch is the source of every frame. `precision` is a core.devices path (fp32 keeps L1
    comparable across machines). `truncate`: the uint8 predictions are `(255 * p)` truncated,
    the PNGs the original reconstruction.py wrote and pose-evaluation read (else rounded)."""
    from core.devices import resolve
    from fomm.checkpoint import check_finite_output
    path = resolve(precision, device, calibrates=False)
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
                     precision: str = "fp32", truncate: bool = False) -> Reconstructed:
    """`reconstruct_batches` over a whole clip, joined: for clips that fit in memory."""
    return Reconstructed.concat(list(reconstruct_batches(model, batches, device, precision, truncate)))
