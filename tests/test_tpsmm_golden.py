"""TPSMM against its original code (yoyo-nb/Thin-Plate-Spline-Motion-Model @ c616878): every
output of ../shared/reference/tpsmm-golden.pt in float64 at atol = rtol = 1e-9 (re-batching
alone moves them by 5.5e-14), with the weights rebuilt by the reference README's recipe.

The golden file ran the original modules in eval mode on real frames (source: frame 0 of
faces/fomm-demo/04.mp4; driving: frames 0, 45, 100 of 08.mp4, 128 px) with a reduced
vox-256.yaml (num_tps 4, narrow hourglass and inpainting widths), passing align_corners=True
everywhere as TPSMM does.
"""
from __future__ import annotations


import pytest
import torch
from golden_recipe import rebuild, state_sha256

from fomm.tpsmm.tps import KeypointTPS, RandomTPS, traceable_solve

ATOL = RTOL = 1e-9
# The training call's seed: torch.manual_seed(seed * 100003 + 99991) before GeneratorFullModel.
TRAIN_SEED = 16 * 100003 + 99991
MODES = ("absolute_bg", "absolute", "relative", "avd")


# --------------------------------------------------------------------------- the recipe
def golden_tree(golden: dict) -> dict:
    """The reduced vox-256.yaml the golden file ran, as an original TPSMM yaml tree."""
    sections = ("dataset_params", "model_params", "train_params", "train_avd_params", "visualizer_params")
    return {key: golden["config"][key] for key in sections}


def vgg_state(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original Vgg19's slice<n>.<i> names are torchvision's features.<i> (fomm/vgg.py)."""
    return {"features." + key.split(".", 1)[1]: value for key, value in weights.items() if key.startswith("slice")}


def assert_close(got, expected, name: str) -> None:
    if isinstance(expected, dict):
        for key in expected:
            assert_close(got[key], expected[key], f"{name}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), name
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_close(a, b, f"{name}[{i}]")
    else:
        assert got.dtype == torch.float64 and got.shape == expected.shape, (name, got.dtype, got.shape)
        diff = float((got - expected).abs().max())
        assert torch.allclose(got, expected, atol=ATOL, rtol=RTOL), f"{name}: max abs diff {diff:.3g}"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def golden(shared_reference) -> dict:
    return torch.load(shared_reference / "tpsmm-golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def weights(golden) -> dict[str, dict[str, torch.Tensor]]:
    return rebuild(golden["recipe"], golden["layout"], golden["kept_buffers"])


@pytest.fixture(scope="module")
def config(golden):
    from fomm.config import config_from_dict
    return config_from_dict(golden_tree(golden), ["train_params.vgg19_weights=random"])


@pytest.fixture(scope="module")
def model(config, weights):
    """The family built from the golden config (on the meta device: no initialisation), the
    rebuilt float64 weights assigned, eval mode."""
    from fomm.registry import build_model
    with torch.device("meta"):
        model = build_model(config)
    for name, module in model.named_children():
        module.load_state_dict(weights[name], strict=True, assign=True)
    return model.eval()


@pytest.fixture(scope="module")
def inputs(golden) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    source, driving = golden["inputs"]["source"], golden["inputs"]["driving"]
    return source, source.expand(len(driving), -1, -1, -1), driving


# --------------------------------------------------------------------------- tests
def test_rebuilt_weights_have_the_recorded_digests(golden, weights):
    assert set(weights) == set(golden["state_dict_sha256"])
    for module, state in weights.items():
        assert state_sha256(state) == golden["state_dict_sha256"][module], module


def test_keypoints_background_relative_and_avd(golden, model, inputs):
    """kp_detector, bg_predictor both ways, demo.py's relative_kp (hull-area scale 1.0460)
    and avd, and the dense motion network's anti-aliased down-sampling."""
    source, sources, driving = inputs
    expected = golden["outputs"]
    assert model.align_corners is True
    with torch.no_grad():
        kp_source, kp_driving = model.detect(source), model.detect(driving)
        kp_initial = model.detect(driving[:1])
        got = {"kp_source": kp_source, "kp_driving": kp_driving, "kp_driving_initial": kp_initial,
               "bg_param": model.background(sources, driving), "bg_param_reverse": model.background(driving, sources),
               "kp_driving_relative": model.transfer(kp_source, kp_driving, kp_initial, relative=True,
                                                     adapt_movement_scale=True),
               "kp_driving_avd": model.transfer({"fg_kp": kp_source["fg_kp"].expand(3, -1, -1)}, kp_driving,
                                                kp_initial, avd=True),
               "source_down": model.dense_motion_network.down(source)}
    for name, value in got.items():
        assert_close(value, expected[name], name)
    last_row = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert torch.equal(got["bg_param"][:, 2], last_row.expand(3, 3))


def mode_motion(golden: dict, mode: str) -> tuple[dict, torch.Tensor | None]:
    """The driving keypoints and background of a golden mode (inputs checked by the test above)."""
    out = golden["outputs"]
    kp = {"absolute_bg": out["kp_driving"], "absolute": out["kp_driving"], "relative": out["kp_driving_relative"],
          "avd": out["kp_driving_avd"]}[mode]
    return kp, out["bg_param"] if mode == "absolute_bg" else None


@pytest.mark.parametrize("mode", MODES[1:])
def test_dense_motion_and_inpainting(golden, model, inputs, mode):
    """demo.py's standard, relative and avd modes (no background motion): every output of
    DenseMotionNetwork and InpaintingNetwork, and the dense motion's own steps."""
    _, sources, _ = inputs
    kp_driving, _ = mode_motion(golden, mode)
    kp_source = {"fg_kp": golden["outputs"]["kp_source"]["fg_kp"].expand(3, -1, -1)}
    with torch.no_grad():
        out = model.generate(sources, kp_source, kp_driving)
    check_generated(golden, model, sources, kp_source, kp_driving, None, mode, out)


def check_generated(golden, model, sources, kp_source, kp_driving, bg_param, mode, out) -> None:
    expected = golden["outputs"]
    dense, inpainting = expected[f"dense_motion_{mode}"], expected[f"inpainting_{mode}"]
    got = {**out, "occlusion_map": out["occlusion_maps"]}
    assert_close({key: got[key] for key in dense}, dense, f"dense_motion_{mode}")
    assert_close({key: got[key] for key in inpainting}, inpainting, f"inpainting_{mode}")
    network = model.dense_motion_network
    with torch.no_grad():
        down = network.down(sources)
        tps = network.tps(kp_driving, kp_source)
        steps = {"heatmap_representation": network.create_heatmap_representations(down, kp_driving, kp_source),
                 "transformations": network.create_transformations(down, kp_driving, kp_source, bg_param),
                 "tps_theta": tps.theta, "tps_control_params": tps.control_params}
        deformed = network.create_deformed_source_image(down, steps["transformations"])
    assert_close(steps, expected[f"dense_motion_{mode}_steps"], f"dense_motion_{mode}_steps")
    assert_close(deformed, out["deformed_source"], f"create_deformed_source_image {mode}")


def test_training_losses_and_background_motion(golden, model, config, weights, inputs):
    """GeneratorFullModel at epoch 99 (no TPS dropout, background on) in eval mode: the
    perceptual, equivariance, warp and bg losses with the recipe VGG-19, and its generated
    outputs, which are reconstruction.py's (the driving keypoints and the background affine:
    the golden `absolute_bg` mode; `model.reconstruct` is this forward, checked in float32 by
    tests/test_tpsmm.py through `pipeline run reconstruct`). The random TPS is
    re-drawn, not fed: after the golden seed the original draws nothing before it (no dropout
    at epoch 99), and RandomTPS draws theta then the weights in float64 as it did; the test
    checks the draw equals the stored `train_transform` bit for bit."""
    from fomm.train import build_kit
    source, sources, driving = inputs
    expected = golden["outputs"]
    kit = build_kit(config, "cpu").double()
    kit.vgg.load_state_dict(vgg_state(weights["vgg"]), strict=False)
    kit.vgg.mean, kit.vgg.std = golden["kept_buffers"]["vgg"]["mean"], golden["kept_buffers"]["vgg"]["std"]
    model.set_epoch(99)
    with torch.no_grad():
        torch.manual_seed(TRAIN_SEED)
        losses, generated = model.reconstruction_losses(sources, driving, kit)
    assert_close(losses, expected["train_losses"], "train_losses")
    assert set(losses) == set(expected["train_losses"])
    assert_close(generated["transformed_frame"], expected["train_transformed_frame"], "train_transformed_frame")
    assert_close(generated["transformed_kp"], expected["train_transformed_kp"], "train_transformed_kp")
    torch.manual_seed(TRAIN_SEED)
    stored = expected["train_transform"]
    drawn = RandomTPS(3, 0.05, 0.005, 5, dtype=torch.float64)
    assert torch.equal(drawn.theta, stored["theta"]) and torch.equal(drawn.control_params, stored["control_params"])
    assert torch.equal(drawn.control_points, stored["control_points"].view(1, 25, 2))
    kp_source = {"fg_kp": expected["kp_source"]["fg_kp"].expand(3, -1, -1)}
    check_generated(golden, model, sources, kp_source, expected["kp_driving"], expected["bg_param"],
                    "absolute_bg", generated)


def test_keypoint_tps_solves_the_regularised_system(golden):
    """Eq. 2 as the original sets it up: (L + 0.01 I) [w; A^T] = [kp_source; 0], with the
    driving keypoints as control points; the stored theta and weights satisfy it, and the
    export's Gauss-Jordan solve (no torch.linalg in ONNX) gives the same solution."""
    out = golden["outputs"]
    kp_driving = out["kp_driving"]["fg_kp"].view(3, 4, 5, 2)
    kp_source = out["kp_source"]["fg_kp"].view(1, 4, 5, 2).expand(3, -1, -1, -1)
    tps = KeypointTPS(kp_driving, kp_source)
    squared = ((kp_driving[:, :, :, None] - kp_driving[:, :, None]) ** 2).sum(-1)
    kernel = squared * torch.log(squared + 1e-9)
    affine = torch.cat([kp_driving, torch.ones_like(kp_driving[..., :1])], dim=-1)
    system = torch.cat([torch.cat([kernel, affine], -1),
                        torch.cat([affine.transpose(2, 3), torch.zeros(3, 4, 3, 3, dtype=torch.float64)], -1)], 2)
    system = system + 0.01 * torch.eye(8, dtype=torch.float64)
    params = torch.cat([tps.control_params, tps.theta.transpose(2, 3)], dim=2)
    target = torch.cat([kp_source, torch.zeros(3, 4, 3, 2, dtype=torch.float64)], dim=2)
    assert torch.allclose(system @ params, target, atol=1e-12)
    assert_close(tps.theta, out["dense_motion_absolute_steps"]["tps_theta"], "tps_theta")
    with traceable_solve():
        eliminated = KeypointTPS(kp_driving, kp_source)
    assert_close(eliminated.theta, tps.theta, "pivoted_solve theta")
    assert_close(eliminated.control_params, tps.control_params, "pivoted_solve control_params")
