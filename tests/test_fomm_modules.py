"""Properties of the FOMM modules on real frames, and the released checkpoints' tensor layout."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from core.media import load_image, read_frames
from fomm.blocks import identity_grid, make_coordinate_grid, warp
from fomm.config import load_config
from fomm.keypoint_detector import KPDetector
from fomm.model import FirstOrderModel, convex_hull_area
from fomm.registry import build_model


def to_tensor(frames: np.ndarray, size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float in [0, 1]."""
    x = torch.from_numpy(np.array(frames, copy=True)).permute(0, 3, 1, 2).float() / 255
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True)


@pytest.fixture(scope="module")
def face_frames(shared_data):
    frames = read_frames(shared_data / "faces" / "fomm-demo" / "04.mp4", 0, 4)  # (4, H, W, 3)
    return to_tensor(np.stack(frames), 64)


@pytest.fixture(scope="module")
def taichi_frame(shared_data):
    return to_tensor(load_image(shared_data / "bodies" / "dwnet-taichi" / "1" / "0000000.png")[None], 256)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(load_config("tiny")).eval()


# --------------------------------------------------------------------------- warping
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_grid_warp_returns_the_input(taichi_frame, align_corners):
    grid = identity_grid(taichi_frame.shape[2:], align_corners).unsqueeze(0)  # (1, H, W, 2)
    out = warp(taichi_frame, grid, align_corners)
    assert (out - taichi_frame).abs().max().item() < 1e-5


def test_corner_grid_matches_identity_only_with_align_corners_true():
    assert torch.equal(make_coordinate_grid((5, 7)), identity_grid((5, 7), True))
    assert not torch.allclose(make_coordinate_grid((5, 7)), identity_grid((5, 7), False))


# --------------------------------------------------------------------------- keypoints
def test_a_keypoint_is_its_heatmap_position_x_from_the_column_y_from_the_row():
    """Eq. 4's coordinates are the warping grid's: x = -1 .. 1 left to right, y top to bottom."""
    heatmap = torch.zeros(1, 2, 5, 9, dtype=torch.float64)
    heatmap[0, 0, 1, 6] = 1  # row 1 of 5, column 6 of 9
    heatmap[0, 1, 4, 0] = heatmap[0, 1, 4, 8] = 0.5  # bottom row, half at each end
    kp = KPDetector.heatmap_to_keypoints(heatmap)
    expected = torch.tensor([[[-1 + 2 * 6 / 8, -1 + 2 * 1 / 4], [0.0, 1.0]]], dtype=torch.float64)
    assert torch.allclose(kp, expected)


def test_keypoints_are_per_frame_and_jacobians_start_at_identity(tiny, face_frames):
    with torch.no_grad():
        kp = tiny.detect(face_frames)
        alone = tiny.detect(face_frames[2:3])
        mirrored = tiny.detect(face_frames.flip(-1))
    assert kp["value"].shape == (4, 5, 2)
    # in eval mode a frame's keypoints do not depend on the rest of its batch, but on the frame
    assert torch.allclose(alone["value"], kp["value"][2:3], atol=1e-6)
    assert (mirrored["value"] - kp["value"]).abs().amax() > 1e-3
    eye = torch.eye(2).expand_as(kp["jacobian"])
    assert torch.allclose(kp["jacobian"], eye, atol=1e-5)


def test_full_vox_detector_on_a_real_frame(taichi_frame):
    """vox-256 at its native size: 10 keypoints, identity jacobians at initialisation."""
    torch.manual_seed(0)
    model = FirstOrderModel(load_config("vox-256")).eval()
    with torch.no_grad():
        kp = model.detect(taichi_frame)
    assert kp["value"].shape == (1, 10, 2)
    assert torch.allclose(kp["jacobian"], torch.eye(2).expand(1, 10, 2, 2), atol=1e-5)


# --------------------------------------------------------------------------- generator
def test_equal_keypoints_give_the_identity_deformation(tiny, face_frames):
    """With driving = source keypoints every sparse motion is the identity, so is the dense one."""
    with torch.no_grad():
        kp = tiny.detect(face_frames)
        out = tiny.generate(face_frames, kp, kp)
    h, w = out["deformation"].shape[1:3]
    assert out["deformation"].shape == (4, 32, 32, 2)
    expected = make_coordinate_grid((h, w)).expand_as(out["deformation"])
    assert (out["deformation"] - expected).abs().max().item() < 1e-5
    assert torch.allclose(out["mask"].sum(1), torch.ones(4, h, w), atol=1e-5)
    assert out["prediction"].min() >= 0 and out["prediction"].max() <= 1
    assert out["occlusion_map"].shape == (4, 1, 32, 32)


def test_source_of_batch_one_drives_a_batch(tiny, face_frames):
    with torch.no_grad():
        kp_source, kp_driving = tiny.detect(face_frames[:1]), tiny.detect(face_frames)
        out = tiny.generate(face_frames[:1], kp_source, kp_driving)
    assert out["prediction"].shape == (4, 3, 64, 64)


def test_bf16_autocast_and_channels_last(face_frames):
    """Under bf16 autocast the networks run in bf16 but keypoints, sparse motions and the dense
    deformation stay fp32: equal keypoints still give the exact identity deformation."""
    torch.manual_seed(0)
    config = load_config("tiny", ["train_params.loss_weights.generator_gan=1"])
    model = build_model(config).to(memory_format=torch.channels_last)
    frames = face_frames.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kp = model.detect(frames)
        out = model.generate(frames, kp, kp)
    assert out["prediction"].dtype == torch.bfloat16 and torch.isfinite(out["prediction"].float()).all()
    assert kp["value"].dtype == torch.float32 and out["deformation"].dtype == torch.float32
    expected = make_coordinate_grid(out["deformation"].shape[1:3]).expand_as(out["deformation"])
    assert (out["deformation"] - expected).abs().max().item() < 1e-5
    from fomm.losses import LossKit
    kit = LossKit(config.train_params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, generated = model.generator_losses(frames[:2], frames[2:], kit)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.kp_detector.kp.weight.grad is not None


# --------------------------------------------------------------------------- transfer
def test_relative_transfer(tiny, face_frames):
    with torch.no_grad():
        kp_source = tiny.detect(face_frames[:1])
        kp_driving = tiny.detect(face_frames)
    initial = {k: v[:1] for k, v in kp_driving.items()}
    same = tiny.transfer(kp_source, initial, initial, relative=True, relative_jacobian=True)
    assert torch.allclose(same["value"], kp_source["value"], atol=1e-6)
    assert torch.allclose(same["jacobian"], kp_source["jacobian"], atol=1e-5)
    absolute = tiny.transfer(kp_source, kp_driving, initial, relative=False)
    assert torch.equal(absolute["value"], kp_driving["value"])


def test_adapt_movement_scale_is_sqrt_hull_area_ratio():
    square = torch.tensor([[[-0.2, -0.2], [0.2, -0.2], [0.2, 0.2], [-0.2, 0.2], [0.0, 0.0]]])
    jac = torch.eye(2).expand(1, 5, 2, 2)
    kp_source = {"value": square * 2, "jacobian": jac}
    initial = {"value": square, "jacobian": jac}
    driving = {"value": square + torch.tensor([0.1, 0.0]), "jacobian": jac}
    model = FirstOrderModel.__new__(FirstOrderModel)  # transfer uses no parameters
    out = FirstOrderModel.transfer(model, kp_source, driving, initial, adapt_movement_scale=True)
    # source hull area is 4x the initial one: displacement 0.1 is scaled by 2.
    assert torch.allclose(out["value"] - kp_source["value"], torch.tensor([0.2, 0.0]).expand(1, 5, 2), atol=1e-6)


def test_convex_hull_area_matches_scipy():
    from scipy.spatial import ConvexHull
    rng = np.random.default_rng(0)
    for _ in range(5):
        points = rng.uniform(-1, 1, size=(10, 2))
        assert convex_hull_area(points) == pytest.approx(ConvexHull(points).volume, rel=1e-9)


# --------------------------------------------------------------------------- released layout
def layout_rows(shared_reference):
    with open(shared_reference / "fomm-checkpoint-layout.tsv") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.mark.parametrize("config_name", ["vox-256", "taichi-256"])
def test_full_modules_have_the_released_checkpoint_layout(shared_reference, config_name):
    expected = {(r["module"], r["key"]): (r["shape"], r["dtype"])
                for r in layout_rows(shared_reference) if r["config"] == config_name}
    assert expected, f"no rows for {config_name} in the layout file"
    model = FirstOrderModel(load_config(config_name, ["train_params.loss_weights.generator_gan=1"]))  # a discriminator is built with a GAN loss
    actual = {(module, key): (str(tuple(t.shape)), str(t.dtype).replace("torch.", ""))
              for module, state in model.checkpoint_state().items() for key, t in state.items()}
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    wrong = {k: (actual[k], v) for k, v in expected.items() if actual[k] != v}
    assert not wrong, f"shape/dtype mismatches (ours, released): {list(wrong.items())[:5]}"
    n_disc = sum(1 for module, _ in expected if module == "discriminator")
    assert n_disc == (26 if config_name == "vox-256" else 16)


def test_without_jacobians_the_motion_is_zeroth_order(face_frames):
    """estimate_jacobian false: no jacobian head, T_k(z) = z - p_D + p_S (translations only)."""
    torch.manual_seed(0)
    model = build_model(load_config("tiny", ["model_params.common_params.estimate_jacobian=false"])).eval()
    assert model.kp_detector.jacobian is None
    with torch.no_grad():
        kp = model.detect(face_frames[:1])
        shifted = {"value": kp["value"] + torch.tensor([0.1, -0.05])}
        motions = model.generator.dense_motion_network.sparse_motions((8, 8), shifted, kp)  # (1, K+1, 8, 8, 2)
    assert "jacobian" not in kp
    grid = make_coordinate_grid((8, 8))
    assert torch.allclose(motions[0, 0], grid)
    assert torch.allclose(motions[0, 1:], (grid - torch.tensor([0.1, -0.05])).expand(5, 8, 8, 2), atol=1e-6)


def test_discriminator_with_keypoint_heatmaps(face_frames):
    config = load_config("tiny", ["train_params.loss_weights.generator_gan=1", "model_params.discriminator_params.use_kp=true",
                                  "model_params.discriminator_params.scales=[1, 0.5]",
                                  "model_params.discriminator_params.num_blocks=3"])
    model = build_model(config)
    assert model.discriminator.discs["1"].down_blocks[0].conv.weight_orig.shape[1] == 3 + 5
    assert set(model.discriminator.discs) == {"1", "0-5"}
    from fomm.losses import LossKit
    kit = LossKit(config.train_params)
    with torch.no_grad():
        kp = model.detect(face_frames)
        out = model.discriminator(kit.pyramid(face_frames), kp["value"])
    assert out["prediction_map_1"].shape[0] == 4 and len(out["feature_maps_0.5"]) == 3


# --------------------------------------------------------------------------- grid conventions
def test_released_convention_resizes_with_torch_1_0_interpolate(face_frames):
    """With align_corners=True (the released checkpoints' grid_sample), the deformation and
    the occlusion map are still resized as torch 1.0's bilinear F.interpolate did
    (align_corners=False); only grid_sample takes True. The tiny config's dense motion runs
    at 32 px against 16 px features, so both resizes happen at 64 px frames."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    model = build_model(load_config("tiny", ["model_params.align_corners=true"])).eval()
    generator = model.generator
    assert generator.align_corners is True and generator.interpolate_align_corners is False
    seen = {}
    generator.bottleneck.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        source, driving = face_frames[:1], face_frames[3:4]
        out = generator(source, kp_driving=model.detect(driving), kp_source=model.detect(source))
        features = generator.encode(source)  # (1, F, 16, 16)
        deformation = out["deformation"]  # (1, 32, 32, 2)
        assert deformation.shape[1:3] != features.shape[2:]

        def resized(maps):  # torch 1.0's bilinear interpolate, then grid_sample as released
            return F.interpolate(maps, size=features.shape[2:], mode="bilinear", align_corners=False)
        grid = resized(deformation.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        warped = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        expected = warped * resized(out["occlusion_map"])
        assert torch.allclose(seen["x"], expected, atol=1e-6, rtol=0)
        grid_true = F.interpolate(deformation.permute(0, 3, 1, 2), size=features.shape[2:],
                                  mode="bilinear", align_corners=True).permute(0, 2, 3, 1)
        assert (grid_true - grid).abs().max() > 1e-3  # the two conventions differ here
