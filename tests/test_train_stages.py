"""The loop's family hooks (fomm/api.py): stages (`--stage avd --checkpoint K`), set_epoch,
clip_gradients and optimizer_lr, shown on a two-stage FOMM variant registered for the test."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from core.config import replace as replace_config
from core.errors import UserError
from fomm import families
from fomm.checkpoint import load_checkpoint_file
from fomm.model import FirstOrderModel
from fomm.train import check_initial_checkpoint, resolve_run_config, train
from stages.cli import main as cli_main

FAST = ["train_params.loss_weights.perceptual=[0,0,0,0,0]", "train_params.loss_weights.reconstruction_l1=10",
        "train_params.num_repeats=4", "train_params.num_epochs=3", "train_params.batch_size=2", "train_params.checkpoint_every=3",
        "train_params.image_every=100", "train_params.dataloader_workers=0"]


class TwoStageFomm(FirstOrderModel):
    """FOMM with a second stage that trains only the jacobian head, as an AVD stage trains only
    its network; records the hooks the loop calls."""
    stages = ("reconstruction", "avd")
    calls: list[tuple[str, object]] = []

    @classmethod
    def stage_config(cls, config, stage):
        config = super().stage_config(config, stage)
        if stage == "avd":  # the stage's own schedule, as a family's train_avd_params
            config = replace_config(config, train_params=replace_config(config.train_params, stage="avd",
                                                                        max_steps=2, lr_kp_detector=1e-2))
        return config

    def set_stage(self, stage):
        super().set_stage(stage)
        self.stage = stage
        TwoStageFomm.calls.append(("stage", stage))

    def train(self, mode=True):
        """The loop calls train() every step; in the avd stage the frozen networks stay in eval
        mode (their BatchNorm statistics too), as the originals' AVD stages keep them."""
        super().train(mode)
        if getattr(self, "stage", "reconstruction") == "avd":
            self.generator.eval()
            self.kp_detector.predictor.eval()
        return self

    def optimizer_groups(self):
        if getattr(self, "stage", "reconstruction") == "avd":
            return {"jacobian_head": list(self.kp_detector.jacobian.parameters())}
        return super().optimizer_groups()

    def optimizer_lr(self, group, train_params):
        return train_params.lr_kp_detector if group == "jacobian_head" else super().optimizer_lr(group, train_params)

    def set_epoch(self, epoch):
        TwoStageFomm.calls.append(("epoch", epoch))

    def clip_gradients(self):
        TwoStageFomm.calls.append(("clip", None))


@pytest.fixture
def two_stage(monkeypatch):
    monkeypatch.setitem(families.FAMILIES, "fomm", replace(families.FAMILIES["fomm"],
                                                           model=f"{__name__}:TwoStageFomm"))
    TwoStageFomm.calls = []
    return TwoStageFomm


def test_avd_stage_trains_only_its_network_from_the_checkpoint(two_stage, taichi_root, tmp_path):
    first = resolve_run_config("tiny", FAST + ["train_params.max_steps=6"], None)  # epochs of 4 steps
    train(first, taichi_root, tmp_path / "rec")
    steps = sorted((tmp_path / "rec" / "checkpoints").glob("*.pt"))
    assert ("clip", None) in two_stage.calls and ("epoch", 0) in two_stage.calls and ("epoch", 1) in two_stage.calls

    start = steps[-1]
    avd = resolve_run_config("tiny", FAST, None, stage="avd")
    assert avd.train_params.stage == "avd" and avd.train_params.max_steps == 2
    two_stage.calls = []
    train(avd, taichi_root, tmp_path / "avd", init_checkpoint=start)
    assert ("stage", "avd") in two_stage.calls
    before = load_checkpoint_file(start)["kp_detector"]
    after = load_checkpoint_file(sorted((tmp_path / "avd" / "checkpoints").glob("*.pt"))[-1])["kp_detector"]
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed == {"jacobian.weight", "jacobian.bias"}  # everything else is the checkpoint's
    saved = load_checkpoint_file(sorted((tmp_path / "avd" / "checkpoints").glob("*.pt"))[-1])
    assert saved["config"]["train_params"]["stage"] == "avd" and "optimizer_jacobian_head" in saved


def test_stage_arguments_are_checked_in_one_line(two_stage, tmp_path, capsys):
    config = resolve_run_config("tiny", [], None, stage="avd")
    with pytest.raises(UserError, match="--stage avd starts from a trained model: expected --checkpoint"):
        check_initial_checkpoint(config, None, resume=False)
    assert check_initial_checkpoint(config, None, resume=True) is None  # --resume continues an avd run
    with pytest.raises(UserError, match="does not exist"):
        check_initial_checkpoint(config, str(tmp_path / "missing.pt"), resume=False)
    first = resolve_run_config("tiny", [], None)
    with pytest.raises(UserError, match="reconstruction stage starts from scratch"):
        check_initial_checkpoint(first, str(tmp_path), resume=False)


def test_a_family_without_the_stage_refuses_it(tmp_path, capsys):
    code = cli_main(["run", "train", "--config", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--stage", "avd"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "error: --stage 'avd': fomm trains ['reconstruction']"
    assert not (tmp_path / "o").exists()
