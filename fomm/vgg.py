"""VGG19 feature extractor for the perceptual loss (FOMM §3.4, after Johnson et al.).

The network is defined here with torchvision's layer indices (`features.<i>`), so the
ImageNet weights torchvision publishes (`vgg19-dcbb9e9d.pth`) load by name; only the
layers up to relu5_1 are built. Inputs are images in [0, 1]; ImageNet normalisation is
applied inside. `forward` returns the activations relu1_1, relu2_1, relu3_1, relu4_1,
relu5_1 (only the first `num_outputs` of them, so a loss whose last weights are 0 does
not pay for the deepest layers).

Where the weights come from (`train_params.vgg19_weights`):
- "torchvision": `$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth` (torch.hub's cache,
  filled by `torchvision.models.vgg19(weights="IMAGENET1K_V1")` on a machine online);
- a path to that file (or any state dict with torchvision's `features.*` keys);
- "random": the documented substitute for offline machines and tests, a VGG19 with
  fixed-seed Kaiming initialisation (identical on every machine). Its features still
  measure structure, but a loss on them is not the paper's perceptual loss.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from core.errors import UserError

log = logging.getLogger(__name__)

TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
RANDOM_SEED = 19
# torchvision's vgg19 "E" configuration up to conv5_1; "M" is a 2x2 max pool.
_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
# End indices (exclusive) in `features` of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
SLICE_ENDS = (2, 7, 12, 21, 30)


def torchvision_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def _build_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for item in _LAYERS:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            cin = item
    return nn.Sequential(*layers)  # 30 modules: indices 0..29


def resolve_weights(spec: str) -> Path | None:
    """The weights file `spec` names, None for "random"; UserError when it is not there."""
    if spec == "random":
        return None
    path = torchvision_cache_path() if spec == "torchvision" else Path(spec).expanduser()
    if not path.is_file():
        raise UserError(
            f"VGG19 ImageNet weights not found at {path} (train_params.vgg19_weights={spec!r}); "
            f"expected torchvision's {TORCHVISION_FILE} in $TORCH_HOME/hub/checkpoints, a path to it "
            f"(train_params.vgg19_weights=/path/{TORCHVISION_FILE}), or train_params.vgg19_weights=random "
            f"for the documented fixed-seed random substitute (not the paper's perceptual loss)")
    return path


class Vgg19(nn.Module):
    """Frozen VGG19 returning [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1] of an image in [0, 1]."""

    def __init__(self, weights: str = "torchvision", num_outputs: int = 5):
        super().__init__()
        if not 1 <= num_outputs <= len(SLICE_ENDS):
            raise ValueError(f"num_outputs={num_outputs}: expected 1 to {len(SLICE_ENDS)}")
        # Layers past the last output a loss uses are never run (their weights still load).
        self.num_outputs = num_outputs
        self.features = _build_features()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        path = resolve_weights(weights)
        if path is None:
            self._init_random()
        else:
            self._load(path)
        self.weights = weights
        self.requires_grad_(False)
        self.eval()

    def _init_random(self) -> None:
        gen = torch.Generator().manual_seed(RANDOM_SEED)
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                nn.init.zeros_(module.bias)

    def _load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        wanted = {k: v for k, v in state.items()
                  if k.startswith("features.") and int(k.split(".")[1]) < len(self.features)}
        expected = {k for k in self.state_dict() if k.startswith("features.")}
        missing = sorted(expected - set(wanted))
        if missing:
            raise UserError(f"{path} is not a torchvision VGG19 state dict: it lacks {missing[:3]}")
        self.load_state_dict(wanted, strict=False)
        log.info("loaded VGG19 ImageNet weights from %s", path)

    def train(self, mode: bool = True):
        # Always eval: the loss network is frozen (no dropout/BN here, but keep it explicit).
        return super().train(False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        out = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        features, start = [], 0
        for end in SLICE_ENDS[:self.num_outputs]:
            for layer in self.features[start:end]:
                out = layer(out)
            features.append(out)
            start = end
        return features
