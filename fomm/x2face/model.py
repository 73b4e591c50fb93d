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

from core.config import resolve_align_corners
from core.errors import UserError
from fomm.api import Motion, MotionTransferModel
from fomm.blocks import make_coordinate_grid, warp
from fomm.config import Config
from fomm.x2face.unet import FRAME_MULTIPLE, NUM_LEVELS, UNet, xavier_init

log = logging.getLogger(__name__)

# Released key prefix -> sub-network here.
RELEASED_NAMES = {"pix2pixUnwrapped.netG.": "embedding_network", "pix2pixSampler.netG.": "driving_network"}
# Added to exp(confidence) before views are averaged (UnwrappedFace.py forward).
CONFIDENCE_FLOOR = 0.1


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
                 adapt_movement_scale: bool = False, avd: bool = False) -> Motion:
        """X2Face drives with the frame itself; there is no relative form of its motion, so
        every option gives the driving frame (as X2Face itself animates)."""
        if avd:
            self.refuse_avd()
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
    @classmethod
    def recognises(cls, checkpoint) -> bool:
        """x2face_model.pth: {'state_dict': ...} with the pix2pix networks' prefixes."""
        state = checkpoint.get("state_dict")
        return isinstance(state, dict) and any(
            isinstance(key, str) and key.removeprefix("module.").startswith(tuple(RELEASED_NAMES)) for key in state)

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
