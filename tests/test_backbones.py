"""fomm/backbones.py: torchvision's ResNet names and shapes, so released weights load by name."""
from __future__ import annotations

import csv

import torch

from fomm.backbones import resnet18, resnet50


def layout(reference, config: str, module: str, prefix: str) -> dict[str, tuple[int, ...]]:
    with open(reference / "tpsmm-checkpoint-layout.tsv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle, delimiter="\t") if r["config"] == config and r["module"] == module]
    return {r["key"].removeprefix(prefix): tuple(eval(r["shape"])) for r in rows if r["key"].startswith(prefix)}


def shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in net.state_dict().items()}


def test_resnet18_has_tpsmm_released_layout(shared_reference):
    # TPSMM's vox-256: fc 512 -> 10 TPS x 5 points x 2 coordinates; the bg predictor takes 6 channels
    assert shapes(resnet18(num_classes=100)) == layout(shared_reference, "vox-256", "kp_detector", "fg_encoder.")
    assert shapes(resnet18(num_classes=6, in_channels=6)) == layout(shared_reference, "vox-256", "bg_predictor",
                                                                     "bg_encoder.")


def test_resnet50_is_torchvision_v15():
    net = resnet50(num_classes=751).eval()
    sd = net.state_dict()
    assert len(sd) == 320  # torchvision's resnet50 state dict: 161 params + 159 BN buffers
    # v1.5: the stride of a stage's first bottleneck is on its 3x3 conv
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].conv1.stride == (1, 1)
    x = torch.rand(2, 3, 64, 32)
    assert net.features(x).shape == (2, 2048)
    assert torch.equal(net(x), net.fc(net.features(x)))
