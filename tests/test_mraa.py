"""MRAA: the closed-form SVD against torch.svd, the original yamls, the released tensor layout
and checkpoint format, the transfer modes, and the shared reconstruct / animate stages on real
frames. (Golden outputs: tests/test_mraa_golden.py; training: tests/test_mraa_train.py.)"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core.config import ConfigError, config_to_dict
from core.errors import UserError
from core.frames import resize, to_tensor
from fomm.blocks import inverse_2x2
from fomm.config import config_from_dict, load_config
from fomm.mraa.linalg import symmetric_svd
from fomm.mraa.model import MRAA
from fomm.registry import build_model

ORIGINALS = {"vox256": "mraa-vox-256", "taichi256": "mraa-taichi-256", "ted384": "mraa-ted-384",
             "ted-youtube384": "mraa-ted-youtube-384", "mgif256": "mraa-mgif-256"}
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def face_frames(shared_data) -> torch.Tensor:
    """Frames 0, 10, ..., 70 of a real talking head (fomm-demo/08.mp4) at 64x64: (8, 3, 64, 64)."""
    from core.media import read_frames
    return to_tensor(resize(read_frames(shared_data / "faces" / "fomm-demo" / "08.mp4", 0, 80)[::10], (64, 64)))


def tiny(*overrides: str):
    return load_config("mraa-tiny", list(overrides))


# --------------------------------------------------------------------------- SVD
def covariances(count: int, seed: int) -> torch.Tensor:
    """Random symmetric PSD 2x2 matrices over a wide range of scales and anisotropies, with
    diagonal and rank-1 ones among them."""
    gen = torch.Generator().manual_seed(seed)
    points = torch.randn(count, 2, 3, generator=gen, dtype=torch.float64)
    points[:, 0] *= torch.exp(2 * torch.randn(count, 1, generator=gen, dtype=torch.float64))
    full = points @ points.transpose(1, 2) * torch.rand(count, 1, 1, generator=gen, dtype=torch.float64)
    diagonal = torch.diag_embed(torch.rand(50, 2, generator=gen, dtype=torch.float64))
    vector = torch.randn(50, 2, 1, generator=gen, dtype=torch.float64)
    return torch.cat([full, diagonal, vector @ vector.transpose(1, 2)])


def test_closed_form_svd_has_torch_svds_signs():
    """u and s of symmetric_svd are torch.svd's (LAPACK gesdd) on 20 000 covariances: the
    reflection u = [[x, y], [y, -x]] with its sign rule, the diagonal and the rank-1 cases."""
    covar = covariances(20000, seed=3)
    u, s, _ = torch.svd(covar)
    ours_u, ours_s = symmetric_svd(covar)
    assert torch.allclose(ours_u, u, atol=1e-10, rtol=0), float((ours_u - u).abs().max())
    assert ((ours_s - s).abs() <= 1e-13 * s[:, :1]).all()  # LAPACK's own error is eps * |C|
    assert torch.allclose(ours_u @ torch.diag_embed(ours_s) @ ours_u.transpose(1, 2), covar, atol=1e-10, rtol=1e-10)
    assert (torch.linalg.det(ours_u[:20000]) < 0).all()  # the reflections the golden file notes (det u = -1)
    matrix = torch.randn(100, 2, 2, dtype=torch.float64) + 2 * torch.eye(2, dtype=torch.float64)
    assert torch.allclose(inverse_2x2(matrix), torch.inverse(matrix), atol=1e-12)


def test_svd_gradient_is_torch_svds():
    """The closed form's derivative is torch.svd's where the eigenvalues differ."""
    covar = covariances(64, seed=5)[:64].requires_grad_(True)
    weights = torch.randn(64, 2, 2, dtype=torch.float64)

    def loss(decompose):
        u, s = decompose(covar)
        return ((u @ torch.diag_embed(s.sqrt())) * weights).sum()

    ours = torch.autograd.grad(loss(symmetric_svd), covar)[0]
    reference = torch.autograd.grad(loss(lambda c: torch.svd(c)[:2]), covar)[0]
    # torch.svd's backward treats the input as a general matrix; for a symmetric perturbation
    # (the only kind a covariance gets) the two agree, so compare the symmetric parts.
    sym = lambda g: (g + g.transpose(1, 2)) / 2  # noqa: E731
    assert torch.allclose(sym(ours), sym(reference), atol=1e-8, rtol=1e-6)


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("original,name", list(ORIGINALS.items()))
def test_original_yamls_load_and_build_the_released_layout(original, name, shared_reference, caplog):
    """configs/mraa-*.yaml are the originals in their own layout: they load, translate to the
    project's tree (regions, frame size of the stored data, lr, loss weights, the AVD stage's
    settings), and MRAA built from them on the meta device has exactly the tensor names, order,
    shapes and dtypes of reference/mraa-checkpoint-layout.tsv (mgif: no bg_predictor tensors)."""
    raw = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert "num_regions" in raw["model_params"] and "lr" in raw["train_params"]  # the original layout
    with caplog.at_level(logging.INFO, logger="fomm.mraa.config"):
        config = load_config(name)
    assert "animate_params.mode 'avd'" in caplog.text and "region_bg_color dropped" in caplog.text
    mp, tp = config.model_params, config.train_params
    assert mp.name == "mraa" and mp.common_params.num_kp == raw["model_params"]["num_regions"]
    size = 384 if "ted" in name else 256
    assert tuple(config.dataset_params.frame_shape) == (size, size, 3)
    assert (tp.lr_generator, tp.loss_weights.equivariance_value, tp.loss_weights.equivariance_jacobian) == (2e-4, 10, 10)
    assert tp.loss_weights.perceptual == (10,) * 5 and tp.epoch_milestones == (60, 90)
    avd = mp.mraa_params.train_avd_params
    assert (avd.lr, avd.batch_size, avd.random_scale) == (1e-3, 256, 0.25)
    assert mp.mraa_params.region_predictor_params.pad == (3 if name == "mraa-vox-256" else 0)

    with torch.device("meta"):
        model = build_model(config)
    built = [(module, key, tuple(t.shape), str(t.dtype).removeprefix("torch."))
             for module in ("region_predictor", "generator", "bg_predictor", "avd_network")
             for key, t in getattr(model, module).state_dict().items()]
    rows = [line.split("\t") for line in (shared_reference / "mraa-checkpoint-layout.tsv").read_text().splitlines()[1:]]
    expected = [(m, k, tuple(int(d) for d in s.strip("()").split(",") if d.strip()), dt)
                for c, m, k, s, dt in rows if c == original]
    order = ("region_predictor", "generator", "bg_predictor", "avd_network")
    expected.sort(key=lambda row: order.index(row[0]))  # stable: each module's rows keep their order
    assert built == expected
    assert (not any(m == "bg_predictor" for m, *_ in expected)) == (original == "mgif256")


def test_avd_stage_config_and_refused_fields():
    """The AVD stage trains with train_avd_params (milestones one epoch later, as train_avd.py's
    scheduler.step(epoch)); the originals' fields the project cannot honour are refused with one
    line unless they hold the originals' values."""
    config = load_config("mraa-vox-256")
    avd = MRAA.stage_config(config, "avd").train_params
    assert (avd.stage, avd.num_epochs, avd.num_repeats, avd.batch_size, avd.lr_generator) == ("avd", 30, 2000, 256, 1e-3)
    assert avd.epoch_milestones == (21, 26) and avd.loss_weights.perceptual == (0,) * 5
    with pytest.raises(UserError, match="--stage 'gan'"):
        MRAA.stage_config(config, "gan")
    raw = yaml.safe_load((CONFIG_DIR / "mraa-vox-256.yaml").read_text())
    bad = [(("visualizer_params", "region_bg_color"), [0.5, 0.5, 0.5], "region_bg_color"),
           (("animate_params", "mode"), "transfer", "animate_params.mode"),
           (("dataset_params", "root_dir"), "elsewhere", "frame_shape: null")]
    for (section, key), value, message in bad:
        tree = yaml.safe_load(yaml.safe_dump(raw))
        tree[section][key] = value
        with pytest.raises(ConfigError, match=message):
            config_from_dict(tree)
    tree = yaml.safe_load(yaml.safe_dump(raw))
    tree["model_params"]["region_predictor_params"]["fast_svd"] = True
    with pytest.raises(UserError, match="fast_svd: true asks for torch-batch-svd"):
        build_model(config_from_dict(tree))
    tree["model_params"]["region_predictor_params"]["fast_svd"] = False
    tree["animate_params"]["mode"] = "standard"
    assert not config_from_dict(tree).animate_params.normalization_params.use_relative_movement
    # The resolved config a checkpoint carries is the project's layout: it loads as it is.
    recorded = config_to_dict(config)
    assert config_from_dict(recorded, recorded=True) == config


# --------------------------------------------------------------------------- motion
def test_transfer_modes_and_region_properties(face_frames):
    """Regions lie in [-1, 1], covariances are symmetric PSD, affines their square roots; the
    standard mode is the driving regions; relative with the source as initial frame and driving
    frame is the source; relative moves shifts by the driving displacement times the hull-area
    scale; --mode avd refuses a model whose checkpoint had no AVD network."""
    model = build_model(tiny()).eval()
    with torch.no_grad():
        motion = model.detect(face_frames[:4])
    assert motion["shift"].shape == (4, 5, 2) and motion["heatmap"].shape == (4, 5, 32, 32)
    assert motion["shift"].abs().max() <= 1
    assert torch.allclose(motion["affine"] @ motion["affine"].transpose(-1, -2), motion["covar"], atol=1e-6)
    assert (torch.linalg.eigvalsh(motion["covar"].double()) > 0).all()
    one = lambda i: {k: v[i:i + 1] for k, v in motion.items()}  # noqa: E731
    source, initial, driving = one(0), one(1), one(2)
    assert model.transfer(source, driving, initial, relative=False) == driving
    same = model.transfer(source, initial, initial)
    assert torch.allclose(same["shift"], source["shift"], atol=1e-6)
    assert torch.allclose(same["affine"], source["affine"], atol=1e-5)
    moved = model.transfer(source, driving, initial)
    from fomm.model import convex_hull_area
    area = lambda m: convex_hull_area(m["shift"][0].numpy())  # noqa: E731
    scale = np.sqrt(area(source)) / np.sqrt(area(initial))
    assert torch.allclose(moved["shift"], source["shift"] + (driving["shift"] - initial["shift"]) * scale, atol=1e-6)
    assert torch.equal(moved["covar"], driving["covar"])
    assert set(model.transfer(source, driving, initial, avd=True)) == {"shift", "affine", "covar"}
    model.state_from_checkpoint({"generator": model.generator.state_dict(),
                                 "region_predictor": model.region_predictor.state_dict(),
                                 "bg_predictor": model.bg_predictor.state_dict()})
    with pytest.raises(UserError, match="no avd_network"):
        model.transfer(source, driving, initial, avd=True)


def test_equivariance_is_zero_under_the_identity_transform(face_frames):
    """With T = identity the transformed frame is the frame (fomm.losses.Transform) and both
    equivariance losses vanish; the background motion starts at the identity."""
    from fomm.train import build_kit
    config = tiny()
    model = build_model(config).eval()
    kit = build_kit(config, "cpu")
    frames = face_frames[:2]
    transform = kit.random_transform(2, identity=True)
    regions = model.region_predictor(frames)
    transformed = model.region_predictor(transform.transform_frame(frames))
    shifts = kit.equivariance({"value": regions["shift"]}, {"value": transformed["shift"]}, transform)
    assert float(shifts["equivariance_value"].detach()) < 1e-6
    assert float(model.equivariance_affine(regions["affine"], transformed, transform).detach()) < 1e-5
    bg = model.bg_predictor(frames, face_frames[2:4])
    assert torch.equal(bg, torch.eye(3).expand(2, 3, 3))


def test_bf16_autocast_keeps_regions_and_grids_in_float32(face_frames):
    """The GPU path (bf16 autocast, channels_last) on CPU autocast: region parameters, flow,
    masks and the AVD output stay float32; losses and gradients are finite; the prediction is
    within 0.05 of float32's for an untrained model. (32x32 frames: CPU autocast is slow.)"""
    from fomm.train import build_kit
    config = tiny()
    model = build_model(config).to(memory_format=torch.channels_last)
    kit = build_kit(config, "cpu")
    small = torch.nn.functional.interpolate(face_frames[:6], size=(32, 32), mode="area")
    source = small[:2].contiguous(memory_format=torch.channels_last)
    driving = small[4:6].contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, generated = model.generator_losses(source, driving, kit)
    sum(losses.values()).backward()
    for key in ("shift", "covar", "affine", "heatmap"):
        assert generated["kp_driving"][key].dtype == torch.float32, key
    assert generated["optical_flow"].dtype == torch.float32 and generated["mask"].dtype == torch.float32
    assert all(torch.isfinite(v) for v in losses.values())
    grads = [p.grad for p in model.optimizer_groups()["reconstruction"] if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        exact = model.reconstruct(source, driving)["prediction"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            motion = model.detect(driving)
            avd = model.transfer(model.detect(source), motion, motion, avd=True)
            fast = model.reconstruct(source, driving)["prediction"]
    assert avd["affine"].dtype == torch.float32
    assert float((fast.float() - exact).abs().max()) < 0.05


# --------------------------------------------------------------------------- checkpoints
def released_checkpoint(golden: dict, path: Path, bg_empty: bool = False) -> Path:
    """The golden's weights in float32 as train.py / logger.py save_cpk write a reconstruction
    checkpoint: the three state dicts, the optimizer's state and the epoch, no config."""
    parts = {name: {k: v.float() if v.is_floating_point() else v for k, v in golden["state_dict"][name].items()}
             for name in ("generator", "bg_predictor", "region_predictor")}
    if bg_empty:
        parts["bg_predictor"] = {}
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=2e-4, betas=(0.5, 0.999))
    torch.save({**parts, "optimizer_reconstruction": optimizer.state_dict(), "epoch_reconstruction": 99}, path)
    return path


def test_released_checkpoint_reconstructs_the_golden_frames(shared_reference, tmp_path):
    """A file in the released layout (float32 weights, optimizer state, epoch, no config) loads
    through the safe loader with only --config (the golden's reduced vox256.yaml, original
    layout), and `pipeline run reconstruct` on a clip of the golden's frames (source, then the
    three driving frames, as PNGs) writes frames within 2/255 of generator_absolute_bg."""
    from PIL import Image

    from fomm.checkpoint import load_checkpoint_file, released_config, released_family
    from stages.cli import main
    golden = torch.load(shared_reference / "mraa-golden.pt", weights_only=True)
    checkpoint = released_checkpoint(golden, tmp_path / "vox256.pth")
    assert released_family(load_checkpoint_file(checkpoint)) == "mraa"
    # Without --config a released file runs with configs/mraa-vox-256.yaml (the full vox256 widths).
    assert released_config(load_checkpoint_file(checkpoint), checkpoint) == load_config("mraa-vox-256")
    sections = ("dataset_params", "model_params", "train_params", "train_avd_params", "reconstruction_params",
                "animate_params", "visualizer_params")
    config_path = tmp_path / "vox256.yaml"
    config_path.write_text(yaml.safe_dump({key: golden["config"][key] for key in sections}))
    clip = tmp_path / "data" / "test" / "golden"
    clip.mkdir(parents=True)
    frames = torch.cat([golden["inputs"]["source"], golden["inputs"]["driving"]])  # (4, 3, 128, 128)
    for i, frame in enumerate(frames):
        image = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(image).save(clip / f"{i:07d}.png")
    out = tmp_path / "recon"
    assert main(["run", "reconstruct", "--config", str(config_path), "--checkpoint", str(checkpoint),
                 "--data", str(tmp_path / "data"), "--out", str(out), "--batch-size", "4"]) == 0
    written = sorted((out / "golden").glob("*.png"))
    assert len(written) == 4
    expected = golden["outputs"]["generator_absolute_bg"]["prediction"].permute(0, 2, 3, 1).numpy() * 255
    for index in (1, 2, 3):
        image = np.asarray(Image.open(written[index]), dtype=np.float64)
        assert np.abs(image - expected[index - 1]).max() <= 2, (index, np.abs(image - expected[index - 1]).max())
    with open(out / "l1.csv") as handle:
        row = next(csv.DictReader(handle))
    assert row["clip"] == "golden" and 0 < float(row["l1"]) < 0.5


def test_released_layout_variants_load(shared_reference, tmp_path):
    """mgif's empty bg_predictor loads into bg_type 'zero' and is refused by an affine config with
    one line; an AVD checkpoint (train_avd.py: avd_network, optimizer_avd, epoch_avd) enables
    --mode avd; project checkpoints round-trip, with the AVD network only once it has weights."""
    from fomm.checkpoint import load_model
    golden = torch.load(shared_reference / "mraa-golden.pt", weights_only=True)
    sections = ("dataset_params", "model_params", "train_params", "train_avd_params", "reconstruction_params",
                "animate_params", "visualizer_params")
    tree = {key: golden["config"][key] for key in sections}
    empty = released_checkpoint(golden, tmp_path / "mgif.pth", bg_empty=True)
    with pytest.raises(UserError, match="bg_predictor is empty"):
        load_model(config_from_dict(tree), empty)
    tree["model_params"]["bg_predictor_params"]["bg_type"] = "zero"
    model = load_model(config_from_dict(tree), empty)
    assert model.bg_predictor.bg_type == "zero" and model.avd_weights == "absent"
    assert set(model.checkpoint_state()) == {"generator", "bg_predictor", "region_predictor"}
    state = torch.load(empty, weights_only=True)
    state.update(avd_network={k: v.float() if v.is_floating_point() else v
                              for k, v in golden["state_dict"]["avd_network"].items()},
                 optimizer_avd=state["optimizer_reconstruction"], epoch_avd=29)
    torch.save(state, tmp_path / "avd.pth")
    model = load_model(config_from_dict(tree), tmp_path / "avd.pth")
    assert model.avd_weights == "loaded" and "avd_network" in model.checkpoint_state()
    assert torch.equal(model.avd_network.decoder[9].bias, golden["state_dict"]["avd_network"]["decoder.9.bias"].float())


# --------------------------------------------------------------------------- ONNX
def test_onnx_export_and_onnxruntime_animation(shared_data, tmp_path):
    """`pipeline run export` writes MRAA's region, generator and AVD graphs (closed-form SVD and
    inverses: plain ONNX arithmetic) only after onnxruntime matched torch within 1e-4 on real
    frames at two batch sizes; `animate --backend onnxruntime DIR --mode avd` runs them."""
    import json

    from core.media import probe
    from fomm.export import open_export
    from fomm.mraa.export import OnnxMraa
    from stages.cli import main
    out = tmp_path / "mraa-onnx"
    video = shared_data / "faces" / "fomm-demo" / "04.mp4"
    assert main(["run", "export", "--config", "mraa-tiny", "--random-weights", "--format", "onnx", "--out", str(out),
                 "--check-frames", str(video)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".motion-transfer.json", "avd_network.onnx", "config.yaml",
                                                     "export.json", "generator.onnx", "region_predictor.onnx"]
    report = json.loads((out / "export.json").read_text())
    assert report["batches"] == [1, 4] and max(report["max_abs_diff"].values()) <= 1e-4
    assert set(report["max_abs_diff"]) == {"shift", "covar", "affine", "prediction", "avd_shift", "avd_affine",
                                           "avd_covar"}
    assert isinstance(open_export(out), OnnxMraa)
    animated = tmp_path / "onnx.mp4"
    assert main(["run", "animate", "--backend", "onnxruntime", str(out), "--source",
                 str(shared_data / "faces" / "fomm-demo" / "02.png"), "--driving", str(video), "--out", str(animated),
                 "--max-frames", "3", "--device", "cpu", "--mode", "avd"]) == 0
    assert probe(animated).num_frames == 3
