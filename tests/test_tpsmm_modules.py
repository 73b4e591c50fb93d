"""TPSMM's networks and maths: the properties that define them (golden outputs of the original
code: tests/test_tpsmm_golden.py)."""
from __future__ import annotations

import torch

from fomm.blocks import make_coordinate_grid, warp
from fomm.tpsmm.bg_motion_predictor import BGMotionPredictor
from fomm.tpsmm.dense_motion import DenseMotionNetwork
from fomm.tpsmm.losses import bg_loss, random_scale
from fomm.tpsmm.tps import KeypointTPS, RandomTPS


def layout_keypoints(batch: int, groups: int, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """(B, K, 5, 2) keypoints: each TPS's 5 points near the corners and centre of a square."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([[0.0, 0.0], [-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    return base + noise * torch.randn(batch, groups, 5, 2, generator=g, dtype=torch.float64)


def test_keypoint_tps_takes_driving_keypoints_near_the_source_keypoints():
    """Eq. 2 with the original's 0.01 regularisation: the warp at each control (driving)
    keypoint lands within the regularisation's pull of its source keypoint, and a pure
    translation of all five points is recovered almost exactly by the affine part."""
    driving = layout_keypoints(2, 3, seed=1)
    source = layout_keypoints(2, 3, seed=2)
    tps = KeypointTPS(driving, source)
    at_points = torch.stack([tps.warp_coordinates(driving[b].reshape(1, -1, 2))[b].view(3, 3, 5, 2)[k, k]
                             for b in range(2) for k in range(3)]).view(2, 3, 5, 2)
    assert (at_points - source).abs().max() < 0.02
    shifted = KeypointTPS(driving, driving + torch.tensor([0.1, -0.2], dtype=torch.float64))
    assert (shifted.theta[..., 2] - torch.tensor([0.1, -0.2], dtype=torch.float64)).abs().max() < 0.02
    assert shifted.control_params.abs().max() < 0.02


def test_tps_grids_are_float32_under_bf16_autocast():
    driving, source = layout_keypoints(1, 2).float(), layout_keypoints(1, 2, seed=3).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grid = KeypointTPS(driving.bfloat16(), source.bfloat16()).transform_grid((8, 8))
    assert grid.dtype == torch.float32 and grid.shape == (1, 2, 8, 8, 2)


def test_random_tps_with_zero_sigmas_is_the_identity():
    tps = RandomTPS(2, 0.0, 0.0, 5)
    points = torch.rand(2, 7, 2) * 2 - 1
    assert torch.allclose(tps.warp_coordinates(points), points, atol=1e-6)
    frames = torch.rand(2, 3, 16, 16)
    grid = tps.transform_grid((16, 16), torch.float32)
    assert torch.allclose(warp(frames, grid, align_corners=True), frames, atol=1e-5)


def test_background_predictor_starts_at_the_identity():
    """fc weights 0, bias [1, 0, 0, 0, 1, 0] (the original's initialisation): the identity
    affine for any input, so the K+1-th transformation starts as the identity grid and the
    bg loss at 0."""
    net = BGMotionPredictor().eval()
    with torch.no_grad():
        affine = net(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))
    assert torch.equal(affine, torch.eye(3).expand(2, 3, 3))
    assert float(bg_loss(10.0, affine, affine)) == 0.0


def small_dense_motion(**kwargs) -> DenseMotionNetwork:
    torch.manual_seed(0)
    return DenseMotionNetwork(block_expansion=4, num_blocks=4, max_features=16, num_tps=3, **kwargs).eval()


def test_dense_motion_shapes_occlusion_masks_and_identity_background():
    """Four occlusion masks at 1/8 to 1 of a 64 px frame, contribution maps summing to 1, the
    flow a convex combination of the K + 1 grids; the background grid is the identity when
    bg_param is None and the affine's when given."""
    net = small_dense_motion(bg=True)
    source = torch.rand(2, 3, 64, 64)
    kp = {"fg_kp": layout_keypoints(2, 3).view(2, 15, 2).float()}
    kp_driving = {"fg_kp": kp["fg_kp"] + 0.05}
    with torch.no_grad():
        out = net(source, kp_driving, kp)
        shift = torch.eye(3).repeat(2, 1, 1)
        shift[:, 0, 2] = 0.1
        moved = net.create_transformations(net.down(source), kp_driving, kp, shift)
    assert [tuple(m.shape[2:]) for m in out["occlusion_map"]] == [(8, 8), (16, 16), (32, 32), (64, 64)]
    assert torch.allclose(out["contribution_maps"].sum(1), torch.ones(2, 16, 16), atol=1e-6)
    assert out["deformed_source"].shape == (2, 4, 3, 16, 16) and out["deformation"].shape == (2, 16, 16, 2)
    identity = make_coordinate_grid((16, 16))
    assert torch.allclose(moved[:, 0], identity + torch.tensor([0.1, 0.0]), atol=1e-6)


def test_tps_dropout_keeps_the_background_and_renormalises():
    """Eq. 7-8: dropped transformations get zero weight, the background is never dropped, the
    rest is a softmax over the kept ones, whose sum has the original's 1e-6 added (so the
    weights sum to 1 up to that where the largest logit is kept; p = 0: the plain softmax)."""
    logits = torch.randn(64, 5, 4, 4)
    torch.manual_seed(3)
    dropped = DenseMotionNetwork.dropout_softmax(logits, 0.5)
    assert (dropped[:, 0] > 0).all()
    kept = dropped.flatten(2).amax(-1) > 0  # (64, 5)
    assert 0.3 < float(kept[:, 1:].float().mean()) < 0.7
    total = dropped.sum(1)  # (64, 4, 4)
    assert (total <= 1).all() and (total > 0).all()
    largest_kept = torch.gather(kept[:, :, None, None].expand_as(logits), 1, logits.argmax(1, keepdim=True))[:, 0]
    assert torch.allclose(total[largest_kept], torch.ones(int(largest_kept.sum())), atol=1e-5)
    plain = DenseMotionNetwork.dropout_softmax(logits, 0.0)
    assert torch.allclose(plain, torch.softmax(logits, dim=1), atol=1e-5)


def test_avd_random_scale_draws_one_factor_per_axis_and_sample():
    torch.manual_seed(0)
    kp = {"fg_kp": torch.rand(4, 10, 2) * 2 - 1}
    scaled = random_scale(kp, 0.25)["fg_kp"]
    factors = scaled / kp["fg_kp"]  # (4, 10, 2): constant over the keypoints
    assert torch.allclose(factors, factors[:, :1].expand_as(factors), atol=1e-5)
    assert ((factors >= 0.75 - 1e-6) & (factors <= 1.25 + 1e-6)).all()
