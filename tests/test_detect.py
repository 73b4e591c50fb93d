"""The fakes dataset (detect/fakes.py) on the sample dataset with every registered family, the
Xception detector with the reference names, its scores, a tiny detector trained and tested on
identities it never saw, and the detectability column in the benchmark table and the report."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from builders import random_checkpoints, write_sample

from core.errors import UserError
from detect import scores
from detect.xception import Xception, load_weights, reference_state
from fomm.config import config_from_dict, load_config
from fomm.families import NAMES
from stages.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
FAMILIES = sorted(NAMES)  # every registered family (fomm/families.py): three today, five with MRAA and TPSMM
TINY = {"width": 1 / 16, "size": 64, "batch_size": 16, "frames_per_clip": 8, "threads": 1}


def _tiny_config(name: str):
    """The family's tiny CPU config as its engineers wrote it (X2Face's is 256 px: its U-Nets
    need 256), else the defaults at 64 px."""
    try:
        return load_config({"fomm": "tiny"}.get(name, f"{name}-tiny"))
    except UserError:
        return config_from_dict({}, [f"model_params.name={name}", "dataset_params.frame_shape=[64,64,3]"])


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> Path:
    """Eight clips of the sample dataset (4 identities, 8 frames at 64 px), written as prepare does."""
    return write_sample(tmp_path_factory.mktemp("sample"), num_train=4, num_test=4)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> str:
    """`--models` with a randomly initialised tiny model of every family, its config embedded."""
    return random_checkpoints(tmp_path_factory.mktemp("models"), {name: _tiny_config(name) for name in FAMILIES})


def _fakes_argv(data: Path, models: str, out: Path, *extra: str) -> list[str]:
    return ["run", "fakes", "--data", str(data), "--models", models, "--out", str(out), "--split", "all",
            "--frames", "8", "--test-fraction", "0.5", "--workers", "2", *extra]


@pytest.fixture(scope="module")
def fakes(sample_data, models, tmp_path_factory, ray_local) -> Path:
    out = tmp_path_factory.mktemp("fakes")
    assert cli_main(_fakes_argv(sample_data, models, out)) == 0
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "clips").rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the fakes dataset
def test_manifest_labels_every_clip_and_identity_splits_are_disjoint(fakes, models):
    manifest = pd.read_parquet(fakes / "manifest.parquet")
    assert (manifest["status"] == "done").all() and manifest["id"].is_unique
    real, generated = manifest[manifest["label"] == "real"], manifest[manifest["label"] == "generated"]
    assert len(real) == 8 and real["family"].isna().all() and not real["marked"].any()
    assert sorted(generated["family"].unique()) == FAMILIES
    # per real clip and family: a reconstruction and an animation, each unmarked and marked
    assert len(generated) == 8 * len(FAMILIES) * 2 * 2
    checkpoints = dict(item.split("=", 1) for item in models.split(","))
    for family, path in checkpoints.items():
        rows = generated[generated["family"] == family]
        assert (rows["checkpoint_sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()).all()
    rec, anim = generated[generated["kind"] == "reconstruction"], generated[generated["kind"] == "animation"]
    assert (rec["identity"] == rec["driving_identity"]).all() and (rec["source_clip"] == rec["driving_clip"]).all()
    assert (anim["identity"] != anim["driving_identity"]).all()
    identities = {split: set(rows["identity"]) | set(rows["driving_identity"])
                  for split, rows in manifest.groupby("split")}
    assert set(identities) == {"train", "test"} and not identities["train"] & identities["test"]
    assert len(identities["train"]) == len(identities["test"]) == 2
    summary = json.loads((fakes / "summary.json").read_text())
    assert summary["done"] == len(manifest) and summary["failed"] == 0
    settings = json.loads((fakes / "settings.json").read_text())
    assert [m["name"] for m in settings["models"]] == FAMILIES and settings["transforms"] == ["none"]


def test_clips_are_the_frames_they_claim(fakes):
    from PIL import Image
    manifest = pd.read_parquet(fakes / "manifest.parquet").set_index("id")
    frames = {i: np.stack([np.asarray(Image.open(p)) for p in sorted((fakes / row.path).glob("*.png"))])
              for i, row in manifest.iterrows()}
    assert all(f.shape == (8, 64, 64, 3) for f in frames.values())  # every family at the real clips' size
    for clip_id, row in manifest[manifest["label"] == "generated"].iterrows():
        real_id = manifest.index[(manifest["label"] == "real") & (manifest["driving_clip"] == row.driving_clip)][0]
        assert np.abs(frames[clip_id].astype(int) - frames[real_id]).mean() > 1  # generated, not a copy
        if row.marked:
            twin = manifest.index[(manifest["label"] == "generated") & ~manifest["marked"]
                                  & (manifest["family"] == row.family) & (manifest["kind"] == row.kind)
                                  & (manifest["driving_clip"] == row.driving_clip)][0]
            mse = np.mean((frames[clip_id].astype(float) - frames[twin]) ** 2)
            assert 0 < mse and 10 * np.log10(255 ** 2 / mse) >= 40   # the watermark, nothing else


def test_rerun_changes_nothing(fakes, sample_data, models):
    before = {p: p.stat().st_mtime_ns for p in (fakes / "clips").rglob("*") if p.is_file()}
    assert cli_main(_fakes_argv(sample_data, models, fakes)) == 0
    assert {p: p.stat().st_mtime_ns for p in (fakes / "clips").rglob("*") if p.is_file()} == before


def test_killed_run_resumes_to_the_same_files(sample_data, models, tmp_path):
    """SIGKILL the driver once three clips are done (four clips, reconstructions, a task per
    clip); the rerun makes only what is missing, to the same bytes as a run never killed."""
    import ray
    small = ("--max-clips", "4", "--no-marked", "--chunk", "1")
    out, clean = tmp_path / "killed", tmp_path / "clean"
    command = [sys.executable, "-m", "stages.cli", *_fakes_argv(sample_data, models, out, *small),
               "--ray-address", ray.get_runtime_context().gcs_address]
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 180
    while time.time() < deadline and driver.poll() is None and len(list((out / ".rows").glob("*.json"))) < 3:
        time.sleep(0.02)
    assert driver.poll() is None, "the run finished before it could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(2.5)  # its workers notice the driver is gone within a second and exit
    done_at_kill = {p.name: p.stat().st_mtime_ns for p in (out / ".rows").glob("*.json")}
    assert not (out / "manifest.parquet").exists()  # written last
    assert cli_main(_fakes_argv(sample_data, models, clean, *small)) == 0
    manifest = pd.read_parquet(clean / "manifest.parquet")
    assert 3 <= len(done_at_kill) < len(manifest) == 4 * (1 + len(FAMILIES))
    assert cli_main(_fakes_argv(sample_data, models, out, *small)) == 0
    assert _files(out) == _files(clean)
    assert {p.name: p.stat().st_mtime_ns for p in (out / ".rows").glob("*.json") if p.name in done_at_kill} \
        == done_at_kill  # what was done before the kill was not made again
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"), manifest)


@pytest.mark.parametrize("change, named", [
    (("--models", "fomm=missing.pt"), "'missing.pt'"),
    (("--models", "dalle=x.pt"), "'dalle'"),
    (("--transforms", "crf23,blur3"), "'blur3'"),
    (("--transforms", "crf99"), "crf 99"),
    (("--frames", "0"), "--frames 0"),
    (("--test-fraction", "1.5"), "--test-fraction 1.5"),
    (("--data", "no-such-folder"), "'no-such-folder'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(sample_data, models, tmp_path, capsys, change, named):
    argv = _fakes_argv(sample_data, models, tmp_path / "out")
    flag, value = change
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and named in err, err
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(sample_data, models, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("mine")
    assert cli_main(_fakes_argv(sample_data, models, target)) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "mine"


# --------------------------------------------------------------------------- the detector
def test_xception_has_the_reference_parameter_names_and_count():
    net = Xception(num_classes=1000)
    state = net.state_dict()
    # Xception's 22,855,952 trainable parameters (Chollet 2017, the Keras application)
    assert sum(p.numel() for p in net.parameters()) == 22_855_952 and len(state) == 276
    shapes = {"conv1.weight": (32, 3, 3, 3), "block1.rep.0.conv1.weight": (64, 1, 3, 3),
              "block1.rep.0.pointwise.weight": (128, 64, 1, 1), "block1.skip.weight": (128, 64, 1, 1),
              "block2.rep.1.conv1.weight": (128, 1, 3, 3), "block4.rep.7.pointwise.weight": (728, 728, 1, 1),
              "block12.rep.4.pointwise.weight": (1024, 728, 1, 1), "block12.skipbn.running_var": (1024,),
              "conv3.conv1.weight": (1024, 1, 3, 3), "conv4.pointwise.weight": (2048, 1536, 1, 1),
              "bn4.weight": (2048,), "last_linear.weight": (1000, 2048)}
    assert {name: tuple(state[name].shape) for name in shapes} == shapes
    assert "block4.skip.weight" not in state  # the middle flow adds its input unchanged


def test_published_layouts_load_into_the_module():
    """A FaceForensics++ TransferModel (`model.` prefix, dropout head `last_linear.1`) and the
    ImageNet file (`fc`, 2-D pointwise weights) load with every tensor where it belongs."""
    torch.manual_seed(0)
    source = Xception(num_classes=2)
    ffpp = {f"model.{name.replace('last_linear.', 'last_linear.1.')}": t for name, t in source.state_dict().items()}
    target = Xception(num_classes=2)
    assert load_weights(target, ffpp) == []
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    imagenet = {name.replace("last_linear.", "fc."): (t[:, :, 0, 0] if name.endswith("pointwise.weight") else t)
                for name, t in Xception(num_classes=1000).state_dict().items()}
    assert set(reference_state(imagenet)) == set(Xception(num_classes=1000).state_dict())
    fresh = Xception(num_classes=2)
    assert load_weights(fresh, imagenet) == ["last_linear.weight", "last_linear.bias"]  # a new 2-class head
    with pytest.raises(UserError, match="block3.rep.1.conv1.weight"):
        load_weights(Xception(num_classes=2), {k: v for k, v in ffpp.items() if "block3.rep.1.conv1" not in k})


def test_scores_on_a_worked_example():
    labels, values = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert scores.auc(labels, values) == pytest.approx(0.75)               # 3 of 4 pairs ordered
    assert scores.average_precision(labels, values) == pytest.approx((1 + 2 / 3) / 2)
    assert scores.equal_error_rate(labels, values) == pytest.approx(0.5)
    assert scores.accuracy(labels, values, 0.5) == pytest.approx(0.75)
    assert scores.auc(labels, np.array([0.2, 0.2, 0.2, 0.2])) == pytest.approx(0.5)  # ties count half
    assert scores.equal_error_rate(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    report = scores.report(scores.Scored(labels, [np.array([v, v]) for v in values]), 0.5, 200)
    low, high = report["video"]["auc_ci"]
    assert low <= report["video"]["auc"] <= high and report["frames"] == 8


def test_tiny_detector_beats_chance_on_identities_it_never_saw(fakes, tmp_path, capsys):
    """Trained on the train identities' unmarked clips (tiny Xception, 64 px, 150 steps), it
    scores the test identities' videos: 4 real and 8 per family generated (a reconstruction and
    an animation of each real clip). The margin: under chance (labels exchangeable) the video
    AUC of 24 generated and 4 real videos has a standard deviation of 0.16 (Mann-Whitney's exact
    variance), so an AUC of at least 0.5 + 2.33 sd = 0.87 (one-sided p < 0.01) is no accident."""
    assert cli_main(["run", "detect", "train", "--data", str(fakes), "--out", str(tmp_path / "det"),
                     "--width", str(TINY["width"]), "--size", "64", "--steps", "150", "--batch-size", "16",
                     "--frames-per-clip", "8", "--threads", "1"]) == 0
    assert cli_main(["run", "detect", "eval", "--model", str(tmp_path / "det"), "--data", str(fakes),
                     "--out", str(tmp_path / "eval"), "--frames-per-clip", "8", "--bootstrap", "200"]) == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"][0]
    group = result["groups"]["all families, unmarked"]
    generated, real = group["videos"]["generated"], group["videos"]["real"]
    assert (generated, real) == (8 * len(FAMILIES), 4)
    sd = np.sqrt((generated + real + 1) / (12 * generated * real))
    assert group["video"]["auc"] >= 0.5 + 2.33 * sd, group["video"]
    assert scores.chance_auc_tail(group["video"]["auc"], generated, real) < 0.01
    assert result["detector"]["trained_on"]["marked"] is False
    assert {"all families, marked", *(f"{f}, unmarked" for f in FAMILIES)} <= set(result["groups"])
    per_clip = pd.read_parquet(tmp_path / "eval" / "per_clip.parquet")
    manifest = pd.read_parquet(fakes / "manifest.parquet")
    assert set(per_clip["id"]) == set(manifest.loc[manifest["split"] == "test", "id"])  # held-out identities only
    test = manifest[(manifest["split"] == "test") & ~manifest["marked"]]
    files = [str(fakes / test.loc[test["label"] == label, "path"].iloc[0]) for label in ("real", "generated")]
    capsys.readouterr()
    assert cli_main(["run", "detect", "score", "--model", str(tmp_path / "det" / "detector.pt"), *files,
                     "--json", "--frames", "8"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [item["file"] for item in listed] == files
    assert all(0 <= item["probability"] <= 1 and item["label"] in ("real", "generated") for item in listed)
    assert cli_main(["run", "detect", "score", "--model", str(tmp_path / "det"), str(tmp_path / "none.mp4")]) == 2


def test_detectability_column_in_the_benchmark_table_and_report(fakes, sample_data, models, tmp_path):
    """Leave one family out (a few steps: this checks the plumbing, the test above the
    detector), then the benchmark and the report show each family's AUC with its interval and
    name the detector and the data."""
    from metrics import report
    from stages import benchmark as benchmark_stage
    assert cli_main(["run", "detect", "detectability", "--data", str(fakes), "--out", str(tmp_path / "lofo"),
                     "--width", str(TINY["width"]), "--size", "64", "--steps", "20", "--batch-size", "8",
                     "--frames-per-clip", "4", "--threads", "1", "--frames-per-clip-scored", "4",
                     "--bootstrap", "50"]) == 0
    record = json.loads((tmp_path / "lofo" / "detectability.json").read_text())
    assert set(record["families"]) == set(FAMILIES)
    for family, entry in record["families"].items():
        assert family not in entry["trained_on"] and len(entry["trained_on"]) == len(FAMILIES) - 1
        assert entry["video_auc_ci"][0] <= entry["video_auc"] <= entry["video_auc_ci"][1]
        assert entry["marked_video_auc"] is not None and Path(entry["model"]).is_file()
    assert cli_main(["run", "benchmark", "--dataset", "sample", "--data", str(sample_data), "--models", models,
                     "--out", str(tmp_path / "bench"), "--max-clips", "1", "--max-frames", "2", "--bootstrap", "20",
                     "--detectability", str(tmp_path / "lofo"), "--no-provenance"]) == 0
    comparison = (tmp_path / "bench" / "comparison.md").read_text()
    assert "detectability AUC ↓ (held-out family)" in comparison
    for family in FAMILIES:
        entry = record["families"][family]
        row = next(line for line in comparison.splitlines() if line.startswith(f"| {family} | ours |"))
        assert f"{entry['video_auc']:.3f} [{entry['video_auc_ci'][0]:.3f}, {entry['video_auc_ci'][1]:.3f}]" in row
    assert "xception width 0.0625 at 64 px" in comparison and str(fakes) in comparison
    report.write_report(tmp_path / "bench")
    for name in ("report.html", "report.md"):
        page = (tmp_path / "bench" / name).read_text()
        assert "Detectability" in page and "xception width 0.0625 at 64 px" in page and str(fakes) in page
        assert all(f"{record['families'][f]['marked_video_auc']:.3f}" in page for f in FAMILIES)
    with pytest.raises(UserError, match="not a detectability file"):
        (tmp_path / "bogus.json").write_text("{}")
        benchmark_stage.options(benchmark_args(sample_data, models, tmp_path / "bench2", tmp_path / "bogus.json"))


def benchmark_args(data: Path, models: str, out: Path, detectability: Path):
    import argparse

    from stages import benchmark as benchmark_stage
    parser = argparse.ArgumentParser()
    benchmark_stage.add_arguments(parser)
    return parser.parse_args(["--dataset", "sample", "--data", str(data), "--models", models, "--out", str(out),
                              "--detectability", str(detectability)])


def test_transforms_parse_and_reencode(tmp_path):
    from core.media import probe, read_frames
    from detect.reencode import parse_transforms, write_reencoded
    names = [t.name for t in parse_transforms("crf23, scale75+crf28,fps15+crf35")]
    assert names == ["none", "crf23", "scale75+crf28", "fps15+crf35"]
    scaled = parse_transforms("scale75+crf28")[1]
    assert (scaled.scale, scaled.crf, scaled.fps) == (75, 28, None)
    frames = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(6)]
    path = write_reencoded(tmp_path / "clip.mp4", frames, 30.0, scaled)
    info = probe(path)
    assert (info.width, info.height, info.codec) == (48, 48, "h264")  # 75 % of each side
    assert len(read_frames(path)) == 6 and not list(tmp_path.glob(".*part*"))
    again = write_reencoded(tmp_path / "again.mp4", frames, 30.0, scaled)
    assert again.read_bytes() == path.read_bytes()  # same frames, same bytes: a rerun repeats a run
    fewer = write_reencoded(tmp_path / "fps.mp4", frames * 2, 30.0, parse_transforms("fps15")[1])
    assert len(read_frames(fewer)) == 6
    for bad in ("crf", "scale5", "crf23+crf28", "gif"):
        with pytest.raises(UserError, match=re.escape(repr(bad))):
            parse_transforms(bad)


# --------------------------------------------------------------------------- the typed front doors
def _stage_args(stage: str, *argv: str):
    from stages.cli import build_parser
    return build_parser(stage).parse_args(["run", stage, *argv])


def test_fakes_options_parse_the_models_and_transforms(tmp_path):
    """`stages.fakes.options`: Paths, the models as specs (checkpoints checked), the transforms
    by name with `none` first; a bad value is one UserError before any file is written."""
    from detect.fakes import FakesOptions
    from metrics.clip_scores import ModelSpec
    from stages import fakes
    data, checkpoint = tmp_path / "data", tmp_path / "k.pt"
    data.mkdir()
    checkpoint.write_bytes(b"not read by options")
    base = ["--data", str(data), "--models", f"fomm={checkpoint}", "--out", str(tmp_path / "out")]
    chosen = fakes.options(_stage_args("fakes", *base, "--transforms", "crf23", "--frames", "8", "--no-marked"))
    assert isinstance(chosen, FakesOptions) and chosen.data == data and chosen.out == tmp_path / "out"
    assert chosen.models == (ModelSpec("fomm", checkpoint, None),)
    assert chosen.transforms == ("none", "crf23") and chosen.frames == 8 and chosen.marked is False
    for flags, expect in [(["--test-fraction", "1.5"], "--test-fraction 1.5"), (["--frames", "0"], "--frames 0"),
                          (["--transforms", "crf23,crf23"], "names a transform twice"),
                          (["--models", f"nobody={checkpoint}"], "unknown model 'nobody'"),
                          (["--out", str(data / "inside")], "is inside --data")]:
        with pytest.raises(UserError, match=re.escape(expect)):
            fakes.options(_stage_args("fakes", *base, *flags))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "k.pt"] and not any(data.iterdir())


def test_detect_options_are_one_typed_object_per_command(tmp_path):
    """`stages.detect.options`: the command's options class, training flags as checked
    TrainOptions; bad values are UserErrors before any folder is made."""
    from detect.train import TrainOptions
    from stages import detect
    fakes_dir, video = tmp_path / "fakes", tmp_path / "v.mp4"
    fakes_dir.mkdir()
    video.write_bytes(b"not read by options")
    train = detect.options(_stage_args("detect", "train", "--data", str(fakes_dir), "--out", str(tmp_path / "m"),
                                       "--families", "fomm,x2face", "--width", "0.25", "--size", "64"))
    assert isinstance(train, detect.DetectTrainOptions) and train.out == tmp_path / "m"
    assert isinstance(train.training, TrainOptions)
    assert (train.training.families, train.training.width, train.training.size) == (("fomm", "x2face"), 0.25, 64)
    evaluation = detect.options(_stage_args("detect", "eval", "--model", str(tmp_path / "m"), str(tmp_path / "n"),
                                            "--data", str(fakes_dir), "--out", str(tmp_path / "e")))
    assert isinstance(evaluation, detect.DetectEvalOptions)
    assert evaluation.models == (tmp_path / "m", tmp_path / "n") and evaluation.bootstrap == 1000
    score = detect.options(_stage_args("detect", "score", "--model", str(tmp_path / "m"), str(video), "--json"))
    assert score == detect.DetectScoreOptions(tmp_path / "m", (str(video),), 32, True, "cpu")
    lofo = detect.options(_stage_args("detect", "detectability", "--data", str(fakes_dir), "--out",
                                      str(tmp_path / "d"), "--seed", "3"))
    assert isinstance(lofo, detect.DetectabilityOptions) and lofo.training.seed == 3
    for argv, expect in [
        (["train", "--data", str(fakes_dir), "--out", str(tmp_path / "m"), "--width", "2"], "--width 2.0"),
        (["eval", "--model", str(tmp_path / "m"), "--data", str(fakes_dir), "--out", str(tmp_path / "e"),
          "--bootstrap", "0"], "--bootstrap and --frames-per-clip"),
        (["score", "--model", str(tmp_path / "m"), str(tmp_path / "none.mp4")], "does not exist"),
        (["detectability", "--data", str(fakes_dir), "--out", str(tmp_path / "d"), "--frames-per-clip-scored", "0"],
         "--frames-per-clip-scored"),
    ]:
        with pytest.raises(UserError, match=re.escape(expect)):
            detect.options(_stage_args("detect", *argv))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fakes", "v.mp4"]
