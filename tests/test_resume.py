"""A run stopped half way and resumed with --resume ends bit-identical to an unbroken run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fomm.checkpoint import load_checkpoint_file
from fomm.registry import build_model
from fomm.train import resolve_run_config
from stages.cli import main as cli_main

# 2 clips x 4 repeats / batch 4 = 2 steps per epoch: the stop at step 3 falls mid-epoch,
# after one MultiStepLR milestone (epoch 1), with flips and time flips on.
COMMON = ["--config", "tiny", "train_params.loss_weights.perceptual=[0,0,0,0,0]",
          "train_params.loss_weights.reconstruction_l1=10", "train_params.num_repeats=4",
          "train_params.num_epochs=10", "train_params.epoch_milestones=[1,2]",
          "train_params.checkpoint_every=100", "train_params.image_every=100", "train_params.log_every=100"]


def _run(root: Path, out: Path, steps: int, *extra: str) -> None:
    assert cli_main(["run", "train", "--data", str(root), "--out", str(out), *COMMON,
                     f"train_params.max_steps={steps}", *extra]) == 0


def _equal(a, b, path="") -> None:
    """Exact equality of nested checkpoint contents (tensors bit for bit)."""
    if torch.is_tensor(a):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path} keys differ"
        for key in a:
            _equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_stopped_and_resumed_run_equals_unbroken_run(taichi_root, tmp_path):
    unbroken, stopped = tmp_path / "unbroken", tmp_path / "stopped"
    _run(taichi_root, unbroken, 6)
    _run(taichi_root, stopped, 3, "train_params.dataloader_workers=1")  # other loader workers, same pairs
    assert load_checkpoint_file(stopped / "checkpoints" / "step-0000003.pt")["batch_in_epoch"] == 1
    with open(stopped / "metrics.jsonl", "a") as handle:  # steps a killed run logged past its checkpoint
        handle.write(json.dumps({"step": 4, "loss": -1.0}) + "\n")
    _run(taichi_root, stopped, 6, "--resume")

    a = load_checkpoint_file(unbroken / "checkpoints" / "step-0000006.pt")
    b = load_checkpoint_file(stopped / "checkpoints" / "step-0000006.pt")
    for part in ("generator", "kp_detector", "optimizer_generator", "optimizer_kp_detector", "schedulers"):
        _equal(a[part], b[part], part)
    assert a["step"] == b["step"] == 6 and a["epoch"] == b["epoch"] == 3
    assert a["optimizer_generator"]["param_groups"][0]["lr"] == pytest.approx(2e-6)  # two milestones passed
    _equal(a["rng"]["torch"], b["rng"]["torch"], "rng.torch")

    curve = lambda out: [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    ca, cb = curve(unbroken), curve(stopped)
    assert [r["step"] for r in cb] == list(range(1, 7))
    assert [r["loss"] for r in ca] == [r["loss"] for r in cb]


def test_resume_with_other_model_params_is_refused(taichi_root, tmp_path):
    out = tmp_path / "run"
    _run(taichi_root, out, 1)
    code = cli_main(["run", "train", "--data", str(taichi_root), "--out", str(out), *COMMON,
                     "train_params.max_steps=2", "model_params.common_params.num_kp=3", "--resume"])
    assert code == 2


def _files(out: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()}


def test_own_checkpoints_resume_through_the_safe_path(taichi_root, tmp_path, monkeypatch):
    """The loop's checkpoints hold only tensors and plain values (torch.load with weights_only=True
    and no allowlist reads them), and --resume never calls the full unpickler, also for a
    checkpoint written before RNG states were tensors (numpy's state tuple)."""
    out = tmp_path / "run"
    _run(taichi_root, out, 1)
    state = torch.load(out / "checkpoints" / "step-0000001.pt", weights_only=True)
    assert torch.is_tensor(state["rng"]["numpy"]["state"]["key"])

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    _run(taichi_root, out, 2, "--resume")
    legacy = load_checkpoint_file(out / "checkpoints" / "step-0000002.pt")
    np.random.seed(7)
    legacy["rng"]["numpy"] = np.random.get_state()  # what the loop wrote before
    # and, before a discriminator was built only with a GAN loss, an untrained one and its optimizer
    with_gan = build_model(resolve_run_config("tiny", ["train_params.loss_weights.generator_gan=1"], None))
    legacy["discriminator"] = with_gan.discriminator.state_dict()
    legacy["optimizer_discriminator"] = torch.optim.Adam(with_gan.discriminator.parameters()).state_dict()
    legacy["schedulers"]["discriminator"] = dict(legacy["schedulers"]["generator"])
    torch.save(legacy, out / "checkpoints" / "step-0000002.pt")
    _run(taichi_root, out, 3, "--resume")
    assert len(calls) >= 3 and all(flag is True for flag in calls), calls
    assert load_checkpoint_file(out / "checkpoints" / "step-0000003.pt")["step"] == 3


def test_a_folder_holding_another_run_is_refused_unless_resume_or_overwrite(taichi_root, tmp_path, capsys):
    out = tmp_path / "run"
    _run(taichi_root, out, 2)
    before = _files(out)
    argv = ["run", "train", "--data", str(taichi_root), "--out", str(out), *COMMON, "train_params.max_steps=1"]
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "--overwrite" in err, err
    assert _files(out) == before  # nothing of the old run touched, nothing added
    assert cli_main([*argv, "--resume", "--overwrite"]) == 2 and _files(out) == before

    assert cli_main([*argv, "--overwrite"]) == 0  # a fresh run: none of the old files remain
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000001.pt"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]


@pytest.mark.parametrize("bad", [["--workers", "-1"], ["--workers", "0"], ["train_params.max_steps=0"],
                                 ["train_params.num_repeats=0"], ["train_params.checkpoint_every=0"]])
def test_bad_counts_are_one_line_errors(taichi_root, tmp_path, capsys, bad):
    out = tmp_path / "run"
    assert cli_main(["run", "train", "--data", str(taichi_root), "--out", str(out), *COMMON, *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad[-1].split("=")[0].lstrip("-") in err, err
    assert not out.exists()
