"""Monkey-Net: its defining properties, training through the shared loop, and the shared
`reconstruct` and `animate` stages, on real frames from ../shared/data. (Golden outputs:
tests/test_monkey_net_golden.py; X2Face: tests/test_x2face.py.)"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.frames import resize, to_tensor
from fomm.blocks import make_coordinate_grid
from fomm.config import load_config
from fomm.monkey_net.keypoints import heatmap_moments
from fomm.monkey_net.model import MonkeyNet
from fomm.registry import build_model

SIZE = (64, 64)


@pytest.fixture(scope="module")
def taichi_dir(shared_data) -> Path:
    return shared_data / "bodies" / "dwnet-taichi" / "1"


@pytest.fixture(scope="module")
def taichi_frames(taichi_dir) -> torch.Tensor:
    """Frames 0, 8, ..., 56 of a real Tai-Chi-HD test clip at 64x64: (8, 3, 64, 64)."""
    from core.media import load_image
    files = sorted(taichi_dir.glob("*.png"))[::8][:8]
    return to_tensor(resize(np.stack([load_image(f) for f in files]), SIZE))


@pytest.fixture()
def taichi_root(tmp_path, taichi_dir) -> Path:
    """A dataset in the original layout, `train/` and `test/` each holding one clip of real
    Tai-Chi frames (symlinks into ../shared/data, nothing copied)."""
    for split in ("train", "test"):
        clip = tmp_path / "data" / split / "taichi1"
        clip.mkdir(parents=True)
        for frame in sorted(taichi_dir.glob("*.png"))[::8][:8]:
            (clip / frame.name).symlink_to(frame.resolve())
    return tmp_path / "data"


def tiny(name: str, *overrides: str):
    return load_config(f"{name}-tiny", list(overrides))


# --------------------------------------------------------------------------- Monkey-Net
# Exact agreement with the original code: tests/test_monkey_net_golden.py.
def test_heatmap_moments_recover_mean_and_covariance_and_clip():
    """Monkey-Net Eq. 1-2 on a known anisotropic Gaussian: the moments are its parameters;
    clip_variance rescales a covariance whose smallest singular value is below the floor so
    that it equals the floor, and leaves a wider one alone."""
    mean = torch.tensor([0.2, -0.3], dtype=torch.float64)
    covariance = torch.tensor([[0.02, 0.006], [0.006, 0.01]], dtype=torch.float64)
    grid = make_coordinate_grid((128, 128), torch.float64)  # (h, w, 2)
    centred = grid - mean
    density = torch.exp(-0.5 * torch.einsum("hwi,ij,hwj->hw", centred, torch.linalg.inv(covariance), centred))
    heatmap = (density / density.sum()).view(1, 1, 128, 128)
    moments = heatmap_moments(heatmap, "matrix", clip_variance=1e-3)
    assert torch.allclose(moments["value"][0, 0], mean, atol=1e-4)
    # The original adds 1e-7 to every pixel of the heat map (empty maps stay finite): over 128x128
    # pixels that uniform floor widens the covariance by 1e-7 * sum_z (z - p)(z - p)^T (~6e-4).
    floor = 1e-7 * torch.einsum("hwi,hwj->ij", centred, centred)
    assert torch.allclose(moments["var"][0, 0], covariance + floor, atol=2e-4)  # s_min 0.0064 > clip: unchanged
    clipped = heatmap_moments(heatmap, "matrix", clip_variance=0.05)["var"][0, 0]
    assert torch.isclose(torch.linalg.svdvals(clipped).min(), torch.tensor(0.05, dtype=torch.float64))
    direction = clipped / clipped.norm()
    assert torch.allclose(direction, moments["var"][0, 0] / moments["var"][0, 0].norm())  # only rescaled
    single = heatmap_moments(heatmap, "single")["var"][0, 0, 0, 0]
    assert torch.isclose(single, (covariance + floor).diagonal().mean(), atol=2e-4)


def test_monkey_net_keypoints_on_real_frames(taichi_frames):
    torch.manual_seed(0)
    model = build_model(tiny("monkey-net")).eval()
    with torch.no_grad():
        kp = model.detect(taichi_frames)
        alone = model.detect(taichi_frames[3:4])
    assert kp["value"].shape == (8, 5, 2) and kp["var"].shape == (8, 5, 2, 2)
    # in eval mode a frame's keypoints do not depend on the rest of its batch, but on the frame
    assert torch.allclose(alone["value"], kp["value"][3:4], atol=1e-6)
    assert torch.allclose(alone["var"], kp["var"][3:4], atol=1e-6)
    assert (kp["value"][1:] - kp["value"][:1]).abs().amax() > 1e-3
    var = kp["var"].double()
    assert torch.allclose(var, var.transpose(-1, -2), atol=1e-6)
    assert (torch.linalg.svdvals(var).amin(-1) >= 1e-3 * (1 - 1e-4)).all()  # clip_variance 0.001


def test_monkey_net_untrained_motion_follows_the_keypoint_shifts(taichi_frames):
    """The mask head starts at zero weights with background logit 2 and no correction (as
    the original): with equal keypoints the motion is the identity grid; otherwise it is
    sum_k M_k (p_s^k - p_d^k) with M = softmax([2, 0, ..., 0])."""
    model = build_model(tiny("monkey-net")).eval()
    with torch.no_grad():
        motion = model.detect(taichi_frames[:2])
        same = model.generate(taichi_frames[:2], motion, motion)
        moved = {"value": motion["value"] + 0.1, "var": motion["var"]}
        shifted = model.generate(taichi_frames[:2], motion, moved)
    grid = make_coordinate_grid(same["deformation"].shape[1:3])
    assert torch.allclose(same["deformation"], grid.expand_as(same["deformation"]), atol=1e-6)
    weight = 1 / (1 + 5 * math.exp(-2))  # mask of the background = e^2 / (e^2 + 5)
    expected = grid - 0.1 * (1 - weight)
    assert torch.allclose(shifted["deformation"], expected.expand_as(shifted["deformation"]), atol=1e-6)


@pytest.mark.parametrize("align_corners", [True, False])
def test_monkey_net_grid_conventions(taichi_frames, align_corners):
    """Monkey-Net's grids put -1/+1 on the border pixels' centres (make_coordinate_grid) under
    both conventions; align_corners only sets grid_sample's flag. True (torch 0.4.1, the
    released checkpoints) samples that grid at the pixels themselves: an untrained model's
    identity motion (equal keypoints) warps a map of its own size onto itself exactly. False
    (today's default, the golden file) samples between pixels, so the same grid blurs it."""
    config = tiny("monkey-net", f"model_params.align_corners={str(align_corners).lower()}")
    model = build_model(config).eval()
    with torch.no_grad():
        motion = model.detect(taichi_frames[:2])
        deformation = model.generate(taichi_frames[:2], motion, motion)["deformation"]  # (2, 16, 16, 2)
        small = F.interpolate(taichi_frames[:2], size=deformation.shape[1:3], mode="area")
        error = float((model.generator.deform(small, deformation) - small).abs().max())
    assert (error < 1e-6) if align_corners else (error > 1e-2), error


def test_monkey_net_transfer_normalisation():
    """transfer.py's normalize_kp: move_location p_s + (p_t - p_1); movement_mult scales that
    by sqrt(hull area ratio); adapt_variance gives Sigma_t Sigma_1^-1 Sigma_s (symmetric here)."""
    model = build_model(tiny("monkey-net"))
    torch.manual_seed(1)

    def motion():
        var = torch.eye(2).expand(1, 5, 2, 2) * (0.01 + torch.rand(1, 5, 1, 1))
        return {"value": torch.rand(1, 5, 2) * 2 - 1, "var": var}

    source, driving, initial = motion(), motion(), motion()
    same = model.transfer(source, initial, initial)
    assert torch.allclose(same["value"], source["value"]) and torch.allclose(same["var"], source["var"])
    relative = model.transfer(source, driving, initial, relative_jacobian=False)
    assert torch.allclose(relative["value"], source["value"] + driving["value"] - initial["value"])
    assert torch.equal(relative["var"], driving["var"])
    adapted = model.transfer(source, driving, initial, relative=False)
    assert torch.equal(adapted["value"], driving["value"])
    expected = driving["var"] @ torch.linalg.inv(initial["var"]) @ source["var"]
    assert torch.allclose(adapted["var"], expected, rtol=1e-5)
    initial_big = {"value": initial["value"] * 2, "var": initial["var"]}
    scaled = model.transfer({**source, "value": initial["value"]}, driving, initial_big, adapt_movement_scale=True)
    assert torch.allclose(scaled["value"], initial["value"] + 0.5 * (driving["value"] - initial_big["value"]),
                          atol=1e-5)


# --------------------------------------------------------------------------- both
@pytest.mark.parametrize("name", ["monkey-net"])
def test_checkpoint_roundtrip_and_paper_configs(name, taichi_frames):
    config = tiny(name)
    model = build_model(config).eval()
    copy = build_model(config).eval()
    copy.load_checkpoint_state(model.checkpoint_state())
    with torch.no_grad():
        a = model.reconstruct(taichi_frames[:2], taichi_frames[2:4])["prediction"]
        b = copy.reconstruct(taichi_frames[:2], taichi_frames[2:4])["prediction"]
    assert torch.equal(a, b)
    full = load_config(f"{name}-vox-256")
    assert full.model_params.name == name and tuple(full.dataset_params.frame_shape) == (256, 256, 3)
    big = build_model(full)
    assert isinstance(big, MonkeyNet)
    assert sum(p.numel() for p in big.parameters()) > 10 * sum(p.numel() for p in model.parameters())


def _reconstruction_error(model, frames: torch.Tensor) -> float:
    """L1 of reconstructing every frame from frame 0 (absolute motion), eval mode."""
    model.eval()
    with torch.no_grad():
        prediction = model.reconstruct(frames[:1].expand(len(frames), -1, -1, -1), frames)["prediction"]
    return float((prediction - frames).abs().mean())


def _checkpoint(name: str, path: Path) -> Path:
    """An untrained tiny model saved as the training loop saves it (config inside)."""
    from core.config import config_to_dict
    from fomm.checkpoint import save_checkpoint
    config = tiny(name)
    torch.manual_seed(0)
    save_checkpoint(path, {"config": config_to_dict(config), **build_model(config).checkpoint_state()})
    return path


@pytest.mark.parametrize("name", ["monkey-net"])
def test_reconstruct_stage(name, taichi_root, taichi_frames, tmp_path):
    """`pipeline run reconstruct` with a baseline's checkpoint, exactly as for FOMM."""
    from core.media import probe
    from stages.cli import main
    checkpoint = _checkpoint(name, tmp_path / "model.pt")
    out = tmp_path / "recon"
    assert main(["run", "reconstruct", "--checkpoint", str(checkpoint), "--data", str(taichi_root),
                 "--out", str(out), "--batch-size", "3"]) == 0
    rows = (out / "l1.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("taichi1,8,")
    assert len(list((out / "taichi1").glob("*.png"))) == 8
    assert probe(out / "taichi1.mp4").num_frames == 8
    l1 = float(rows[1].split(",")[2])
    assert 0 < l1 < 1


@pytest.mark.parametrize("name,motion", [("monkey-net", "--relative"), ("monkey-net", "--absolute")])
def test_animate_stage(name, motion, shared_data, tmp_path):
    """`pipeline run animate` with the same options as FOMM: a real portrait driven by a
    real video, keypoints drawn where the family has them, side-by-side layout."""
    from core.media import probe
    from stages.cli import main
    checkpoint = _checkpoint(name, tmp_path / "model.pt")
    out = tmp_path / "animated.mp4"
    args = ["run", "animate", "--config", f"{name}-tiny", "--checkpoint", str(checkpoint),
            "--source", str(shared_data / "faces" / "fomm-demo" / "02.png"),
            "--driving", str(shared_data / "faces" / "fomm-demo" / "04.mp4"),
            "--out", str(out), "--max-frames", "6", "--device", "cpu", "--layout", "side-by-side",
            "--show-keypoints", motion, "--adapt-scale", "--batch-size", "4"]
    assert main(args) == 0
    info = probe(out)
    assert info.num_frames == 6 and (info.width, info.height) == (3 * 64, 64)


@pytest.mark.parametrize("name", ["monkey-net"])
def test_bf16_autocast_and_channels_last(name, taichi_frames):
    """The GPU training path (bf16 autocast, channels_last) on CPU autocast as a stand-in:
    keypoint moments, masks and grids stay float32, losses and gradients are finite."""
    from fomm.train import build_kit
    config = tiny(name)
    model = build_model(config).to(memory_format=torch.channels_last)
    kit = build_kit(config, "cpu")
    source = taichi_frames[:2].contiguous(memory_format=torch.channels_last)
    driving = taichi_frames[4:6].contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, generated = model.generator_losses(source, driving, kit)
    sum(losses.values()).backward()
    assert generated["deformation"].dtype == torch.float32
    assert all(torch.isfinite(v) for v in losses.values())
    grads = [p.grad for p in model.optimizer_groups()["generator"] if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
