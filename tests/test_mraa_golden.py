"""MRAA against ../shared/reference/mraa-golden.pt: every output of the original code
(snap-research/articulated-animation @ 03f1968, float64, eval, torch 2.13 CPU) reproduced with
atol = rtol = 1e-9, through the model's own entry points (detect, transfer, generate,
reconstruct), with the stored weights and with the weights rebuilt from the seed recipe.
The file's layout is in reference/README.md (`mraa-golden.pt`)."""
from __future__ import annotations


import pytest
import torch
from golden_recipe import rebuild, state_sha256

from fomm.config import config_from_dict
from fomm.mraa.model import MRAA
from fomm.registry import build_model

TOL = dict(atol=1e-9, rtol=1e-9)
# The yaml sections of the golden's config; the rest of `config` describes the run.
YAML_SECTIONS = ("dataset_params", "model_params", "train_params", "train_avd_params", "reconstruction_params",
                 "animate_params", "visualizer_params")
MODES = ("absolute_bg", "standard", "relative", "avd")


@pytest.fixture(scope="module")
def golden(shared_reference):
    return torch.load(shared_reference / "mraa-golden.pt", weights_only=True)


def original_yaml(golden) -> dict:
    """The golden's reduced config/vox256.yaml, in the original repository's layout."""
    return {key: golden["config"][key] for key in YAML_SECTIONS}


@pytest.fixture(scope="module")
def model(golden) -> MRAA:
    """The golden's config (original layout, translated) built in float64 with its weights."""
    config = config_from_dict(original_yaml(golden))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = build_model(config)
    finally:
        torch.set_default_dtype(previous)
    model.load_checkpoint_state(golden["state_dict"])
    return model.double().eval()


@pytest.fixture(scope="module")
def run(model, golden):
    """The model's outputs for the golden inputs, computed once."""
    source, driving = golden["inputs"]["source"], golden["inputs"]["driving"]
    batch = driving.shape[0]
    sources = source.expand(batch, -1, -1, -1)
    flows: dict[str, dict] = {}

    def hook(module, args, output):
        flows["current"]["mask_logits"] = output

    handle = model.generator.pixelwise_flow_predictor.mask.register_forward_hook(hook)
    out = {}
    try:
        with torch.no_grad():
            regions = {"source": model.region_predictor(source), "driving": model.region_predictor(driving),
                       "driving_initial": model.region_predictor(driving[:1])}
            motion_source = model.detect(source)
            motion_driving, motion_initial = model.detect(driving), model.detect(driving[:1])
            expand = lambda m: {k: v.expand(batch, *v.shape[1:]) for k, v in m.items()}  # noqa: E731
            params = {"standard": model.transfer(expand(motion_source), motion_driving, expand(motion_initial),
                                                 relative=False),
                      "relative": model.transfer(expand(motion_source), motion_driving, expand(motion_initial)),
                      "avd": model.transfer(expand(motion_source), motion_driving, expand(motion_initial), avd=True)}
            out["bg_params"] = model.bg_predictor(sources, driving)
            for mode in MODES:
                flows["current"] = {}
                if mode == "absolute_bg":
                    generated = model.reconstruct(sources, driving)
                    params["absolute_bg"] = motion_driving
                else:
                    generated = model.generate(sources, expand(motion_source), params[mode])
                out[f"generator_{mode}"] = generated
                out[f"pixelwise_flow_{mode}"] = flows["current"]
    finally:
        handle.remove()
    return {"regions": regions, "params": params, "motion_source": motion_source, "out": out}


def close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    assert actual.dtype == torch.float64, name
    assert torch.allclose(actual, expected, **TOL), (name, float((actual - expected).abs().max()))


# --------------------------------------------------------------------------- weights
def test_recipe_rebuild_matches_the_stored_weights_and_digests(golden, model):
    """The weights rebuilt from recipe + layout (the AntiAlias kernels kept) have the file's
    sha256 per module and equal the stored state dict, whose names, order and shapes are
    those our modules build."""
    rebuilt = rebuild(golden["recipe"], golden["layout"], kept=golden["state_dict"])
    for name, state in rebuilt.items():
        assert state_sha256(state) == golden["state_dict_sha256"][name], name
        stored = golden["state_dict"][name]
        assert list(state) == list(stored)
        assert all(torch.equal(state[k], stored[k]) for k in state), name
        ours = getattr(model, name).state_dict()
        assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in state.items()]


# --------------------------------------------------------------------------- regions
@pytest.mark.parametrize("frames", ["source", "driving", "driving_initial"])
def test_region_parameters(golden, run, frames):
    """shift, covar, heatmap, affine, and the SVD's u and d with torch.svd's signs."""
    expected = golden["outputs"][f"region_params_{frames}"]
    assert set(run["regions"][frames]) == set(expected)
    for key, value in expected.items():
        close(run["regions"][frames][key], value, f"{frames}.{key}")
    if frames == "source":  # detect() returns the motion keys of the same computation
        for key in ("shift", "covar", "affine", "heatmap"):
            close(run["motion_source"][key], expected[key], f"detect.{key}")


def test_background_and_animation_parameters(golden, run):
    """bg_params (affine), animate.py's relative mode (convex-hull movement scale 1.72; the
    driving frame's covariances and heat maps kept) and the AVD network's parameters."""
    outputs = golden["outputs"]
    close(run["out"]["bg_params"], outputs["bg_params"], "bg_params")
    for mode in ("relative", "avd"):
        expected = outputs[f"region_params_{mode}"]
        for key in ("shift", "affine", "covar"):
            close(run["params"][mode][key], expected[key], f"{mode}.{key}")
    close(run["params"]["relative"]["heatmap"], outputs["region_params_relative"]["heatmap"], "relative.heatmap")


# --------------------------------------------------------------------------- generator
@pytest.mark.parametrize("mode", MODES)
def test_generator_and_pixelwise_flow(golden, model, run, mode):
    """generator_<mode> (deformed, occlusion_map, prediction) and pixelwise_flow_<mode>
    (optical_flow, occlusion_map, mask logits and mask, and the flow predictor's own
    heat-map, sparse-motion and deformed-source methods on source_down)."""
    outputs = golden["outputs"]
    generated, expected = run["out"][f"generator_{mode}"], outputs[f"generator_{mode}"]
    for key in ("deformed", "occlusion_map", "prediction"):
        close(generated[key], expected[key], f"generator_{mode}.{key}")
    flow, expected = run["out"][f"pixelwise_flow_{mode}"], outputs[f"pixelwise_flow_{mode}"]
    close(generated["optical_flow"], expected["optical_flow"], f"{mode}.optical_flow")
    close(generated["occlusion_map"], expected["occlusion_map"], f"{mode}.occlusion_map")
    close(flow["mask_logits"], expected["mask_logits"], f"{mode}.mask_logits")
    close(generated["mask"], expected["mask"], f"{mode}.mask")
    predictor = model.generator.pixelwise_flow_predictor
    batch = golden["inputs"]["driving"].shape[0]
    with torch.no_grad():
        down = predictor.down(golden["inputs"]["source"])
        close(down, outputs["source_down"], "source_down")
        down = down.expand(batch, -1, -1, -1)
        source_params = {k: v.expand(batch, *v.shape[1:]) for k, v in run["motion_source"].items()}
        driving_params = run["params"][mode]
        bg = run["out"]["bg_params"] if mode == "absolute_bg" else None
        heatmap = predictor.create_heatmap_representations(down, driving_params, source_params)
        sparse = predictor.create_sparse_motions(down, driving_params, source_params, bg)
        deformed = predictor.create_deformed_source_image(down, sparse)
    close(heatmap, expected["heatmap_representation"], f"{mode}.heatmap_representation")
    close(sparse, expected["sparse_motion"], f"{mode}.sparse_motion")
    close(deformed, expected["sparse_deformed"], f"{mode}.sparse_deformed")
    close(generated["sparse_deformed"], expected["sparse_deformed"], f"{mode}.sparse_deformed (forward)")
