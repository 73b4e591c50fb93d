"""`pipeline run benchmark` killed halfway and rerun writes the tables of an unbroken run,
scoring only the clips it had not finished; Ray actors score as this process does; the
test-clip list's hash names the clips that were scored."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from builders import random_checkpoints, write_sample

from core.config import config_to_dict
from fomm.config import config_from_dict, load_config
from metrics import benchmark, clip_scores
from stages import benchmark as benchmark_stage
from stages.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[1]
TABLE_FILES = [f"{stem}.{ext}" for stem in ("comparison", "motion") for ext in ("json", "md", "csv", "html")]
MODELS = ("fomm", "monkey-net")


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> Path:
    """Three test clips of the built-in sample dataset (8 frames, 64 px) with their truth."""
    return write_sample(tmp_path_factory.mktemp("sample"), num_train=0, num_test=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> str:
    """`--models` of randomly initialised tiny FOMM and Monkey-Net, configs embedded."""
    configs = {name: config_from_dict(config_to_dict(load_config({"fomm": "tiny"}.get(name, f"{name}-tiny"))),
                                      ["dataset_params.frame_shape=[64,64,3]"]) for name in MODELS}
    return random_checkpoints(tmp_path_factory.mktemp("checkpoints"), configs)


def _argv(data: Path, models: str, out: Path, *extra: str) -> list[str]:
    return ["run", "benchmark", "--dataset", "sample", "--data", str(data), "--models", models,
            "--out", str(out), "--bootstrap", "50", "--no-provenance", *extra]


@pytest.fixture(scope="module")
def unbroken(sample_data, models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unbroken")
    assert cli_main(_argv(sample_data, models, out)) == 0
    return out


def _result_files(out: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((out / "clips").rglob("*"))
            if p.is_file()}


# The benchmark in a child process that SIGKILLs itself inside the 4th per-clip write, after
# its temporary file exists and before the rename: the worst moment a kill can come.
KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import torch
    from metrics import clip_scores
    from stages.cli import main
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # as tests/conftest.py: the same arithmetic
    write = clip_scores.ClipResults.write
    calls = []

    def write_then_die(self, result):
        calls.append(result.clip)
        if len(calls) == 4:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f".{result.clip}.x1y2z3.part.parquet").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        write(self, result)

    clip_scores.ClipResults.write = write_then_die
    sys.exit(main(sys.argv[1:]))
""")


def test_a_benchmark_killed_halfway_and_rerun_writes_the_unbroken_runs_tables(sample_data, models, unbroken,
                                                                              tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.run([sys.executable, "-c", KILLED_RUN, *_argv(sample_data, models, out)], env=env,
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    finished = _result_files(out)
    assert len([p for p in finished if p.suffix == ".parquet" and not p.name.startswith(".")]) == 3  # FOMM's clips
    assert any(p.name.endswith(".part.parquet") for p in finished)  # the write it died in
    assert not (out / "comparison.md").exists()

    record = _benchmark(_args(sample_data, models, out))
    assert [record["models"][m]["clips_scored_this_run"] for m in MODELS] == [0, 3]  # only what was missing
    for name in TABLE_FILES:
        assert (out / name).read_bytes() == (unbroken / name).read_bytes(), name
    left = _result_files(out)
    assert all(left[p] == stamp for p, stamp in finished.items() if not p.name.startswith("."))  # kept as they were
    assert not any(p.name.startswith(".") for p in left)  # the half-written file is gone
    pd.testing.assert_frame_equal(pd.read_parquet(out / "per_frame.parquet"),
                                  pd.read_parquet(unbroken / "per_frame.parquet"))

    again = _benchmark(_args(sample_data, models, out))  # a finished run rerun scores nothing
    assert [again["models"][m]["clips_scored_this_run"] for m in MODELS] == [0, 0]
    assert _result_files(out) == left


def _args(data: Path, models: str, out: Path, *extra: str):
    from stages.cli import build_parser
    return build_parser("benchmark").parse_args(_argv(data, models, out, *extra))


def _benchmark(args) -> dict:
    """`pipeline run benchmark` as the command line runs it: typed options, then the run."""
    return benchmark_stage.run(benchmark_stage.options(args))


def test_other_settings_score_again_and_keep_the_earlier_results(sample_data, models, unbroken, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(unbroken, out)
    record = _benchmark(_args(sample_data, models.split(",")[0], out, "--max-frames", "5"))
    assert record["models"]["fomm"]["clips_scored_this_run"] == 3
    per_clip = pd.read_parquet(out / "per_clip.parquet")
    assert (per_clip[per_clip["model"] == "fomm"]["num_frames"] == 5).all()
    assert len(list((out / "clips").iterdir())) == 3  # FOMM's folder of each setting, Monkey-Net's


def test_ray_actors_score_as_this_process_does(sample_data, models, unbroken, tmp_path, ray_local):
    out = tmp_path / "ray"
    record = _benchmark(_args(sample_data, models, out, "--workers", "2"))
    assert record["workers"] == 2 and [record["models"][m]["clips_scored_this_run"] for m in MODELS] == [3, 3]
    ours, theirs = (pd.read_parquet(folder / "per_frame.parquet") for folder in (out, unbroken))
    assert ours[["model", "clip", "frame"]].equals(theirs[["model", "clip", "frame"]])  # a fixed order
    for column in ("l1", "ssim", "psnr", "motion_epe"):  # another process, maybe other threads: to 1e-6
        np.testing.assert_allclose(ours[column], theirs[column], rtol=1e-6, atol=1e-6, err_msg=column)


# --------------------------------------------------------------------------- the clip list's hash
def test_the_clip_list_hash_names_the_clips_and_their_frame_counts():
    clips = {"b": 8, "a": 12, "c": 8}
    digest = clip_scores.clip_list_sha256(clips)
    assert digest == clip_scores.clip_list_sha256(dict(reversed(list(clips.items()))))  # order-free
    assert digest != clip_scores.clip_list_sha256({"a": 12, "b": 8})  # a clip missing
    assert digest != clip_scores.clip_list_sha256({**clips, "c": 7})  # a clip cut short
    assert digest != clip_scores.clip_list_sha256({"a": 12, "b": 8, "c ": 8})
    import hashlib
    assert digest == hashlib.sha256(b"a\t12\nb\t8\nc\t8\n").hexdigest()  # as the README documents it


def test_a_missing_test_clip_changes_the_recorded_hash(sample_data, models, unbroken, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    folders = sorted((data / "png" / "test").iterdir())  # <clip>.mp4/ frame folders
    clips = [folder.name.removesuffix(".mp4") for folder in folders]
    shutil.rmtree(folders[1])
    out = tmp_path / "fewer"
    fomm_only = models.split(",")[0]
    record = _benchmark(_args(data, fomm_only, out))
    full = _benchmark(_args(sample_data, fomm_only, tmp_path / "all"))
    assert record["clips"] == [clips[0], clips[2]] and full["clips"] == clips
    assert record["clip_list"]["sha256"] == clip_scores.clip_list_sha256({clips[0]: 8, clips[2]: 8})
    assert record["clip_list"]["sha256"] != full["clip_list"]["sha256"]
    # the same clips give the same hash, whichever models scored them
    assert full["clip_list"] == benchmark.json.loads((unbroken / "benchmark.json").read_text())["clip_list"]
    for name in ("comparison.md", "motion.md"):
        assert record["clip_list"]["sha256"] in (out / name).read_text()


def test_a_second_benchmark_into_a_folder_in_use_is_refused(sample_data, models, unbroken, capsys):
    """One writer per output folder (core.writer_lock, as prepare): the second names the first."""
    import fcntl

    from core.writer_lock import LOCK_NAME
    before = _result_files(unbroken)
    tables = {name: (unbroken / name).read_bytes() for name in TABLE_FILES}
    # another writer: its own open of the lock file (writer_lock is re-entrant within the
    # process that holds it, so holding it through writer_lock here would let the stage in)
    with open(unbroken / LOCK_NAME, "a+") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert cli_main(_argv(sample_data, models, unbroken)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is being written by pid" in err
    assert _result_files(unbroken) == before and all((unbroken / n).read_bytes() == t for n, t in tables.items())
