"""Checkpoints never run code: every stage reads them with torch's restricted unpickler.

A crafted checkpoint whose pickle calls `exec` (it would write a marker file) is refused by
reconstruct, animate, benchmark and train --resume with one line and exit 2, and the marker
never appears; FOMM_TRUST_PICKLE naming the file is the only way to load it. Released-format
files (the layout of reference/fomm-checkpoint-layout.tsv, legacy torch serialisation) load
with no flag, and the project's own training checkpoints load with weights_only=True.
"""
from __future__ import annotations

import ast
import csv
from pathlib import Path

import pytest
import torch

from core.config import config_to_dict
from core.errors import UserError
from fomm.checkpoint import TRUST_PICKLE_ENV, load_checkpoint_file, load_model, save_checkpoint
from fomm.config import load_config
from fomm.registry import build_model
from stages.cli import main as cli_main


class WritesAFile:
    """Unpickling this calls exec, which writes `marker`: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def hostile_checkpoint(path: Path, marker: Path, with_config: bool) -> Path:
    """Looks like a checkpoint (state dicts, optionally the project's config) with the payload inside."""
    config = load_config("tiny")
    state = build_model(config).checkpoint_state()
    state["generator"]["payload"] = WritesAFile(marker)
    if with_config:
        state["config"] = config_to_dict(config)
    torch.save(state, path)
    return path


def refused(argv: list[str], capsys, checkpoint: Path, marker: Path) -> None:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(checkpoint) in err and "refused" in err, err
    assert "Python object exec" in err and TRUST_PICKLE_ENV in err
    assert not marker.exists()


@pytest.fixture
def split_root(taichi_root) -> Path:
    """The two Tai-Chi clips as the test split too (reconstruct and benchmark read it)."""
    (taichi_root / "test").mkdir()
    for clip in (taichi_root / "train").iterdir():
        (taichi_root / "test" / clip.name).symlink_to(clip.resolve())
    return taichi_root


@pytest.mark.parametrize("with_config", [True, False])
def test_every_stage_refuses_a_hostile_checkpoint(split_root, shared_data, tmp_path, capsys, with_config,
                                                  monkeypatch):
    monkeypatch.delenv(TRUST_PICKLE_ENV, raising=False)
    marker = tmp_path / "marker"
    evil = hostile_checkpoint(tmp_path / "vox-cpk.pth.tar", marker, with_config)
    config = [] if with_config else ["--config", "tiny"]
    refused(["run", "reconstruct", *config, "--checkpoint", str(evil), "--data", str(split_root),
             "--out", str(tmp_path / "rec")], capsys, evil, marker)
    refused(["run", "animate", "--config", "tiny", "--checkpoint", str(evil),
             "--source", str(shared_data / "faces" / "fomm-demo" / "01.png"),
             "--driving", str(shared_data / "faces" / "fomm-demo" / "04.mp4"),
             "--out", str(tmp_path / "anim.mp4")], capsys, evil, marker)
    spec = f"fomm={evil}" + ("" if with_config else "@tiny")
    refused(["run", "benchmark", "--dataset", "taichi", "--data", str(split_root), "--models", spec,
             "--out", str(tmp_path / "bench"), "--pose", "none", "--identity", "none"], capsys, evil, marker)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    resume_from = run / "checkpoints" / "step-0000001.pt"
    resume_from.write_bytes(evil.read_bytes())
    refused(["run", "train", "--config", "tiny", "--data", str(split_root), "--out", str(run), "--resume",
             "train_params.max_steps=2", "train_params.num_repeats=4"], capsys, resume_from, marker)
    assert not (tmp_path / "anim.mp4").exists()


def test_only_the_named_file_is_trusted(tmp_path, monkeypatch):
    """FOMM_TRUST_PICKLE is per file: naming another file trusts nothing; naming this one runs the
    full unpickler (the payload does run, so the refusals above refuse something real)."""
    marker = tmp_path / "marker"
    evil = hostile_checkpoint(tmp_path / "legacy.pth", marker, with_config=False)
    monkeypatch.setenv(TRUST_PICKLE_ENV, str(tmp_path / "other.pth"))
    with pytest.raises(UserError, match="refused"):
        load_checkpoint_file(evil)
    assert not marker.exists()
    monkeypatch.setenv(TRUST_PICKLE_ENV, str(evil))
    assert "generator" in load_checkpoint_file(evil)
    assert marker.read_text() == "code ran"


def test_junk_is_not_mistaken_for_a_pickle_to_trust(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be read as a torch file") as err:
        load_checkpoint_file(tmp_path / "junk.pth")
    assert "\n" not in str(err.value)


def released_layout_state(shared_reference: Path, config_name: str) -> dict:
    """Random tensors in the released checkpoint's names and shapes, plus optimizer states
    and the epoch as the released files hold them."""
    generator = torch.Generator().manual_seed(0)
    state: dict = {}
    with open(shared_reference / "fomm-checkpoint-layout.tsv") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["config"] == config_name:
                shape = ast.literal_eval(row["shape"])
                tensor = (torch.zeros(shape, dtype=torch.int64) if row["dtype"] == "int64"
                          else torch.rand(shape, generator=generator))
                state.setdefault(row["module"], {})[row["key"]] = tensor
    first = next(iter(state["generator"].values()))
    for name in ("generator", "kp_detector", "discriminator"):
        state[f"optimizer_{name}"] = {
            "state": {0: {"step": 100, "exp_avg": torch.zeros_like(first), "exp_avg_sq": torch.zeros_like(first)}},
            "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "eps": 1e-8, "weight_decay": 0,
                              "amsgrad": False, "params": list(range(len(state[name])))}]}
    state["epoch"] = 99
    return state


def test_released_format_loads_with_no_flag(shared_reference, tmp_path, monkeypatch):
    """vox-256 in the released layout, saved in torch's legacy (pre-1.6) format as the released
    files are: loads through the restricted unpickler, weights intact, align_corners True."""
    monkeypatch.delenv(TRUST_PICKLE_ENV, raising=False)
    state = released_layout_state(shared_reference, "vox-256")
    path = tmp_path / "vox-cpk.pth.tar"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    model = load_model(load_config("vox-256", ["train_params.loss_weights.generator_gan=1"]), path)  # with a GAN loss, so the discriminator loads too
    assert model.align_corners is True and model.generator.dense_motion_network.align_corners is True
    loaded = model.checkpoint_state()
    for name in ("generator", "kp_detector", "discriminator"):
        for key, tensor in state[name].items():
            assert torch.equal(loaded[name][key], tensor), f"{name}.{key}"


def test_align_corners_follows_the_checkpoint_unless_set(tmp_path):
    """Released file -> True; an explicit false (override) wins; a project checkpoint -> its value."""
    config = load_config("tiny")
    state = build_model(config).checkpoint_state()
    released = save_checkpoint(tmp_path / "released.pth", state)
    assert load_model(config, released).align_corners is True
    explicit = load_config("tiny", ["model_params.align_corners=false"])
    model = load_model(explicit, released)
    assert model.align_corners is False and model.generator.align_corners is False
    for recorded in (False, True):
        project_config = load_config("tiny", [f"model_params.align_corners={str(recorded).lower()}"])
        project = save_checkpoint(tmp_path / f"project-{recorded}.pth",
                                  {**state, "config": config_to_dict(project_config)})
        assert load_model(None, project).align_corners is recorded
        assert load_model(config, project).align_corners is recorded  # --config with the automatic value
    assert build_model(config).align_corners is False  # a new model trains with torch's default
