from pathlib import Path

import pytest

from core.config import ConfigError, config_hash, config_to_dict
from fomm.config import Config, config_from_dict, load_config


def test_defaults_are_the_vox256_architecture():
    cfg = Config()
    assert cfg.model_params.common_params.num_kp == 10
    assert cfg.model_params.generator_params.dense_motion_params.num_blocks == 5
    assert cfg.train_params.scales == (1.0, 0.5, 0.25, 0.125)


def test_overrides_are_typed():
    cfg = config_from_dict({}, ["train_params.batch_size=8", "train_params.lr_generator=1e-4",
                                "train_params.epoch_milestones=[3, 5]"])
    assert cfg.train_params.batch_size == 8
    assert cfg.train_params.lr_generator == pytest.approx(1e-4)
    assert cfg.train_params.epoch_milestones == (3, 5)


@pytest.mark.parametrize("override, message", [
    ("train_params.batch_sise=8", "batch_sise"),
    ("train_params.batch_size=eight", "expected an integer"),
    ("model_params.common_params.estimate_jacobian=3", "expected true or false"),
    ("model_params.name=stylegan", "not one of"),
    ("train_params", "expected key=value"),
])
def test_bad_keys_and_types_are_rejected_with_the_path(override, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, [override])


def test_original_spellings_load(tmp_path: Path):
    # Older original configs say image_shape and write floats without a dot.
    path = tmp_path / "orig.yaml"
    path.write_text("dataset_params:\n  image_shape: [128, 128, 3]\n"
                    "train_params:\n  lr_generator: 2e-4\n")
    cfg = load_config(path)
    assert cfg.dataset_params.frame_shape == (128, 128, 3)
    assert cfg.train_params.lr_generator == pytest.approx(2e-4)


def test_round_trip_and_hash():
    cfg = config_from_dict({}, ["train_params.batch_size=4"])
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(Config()) != config_hash(cfg)


def test_a_baseline_trains_with_its_own_variant_of_a_dataset_config():
    from fomm.registry import family_config
    from fomm.train import resolve_run_config
    assert family_config("vox-256", "monkey-net") == "monkey-net-vox-256"
    assert family_config("tiny", "x2face") == "x2face-tiny"
    assert family_config("vox-256", "fomm") == "vox-256"
    assert family_config("monkey-net-vox-256", "monkey-net") == "monkey-net-vox-256"
    x2face = resolve_run_config("vox-256", [], "x2face")
    assert x2face.model_params.name == "x2face"
    # X2Face trains on the L1 photometric loss alone, not FOMM's perceptual pyramid.
    assert x2face.train_params.loss_weights.reconstruction_l1 > 0
    assert not any(x2face.train_params.loss_weights.perceptual)


def test_python_tags_are_refused_before_anything_runs(tmp_path, capsys):
    """yaml.safe_load refuses !!python tags; the loader turns that into one line and exit 2."""
    from stages.cli import main as cli_main
    marker = tmp_path / "marker"
    path = tmp_path / "evil.yaml"
    path.write_text("train_params:\n"
                    f"  seed: !!python/object/apply:exec [\"open({str(marker)!r}, 'w')\"]\n")
    with pytest.raises(ConfigError, match=r"line 2: .*python/object/apply:exec.*refused"):
        load_config(path)
    with pytest.raises(ConfigError, match="override 'train_params.seed=!!python/name:os.system'"):
        config_from_dict({}, ["train_params.seed=!!python/name:os.system"])
    out = tmp_path / "run"
    assert cli_main(["run", "train", "--config", str(path), "--data", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err
    assert not marker.exists() and not out.exists()
    (tmp_path / "latin1.yaml").write_bytes("train_params:\n  seed: 1 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="utf-8"):
        load_config(tmp_path / "latin1.yaml")


@pytest.mark.parametrize("override", ["train_params.max_steps=0", "train_params.num_epochs=0",
                                      "train_params.batch_size=-4", "train_params.log_every=0",
                                      "train_params.dataloader_workers=-1", "reconstruction_params.num_videos=0",
                                      "model_params.common_params.num_kp=0"])
def test_non_positive_counts_are_rejected(override):
    """0 must not silently mean 'no limit' (max_steps) or divide by zero (log_every)."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key}: .* expected an integer >="):
        config_from_dict({}, [override])


def test_null_still_means_no_limit():
    assert config_from_dict({}, ["train_params.max_steps=null"]).train_params.max_steps is None
    assert config_from_dict({}, ["train_params.dataloader_workers=0"]).train_params.dataloader_workers == 0


@pytest.mark.parametrize("override", ["animate_params.num_pairs=7", "animate_params.format=.gif",
                                      "reconstruction_params.format=.gif", "dataset_params.pairs_list=pairs.csv"])
def test_fields_of_modes_the_project_lacks_are_refused(override):
    """Set to anything but the original configs' values they would ask for something that never happens."""
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"^{key}: '?{value}'? is not supported .*original configs"):
        config_from_dict({}, [override])
    recorded = config_to_dict(Config())  # a checkpoint an earlier version wrote with such a value still loads
    section, field = key.split(".")
    recorded[section][field] = 7 if field == "num_pairs" else value
    config = config_from_dict(recorded, recorded=True)
    assert getattr(getattr(config, section), field) == getattr(getattr(Config(), section), field)
    config_from_dict(config_to_dict(config))  # and what it gives passes the check where it goes next


def test_the_original_values_load():
    for override in ["animate_params.num_pairs=100", "dataset_params.pairs_list=data/taichi256.csv"]:
        config_from_dict({}, [override])


def test_draw_border_decides_the_lines_between_training_image_panels():
    import torch

    from fomm.train import training_image
    frames = torch.rand(2, 3, 8, 8)

    def image(draw_border):
        config = config_from_dict({}, [f"visualizer_params.draw_border={draw_border}"])
        return training_image(None, config, frames, frames, {"prediction": frames})

    bordered, plain = image("true"), image("false")
    assert plain.shape == (2 * 8, 5 * 8, 3)
    assert bordered.shape == (2 * 8 + 3 * 2, 5 * 8 + 6 * 2, 3) and (bordered[:2] == 255).all()
    assert (bordered[2:10, 2:10] == plain[:8, :8]).all()  # the same panels, moved by the border


def test_original_monkey_net_output_formats_are_dropped_with_a_note(caplog):
    """Monkey-Net's files ask for '.gif' outputs of its batch modes; they load, and the log says what went."""
    tree = {"model_params": {"common_params": {"num_kp": 10, "kp_variance": "matrix"}},
            "reconstruction_params": {"num_videos": 7, "format": ".gif"},
            "transfer_params": {"num_pairs": 100, "format": ".gif", "normalization_params": {"move_location": True}},
            "prediction_params": {"num_epochs": 1000}}
    with caplog.at_level("INFO", logger="fomm.monkey_net.config"):
        config = config_from_dict(tree)
    assert config.model_params.name == "monkey-net" and config.reconstruction_params.num_videos == 7
    assert config.animate_params.num_pairs == 100 and config.animate_params.normalization_params.use_relative_movement
    assert "prediction_params, transfer_params.format, reconstruction_params.format dropped" in caplog.text
