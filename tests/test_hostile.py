"""Every stage against hostile input (issue 20): one table of cases per stage, each run in this
process through `stages.cli.main`, each asserting exit status 2, exactly one line on stderr
that starts with `error: ` and names the problem, no traceback, and every input and every file
that existed before unchanged (a checksum of each file under the case's folder and the shared
inputs, before and after; nothing added either, so a refused start leaves nothing behind).

Classes covered (the issue's): data lost through `--out` (equal to, inside or containing an
input, through `..`, a symbolic or a hard link; a folder the stage did not write), unusable
`--out` (read-only, /proc, an existing file, a symbolic link, a full disk), broken models (NaN,
infinite, integer or overflowing weights; crafted and mismatched ONNX folders), resource bombs
(yaml aliases, a checkpoint config sharing lists, too deep, `--workers 1000`), train integrity
(changed settings on --resume, no RNG state, a corrupt metrics file, a start that fails), silent
input corruption (bad counts, ids with a trailing newline, a `config` that is not a mapping) and
the raw tracebacks of the issue (NaN/Inf/negative overrides, dataset yaml of the wrong shape, a
truncated comparison.json, a read-only folder for the signing key, `--shard-mb 1e-9`).

The `.lock` file of a folder a stage locked records its last holder: its presence is compared,
not its bytes. Cases that need another process (kills, concurrency) and the memory and time of
the bombs are in tests/test_hostile_processes.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from core.config import config_to_dict
from core.outputs import MARKER
from stages import cli

# A training run small enough to take one step in seconds: no perceptual loss (no VGG19), the
# two clips repeated to one batch of 4.
FAST_TRAIN = ["train_params.max_steps=1", "train_params.loss_weights.perceptual=[0,0,0,0,0]",
              "train_params.loss_weights.reconstruction_l1=10", "train_params.num_repeats=4",
              "train_params.checkpoint_every=1", "train_params.image_every=1", "train_params.log_every=1"]


# --------------------------------------------------------------------------- the shared inputs
@dataclass
class World:
    """Inputs every case may read (none may change them): a dataset in the original layout
    (train/ and test/, two real Tai-Chi clips of 6 frames), a photo and a driving video, a
    tiny FOMM as a released checkpoint and as a project one, a one-step training run, and an
    ONNX export of the tiny model."""
    root: Path
    data: Path
    source: Path
    driving: Path
    release: Path
    project: Path
    run: Path
    onnx: Path


def bomb_yaml(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" yaml: each level lists the previous one `width` times (9**9 leaves
    from about 500 bytes)."""
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def bomb_flow(levels: int = 9, width: int = 9) -> str:
    """The same bomb as one flow sequence, for a `key=value` override."""
    parts = ["&a0 [" + ", ".join(["1"] * width) + "]"]
    for level in range(1, levels):
        parts.append(f"&a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "[" + ", ".join(parts) + "]"


def shared_list_bomb(levels: int = 10, width: int = 9) -> list:
    """A list that lists one list `width` times, `levels` deep: a pickle stores it in a few
    hundred bytes, a deep copy is 9**10 values."""
    node: list = [0] * width
    for _ in range(levels):
        node = [node] * width
    return node


def nested(depth: int) -> list:
    node: list = []
    for _ in range(depth):
        node = [node]
    return node


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_data) -> World:
    from fomm.config import load_config
    from fomm.export import check_frames, export_onnx
    from fomm.registry import build_model
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    for split in ("train", "test"):
        for clip in ("1", "2"):
            folder = data / split / f"t{clip}"
            folder.mkdir(parents=True)
            for index in range(6):
                name = f"{index:07d}.png"
                shutil.copy(shared_data / "bodies" / "dwnet-taichi" / clip / name, folder / name)
    media = root / "media"
    media.mkdir()
    source = Path(shutil.copy(shared_data / "faces" / "fomm-demo" / "01.png", media / "source.png"))
    driving = Path(shutil.copy(shared_data / "faces" / "fomm-demo" / "08.mp4", media / "driving.mp4"))
    config = load_config("tiny")
    torch.manual_seed(0)
    model = build_model(config)
    ckpt = root / "ckpt"
    ckpt.mkdir()
    release = ckpt / "release.pth"
    torch.save(model.checkpoint_state(), release)
    project = ckpt / "project.pt"
    torch.save({**model.checkpoint_state(), "config": config_to_dict(config)}, project)
    run = root / "run"
    assert cli.main(["run", "train", "--config", "tiny", "--data", str(data), "--out", str(run), *FAST_TRAIN]) == 0
    onnx = root / "onnx"
    export_onnx(model, config, onnx, check_frames(None, (64, 64)))
    return World(root, data, source, driving, release, project, run, onnx)


# --------------------------------------------------------------------------- what a case can do
class Ctx:
    """A case's own folder and helpers to build hostile inputs in it."""

    def __init__(self, folder: Path, world: World, monkeypatch):
        self.dir, self.w, self.monkeypatch = folder, world, monkeypatch

    def path(self, name: str) -> Path:
        return self.dir / name

    def file(self, name: str, content: str | bytes = "x") -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def folder(self, name: str) -> Path:
        path = self.dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def link(self, name: str, target: Path) -> Path:
        path = self.dir / name
        path.symlink_to(target)
        return path

    def copy(self, source: Path, name: str) -> Path:
        target = self.dir / name
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy(source, target)
        return target

    def marked(self, name: str, stage: str, *files: str) -> Path:
        folder = self.folder(name)
        (folder / MARKER).write_text(json.dumps({"stage": stage, "format": 1}))
        for item in files:
            (folder / item).write_text("x")
        return folder

    def read_only(self, name: str) -> Path:
        """A folder nobody may write into: mode 0555, and immutable when the tests run as root
        (root ignores the mode). Made writable again at teardown."""
        return self.make_read_only(self.folder(name))

    def make_read_only(self, folder: Path) -> Path:
        folder.chmod(0o555)
        self._undo.append(lambda: folder.chmod(0o755))  # undone last (the list runs backwards)
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(folder)], check=True)
            self._undo.append(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
        return folder

    _undo: list

    def full_disk(self) -> None:
        import core.writer_lock  # every stage's free-space check (check_room) reads it there
        self.monkeypatch.setattr(core.writer_lock, "free_bytes", lambda folder: 4096)

    def checkpoint(self, name: str, change: Callable[[dict], None], config: bool = False) -> Path:
        """The tiny model's checkpoint (released layout, or with its config) after `change`."""
        state = torch.load(self.w.project if config else self.w.release, weights_only=True)
        change(state)
        path = self.dir / name
        torch.save(state, path)
        return path

    def training_checkpoint(self, change: Callable[[dict], None]) -> Path:
        """A copy of the one-step run with its checkpoint changed by `change`."""
        run = self.copy(self.w.run, "run")
        path = run / "checkpoints" / "step-0000001.pt"
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)
        return run


def _weights(state: dict, fn) -> None:
    for network in ("generator", "kp_detector"):
        state[network] = {k: fn(v) if v.is_floating_point() else v for k, v in state[network].items()}


def nan_weights(state: dict) -> None:
    state["generator"]["first.conv.weight"] = torch.full_like(state["generator"]["first.conv.weight"], float("nan"))


def inf_weights(state: dict) -> None:
    weight = state["kp_detector"]["kp.weight"].clone()
    weight[0, 0, 0, 0] = float("inf")
    state["kp_detector"]["kp.weight"] = weight


def int_weights(state: dict) -> None:
    for network in ("generator", "kp_detector"):
        state[network] = {k: v.to(torch.int64) for k, v in state[network].items()}


def huge_weights(state: dict) -> None:
    """Finite weights whose activations overflow to inf and NaN."""
    _weights(state, lambda v: v * 1e18)


# --------------------------------------------------------------------------- argument lists
def train(w: World, out, *extra) -> list[str]:
    """`extra`: options (`--resume`, `--workers 4`) and overrides (`key=value`), in any order."""
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    options = [item for item in extra if item not in overrides]
    return ["run", "train", "--config", "tiny", "--data", str(w.data), "--out", str(out), *options,
            *FAST_TRAIN, *overrides]


def reconstruct(w: World, out, *extra, checkpoint=None, config=("--config", "tiny")) -> list[str]:
    return ["run", "reconstruct", *config, "--checkpoint", str(checkpoint or w.release), "--data", str(w.data),
            "--out", str(out), "--num-videos", "1", "--batch-size", "6", *extra]


def animate(w: World, out, *extra, checkpoint=None, source=None, driving=None) -> list[str]:
    return ["run", "animate", "--config", "tiny", "--checkpoint", str(checkpoint or w.release),
            "--source", str(source or w.source), "--driving", str(driving or w.driving), "--out", str(out),
            "--device", "cpu", "--max-frames", "2", "--batch-size", "2", *extra]


def onnx_animate(w: World, folder, out, *extra) -> list[str]:
    return ["run", "animate", "--backend", "onnxruntime", str(folder), "--source", str(w.source),
            "--driving", str(w.driving), "--out", str(out), "--device", "cpu", "--max-frames", "2", *extra]


def stream(w: World, out, *extra) -> list[str]:
    return animate(w, out, "--stream", *extra)


def export(w: World, out, *extra, checkpoint=None) -> list[str]:
    return ["run", "export", "--config", "tiny", "--checkpoint", str(checkpoint or w.release), "--out", str(out),
            *extra]


def benchmark(w: World, out, *extra, models=None) -> list[str]:
    return ["run", "benchmark", "--dataset", "taichi", "--data", str(w.data), "--models",
            models or f"fomm={w.project}", "--out", str(out), "--pose", "none", "--identity", "none",
            "--max-frames", "2", "--bootstrap", "10", *extra]


def evaluate(w: World, out, real=None, generated=None, *extra) -> list[str]:
    return ["run", "evaluate", "--real", str(real or w.data / "test" / "t1"),
            "--generated", str(generated or w.data / "test" / "t2"), "--out", str(out),
            "--pose", "none", "--identity", "none", *extra]


def prepare(out, *extra, dataset="sample") -> list[str]:
    return ["run", "prepare", "--dataset", str(dataset), "--out", str(out), "--no-progress", *extra]


def report(run) -> list[str]:
    return ["run", "report", "--run", str(run)]


# --------------------------------------------------------------------------- the cases
@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    expect: str   # a fragment the error line must hold: the value or what was expected


def _bench_folder(c: Ctx, comparison: str | None = "{}", benchmark: str | None = None, name: str = "bench") -> Path:
    """A benchmark output folder (as metrics/benchmark.py writes it) with the JSON given."""
    folder = c.marked(name, "benchmark")
    record = {"dataset": "taichi", "tables": {"comparison": {"json": str(folder / "comparison.json")}}}
    (folder / "benchmark.json").write_text(benchmark if benchmark is not None else json.dumps(record))
    if comparison is not None:
        (folder / "comparison.json").write_text(comparison)
    return folder


def _vox_manifest(c: Ctx, video_id: str, person: str = "id001") -> Path:
    header = "video_id,start,end,bbox,fps,width,height,partition,person_id"
    row = f'"{video_id}",0,10,0-0-256-256,35,256,256,train,"{person}"'
    return c.file("m.csv", f"{header}\n{row}\n")


def _dataset_yaml(c: Ctx, text: str) -> Path:
    return c.file("bad.yaml", text)


TRAIN = [
    Case("out-is-the-data", lambda c: train(c.w, c.w.data), "is the --data"),
    Case("out-inside-the-data", lambda c: train(c.w, c.w.data / "train" / "run"), "is inside the --data"),
    Case("out-contains-the-data", lambda c: train(c.w, c.w.root), "contains the --data"),
    Case("out-dotted-into-the-data", lambda c: train(c.w, c.w.data / "test" / ".."), "is the --data"),
    Case("out-link-to-the-data", lambda c: train(c.w, c.link("out", c.w.data)), "is the --data"),
    Case("overwrite-a-users-images-folder", lambda c: (c.file("mine/images/holiday.png"),
                                                       train(c.w, c.path("mine"), "--overwrite"))[1],
         "did not write (images)"),
    Case("overwrite-deletes-no-foreign-checkpoint-file",
         lambda c: (c.file("run/checkpoints/notes.txt"), c.copy(c.w.run / "metrics.jsonl", "run/metrics.jsonl"),
                    c.copy(c.w.run / "config.yaml", "run/config.yaml"),
                    train(c.w, c.path("run"), "--overwrite"))[-1], "checkpoints/notes.txt"),
    Case("out-is-a-file", lambda c: train(c.w, c.file("out.txt")), "is a file"),
    Case("out-under-proc", lambda c: train(c.w, "/proc/hostile-run"), "is under /proc"),
    Case("out-is-a-symlink", lambda c: train(c.w, c.link("out", c.folder("real"))), "is a symbolic link"),
    Case("out-read-only", lambda c: train(c.w, c.read_only("ro") / "run"), "is not writable"),
    Case("out-on-a-full-disk", lambda c: (c.full_disk(), train(c.w, c.path("run")))[1], "MiB free"),
    Case("out-of-another-stage", lambda c: train(c.w, c.marked("rec", "reconstruct", "l1.csv")),
         "holds the output of `pipeline run reconstruct`"),
    Case("workers-1000", lambda c: train(c.w, c.path("run"), "--workers", "1000"), "--workers 1000"),
    Case("workers-negative", lambda c: train(c.w, c.path("run"), "--workers", "-3"), "--workers"),
    Case("resume-and-overwrite", lambda c: train(c.w, c.copy(c.w.run, "run"), "--resume", "--overwrite"),
         "contradict"),
    Case("resume-with-another-learning-rate", lambda c: train(c.w, c.copy(c.w.run, "run"), "--resume",
                                                              "train_params.lr_generator=1e-3",
                                                              "train_params.max_steps=2"),
         "train_params.lr_generator"),
    Case("resume-with-another-batch", lambda c: train(c.w, c.copy(c.w.run, "run"), "--resume",
                                                      "train_params.batch_size=2", "train_params.max_steps=2"),
         "train_params.batch_size"),
    Case("resume-with-other-model-params", lambda c: train(c.w, c.copy(c.w.run, "run"), "--resume",
                                                           "model_params.common_params.num_kp=3",
                                                           "train_params.max_steps=2"), "model_params"),
    Case("resume-without-rng-state",
         lambda c: train(c.w, c.training_checkpoint(lambda s: s.pop("rng")), "--resume", "train_params.max_steps=2"),
         "holds no 'rng' state"),
    Case("resume-from-a-released-file",
         lambda c: train(c.w, c.training_checkpoint(lambda s: [s.pop(k) for k in ("rng", "step", "epoch",
                                                                                  "batch_in_epoch", "schedulers")]),
                         "--resume", "train_params.max_steps=2"), "holds no 'step' state"),
    Case("resume-with-a-broken-rng-state",
         lambda c: train(c.w, c.training_checkpoint(lambda s: s.update(rng={"python": 5, "numpy": 1, "torch": 2})),
                         "--resume", "train_params.max_steps=2"), "cannot be restored"),
    Case("resume-with-a-damaged-metrics-file",
         lambda c: (run := c.copy(c.w.run, "run"),
                    (run / "metrics.jsonl").write_text("garbage\n" + (c.w.run / "metrics.jsonl").read_text()),
                    train(c.w, run, "--resume", "train_params.max_steps=2"))[-1], "line 1 is not a metrics record"),
    Case("override-nan", lambda c: train(c.w, c.path("run"), "train_params.lr_generator=.nan"), "not a finite number"),
    Case("override-inf", lambda c: train(c.w, c.path("run"), "train_params.lr_kp_detector=.inf"),
         "not a finite number"),
    Case("override-huge-float", lambda c: train(c.w, c.path("run"), "train_params.lr_kp_detector=1e999"),
         "not a finite number"),
    Case("override-negative", lambda c: train(c.w, c.path("run"), "train_params.lr_generator=-1e-4"), ">= 0"),
    Case("override-negative-count", lambda c: train(c.w, c.path("run"), "train_params.batch_size=-4"),
         "train_params.batch_size"),
    Case("override-zero-temperature", lambda c: train(c.w, c.path("run"), "model_params.kp_detector_params.temperature=0"),
         "> 0"),
    Case("override-huge-integer", lambda c: train(c.w, c.path("run"), f"train_params.seed={2**70}"), "out of range"),
    Case("override-alias-bomb", lambda c: train(c.w, c.path("run"), f"train_params.epoch_milestones={bomb_flow()}"),
         "expands to more than"),
    Case("config-alias-bomb", lambda c: ["run", "train", "--config", str(c.file("bomb.yaml", bomb_yaml())),
                                         "--data", str(c.w.data), "--out", str(c.path("run"))], "expands to more than"),
    Case("config-recursive-alias", lambda c: ["run", "train", "--config", str(c.file("r.yaml", "a: &a [*a]\n")),
                                              "--data", str(c.w.data), "--out", str(c.path("run"))], "refers to itself"),
    Case("config-too-deep", lambda c: ["run", "train", "--config",
                                       str(c.file("deep.yaml", "train_params: " + "[" * 40 + "]" * 40 + "\n")),
                                       "--data", str(c.w.data), "--out", str(c.path("run"))], "nested deeper"),
    Case("config-not-a-mapping", lambda c: ["run", "train", "--config", str(c.file("list.yaml", "- 1\n- 2\n")),
                                            "--data", str(c.w.data), "--out", str(c.path("run"))],
         "expected a mapping"),
    Case("config-with-a-python-tag",
         lambda c: ["run", "train", "--config", str(c.file("tag.yaml", "a: !!python/object/apply:os.system [id]\n")),
                    "--data", str(c.w.data), "--out", str(c.path("run"))], "tags such as !!python are refused"),
    Case("a-start-that-fails-leaves-no-config",
         lambda c: train(c.w, c.path("run"), "train_params.loss_weights.perceptual=[10,0,0,0,0]",
                         f"train_params.vgg19_weights={c.path('missing-vgg19.pth')}"), "VGG19"),
    Case("checkpoint-for-the-first-stage", lambda c: train(c.w, c.path("run"), "--checkpoint", str(c.w.project)),
         "starts from scratch"),
]

RECONSTRUCT = [
    Case("out-inside-the-data", lambda c: reconstruct(c.w, c.w.data / "test"), "is inside the --data"),
    Case("out-is-the-data", lambda c: reconstruct(c.w, c.w.data), "is the --data"),
    Case("out-contains-the-checkpoint", lambda c: reconstruct(c.w, c.w.release.parent), "contains the --checkpoint"),
    Case("out-hard-link-folder-of-the-data",
         lambda c: reconstruct(c.w, c.w.data / "test" / "t1" / "sub"), "is inside the --data"),
    Case("out-a-users-folder", lambda c: (c.file("mine/notes.txt"), reconstruct(c.w, c.path("mine")))[1],
         "did not write (notes.txt)"),
    Case("out-a-training-run", lambda c: reconstruct(c.w, c.copy(c.w.run, "run")),
         "holds the output of `pipeline run train`"),
    Case("out-is-a-file", lambda c: reconstruct(c.w, c.file("out")), "is a file"),
    Case("out-under-proc", lambda c: reconstruct(c.w, "/proc/self/hostile"), "is under /proc"),
    Case("out-is-a-symlink", lambda c: reconstruct(c.w, c.link("out", c.folder("real"))), "is a symbolic link"),
    Case("out-read-only", lambda c: reconstruct(c.w, c.read_only("ro")), "is not writable"),
    Case("out-on-a-full-disk", lambda c: (c.full_disk(), reconstruct(c.w, c.path("rec")))[1], "MiB free"),
    Case("nan-weights", lambda c: reconstruct(c.w, c.path("rec"), checkpoint=c.checkpoint("nan.pth", nan_weights)),
         "NaN value(s)"),
    Case("infinite-weights", lambda c: reconstruct(c.w, c.path("rec"), checkpoint=c.checkpoint("inf.pth", inf_weights)),
         "infinite value(s)"),
    Case("integer-weights", lambda c: reconstruct(c.w, c.path("rec"), checkpoint=c.checkpoint("int.pth", int_weights)),
         "is int64"),
    Case("weights-that-overflow", lambda c: reconstruct(c.w, c.path("rec"),
                                                        checkpoint=c.checkpoint("huge.pth", huge_weights)),
         "gives non-finite predictions"),
    Case("config-entry-not-a-mapping",
         lambda c: reconstruct(c.w, c.path("rec"), config=(),
                               checkpoint=c.checkpoint("list.pth", lambda s: s.update(config=[1, 2, 3]))),
         "'config' entry is a list"),
    Case("config-entry-sharing-lists",
         lambda c: reconstruct(c.w, c.path("rec"), config=(),
                               checkpoint=c.checkpoint("bomb.pth", lambda s: s.update(
                                   config={"train_params": {"scales": shared_list_bomb()}}))),
         "expands to more than"),
    Case("config-entry-too-deep",
         lambda c: reconstruct(c.w, c.path("rec"), config=(),
                               checkpoint=c.checkpoint("deep.pth", lambda s: s.update(config={"a": nested(100)}))),
         "nested deeper"),
    Case("config-entry-holding-a-tensor",
         lambda c: reconstruct(c.w, c.path("rec"), config=(),
                               checkpoint=c.checkpoint("t.pth", lambda s: s.update(
                                   config={"train_params": {"lr_generator": torch.zeros(3)}}))), "holds a Tensor"),
    Case("config-entry-out-of-schema",
         lambda c: reconstruct(c.w, c.path("rec"), config=(),
                               checkpoint=c.checkpoint("neg.pth", lambda s: s["config"]["train_params"].update(
                                   batch_size=-1), config=True)), "config is not usable"),
    Case("checkpoint-that-is-no-checkpoint", lambda c: reconstruct(c.w, c.path("rec"), checkpoint=c.file("x.pth", b"PK\0garbage")),
         "could not be read as a torch file"),
    Case("checkpoint-holding-a-list", lambda c: reconstruct(c.w, c.path("rec"), checkpoint=(
        torch.save([1, 2], c.path("l.pth")), c.path("l.pth"))[1]), "holds a list"),
    Case("batch-size-0", lambda c: reconstruct(c.w, c.path("rec"), "--batch-size", "0"), "--batch-size 0"),
    Case("num-videos-negative", lambda c: reconstruct(c.w, c.path("rec"), "--num-videos", "-1"), "--num-videos"),
    Case("override-nan", lambda c: reconstruct(c.w, c.path("rec"), "model_params.kp_detector_params.temperature=.nan"),
         "not a finite number"),
    Case("read-only-folder-for-the-signing-key",
         lambda c: (c.monkeypatch.setenv("MOTION_TRANSFER_CONFIG", str(c.read_only("keys") / "motion-transfer")),
                    reconstruct(c.w, c.path("rec")))[1], "cannot create the self-signed C2PA credential"),
]

ANIMATE = [
    Case("out-is-the-driving-video", lambda c: animate(c.w, c.w.driving), "is the --driving"),
    Case("out-hard-link-to-the-driving-video",
         lambda c: (os.link(c.w.driving, c.path("hard.mp4")), animate(c.w, c.path("hard.mp4")))[1], "is the --driving"),
    Case("out-inside-the-onnx-folder", lambda c: onnx_animate(c.w, c.w.onnx, c.w.onnx / "x.mp4"), "is inside the --backend"),
    Case("out-under-proc", lambda c: animate(c.w, "/proc/hostile.mp4"), "is under /proc"),
    Case("out-is-a-folder", lambda c: animate(c.w, c.folder("x.mp4")), "is a folder"),
    Case("out-in-a-read-only-folder", lambda c: animate(c.w, c.read_only("ro") / "x.mp4"), "is not writable"),
    Case("out-is-a-symlink", lambda c: animate(c.w, c.link("x.mp4", c.file("elsewhere.mp4"))), "is a symbolic link"),
    Case("out-on-a-full-disk", lambda c: (c.full_disk(), animate(c.w, c.path("x.mp4")))[1], "MiB free"),
    Case("nan-weights", lambda c: animate(c.w, c.path("x.mp4"), checkpoint=c.checkpoint("nan.pth", nan_weights)),
         "NaN value(s)"),
    Case("integer-weights", lambda c: animate(c.w, c.path("x.mp4"), checkpoint=c.checkpoint("int.pth", int_weights)),
         "is int64"),
    Case("weights-that-overflow", lambda c: animate(c.w, c.path("x.mp4"), checkpoint=c.checkpoint("huge.pth", huge_weights)),
         "gives non-finite predictions"),
    Case("crafted-onnx-graph",
         lambda c: (folder := c.copy(c.w.onnx, "onnx"), (folder / "kp_detector.onnx").write_bytes(b"\x08\x07garbage" * 9),
                    onnx_animate(c.w, folder, c.path("x.mp4")))[-1], "is not a graph onnxruntime can load"),
    Case("mismatched-onnx-graphs",
         lambda c: (folder := c.copy(c.w.onnx, "onnx"),
                    shutil.copy(folder / "generator.onnx", folder / "kp_detector.onnx"),
                    onnx_animate(c.w, folder, c.path("x.mp4")))[-1], "has inputs"),
    Case("onnx-folder-config-bomb",
         lambda c: (folder := c.copy(c.w.onnx, "onnx"), (folder / "config.yaml").write_text(bomb_yaml()),
                    onnx_animate(c.w, folder, c.path("x.mp4")))[-1], "expands to more than"),
    Case("onnx-folder-that-is-a-file", lambda c: onnx_animate(c.w, c.file("onnx"), c.path("x.mp4")), "is not a folder"),
    Case("set-override-inf", lambda c: animate(c.w, c.path("x.mp4"), "--set", "dataset_params.frame_shape=[64, .inf, 3]"),
         "expected an integer"),
    Case("set-override-bomb", lambda c: animate(c.w, c.path("x.mp4"), "--set", f"animate_params.num_pairs={bomb_flow()}"),
         "expands to more than"),
    Case("batch-size-0", lambda c: animate(c.w, c.path("x.mp4"), "--batch-size", "0"), "--batch-size 0"),
    Case("max-frames-negative", lambda c: animate(c.w, c.path("x.mp4"), "--max-frames", "-2"), "--max-frames -2"),
]

STREAM = [
    Case("queue-0", lambda c: stream(c.w, c.path("x.mp4"), "--queue", "0"), "--queue 0"),
    Case("queue-negative", lambda c: stream(c.w, c.path("x.mp4"), "--queue", "-3"), "--queue -3"),
    Case("stream-fps-0", lambda c: stream(c.w, c.path("x.mp4"), "--stream-fps", "0"), "--stream-fps 0"),
    Case("stream-fps-nan", lambda c: stream(c.w, c.path("x.mp4"), "--stream-fps", "nan"), "--stream-fps nan"),
    Case("stall-timeout-negative", lambda c: stream(c.w, c.path("x.mp4"), "--stall-timeout", "-1"), "--stall-timeout"),
    Case("out-under-proc", lambda c: stream(c.w, "/proc/hostile.mp4"), "is under /proc"),
    Case("out-is-the-driving-video", lambda c: stream(c.w, c.w.driving), "is the --driving"),
]

EXPORT = [
    Case("out-a-users-folder", lambda c: (c.file("dir/mine.txt"), export(c.w, c.path("dir")))[1],
         "did not write (mine.txt)"),
    Case("out-an-export-with-a-users-file", lambda c: (folder := c.copy(c.w.onnx, "onnx"),
                                                       (folder / "notes.txt").write_text("mine"),
                                                       export(c.w, folder))[-1], "notes.txt"),
    Case("out-contains-the-checkpoint", lambda c: export(c.w, c.w.release.parent), "contains the --checkpoint"),
    Case("out-is-a-file", lambda c: export(c.w, c.file("out")), "is a file"),
    Case("out-under-proc", lambda c: export(c.w, "/proc/hostile-onnx"), "is under /proc"),
    Case("out-read-only", lambda c: export(c.w, c.read_only("ro") / "onnx"), "is not writable"),
    Case("weights-that-overflow", lambda c: export(c.w, c.path("onnx"), checkpoint=c.checkpoint("huge.pth", huge_weights)),
         "parity check found NaN"),
    Case("nan-weights", lambda c: export(c.w, c.path("onnx"), checkpoint=c.checkpoint("nan.pth", nan_weights)),
         "NaN value(s)"),
    Case("format-other-than-onnx", lambda c: export(c.w, c.path("onnx"), "--format", "tflite"), "expected onnx"),
]

BENCHMARK = [
    Case("out-inside-the-data", lambda c: benchmark(c.w, c.w.data / "bench"), "is inside the --data"),
    Case("out-is-the-data", lambda c: benchmark(c.w, c.w.data), "is the --data"),
    Case("out-contains-a-checkpoint", lambda c: benchmark(c.w, c.w.project.parent), "contains the --models fomm"),
    Case("out-a-users-folder", lambda c: (c.file("mine/a.csv"), benchmark(c.w, c.path("mine")))[1],
         "did not write (a.csv)"),
    Case("out-is-a-file", lambda c: benchmark(c.w, c.file("out")), "is a file"),
    Case("out-read-only", lambda c: benchmark(c.w, c.read_only("ro") / "bench"), "is not writable"),
    Case("nan-weights", lambda c: benchmark(c.w, c.path("bench"), models=f"fomm={c.checkpoint('nan.pt', nan_weights, True)}"),
         "NaN value(s)"),
    Case("weights-that-overflow",
         lambda c: benchmark(c.w, c.path("bench"), models=f"fomm={c.checkpoint('huge.pt', huge_weights, True)}"),
         "gives non-finite predictions"),
    Case("config-entry-not-a-mapping", lambda c: benchmark(c.w, c.path("bench"), models="fomm=" + str(
        c.checkpoint("list.pt", lambda s: s.update(config="vox-256")))), "'config' entry is a str"),
    Case("bootstrap-0", lambda c: benchmark(c.w, c.path("bench"), "--bootstrap", "0"), "--bootstrap 0"),
    Case("max-clips-negative", lambda c: benchmark(c.w, c.path("bench"), "--max-clips", "-1"), "--max-clips -1"),
]

EVALUATE = [
    Case("out-is-the-real-clip", lambda c: evaluate(c.w, c.w.data / "test" / "t1"), "is the --real"),
    Case("out-inside-the-generated", lambda c: evaluate(c.w, c.w.data / "test" / "t2" / "scores"),
         "is inside the --generated"),
    Case("out-contains-both", lambda c: evaluate(c.w, c.w.data / "test"), "contains the --real"),
    Case("out-a-users-folder", lambda c: (c.file("mine/x.txt"), evaluate(c.w, c.path("mine")))[1], "did not write (x.txt)"),
    Case("out-under-proc", lambda c: evaluate(c.w, "/proc/hostile-eval"), "is under /proc"),
    Case("out-is-a-symlink", lambda c: evaluate(c.w, c.link("out", c.folder("real"))), "is a symbolic link"),
]

REPORT = [
    Case("truncated-comparison-json", lambda c: report(_bench_folder(c, comparison='{"title": "Compar')),
         "comparison.json' is not readable JSON"),
    Case("comparison-json-of-another-shape", lambda c: report(_bench_folder(c, comparison='{"rows": 1}')),
         "is not a table the benchmark wrote"),
    Case("truncated-benchmark-json", lambda c: report(_bench_folder(c, benchmark='{"dataset": "tai')),
         "benchmark.json' is not readable JSON"),
    Case("benchmark-json-a-list", lambda c: report(_bench_folder(c, benchmark="[1, 2]")), "holds a JSON list"),
    Case("torn-timings-json", lambda c: (folder := _bench_folder(c), (folder / "timings.json").write_text('{"sta'),
                                         report(folder))[-1], "timings.json' is not readable JSON"),
    Case("damaged-clips-parquet", lambda c: (folder := c.marked("all", "all"),
                                             (folder / "timings.json").write_text("{}"),
                                             c.file("all/data/clips.parquet", b"PAR1garbage"),
                                             report(folder))[-1], "is not a readable Parquet table"),
    Case("config-bomb-in-a-training-run", lambda c: (folder := c.marked("all", "all"),
                                                     c.file("all/train/fomm/metrics.jsonl", '{"step": 1, "loss": 1}\n'),
                                                     c.file("all/train/fomm/config.yaml", bomb_yaml()),
                                                     report(folder))[-1], "expands to more than"),
    Case("run-of-another-stage", lambda c: (folder := c.marked("tr", "train"),
                                            (folder / "benchmark.json").write_text("{}"), report(folder))[-1],
         "holds the output of `pipeline run train`"),
    Case("run-read-only", lambda c: report(c.make_read_only(_bench_folder(c))), "is not writable"),
    Case("run-is-a-file", lambda c: report(c.file("run.json", "{}")), "is not a folder"),
]

PREPARE = [
    Case("out-inside-the-source-dir", lambda c: prepare(c.folder("videos/train") / "out", "--source-dir",
                                                         str(c.path("videos")), dataset="mgif"),
         "is inside the --source-dir"),
    Case("out-is-the-source-dir", lambda c: prepare(c.folder("videos/train").parent, "--source-dir",
                                                     str(c.path("videos")), dataset="mgif"), "is the --source-dir"),
    Case("out-contains-the-manifest", lambda c: prepare(c.dir, "--manifest", str(c.file("m.csv", "video_id\n")),
                                                         dataset="vox"), "contains the --manifest"),
    Case("out-a-users-folder", lambda c: (c.file("mine/report.docx"), prepare(c.path("mine")))[1],
         "did not write (report.docx)"),
    Case("out-is-a-symlink", lambda c: prepare(c.link("out", c.folder("real"))), "is a symbolic link"),
    Case("out-read-only", lambda c: prepare(c.read_only("ro") / "data"), "is not writable"),
    Case("shard-mb-1e-9", lambda c: prepare(c.path("data"), "--shard-mb", "1e-9"), "--shard-mb 1e-09"),
    Case("size-0", lambda c: prepare(c.path("data"), "--size", "0"), "--size"),
    Case("stall-timeout-nan", lambda c: prepare(c.path("data"), "--stall-timeout", "nan"), "--stall-timeout"),
    Case("video-id-with-a-trailing-newline",
         lambda c: prepare(c.path("data"), "--manifest", str(_vox_manifest(c, "face08\n")), "--url-template",
                           "http://127.0.0.1:9/{video_id}.mp4", dataset="vox"), "is not a plain name"),
    Case("person-id-with-a-trailing-newline",
         lambda c: prepare(c.path("data"), "--manifest", str(_vox_manifest(c, "face08", "id001\n")), "--url-template",
                           "http://127.0.0.1:9/{video_id}.mp4", dataset="vox"), "is not a plain name"),
    Case("source-file-name-with-a-newline",
         lambda c: (c.file("videos/train/clip\n.mp4"), prepare(c.path("data"), "--source-dir", str(c.path("videos")),
                                                               dataset="mgif"))[1], "is not a plain name"),
    Case("dataset-yaml-a-list", lambda c: prepare(c.path("data"), dataset=_dataset_yaml(c, "- 1\n- 2\n")),
         "expected a mapping"),
    Case("dataset-yaml-manifest-a-list",
         lambda c: prepare(c.path("data"), dataset=_dataset_yaml(c, "name: x\nkind: manifest\nmanifest: [1, 2]\n")),
         "section is a list"),
    Case("dataset-yaml-url-lists-a-list",
         lambda c: prepare(c.path("data"), dataset=_dataset_yaml(c, "name: x\nkind: url_list\nurl_lists: [a]\n")),
         "url_lists is a list"),
    Case("dataset-yaml-size-a-word",
         lambda c: prepare(c.path("data"), dataset=_dataset_yaml(c, "name: x\nkind: sample\nsize: big\n")),
         "size is 'big'"),
    Case("dataset-yaml-without-name", lambda c: prepare(c.path("data"), dataset=_dataset_yaml(c, "kind: sample\n")),
         "lacks ['name']"),
    Case("dataset-yaml-bomb", lambda c: prepare(c.path("data"), dataset=_dataset_yaml(c, bomb_yaml())),
         "expands to more than"),
]

VERIFY = [
    Case("max-frames-0", lambda c: ["run", "verify", str(c.w.driving), "--max-frames", "0"], "--max-frames 0"),
    Case("missing-file", lambda c: ["run", "verify", str(c.path("none.mp4"))], "does not exist"),
    Case("image-that-is-no-image", lambda c: ["run", "verify", str(c.file("bad.png", b"garbage"))],
         "is not a readable image"),
    Case("empty-video", lambda c: ["run", "verify", str(c.file("empty.mp4", b""))], "is not a readable video"),
    Case("video-cut-short", lambda c: ["run", "verify", str(c.file("cut.mp4", c.w.driving.read_bytes()[:3000]))],
         "is not a readable video"),
]

RUN_ALL = [
    Case("out-under-proc", lambda c: ["run", "all", "--out", "/proc/hostile-all", "--budget", "tiny"], "is under /proc"),
    Case("out-a-users-folder", lambda c: (c.file("mine/thesis.tex"), ["run", "all", "--out", str(c.path("mine")),
                                                                     "--budget", "tiny"])[1], "did not write"),
    Case("out-is-a-file", lambda c: ["run", "all", "--out", str(c.file("out")), "--budget", "tiny"], "is a file"),
]

TABLES = {"train": TRAIN, "reconstruct": RECONSTRUCT, "animate": ANIMATE, "stream": STREAM, "export": EXPORT,
          "benchmark": BENCHMARK, "evaluate": EVALUATE, "report": REPORT, "prepare": PREPARE, "verify": VERIFY,
          "all": RUN_ALL}
CASES = [(f"{stage}:{case.id}", case) for stage, cases in TABLES.items() for case in cases]


# --------------------------------------------------------------------------- the check
def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under `roots`: a file's sha256, a link's target, a folder; a `.lock` by its
    presence only (it records its last holder)."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            key = str(path)
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = ("dir",)
            elif path.name == ".lock":
                found[key] = ("lock",)
            else:
                found[key] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def test_the_tables_cover_at_least_80_cases():
    assert len(CASES) >= 80 and len({name for name, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name,case", CASES, ids=[name for name, _ in CASES])
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(name, case, world, tmp_path, monkeypatch, capsys):
    ctx = Ctx(tmp_path / "case", world, monkeypatch)
    ctx.dir.mkdir()
    ctx._undo = []
    try:
        argv = case.argv(ctx)
        before = snapshot(ctx.dir, world.root)
        capsys.readouterr()
        code = cli.main(argv)
        err = capsys.readouterr().err
        lines = err.splitlines()
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
        assert case.expect in lines[0], lines[0]
        assert snapshot(ctx.dir, world.root) == before
    finally:
        for undo in reversed(ctx._undo):
            undo()


# --------------------------------------------------------------------------- what must work
def _png(array: np.ndarray, color_type: int, bit_depth: int) -> bytes:
    """A PNG of `array` (H, W[, C]) with the given colour type and bit depth, written byte by
    byte (PIL writes no 16-bit colour PNGs)."""
    import struct
    import zlib
    height, width = array.shape[:2]
    raw = array.astype(">u2" if bit_depth == 16 else "u1").tobytes()
    stride = len(raw) // height
    body = b"".join(b"\0" + raw[row * stride:(row + 1) * stride] for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight alpha composited on white, rounded: what every loader gives for a transparent pixel."""
    a = alpha.astype(np.float64)[..., None] / 255
    return np.round(rgb.astype(np.float64) * a + 255 * (1 - a)).astype(np.uint8)


def _image_cases(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """file -> the uint8 RGB it must load as, computed in numpy from the pixels written."""
    from PIL import Image
    rng = np.random.default_rng(20)
    cases = {}
    gray16 = rng.integers(0, 65536, (40, 48), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (40, 48, 3), dtype=np.uint16)
    rgba16 = rng.integers(0, 65536, (40, 48, 4), dtype=np.uint16)
    la16 = rng.integers(0, 65536, (40, 48, 2), dtype=np.uint16)
    rgb8 = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    gray8 = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    la8 = rng.integers(0, 256, (40, 48, 2), dtype=np.uint8)
    cmyk = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    floats = rng.random((40, 48)).astype(np.float32)
    for name, data, ct, depth in (("gray16.png", gray16, 0, 16), ("rgb16.png", rgb16, 2, 16),
                                  ("rgba16.png", rgba16, 6, 16), ("la16.png", la16, 4, 16)):
        (folder / name).write_bytes(_png(data, ct, depth))
    cases["gray16.png"] = np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, axis=2)
    cases["rgb16.png"] = (rgb16 >> 8).astype(np.uint8)
    cases["rgba16.png"] = _over_white((rgba16[..., :3] >> 8).astype(np.uint8), (rgba16[..., 3] >> 8).astype(np.uint8))
    cases["la16.png"] = np.repeat(_over_white((la16[..., :1] >> 8).astype(np.uint8),
                                              (la16[..., 1] >> 8).astype(np.uint8)), 3, axis=2)
    Image.fromarray(gray16).save(folder / "gray16.tif")
    cases["gray16.tif"] = cases["gray16.png"]
    Image.fromarray(rgb8).save(folder / "rgb8.png")
    cases["rgb8.png"] = rgb8
    Image.fromarray(gray8).save(folder / "gray8.png")
    cases["gray8.png"] = np.repeat(gray8[..., None], 3, axis=2)
    Image.fromarray(la8, mode="LA").save(folder / "la8.png")
    cases["la8.png"] = np.repeat(_over_white(la8[..., :1], la8[..., 1]), 3, axis=2)
    palette = rgb8[:1, :16].reshape(-1)  # 16 colours
    indices = (gray8 % 16).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.tolist() + [0] * (768 - palette.size))
    image.save(folder / "palette.png")
    cases["palette.png"] = palette.reshape(16, 3)[indices]
    image.save(folder / "palette-transparent.png", transparency=3)
    alpha = np.where(indices == 3, 0, 255).astype(np.uint8)
    cases["palette-transparent.png"] = _over_white(palette.reshape(16, 3)[indices], alpha)
    Image.fromarray(cmyk, mode="CMYK").save(folder / "cmyk.tif")
    ink = cmyk.astype(np.float64)
    cases["cmyk.tif"] = np.round((255 - ink[..., :3]) * (255 - ink[..., 3:]) / 255).astype(np.uint8)
    Image.fromarray(floats, mode="F").save(folder / "float.tif")
    cases["float.tif"] = np.repeat((floats.astype(np.float64) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(gray8 > 127).save(folder / "bilevel.png")
    cases["bilevel.png"] = np.repeat(np.where(gray8 > 127, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    return {name: (folder / name, expected) for name, expected in cases.items()}


def test_images_of_every_mode_and_bit_depth_load_as_the_8_bit_rgb_they_mean(tmp_path):
    """16-bit gray (PNG and TIFF) is no longer all white, and every mode is converted by what
    it means; the dataset reader (core.media.load_image) and the source photo reader agree."""
    from core.media import load_image
    from fomm.source_crop import load_source
    for name, (path, expected) in _image_cases(tmp_path).items():
        got = load_image(path)
        assert got.dtype == np.uint8 and got.shape == expected.shape, name
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= (1 if "cmyk" in name else 0), name
        assert np.array_equal(load_source(path), got), name
    gray = load_image(tmp_path / "gray16.png")
    assert 100 < gray.mean() < 155  # uniform noise: mid gray, not the white of a clipped conversion


def test_frame_folders_of_16_bit_gray_train_and_reconstruct_as_gray(tmp_path):
    """A clip of 16-bit gray frames reads through the dataset stores as its 8-bit gray."""
    from fomm.data import open_clips
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 65536, (3, 32, 32), dtype=np.uint16)
    folder = tmp_path / "data" / "test" / "clip"
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        (folder / f"{index:07d}.png").write_bytes(_png(frame, 0, 16))
    store = open_clips(tmp_path / "data", "test")
    got = store.read("clip", range(3))
    assert np.array_equal(got, np.repeat((frames >> 8).astype(np.uint8)[..., None], 3, axis=3))


def test_reconstruct_removes_what_a_killed_run_left(world, tmp_path):
    """A killed reconstruct leaves `.clip.XXXX.part.mp4` and `.clip.part/`: the next run into
    the folder (its writer lock held) removes them and writes the clip whole."""
    out = tmp_path / "rec"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"stage": "reconstruct", "format": 1}))
    (out / ".t1.k3j9.part.mp4").write_bytes(b"half a video")
    (out / ".t1.part").mkdir()
    (out / ".t1.part" / "0000000.png").write_bytes(b"half a frame")
    assert cli.main(reconstruct(world, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == [".lock", MARKER, ".rows", "config.yaml", "l1.csv", "t1", "t1.mp4"]
    assert len(list((out / "t1").iterdir())) == 6


def _clip(name: str, start: int, end: int):
    from pipeline import clips
    return clips.Clip(name, "face08", "id001", "train", start, end, 35.0, (0, 0, 256, 256), 256, 256)


def _settings(out: Path, cache: Path, url_template: str | None = None, source_dir: Path | None = None):
    from pipeline.prepare import Settings
    return Settings(str(out), "manifest", 32, str(cache), url_template, str(source_dir) if source_dir else None)


def test_a_clip_past_the_end_of_its_video_fails_instead_of_being_cut_short(shared_data, tmp_path):
    """A manifest range [0, 1000) of a 150-frame video is not clamped to a short clip marked
    done: its row fails, saying so, and no folder appears; a range inside the video is cut."""
    from pipeline import clips, crop
    from pipeline.prepare import Job
    source = tmp_path / "videos"
    source.mkdir()
    (source / "face08.mp4").symlink_to(shared_data / "faces" / "fomm-demo" / "08.mp4")
    out = tmp_path / "out"
    job = Job("face08", [_clip("face08#000000#001000", 0, 1000), _clip("face08#000000#000010", 0, 10)])
    rows = {row["clip"]: row for row in crop.prepare_video(job, _settings(out, tmp_path / "cache", source_dir=source))}
    short = rows["face08#000000#001000"]
    assert short["status"] == "failed" and "shorter than the clip's range" in short["error"], short
    assert not clips.clip_dir(out, "train", "face08#000000#001000").exists()
    assert rows["face08#000000#000010"]["status"] == "done" and rows["face08#000000#000010"]["num_frames"] == 10


def test_a_cached_download_that_does_not_decode_is_fetched_again(shared_data, tmp_path):
    """A download a crash left damaged in the cache fails its clips and is removed, so the
    rerun fetches it again (from a local HTTP mirror) and cuts the clip."""
    import functools
    import http.server
    import threading
    from pipeline import crop
    from pipeline.prepare import Job

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(shared_data / "faces" / "fomm-demo" / "08.mp4", mirror / "face08.mp4")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(mirror)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cache = tmp_path / "cache"
        cache.mkdir()
        (cache / "face08.mp4").write_bytes(b"\0" * 4096)  # what a killed download can leave
        settings = _settings(tmp_path / "out", cache, f"http://127.0.0.1:{server.server_address[1]}/{{video_id}}.mp4")
        job = Job("face08", [_clip("face08#000000#000010", 0, 10)])
        (first,) = crop.prepare_video(job, settings)
        assert first["status"] == "failed" and "a rerun fetches it again" in first["error"], first
        assert not (cache / "face08.mp4").exists()
        (second,) = crop.prepare_video(job, settings)
        assert second["status"] == "done" and second["num_frames"] == 10, second
        assert (cache / "face08.mp4").read_bytes() == (mirror / "face08.mp4").read_bytes()
    finally:
        server.shutdown()
