"""X2Face's section of the run config, `model_params.x2face_params`."""
from __future__ import annotations

from dataclasses import dataclass

SECTION = "x2face_params"


@dataclass(frozen=True)
class X2FaceParams:
    """X2Face (Wiles et al., ECCV 2018) as train_model.py builds it,
    `UnwrappedFaceWeightedAverage(output_num_channels=2, input_num_channels=3, inner_nc=128)`;
    see fomm/x2face/model.py. Both networks are pix2pix U-Nets of 8 levels with
    BatchNorm, so frames are square with a side that is a multiple of 256."""
    # Width of both U-Nets (pix2pix's ngf): ngf, 2ngf, 4ngf, then 8ngf channels per level.
    ngf: int = 64
    # Channels of the driving network's 1x1 bottleneck (train_model.py --inner_nc).
    inner_nc: int = 128


Params = X2FaceParams
