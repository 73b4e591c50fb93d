"""Hostile cases that need another process (issue 20): a second training run on a folder
another one is writing, a run killed part way and resumed, and the memory and time the
resource bombs take to be refused (measured in a process of their own: peak RSS from
getrusage, wall time around the stage). The in-process tables are tests/test_hostile.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from stages import cli

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
STEPS = ["train_params.loss_weights.perceptual=[0,0,0,0,0]", "train_params.loss_weights.reconstruction_l1=10",
         "train_params.num_repeats=40", "train_params.num_epochs=1", "train_params.log_every=1",
         "train_params.checkpoint_every=2", "train_params.image_every=100"]


def _train_argv(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["run", "train", "--config", "tiny", "--data", str(data), "--out", str(out), *extra, *STEPS,
            f"train_params.max_steps={steps}"]


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.cli", *argv], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_steps(out: Path, count: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= count:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    raise AssertionError(f"no {count} steps in {timeout} s")


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_concurrent_resume_is_refused_and_the_first_run_keeps_its_files(taichi_root, tmp_path, capsys):
    out = tmp_path / "run"
    first = _start(_train_argv(taichi_root, out, 6))
    _wait_for_steps(out, 1, first)
    capsys.readouterr()
    code = cli.main(_train_argv(taichi_root, out, 6, "--resume"))
    err = capsys.readouterr().err.strip()
    still_running = first.poll() is None
    assert first.wait(timeout=900) == 0, first.stderr.read()
    assert still_running, "the first run ended before the second started: nothing was shown"
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and f"is being written by pid {first.pid}" in err, err
    # the first run's files as one unbroken run writes them: every step once, in order; each
    # checkpoint holds the step it is named after and this run's config
    assert _steps(out) == list(range(1, 7))
    from fomm.checkpoint import load_checkpoint_file
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == [f"step-{step:07d}.pt" for step in range(2, 7, 2)]
    for name in names:
        assert load_checkpoint_file(out / "checkpoints" / name)["step"] == int(name[5:12])
    assert not [p for p in out.rglob(".*part*")]


def test_a_killed_run_resumes_past_its_torn_line_and_temporary_files(taichi_root, tmp_path):
    """SIGKILL part way, then what a kill can leave on top (a torn metrics line, a half-written
    checkpoint and image): --resume drops the line after the last checkpoint and the torn one,
    removes the temporary files and ends with every step recorded once."""
    out = tmp_path / "run"
    first = _start(_train_argv(taichi_root, out, 12))
    _wait_for_steps(out, 3, first)  # a checkpoint at step 2, steps logged past it
    first.send_signal(signal.SIGKILL)
    first.wait()
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 99, "loss": 0.12')  # torn: no end, no newline
    (out / "checkpoints" / ".step-0000099.abcd.part.pt").write_bytes(b"half")
    (out / "images").mkdir(exist_ok=True)
    (out / "images" / ".step-0000099.abcd.part.png").write_bytes(b"half")
    assert cli.main(_train_argv(taichi_root, out, 5, "--resume")) == 0
    assert _steps(out) == list(range(1, 6))
    assert not [p for p in out.rglob(".*part*")]


def test_a_start_that_never_trained_does_not_block_the_next(taichi_root, tmp_path):
    """A folder holding only the config.yaml of a start that failed before its first step
    (what earlier versions left) is no run: a new start takes it without --overwrite."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("train_params: {}\n")
    assert cli.main(_train_argv(taichi_root, out, 1)) == 0
    assert _steps(out) == [1]


# --------------------------------------------------------------------------- bombs
MEASURE = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a regression fails here, not the machine


def peak_mb():  # this process's own high-water mark: ru_maxrss keeps the forking parent's across exec
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


from stages import cli
import fomm.train, fomm.reconstruction  # imported before the clock starts
before_mb = peak_mb()
began = time.perf_counter()
code = cli.main(json.loads(sys.argv[1]))
seconds = time.perf_counter() - began
print(json.dumps({"code": code, "seconds": seconds, "before_mb": before_mb, "peak_mb": peak_mb()}))
"""


def _bomb_cases(tmp_path: Path, taichi_root: Path) -> dict[str, list[str]]:
    from test_hostile import bomb_flow, bomb_yaml, shared_list_bomb

    from fomm.config import load_config
    from fomm.registry import build_model
    config_file = tmp_path / "bomb.yaml"
    config_file.write_text(bomb_yaml())
    checkpoint = tmp_path / "bomb.pth"
    torch.save({**build_model(load_config("tiny")).checkpoint_state(),
                "config": {"train_params": {"scales": shared_list_bomb()}}}, checkpoint)
    return {
        "yaml alias bomb (--config)": ["run", "train", "--config", str(config_file), "--data", str(taichi_root),
                                       "--out", str(tmp_path / "a")],
        "yaml alias bomb (key=value)": ["run", "train", "--config", "tiny", "--data", str(taichi_root),
                                        "--out", str(tmp_path / "b"), f"train_params.scales={bomb_flow()}"],
        "checkpoint config sharing lists": ["run", "reconstruct", "--checkpoint", str(checkpoint),
                                            "--data", str(taichi_root), "--out", str(tmp_path / "c")],
    }


def test_bombs_are_refused_in_bounded_memory_and_time(tmp_path, taichi_root):
    """Each bomb (about 500 bytes of yaml or a pickle of a few kB; 9**9 values once expanded)
    is refused with one line, exit 2, its process peaking under 500 MB (torch and the stages
    imported: about 230 MB of that) and well under 30 s (the issue measured 98 s and 10.3 GB)."""
    for name, argv in _bomb_cases(tmp_path, taichi_root).items():
        result = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(argv)], cwd=REPO, env=ENV,
                                capture_output=True, text=True, timeout=600)
        numbers = json.loads(result.stdout.strip().splitlines()[-1])
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        print(f"{name}: exit {numbers['code']}, refused in {numbers['seconds']:.2f} s, peak RSS "
              f"{numbers['peak_mb']:.0f} MB ({numbers['before_mb']:.0f} MB before the stage ran)")
        assert numbers["code"] == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "expands to more than" in errors[0], errors[0]
        assert numbers["peak_mb"] < 500 and numbers["peak_mb"] - numbers["before_mb"] < 100, numbers
        assert numbers["seconds"] < 30, numbers
