"""Checkpoints: atomic writes, released and project formats, named errors on mismatch."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from core.config import config_to_dict
from core.errors import UserError
from core.media import load_image
from fomm.checkpoint import CHECKPOINT_FORMAT, load_checkpoint_file, load_model, model_state, save_checkpoint
from fomm.config import load_config
from fomm.registry import build_model


@pytest.fixture(scope="module")
def config():
    return load_config("tiny", ["train_params.loss_weights.generator_gan=1"])  # with the discriminator a GAN loss builds


@pytest.fixture(scope="module")
def trained_like(config):
    """A tiny model whose weights and BatchNorm statistics are not the initial ones."""
    torch.manual_seed(5)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.add_(0.1)
    return model.eval()


@pytest.fixture(scope="module")
def frame(shared_data):
    image = load_image(shared_data / "bodies" / "dwnet-taichi" / "1" / "0000000.png")
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)


def predict(model, frame):
    with torch.no_grad():
        return model.reconstruct(frame, frame.flip(-1))["prediction"]


def test_released_format_roundtrip(tmp_path, config, trained_like, frame):
    """{generator, kp_detector, discriminator, optimizers, epoch}: loads, eval mode, same outputs."""
    state = {**trained_like.checkpoint_state(), "optimizer_generator": {"state": {}, "param_groups": []},
             "epoch": 99}
    path = save_checkpoint(tmp_path / "tiny-cpk.pth.tar", state)
    model = load_model(config, path)
    assert not model.training
    assert torch.equal(predict(model, frame), predict(trained_like, frame))


def test_project_format_carries_its_config(tmp_path, config, trained_like, frame):
    state = {"format": CHECKPOINT_FORMAT, "model": trained_like.checkpoint_state(),
             "config": config_to_dict(config), "step": 7,
             "numpy_rng": np.random.default_rng(0).bit_generator.state}
    path = save_checkpoint(tmp_path / "step-7.pth", state)
    assert load_checkpoint_file(path)["step"] == 7
    model = load_model(None, path)
    assert torch.equal(predict(model, frame), predict(trained_like, frame))


def test_training_loop_layout(tmp_path, config, trained_like, frame):
    """What fomm/train.py writes: the released layout plus config, optimizers, schedulers, RNG."""
    state = {"config": config_to_dict(config), **trained_like.checkpoint_state(),
             "optimizer_generator": torch.optim.Adam(trained_like.generator.parameters()).state_dict(),
             "schedulers": {"generator": {"last_epoch": 0}}, "step": 3, "epoch": 0,
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}
    model = load_model(None, save_checkpoint(tmp_path / "step-3.pt", state))
    assert torch.equal(predict(model, frame), predict(trained_like, frame))


def test_data_parallel_prefixes_are_accepted(tmp_path, config, trained_like):
    state = {name: {f"module.{k}": v for k, v in sd.items()} for name, sd in trained_like.checkpoint_state().items()}
    assert set(model_state(state)["generator"]) == set(trained_like.generator.state_dict())
    load_model(config, save_checkpoint(tmp_path / "dp.pth", state))


def test_inference_without_discriminator(tmp_path, config, trained_like):
    state = trained_like.checkpoint_state()
    del state["discriminator"]
    load_model(config, save_checkpoint(tmp_path / "nodisc.pth", state))
    del state["kp_detector"]
    with pytest.raises(UserError, match="kp_detector"):
        load_model(config, save_checkpoint(tmp_path / "nokp.pth", state))


def test_mismatch_names_the_tensor(tmp_path, config, trained_like):
    path = save_checkpoint(tmp_path / "a.pth", trained_like.checkpoint_state())
    with pytest.raises(UserError, match=r"kp_detector\.kp\.weight has shape \(5, .*\(6, "):
        load_model(load_config("tiny", ["model_params.common_params.num_kp=6"]), path)
    with pytest.raises(UserError, match=r"discriminator\.discs\.1\.down_blocks\.0\.conv\.weight"):
        load_model(load_config("tiny", ["train_params.loss_weights.generator_gan=1", "model_params.discriminator_params.sn=false"]), path)


def test_save_is_atomic(tmp_path, trained_like):
    path = save_checkpoint(tmp_path / "keep.pth", {"epoch": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"epoch": 2, "bad": lambda: None})  # lambdas do not pickle
    assert load_checkpoint_file(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.pth"]


def test_bad_files_are_user_errors(tmp_path, config):
    with pytest.raises(UserError, match="does not exist"):
        load_model(config, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth"):
        load_checkpoint_file(tmp_path / "junk.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(UserError, match="expected a dict"):
        load_checkpoint_file(tmp_path / "list.pth")


def test_released_checkpoint_without_config_takes_its_familys_default(tmp_path, trained_like, monkeypatch, caplog):
    """A file without the project's config is recognised by its layout and runs with its family's
    default config (named in the log); a file no family recognises asks for --config."""
    from fomm import families
    from fomm.checkpoint import released_family
    path = save_checkpoint(tmp_path / "r.pth", trained_like.checkpoint_state())
    assert released_family(load_checkpoint_file(path)) == "fomm"
    monkeypatch.setitem(families.FAMILIES, "fomm", replace(families.FAMILIES["fomm"], default_config="tiny"))
    with caplog.at_level("INFO", logger="fomm.checkpoint"):
        model = load_model(None, path)
    assert "configs/tiny.yaml" in caplog.text and type(model).__name__ == "FirstOrderModel"
    assert torch.equal(model.kp_detector.kp.weight, trained_like.kp_detector.kp.weight)
    unknown = save_checkpoint(tmp_path / "u.pth", {"weights": {"w": torch.zeros(2)}})
    with pytest.raises(UserError, match="no family's released layout.*--config"):
        load_model(None, unknown)


def test_training_resume_path_makes_the_same_checks(config, trained_like):
    """MotionTransferModel.load_checkpoint_state (the resume path) and load_model share one check:
    the same named errors, and nothing loads when any sub-network does not fit."""
    model = build_model(load_config("tiny", ["train_params.loss_weights.generator_gan=1",
                                             "model_params.discriminator_params.sn=false"]))
    assert list(dict(model.named_children()))[-1] == "discriminator"  # checked after two that fit
    before = {k: v.clone() for k, v in model.kp_detector.state_dict().items()}
    with pytest.raises(UserError, match=r"^checkpoint does not match config fomm: tensor discriminator\."):
        model.load_checkpoint_state(trained_like.checkpoint_state())
    assert all(torch.equal(before[k], v) for k, v in model.kp_detector.state_dict().items())
    state = trained_like.checkpoint_state()
    del state["discriminator"]  # optional for inference only, not for a resume
    with pytest.raises(UserError, match=r"has no \['discriminator'\] state dict"):
        build_model(config).load_checkpoint_state(state)
