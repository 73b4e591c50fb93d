"""MRAA's animation-via-disentanglement network (paper Sec. 3.4; modules/avd_network.py).

Region parameters as a vector (per region its shift and flattened affine: 6 K values). Two MLP
encoders, identity (the source's regions) and pose (the driving frame's), each
Linear-BatchNorm-ReLU x 3 then Linear to its bottleneck, and a decoder of the concatenated
[pose, identity] codes back to 6 K values: the source's shape in the driving frame's pose,
{shift, affine, covar = A A^T}. Trained in a second stage on frames of one video, with the pose
input randomly rescaled so that the identity branch must carry the shape (train_avd.py;
fomm/mraa/model.py). With revert_axis_swap, the source's affines are first multiplied by
sign((A_source A_driving^-1)[0, 0]), undoing SVD's axis flips between the two frames.

The layer indices (`id_encoder.0`, ..., `decoder.9`) are the original's. It runs in float32 at
least: its outputs are coordinates.
"""
from __future__ import annotations

import torch
from torch import nn

from fomm.blocks import at_least_fp32, full_precision, inverse_2x2
from fomm.mraa.config import AvdNetworkParams


def mlp(widths: list[int]) -> nn.Sequential:
    """Linear-BatchNorm1d-ReLU between consecutive widths, a plain Linear last."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(cin, cout))
        if i < len(widths) - 2:
            layers += [nn.BatchNorm1d(cout), nn.ReLU()]
    return nn.Sequential(*layers)


class AVDNetwork(nn.Module):
    def __init__(self, params: AvdNetworkParams, num_regions: int):
        super().__init__()
        size = 6 * num_regions
        self.num_regions = num_regions
        self.revert_axis_swap = params.revert_axis_swap
        self.id_encoder = mlp([size, 256, 512, 1024, params.id_bottle_size])
        self.pose_encoder = mlp([size, 256, 512, 1024, params.pose_bottle_size])
        self.decoder = mlp([params.pose_bottle_size + params.id_bottle_size, 1024, 512, 256, size])

    @staticmethod
    def region_params_to_emb(params: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 6 K): per region x, y, then the affine's four entries row by row."""
        shift, affine = params["shift"], params["affine"]
        return torch.cat([shift, affine.flatten(2)], dim=-1).flatten(1)

    def emb_to_region_params(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        emb = emb.view(emb.shape[0], self.num_regions, 6)
        return {"shift": emb[:, :, :2], "affine": emb[:, :, 2:].reshape(emb.shape[0], self.num_regions, 2, 2)}

    def forward(self, region_params_id: dict[str, torch.Tensor], region_params_pose: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
        with full_precision(region_params_id["shift"]):
            identity = {key: at_least_fp32(region_params_id[key]) for key in ("shift", "affine")}
            pose = {key: at_least_fp32(region_params_pose[key]) for key in ("shift", "affine")}
            if self.revert_axis_swap:
                relative = identity["affine"] @ inverse_2x2(pose["affine"])
                identity["affine"] = identity["affine"] * torch.sign(relative[:, :, 0:1, 0:1])
            pose_code = self.pose_encoder(self.region_params_to_emb(pose))
            id_code = self.id_encoder(self.region_params_to_emb(identity))
            out = self.emb_to_region_params(self.decoder(torch.cat([pose_code, id_code], dim=1)))
            out["covar"] = out["affine"] @ out["affine"].transpose(-1, -2)
        return out
