from pathlib import Path

import pytest

from core.config import (Config, ConfigError, config_from_dict, config_hash, config_to_dict,
                             load_config)


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
    from pipeline.cli import main as cli_main
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
                                      "animate_params.num_pairs=0", "model_params.common_params.num_kp=0"])
def test_non_positive_counts_are_rejected(override):
    """0 must not silently mean 'no limit' (max_steps) or divide by zero (log_every)."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key}: .* expected an integer >="):
        config_from_dict({}, [override])


def test_null_still_means_no_limit():
    assert config_from_dict({}, ["train_params.max_steps=null"]).train_params.max_steps is None
    assert config_from_dict({}, ["train_params.dataloader_workers=0"]).train_params.dataloader_workers == 0
