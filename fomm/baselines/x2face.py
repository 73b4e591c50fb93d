"""X2Face (Wiles, Koepke and Zisserman, "X2Face: A network for controlling face generation
using images, audio, and pose codes", ECCV 2018) as its authors' code builds and trains it:
`UnwrappedFaceWeightedAverage(output_num_channels=2, input_num_channels=3, inner_nc=128)`
of github.com/oawiles/X2Face (UnwrapMosaic/UnwrappedFace.py, SkipNet.py,
NoSkipNet_X2Face.py, train_model.py), re-implemented with its maths and parameter names.

Two pix2pix U-Nets of 8 stride-2 levels (256x256 in, 1x1 at the bottleneck), BatchNorm,
bias-free convolutions, and bilinear x2 upsampling + 3x3 conv on the way up:
- the embedding network (with skips, `pix2pixUnwrapped`) maps a source frame S to 3 maps:
  2 offsets and 1 confidence c. The embedded face is E = S(G_e) with
  G_e = identity + tanh(offsets) (Sec. 3.1); several source views are averaged with
  weights exp(c) + 0.1 (the weighted-average variant of the paper and the demo notebook);
- the driving network (no skips, `pix2pixSampler`, a 1x1 bottleneck of `inner_nc`
  channels) maps the driving frame D to 2 maps that end in tanh; the code applies tanh once
  more: G_d = identity + tanh(tanh(net(D))). The output is Y = E(G_d).
The identity is `np.linspace(-1, 1, N)` on both axes (pixel centres at -1 and 1) and
sampling pads with zeros. Training is the L1 loss ||Y - D||_1 with SGD (lr 1e-3, momentum
0.9, batch 16) and no augmentation (train_model.py; configs/x2face-*.yaml).

`model_params.align_corners` sets both grid_sample and the bilinear upsampling: True is
how the released model was trained (pytorch 0.2 behaved so); False is torch's current
default, which ../shared/reference/x2face-golden.pt pins.

Parameter names: the released file is {'state_dict': model.state_dict()} with keys
`pix2pixUnwrapped.netG.model...` and `pix2pixSampler.netG.model...`; here the two networks
are the sub-networks `embedding_network` and `driving_network`, whose keys are the rest of
those names (`model.submodule.down.1.weight`, ...). `from_released` and `to_released` map
between the two.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from core.config import Config, resolve_align_corners
from core.errors import UserError
from fomm.api import Motion, MotionTransferModel
from fomm.blocks import make_coordinate_grid, warp

log = logging.getLogger(__name__)

# Released key prefix -> sub-network here.
RELEASED_NAMES = {"pix2pixUnwrapped.netG.": "embedding_network", "pix2pixSampler.netG.": "driving_network"}
# pix2pix 'unet_256': 8 stride-2 levels take 256x256 to 1x1.
NUM_LEVELS = 8
FRAME_MULTIPLE = 2 ** NUM_LEVELS
# Added to exp(confidence) before views are averaged (UnwrappedFace.py forward).
CONFIDENCE_FLOOR = 0.1


class UNetLevel(nn.Module):
    """One level of the U-Net, outside in (SkipNet.py UnetSkipConnectionBlockBetterUpsampler).

    down: LeakyReLU(0.2), Conv 4x4 stride 2, BatchNorm(inner): the outermost level keeps
          only the conv, the innermost drops the BatchNorm.
    up:   ReLU, bilinear x2, Conv 3x3, BatchNorm(outer): the outermost level has no
          BatchNorm, and ends in tanh in the driving network.
    With `skip`, every level but the outermost returns cat([up, activated input]): the
    original's LeakyReLU works in place, so its skip carries the activated input.
    The layer indices and the registration order (up before down) are the original's.
    """

    def __init__(self, outer: int, inner: int, submodule: "UNetLevel | None", skip: bool,
                 align_corners: bool, in_channels: int | None = None, final_tanh: bool = False):
        super().__init__()
        self.outermost, self.skip = in_channels is not None, skip
        innermost = submodule is None
        up_in = 2 * inner if skip and not innermost else inner
        up = [nn.ReLU(), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align_corners),
              nn.Conv2d(up_in, outer, kernel_size=3, padding=1, bias=False)]
        down_conv = nn.Conv2d(in_channels or outer, inner, kernel_size=4, stride=2, padding=1, bias=False)
        if self.outermost:
            down = [down_conv]
            up += [nn.Tanh()] if final_tanh else []
        else:
            down = [nn.LeakyReLU(0.2), down_conv] + ([] if innermost else [nn.BatchNorm2d(inner)])
            up += [nn.BatchNorm2d(outer)]
        self.up = nn.Sequential(*up)
        self.down = nn.Sequential(*down)
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.outermost:
            x = self.down[0](x)  # LeakyReLU: what the skip carries
            inner = self.down[1:](x)  # (B, inner, H/2, W/2)
        else:
            inner = self.down(x)
        if self.submodule is not None:
            inner = self.submodule(inner)
        out = self.up(inner)  # (B, outer, H, W)
        return torch.cat([out, x], dim=1) if self.skip and not self.outermost else out


class UNet(nn.Module):
    """pix2pix 'unet_256' with the bilinear upsampler: widths ngf, 2ngf, 4ngf, then 8ngf down
    to a `bottleneck`-channel 1x1 map (SkipNet.py / NoSkipNet_X2Face.py
    UnetGeneratorBetterUpsampler). `model` is the outermost level, as in the original."""

    def __init__(self, in_channels: int, out_channels: int, ngf: int, bottleneck: int, skip: bool,
                 align_corners: bool, final_tanh: bool = False):
        super().__init__()
        level = UNetLevel(8 * ngf, bottleneck, None, skip, align_corners)
        for _ in range(NUM_LEVELS - 5):
            level = UNetLevel(8 * ngf, 8 * ngf, level, skip, align_corners)
        for outer in (4 * ngf, 2 * ngf, ngf):
            level = UNetLevel(outer, 2 * outer, level, skip, align_corners)
        self.model = UNetLevel(out_channels, ngf, level, skip, align_corners, in_channels=in_channels,
                               final_tanh=final_tanh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def xavier_init(module: nn.Module) -> None:
    """The original's 'xavier' initialisation (SkipNet.py weights_init_xavier): conv weights
    Xavier-normal with gain 1; BatchNorm weights uniform on [0.02, 1] (its
    `init.uniform(w, 1.0, 0.02)` on pytorch 0.2) and biases 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_normal_(module.weight, gain=1.0)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.uniform_(module.weight, 0.02, 1.0)
        nn.init.zeros_(module.bias)


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    # Grids and confidences stay fp32 under bf16 autocast (bf16 moves a point by ~0.5 px
    # at 256) and keep float64 when the model runs in float64.
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class X2Face(MotionTransferModel):
    """X2Face under the `fomm.api` contract; motion = {'frame': the driving frame}.

    `forward(driving, *sources)` is the original's `forward(target_pose, *input_imgs)`;
    `unwrapped` and `sampler` are its `get_unwrapped_oneimage` and `get_sampler`.
    """
    name = "x2face"
    # both networks output sampling grids (the embedding and the driving motion): kept float
    float_modules = ("embedding_network", "driving_network")

    def __init__(self, config: Config):
        super().__init__()
        config = resolve_align_corners(config, None)  # built directly: a new model (False)
        model = config.model_params
        params, channels = model.x2face_params, model.common_params.num_channels
        self.align_corners = model.align_corners
        # 2 offsets + 1 confidence (Pix2PixModel(3)); the driving network's 2 offsets end in tanh.
        self.embedding_network = UNet(channels, 3, params.ngf, 8 * params.ngf, skip=True,
                                      align_corners=model.align_corners)
        self.driving_network = UNet(channels, 2, params.ngf, params.inner_nc, skip=False,
                                    align_corners=model.align_corners, final_tanh=True)
        self.apply(xavier_init)
        if any(config.train_params.loss_weights.perceptual):
            log.warning("x2face trains on the L1 loss alone, as the original: the config's perceptual "
                        "loss weights are not used")

    # ------------------------------------------------------------------ the original's maths
    @staticmethod
    def identity_grid(frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(1, N, N, 2) linspace(-1, 1, N) grid of the original (N = frames.size(2), square):
        the identity of grid_sample with align_corners=True."""
        height, width = frames.shape[2:]
        if height != width or height % FRAME_MULTIPLE:
            raise UserError(f"x2face frames are {height}x{width}; expected square frames whose side is a "
                            f"multiple of {FRAME_MULTIPLE} (its U-Nets have {NUM_LEVELS} stride-2 levels)")
        return make_coordinate_grid((height, width), dtype, frames.device).unsqueeze(0)

    def embed(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedded face S(G_e) (B, C, H, W), its grid G_e (B, H, W, 2) and the view weight
        exp(c) + 0.1 (B, 1, H, W)."""
        identity = self.identity_grid(source, _at_least_float32(source).dtype)  # checks the size first
        maps = _at_least_float32(self.embedding_network(source))  # (B, 3, H, W)
        grid = torch.tanh(maps[:, :2]).permute(0, 2, 3, 1) + identity
        face = warp(source, grid, self.align_corners, padding_mode="zeros")
        return face, grid, maps[:, 2:3].exp() + CONFIDENCE_FLOOR

    def unwrapped(self, source: torch.Tensor) -> torch.Tensor:
        """The embedded face of one view (get_unwrapped_oneimage): (B, C, H, W)."""
        return self.embed(source)[0]

    def sampler(self, driving: torch.Tensor) -> torch.Tensor:
        """G_d = identity + tanh(driving network(D)) (get_sampler): (B, H, W, 2). The network
        already ends in tanh; the original applies it a second time."""
        identity = self.identity_grid(driving, _at_least_float32(driving).dtype)  # checks the size first
        offsets = torch.tanh(_at_least_float32(self.driving_network(driving)))  # (B, 2, H, W)
        return offsets.permute(0, 2, 3, 1) + identity

    @staticmethod
    def average_views(faces: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
        """sum_v w_v E_v / sum_v w_v: the weighted average over source views (one view
        gives E_1 up to rounding, as in the original)."""
        return sum(w * f for w, f in zip(weights, faces)) / sum(weights)

    def forward(self, driving: torch.Tensor, *sources: torch.Tensor) -> torch.Tensor:
        """Y = E(G_d), E the weighted average of the sources' embedded faces: (B, C, H, W)."""
        if not sources:
            raise UserError("x2face needs at least one source view")
        faces, _, weights = zip(*(self.embed(source) for source in sources))
        return warp(self.average_views(list(faces), list(weights)), self.sampler(driving),
                    self.align_corners, padding_mode="zeros")

    # ------------------------------------------------------------------ fomm.api contract
    def detect(self, frames: torch.Tensor) -> Motion:
        """X2Face has no motion descriptor: its driving network reads the frame itself."""
        return {"frame": frames}

    def keypoints(self, motion: Motion) -> None:
        return None

    def generate(self, source: torch.Tensor, motion_source: Motion, motion_driving: Motion
                 ) -> dict[str, torch.Tensor]:
        embedded, embedding_grid, weight = self.embed(source)
        driving_grid = self.sampler(motion_driving["frame"])
        # One view, averaged as forward() averages (equal to `embedded` up to rounding).
        prediction = warp(self.average_views([embedded], [weight]), driving_grid, self.align_corners,
                          padding_mode="zeros")
        # Not in the original: G_e(G_d(z)), where in the source each output pixel comes from
        # (for drawings and the benchmark's motion error; no loss uses it, so no gradient);
        # border padding keeps it a coordinate.
        with torch.no_grad():
            deformation = warp(embedding_grid.permute(0, 3, 1, 2), driving_grid, self.align_corners,
                               padding_mode="border").permute(0, 2, 3, 1)  # (B, H, W, 2)
            deformed = warp(source, deformation, self.align_corners, padding_mode="zeros")
        return {"prediction": prediction, "embedded": embedded, "embedding_grid": embedding_grid,
                "driving_grid": driving_grid, "confidence": weight, "deformation": deformation,
                "deformed": deformed}

    def transfer(self, motion_source: Motion, motion_driving: Motion, motion_initial: Motion,
                 relative: bool = True, relative_jacobian: bool = True,
                 adapt_movement_scale: bool = False) -> Motion:
        """X2Face drives with the frame itself; there is no relative form of its motion, so
        every option gives the driving frame (as X2Face itself animates)."""
        if relative or adapt_movement_scale:
            log.debug("x2face has no relative motion; driving with the frames as they are")
        return dict(motion_driving)

    def generator_losses(self, source, driving, kit):
        """The L1 photometric loss ||Y - D||_1 (Sec. 3.2; train_model.py nn.L1Loss), alone."""
        if not kit.weights.reconstruction_l1:
            raise UserError("x2face trains on train_params.loss_weights.reconstruction_l1, which is 0 "
                            "in this config; expected a positive weight (1 in configs/x2face-*.yaml)")
        generated = self.generate(source, self.detect(source), self.detect(driving))
        return {"reconstruction_l1": kit.reconstruction_l1(generated["prediction"], driving)}, generated

    def optimizer_groups(self):
        return {"generator": list(self.parameters())}

    # ------------------------------------------------------------------ released checkpoints
    def state_from_checkpoint(self, checkpoint: dict) -> dict[str, dict[str, torch.Tensor]]:
        """The released `x2face_model.pth` ({'state_dict': ...}, original names) or the
        project's format (one state dict per sub-network)."""
        released = checkpoint.get("state_dict")
        if isinstance(released, dict):
            return from_released(released)
        return super().state_from_checkpoint(checkpoint)


def from_released(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Released names -> {sub-network: state dict}. A file saved by pytorch 0.2 has no
    `num_batches_tracked`: those are filled with 0, as torch's BatchNorm does on load."""
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in RELEASED_NAMES.values()}
    for key, tensor in state.items():
        key = key.removeprefix("module.")  # saved from a DataParallel wrapper
        prefix = next((p for p in RELEASED_NAMES if key.startswith(p)), None)
        if prefix is None:
            raise UserError(f"x2face checkpoint tensor {key!r} is not X2Face's; expected names "
                            f"starting with {' or '.join(RELEASED_NAMES)}")
        parts[RELEASED_NAMES[prefix]][key[len(prefix):]] = tensor
    for part in parts.values():
        for key in [k for k in part if k.endswith(".running_mean")]:
            part.setdefault(key.removesuffix("running_mean") + "num_batches_tracked",
                            torch.zeros((), dtype=torch.long))
    return parts


def to_released(parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{sub-network: state dict} -> the released file's flat `state_dict` names."""
    prefixes = {name: prefix for prefix, name in RELEASED_NAMES.items()}
    return {prefixes[name] + key: tensor for name, state in parts.items() for key, tensor in state.items()}
