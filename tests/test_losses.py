"""LossKit: perceptual pyramid on VGG19, TPS equivariance, LSGAN and feature matching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import TransformParams, replace
from core.errors import UserError
from core.media import read_frames
from fomm.blocks import identity_grid
from fomm.config import load_config
from fomm.losses import LossKit, Transform
from fomm.registry import build_model
from fomm.vgg import TORCHVISION_FILE, Vgg19


@pytest.fixture(scope="module")
def frames(shared_data):
    clip = read_frames(shared_data / "faces" / "fomm-demo" / "04.mp4", 0, 4)
    x = torch.from_numpy(np.array(np.stack(clip), copy=True)).permute(0, 3, 1, 2).float() / 255
    return torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)


@pytest.fixture(scope="module")
def small_frames(frames):
    """32x32 versions for the tests that backpropagate through VGG19 (2 shared CPU cores)."""
    return torch.nn.functional.interpolate(frames, size=(32, 32), mode="bilinear", align_corners=False,
                                           antialias=True)


@pytest.fixture(scope="module")
def config():
    return load_config("tiny")


@pytest.fixture(scope="module")
def kit(config):
    return LossKit(config.train_params, align_corners=config.model_params.align_corners)


# --------------------------------------------------------------------------- equivariance
@pytest.mark.parametrize("align_corners", [False, True])
def test_equivariance_loss_is_zero_under_the_identity_transform(config, frames, align_corners):
    torch.manual_seed(0)
    model = build_model(config).eval()
    kit = LossKit(replace(config.train_params, vgg19_weights="random"), align_corners=align_corners)
    transform = kit.random_transform(frames.shape[0], identity=True)
    transformed = transform.transform_frame(frames)
    assert (transformed - frames).abs().max().item() < 1e-5
    kp_driving, kp_transformed = model.detect(frames), model.detect(transformed)
    losses = kit.equivariance(kp_driving, kp_transformed, transform)
    assert set(losses) == {"equivariance_value", "equivariance_jacobian"}
    assert losses["equivariance_value"].item() < 1e-5
    assert losses["equivariance_jacobian"].item() < 1e-5


def test_equivariance_loss_is_positive_under_a_random_transform(config, frames, kit):
    torch.manual_seed(1)
    model = build_model(config).eval()
    transform = kit.random_transform(frames.shape[0])
    losses = kit.equivariance(model.detect(frames), model.detect(transform.transform_frame(frames)), transform)
    assert losses["equivariance_value"].item() > 1e-3


def test_transform_frame_samples_where_warp_coordinates_says():
    """Warping an image of its own coordinates gives T(z) at each pixel z (bilinear is exact on linear images)."""
    torch.manual_seed(2)
    params = TransformParams(sigma_affine=0.05, sigma_tps=0.005, points_tps=5)
    transform = Transform(2, params, align_corners=False)
    h = w = 48
    coords = identity_grid((h, w), False)  # (H, W, 2)
    image = coords.permute(2, 0, 1).unsqueeze(0).expand(2, 2, h, w)  # (2, 2, H, W): x and y channels
    warped = transform.transform_frame(image).permute(0, 2, 3, 1)  # (2, H, W, 2)
    expected = transform.warp_coordinates(coords.view(1, -1, 2).expand(2, -1, 2)).view(2, h, w, 2)
    inside = (expected.abs() < 1 - 2 / w).all(-1)  # away from the reflected border
    assert inside.float().mean() > 0.7
    assert (warped - expected)[inside].abs().max().item() < 1e-4


def test_transform_jacobian_matches_finite_differences():
    torch.manual_seed(3)
    transform = Transform(3, TransformParams(sigma_affine=0.1, sigma_tps=0.05, points_tps=5))
    points = (torch.rand(3, 7, 2) * 1.6 - 0.8).double()
    jac = transform.jacobian(points.float().requires_grad_(True)).double()  # (3, 7, 2, 2)
    eps = 1e-3
    for axis in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[axis] = eps
        plus = transform.warp_coordinates((points + step).float()).double()
        minus = transform.warp_coordinates((points - step).float()).double()
        numeric = (plus - minus) / (2 * eps)  # (3, 7, 2): d T / d axis
        assert torch.allclose(jac[..., axis], numeric, atol=2e-3)


def test_affine_only_transform_jacobian_is_theta():
    torch.manual_seed(4)
    transform = Transform(2, TransformParams(sigma_affine=0.1, sigma_tps=0.0, points_tps=5))
    jac = transform.jacobian(torch.rand(2, 4, 2, requires_grad=True))
    assert torch.allclose(jac, transform.theta[:, None, :, :2].expand(2, 4, 2, 2), atol=1e-6)


# --------------------------------------------------------------------------- perceptual
def test_perceptual_is_zero_on_equal_images_and_the_weighted_pyramid_sum(kit, small_frames):
    frames = small_frames
    assert kit.perceptual(frames, frames).item() == 0.0
    prediction = frames.flip(0)
    manual = 0.0
    pyr_p, pyr_t = kit.pyramid(prediction), kit.pyramid(frames)
    assert sorted(pyr_p) == ["prediction_0.25", "prediction_0.5", "prediction_1"]
    assert pyr_p["prediction_0.25"].shape[-1] == 8
    for key in pyr_p:
        for weight, a, b in zip(kit.weights.perceptual, kit.vgg(pyr_p[key]), kit.vgg(pyr_t[key])):
            manual += weight * (a - b).abs().mean().item()
    assert kit.perceptual(prediction, frames).item() == pytest.approx(manual, rel=1e-5)
    assert manual > 0


def test_perceptual_gradient_reaches_the_prediction_only(kit, small_frames):
    frames = small_frames
    prediction = frames.flip(0).clone().requires_grad_(True)
    target = frames.clone().requires_grad_(True)
    kit.perceptual(prediction, target).backward()
    assert prediction.grad.abs().sum() > 0 and target.grad is None


def test_vgg_weights_absent_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="random"):
        Vgg19("torchvision")
    with pytest.raises(UserError, match="nowhere.pth"):
        Vgg19(str(tmp_path / "nowhere.pth"))


def test_vgg_loads_torchvision_format_weights(tmp_path, monkeypatch, frames):
    random_net = Vgg19("random")
    state = {k: v + 0.01 for k, v in random_net.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(3, 3)  # torchvision files carry the classifier too
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / TORCHVISION_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loaded = Vgg19("torchvision")
    assert torch.equal(loaded.features[28].weight, state["features.28.weight"])
    assert not torch.equal(loaded(frames)[0], random_net(frames)[0])
    assert all(not p.requires_grad for p in loaded.parameters())


def test_random_vgg_is_the_same_everywhere():
    assert torch.equal(Vgg19("random").features[0].weight, Vgg19("random").features[0].weight)


def test_vgg_runs_only_the_layers_a_loss_uses(small_frames):
    full, short = Vgg19("random"), Vgg19("random", num_outputs=3)
    a, b = full(small_frames[:1]), short(small_frames[:1])
    assert len(a) == 5 and len(b) == 3
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- GAN
def test_lsgan_and_feature_matching(config):
    weights = replace(config.train_params.loss_weights, generator_gan=2.0, discriminator_gan=3.0,
                      feature_matching=(1.0, 0.0, 5.0, 0.0))
    kit = LossKit(replace(config.train_params, loss_weights=weights))
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    feats = [torch.full((2, 3, 4, 4), float(i)) for i in range(4)]
    real = {"prediction_map_1": ones, "feature_maps_1": feats}
    fake = {"prediction_map_1": zeros, "feature_maps_1": [f + 1 for f in feats]}
    assert kit.gan_discriminator_loss(real, fake).item() == 0.0
    assert kit.gan_discriminator_loss(fake, real).item() == pytest.approx(3.0 * 2)
    assert kit.gan_generator_loss(fake).item() == pytest.approx(2.0)
    assert kit.gan_generator_loss(real).item() == 0.0
    assert kit.feature_matching(real, fake).item() == pytest.approx(1.0 + 5.0)


def test_model_losses_with_and_without_gan(config, small_frames, frames):
    torch.manual_seed(0)
    source, driving = small_frames[:1], small_frames[2:3]
    plain = build_model(config)
    kit = LossKit(config.train_params)
    losses, generated = plain.generator_losses(source, driving, kit)
    assert set(losses) == {"perceptual", "equivariance_value", "equivariance_jacobian"}
    assert plain.discriminator_losses(source, driving, generated, kit) == {}
    gan_params = replace(config.train_params, loss_weights=replace(config.train_params.loss_weights,
                                                                   generator_gan=1.0))
    gan_config = replace(config, train_params=gan_params)
    gan = build_model(gan_config)
    gan_kit = LossKit(gan_params)
    source, driving = frames[:1], frames[2:3]  # the 4-block discriminator needs 64x64
    losses, generated = gan.generator_losses(source, driving, gan_kit)
    assert {"gen_gan", "feature_matching"} <= set(losses)
    total = sum(losses.values())
    total.backward()
    assert all(p.grad is not None for p in gan.kp_detector.parameters())
    disc = gan.discriminator_losses(source, driving, generated, gan_kit)
    assert set(disc) == {"disc_gan"} and disc["disc_gan"].item() > 0
    assert generated["deformation"].shape == (1, 32, 32, 2)
