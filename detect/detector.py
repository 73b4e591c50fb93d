"""A trained detector: the network, the input size it was trained at, its threshold and what
it was trained on, in one file that carries everything a later `eval` or `score` needs.

File (written by fomm.checkpoint's atomic saver, read by its restricted loader): `format`,
`architecture` ("xception"), `width`, `size`, `threshold` (on the video-level probability),
`state_dict`, `trained_on` (data, manifest sha256, families, clip and frame counts) and
`settings` (the training options).

A video's probability is the mean of its frames' probabilities (FaceForensics++'s
aggregation), frames spread evenly over it; a frame is resized whole to `size` x `size`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from detect.xception import Xception, fake_probability

log = logging.getLogger(__name__)

FORMAT = "motion-transfer-detector/1"
ARCHITECTURES = ("xception",)
MODEL_FILE = "detector.pt"   # in a detector folder (`pipeline run detect train --out`)


@dataclass
class Detector:
    net: Xception
    size: int
    threshold: float = 0.5
    trained_on: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @classmethod
    def build(cls, width: float, size: int, **fields) -> "Detector":
        return cls(Xception(num_classes=2, width=width), size, **fields)

    @torch.no_grad()
    def frame_probabilities(self, frames: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(n,) probability that each (size, size, 3) uint8 frame is generated."""
        from core.frames import to_tensor
        self.net.eval()
        device = next(self.net.parameters()).device
        out = [fake_probability(self.net(to_tensor(frames[start:start + batch_size], device)))
               for start in range(0, len(frames), batch_size)]
        return torch.cat(out).cpu().numpy().astype(np.float64)

    def video_probability(self, path: Path, frames: int | None = 32) -> tuple[float, np.ndarray]:
        """(video probability, frame probabilities) of a video, frame folder or image."""
        from detect.dataset import read_frames_of
        scores = self.frame_probabilities(read_frames_of(Path(path), frames, self.size))
        return float(scores.mean()), scores

    def save(self, path: Path) -> Path:
        from fomm.checkpoint import save_checkpoint
        return save_checkpoint(path, {
            "format": FORMAT, "architecture": "xception", "width": self.net.width, "size": self.size,
            "threshold": self.threshold, "state_dict": {k: v.cpu() for k, v in self.net.state_dict().items()},
            "trained_on": self.trained_on, "settings": self.settings})


def load_detector(path: str | Path, device: str = "cpu") -> Detector:
    """A detector file written by `Detector.save`; UserError for anything else."""
    from detect.xception import load_weights
    from fomm.checkpoint import load_checkpoint_file
    state = load_checkpoint_file(path)
    if state.get("format") != FORMAT or state.get("architecture") not in ARCHITECTURES:
        raise UserError(f"--model {str(path)!r} is not a detector written by `pipeline run detect train` "
                        f"(format {state.get('format')!r}, expected {FORMAT!r})")
    detector = Detector.build(float(state["width"]), int(state["size"]), threshold=float(state["threshold"]),
                              trained_on=state.get("trained_on", {}), settings=state.get("settings", {}))
    load_weights(detector.net, state["state_dict"])
    detector.net.to(device).eval()
    return detector


def initial_weights(net: Xception, path: str | Path) -> None:
    """Published Xception weights (`--weights`: ImageNet, FaceForensics++) into a new network,
    read with the restricted loader; a file holding `state_dict` under a key is accepted."""
    from detect.xception import load_weights
    from fomm.checkpoint import load_checkpoint_file
    state = load_checkpoint_file(path)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state.get(key), dict) and all(isinstance(v, torch.Tensor) for v in state[key].values()):
            state = state[key]
            break
    kept = load_weights(net, state)
    log.info("initial weights from %s%s", path, f" (new head: {kept})" if kept else "")


def model_path(path: str | Path) -> Path:
    """The detector file: `path` itself, or `path/detector.pt` when it is a folder."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def score_files(model: str | Path, files, frames: int | None = 32, device: str = "cpu") -> dict:
    """The probability that each video, image or frame folder is generated and its label at
    the detector's threshold: {"threshold", "results": [{file, probability, label}]}, files
    named as given."""
    detector = load_detector(model_path(model), device)
    results = []
    for name in files:
        probability, _ = detector.video_probability(Path(name), frames)
        results.append({"file": str(name), "probability": round(probability, 6),
                        "label": "generated" if probability >= detector.threshold else "real"})
    return {"threshold": detector.threshold, "results": results}
