"""TPSMM's animation-via-disentanglement network (modules/avd_network.py, MRAA's AVD applied to
TPSMM's keypoints): an identity encoder of the source keypoints and a pose encoder of the
driving keypoints, MLPs with BatchNorm, whose codes a decoder turns into keypoints with the
driving pose and the source's shape. Trained in its own stage (train_avd.py; model.py).

Widths 256-512-1024 are fixed in the original; the layer indices of its nn.Sequential
(`id_encoder.0`, ..., `decoder.9`) are the released checkpoints' names.
"""
from __future__ import annotations

import torch
from torch import nn

from fomm.tpsmm.tps import POINTS_PER_TPS

WIDTHS = (256, 512, 1024)


def mlp(sizes: tuple[int, ...], inplace: bool) -> nn.Sequential:
    """Linear, BatchNorm1d, ReLU per hidden width; a plain Linear last."""
    layers: list[nn.Module] = []
    for cin, cout in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU(inplace=inplace)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


class AVDNetwork(nn.Module):
    def __init__(self, num_tps: int, id_bottle_size: int = 64, pose_bottle_size: int = 64):
        super().__init__()
        size = POINTS_PER_TPS * 2 * num_tps
        self.num_tps = num_tps
        self.id_encoder = mlp((size, *WIDTHS, id_bottle_size), inplace=True)
        self.pose_encoder = mlp((size, *WIDTHS, pose_bottle_size), inplace=True)
        self.decoder = mlp((pose_bottle_size + id_bottle_size, *reversed(WIDTHS), size), inplace=False)

    def forward(self, kp_source: dict[str, torch.Tensor], kp_random: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
        """{'fg_kp': (B, 5K, 2)}: kp_random's pose on kp_source's identity."""
        batch = kp_source["fg_kp"].shape[0]
        pose = self.pose_encoder(kp_random["fg_kp"].reshape(batch, -1))
        identity = self.id_encoder(kp_source["fg_kp"].reshape(batch, -1))
        out = self.decoder(torch.cat([pose, identity], dim=1))
        return {"fg_kp": out.view(batch, self.num_tps * POINTS_PER_TPS, 2)}
