"""`animate --smooth` (fomm/smoothing.py): the One-Euro filter's properties, its place in the
Animator (state across batches, padding, families) and, on a real clip, a lower jitter."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.errors import UserError
from fomm.animation import AnimateOptions, Animator
from fomm.api import parameter_entries
from fomm.smoothing import MotionSmoother, OneEuroFilter

CPU = torch.device("cpu")


def random_walk(steps: int, shape=(5, 2), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.cumsum(0.02 * torch.randn(steps, *shape, generator=generator), dim=0)


# --------------------------------------------------------------------------- the filter
def test_the_papers_two_steps_by_hand():
    rate, min_cutoff, beta = 10.0, 1.0, 0.5
    filt = OneEuroFilter(rate, min_cutoff, beta, d_cutoff=1.0)
    out = filt(torch.tensor([[0.0], [1.0]])).flatten().tolist()
    a_d = 1 / (1 + rate / (2 * math.pi * 1.0))            # alpha at d_cutoff
    speed = a_d * (1.0 - 0.0) * rate                       # dxhat_1 = a_d * dx_1 + (1 - a_d) * 0
    a = 1 / (1 + rate / (2 * math.pi * (min_cutoff + beta * speed)))
    assert out[0] == 0.0 and out[1] == pytest.approx(a * 1.0, rel=1e-6)


def test_a_constant_is_unchanged_and_a_step_is_followed_without_overshoot():
    constant = torch.full((40, 5, 2), 0.37)
    assert torch.equal(OneEuroFilter(30.0)(constant), constant)
    step = torch.cat([torch.zeros(10, 3), torch.ones(50, 3)])
    out = OneEuroFilter(30.0)(step)
    assert torch.equal(out[:10], step[:10])
    assert 0 < out[10].min() < 1 and torch.all(out[1:] >= out[:-1]) and out.max() <= 1  # a low-pass: no ringing
    assert float((1 - out[-1]).abs().max()) < 1e-3                                     # it gets there
    # speed opens the cutoff: a fast step is followed faster than a still signal's cutoff alone
    slow = OneEuroFilter(30.0, beta=0.0)(step)
    assert torch.all(out[10:20] >= slow[10:20]) and float(out[12].min()) > float(slow[12].min())


def test_state_carries_across_batches_and_padding_leaves_it():
    value, jacobian = random_walk(24), random_walk(24, (5, 2, 2), seed=1) + torch.eye(2)
    motion = {"value": value, "jacobian": jacobian}
    whole = MotionSmoother(("value", "jacobian"), rate=25)(motion)
    for size in (1, 8, 5):
        smoother = MotionSmoother(("value", "jacobian"), rate=25)
        parts = [smoother({k: v[i:i + size] for k, v in motion.items()}) for i in range(0, 24, size)]
        for key in motion:
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[key]), (key, size)
    padded = MotionSmoother(("value",), rate=25)
    first = padded({"value": torch.cat([value[:5], value[4:5].expand(3, 5, 2)])}, valid=5)["value"]
    rest = padded({"value": value[5:]})["value"]
    reference = MotionSmoother(("value",), rate=25)({"value": value})["value"]
    assert torch.equal(torch.cat([first[:5], rest]), reference)
    looked = MotionSmoother(("value",), rate=25)                            # valid=0 (int8's calibration pass)
    assert torch.equal(looked({"value": value[:8]}, valid=0)["value"], reference[:8])
    assert torch.equal(looked({"value": value}, valid=None)["value"], reference)  # ...changed nothing


def test_strength_rate_dtype_and_entries():
    signal = random_walk(60)
    light = MotionSmoother(("value",), 25, strength=0.5)({"value": signal})["value"]
    hard = MotionSmoother(("value",), 25, strength=4)({"value": signal})["value"]
    def roughness(x):
        return float((x[2:] - 2 * x[1:-1] + x[:-2]).abs().mean())
    assert roughness(hard) < roughness(light) < roughness(signal)
    half = MotionSmoother(("value",), 25)({"value": signal.to(torch.bfloat16)})["value"]
    assert half.dtype == torch.bfloat16                                     # filtered in float32, returned as given
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(UserError, match="--smooth-strength"):
            MotionSmoother(("value",), 25, strength=bad)
    frames = torch.zeros(2, 3, 64, 64)
    motion = {"value": torch.zeros(2, 10, 2), "jacobian": torch.zeros(2, 10, 2, 2), "var": torch.zeros(2, 10, 1, 1),
              "heatmap": torch.zeros(2, 10, 16, 16), "frame": frames, "ids": torch.zeros(2, 10, dtype=torch.long)}
    assert parameter_entries(motion) == ("value", "jacobian", "var")       # parameters, not maps


# --------------------------------------------------------------------------- in the Animator
class Replay:
    """A `detect` that hands out the rows of one recorded motion dict, batch after batch."""

    def __init__(self, motion):
        self.motion, self.at = motion, 0

    def __call__(self, frames):
        rows = slice(self.at, self.at + len(frames))
        self.at += len(frames)
        return {key: value[rows] for key, value in self.motion.items()}


def test_animator_batches_of_1_and_8_give_the_same_motion(model, shared_data):
    from core.frames import to_tensor
    from core.media import read_frames
    from fomm import source_crop
    frames = [source_crop.prepare(f, None, (64, 64)) for f in read_frames(shared_data / "faces/fomm-demo/04.mp4", 0, 16)]
    options = AnimateOptions(smooth=True, precision="fp32")
    detected = model.detect(to_tensor(frames))                              # the raw motion, one call
    outputs = {}
    for size in (1, 8):
        animator = Animator.from_frames(model, frames[0], frames[0], options, fps=30)
        animator.model.detect = Replay(detected)                            # the same raw motion in any batch
        outputs[size] = [animator.motion(to_tensor(frames[i:i + size]))[0] for i in range(0, 16, size)]
    for key in detected:
        assert torch.equal(torch.cat([m[key] for m in outputs[1]]), torch.cat([m[key] for m in outputs[8]]))
    assert not torch.equal(torch.cat([m["value"] for m in outputs[1]]), detected["value"])  # it did filter


def test_smooth_on_a_family_without_keypoints_is_refused():
    from fomm.config import load_config
    from fomm.registry import build_model
    model = build_model(load_config("x2face-tiny")).eval()
    size = load_config("x2face-tiny").dataset_params.frame_shape[0]
    frame = np.zeros((size, size, 3), np.uint8)
    with pytest.raises(UserError, match="--smooth: x2face .*nothing to smooth"):
        Animator.from_frames(model, frame, frame, AnimateOptions(smooth=True))


def test_cli_flags(checkpoint, shared_data, tmp_path, capsys):
    from stages.animate import options_from_args
    from fomm.config import load_config
    from stages import cli
    base = ["run", "animate", "--config", "tiny", "--source", "s.png", "--driving", "d.mp4", "--out", "o.mp4"]
    parsed = options_from_args(cli.build_parser("animate").parse_args(base + ["--smooth", "--smooth-strength", "2"]),
                               load_config("tiny"))
    assert parsed.smooth and parsed.smooth_strength == 2.0
    code = cli.main(["run", "animate", "--config", "tiny", "--checkpoint", str(checkpoint), "--source",
                     str(shared_data / "faces/sadtalker/happy.png"), "--driving",
                     str(shared_data / "faces/fomm-demo/08.mp4"), "--out", str(tmp_path / "o.mp4"),
                     "--smooth", "--smooth-strength", "0"])
    assert code == 2 and "--smooth-strength 0" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


# --------------------------------------------------------------------------- a real clip
def test_smooth_lowers_jitter_on_a_real_clip():
    """benchmarks/smoothing.py's protocol on 30 frames of a real clip: the weightless
    landmark-warp model (dlib's 5 landmarks drive an affine warp of the first frame), scored
    with dlib68 against the real clip: the filter lowers the keypoint acceleration error and
    the static-region flicker, and costs little AKD."""
    from benchmarks.smoothing import LandmarkWarp, animate_clip, clip_frames, scores
    from metrics.backends.dlib68 import Dlib68Pose
    model, pose = LandmarkWarp(), Dlib68Pose(upsample=0)
    real, fps = clip_frames("04", 30)
    real_kp = pose.detect(real)
    plain = scores(real, animate_clip(model, real, fps, None)[0], pose, real_kp)
    steady = scores(real, animate_clip(model, real, fps, 1.0)[0], pose, real_kp)
    assert plain["jitter_frames"] == steady["jitter_frames"] == 28          # every face found
    assert steady["jitter"] < 0.95 * plain["jitter"], (plain, steady)
    assert steady["flicker"] < 0.6 * plain["flicker"], (plain, steady)
    assert steady["akd"] < plain["akd"] + 0.5, (plain, steady)
