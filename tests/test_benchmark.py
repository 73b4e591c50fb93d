"""`pipeline run benchmark`: model specs, the motion error against the truth, and a full run
on real sample clips (with known motion) and on a real face clip with the dlib backends."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from builders import write_sample
from PIL import Image

from core.config import config_to_dict
from core.errors import UserError
from fomm.config import config_from_dict, load_config
from metrics import benchmark, clip_scores
from pipeline.clips import clip_dir
from stages import benchmark as benchmark_stage


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> Path:
    """Two test clips of the built-in sample dataset (8 frames, 64 px) with their truth."""
    return write_sample(tmp_path_factory.mktemp("sample"), num_train=0, num_test=2)


def _tiny_config(name: str = "fomm", size: int = 64):
    try:
        config = load_config({"fomm": "tiny"}.get(name, f"{name}-tiny"))
    except UserError:  # the tiny configs are the model engineers'; the defaults build too
        config = config_from_dict({})
    return config_from_dict(config_to_dict(config), [f"model_params.name={name}",
                                                     f"dataset_params.frame_shape=[{size},{size},3]"])


def _checkpoint(tmp_path: Path, name: str, size: int = 64) -> Path:
    """A randomly initialised model of family `name`, saved with its config embedded."""
    from fomm.registry import build_model
    torch.manual_seed(0)
    config = _tiny_config(name, size)
    model = build_model(config)
    path = tmp_path / f"{name}.pt"
    torch.save({**model.checkpoint_state(), "config": config_to_dict(config)}, path)
    return path


def _args(**given) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    benchmark_stage.add_arguments(parser)
    argv = []
    for key, value in given.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return parser.parse_args(argv)


def _benchmark(args) -> dict:
    """`pipeline run benchmark` as the command line runs it: typed options, then the run."""
    return benchmark_stage.run(benchmark_stage.options(args))


# --------------------------------------------------------------------------- units
def test_motion_error_is_zero_for_the_truth_and_k_pixels_for_a_k_pixel_shift():
    truth = np.broadcast_to(clip_scores.identity_grid(64), (3, 64, 64, 2)).copy()
    truth[..., 0] += np.linspace(0, 0.2, 3)[:, None, None]
    assert np.allclose(clip_scores.motion_epe(truth, truth, (64, 64)), 0, atol=1e-6)
    for k in (1, 3):  # shifting x by k pixels of a 128-px frame is k / 64 normalised units
        shifted = truth.copy()
        shifted[..., 0] += k / 64
        assert clip_scores.motion_epe(shifted, truth, (128, 128)) == pytest.approx([k] * 3, rel=1e-4)


def test_motion_error_resizes_a_coarser_deformation_to_the_truth_grid():
    truth = clip_scores.identity_grid(64)[None] * np.float32(0.9)  # a zoom: linear in the pixel centres
    coarse = clip_scores.identity_grid(16)[None] * np.float32(0.9)
    error = clip_scores.motion_epe(coarse, truth, (64, 64))
    # bilinear resizing is exact inside; only the outer 2 pixels of each side clamp
    # (at most 1.5 px of 64 there), which averages to about 0.11 px over the grid
    assert 0 < error[0] < 0.15


def test_model_specs_name_the_bad_item(tmp_path):
    checkpoint = tmp_path / "a.pt"
    checkpoint.write_bytes(b"x")
    specs = clip_scores.parse_models(f"fomm={checkpoint},x2face={checkpoint}@x2face-tiny")
    assert [(s.name, s.config) for s in specs] == [("fomm", None), ("x2face", "x2face-tiny")]
    for bad, words in ((f"dalle={checkpoint}", "unknown model 'dalle'"),
                       ("fomm", "expected NAME=CHECKPOINT"),
                       (f"fomm={tmp_path}/missing.pt", "does not exist"),
                       (f"fomm={checkpoint},fomm={checkpoint}", "names a model twice")):
        with pytest.raises(UserError, match=words):
            clip_scores.parse_models(bad)


def test_bad_counts_are_named_before_any_work(sample_data, tmp_path):
    for flag, value in (("max_clips", 0), ("workers", 0), ("batch_size", -1)):
        name = "--" + flag.replace("_", "-")
        with pytest.raises(UserError, match=f"{name} {value}: expected a positive number"):
            _benchmark(_args(dataset="sample", data=sample_data, models="fomm=x.pt", out=tmp_path / "o",
                             **{flag: value}))
    assert not (tmp_path / "o").exists()


def test_options_are_typed_and_resolved(sample_data, tmp_path):
    """`options(args)`: Paths, parsed model specs, a core.devices.Precision, the device,
    workers and protocol resolved, and the argument list that repeats the run."""
    from core.devices import Precision
    checkpoint = tmp_path / "a.pt"
    checkpoint.write_bytes(b"x")
    chosen = benchmark_stage.options(_args(dataset="sample", data=str(sample_data), models=f"fomm={checkpoint}",
                                           out=str(tmp_path / "o"), device="cpu", no_provenance=True))
    assert isinstance(chosen, benchmark.BenchmarkOptions)
    assert chosen.data == sample_data and isinstance(chosen.out, Path)
    assert chosen.models == (clip_scores.ModelSpec("fomm", checkpoint, None),)
    assert isinstance(chosen.precision, Precision) and (chosen.precision.name, chosen.precision.device_type) == \
        ("fp32", "cpu")
    assert (chosen.device, chosen.workers, chosen.protocol, chosen.provenance) == ("cpu", 1, "project", False)
    assert chosen.argv[0] == "--no-provenance"
    for flag, value in (("--device", "cpu"), ("--workers", "1"), ("--protocol", "project"), ("--precision", "fp32")):
        assert chosen.argv[chosen.argv.index(flag) + 1] == value
    vox = benchmark_stage.options(_args(dataset="vox", data=sample_data, models=f"fomm={checkpoint}",
                                        out=tmp_path / "o", device="cpu"))
    assert vox.protocol == "paper"  # a dataset of the paper's tables


@pytest.mark.parametrize("flag, value, words", [
    ("precision", "fp16", "--precision 'fp16': expected one of"),
    ("precision", "int8", "--precision int8 is animate's path"),
    ("device", "toaster", "--device 'toaster': expected cpu or cuda"),
    ("bootstrap", 0, "--bootstrap 0: expected a positive number"),
])
def test_a_bad_option_is_named_before_any_file_is_written(sample_data, tmp_path, flag, value, words):
    checkpoint = tmp_path / "a.pt"
    checkpoint.write_bytes(b"x")
    with pytest.raises(UserError, match=words):
        benchmark_stage.options(_args(dataset="sample", data=sample_data, models=f"fomm={checkpoint}",
                                      out=tmp_path / "o", **{flag: value}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_checkpoint_without_config_asks_for_one(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save({"generator": {}}, path)
    with pytest.raises(UserError, match="embeds no config"):
        clip_scores.load_model(clip_scores.ModelSpec("fomm", path, None))


# --------------------------------------------------------------------------- runs
def test_benchmark_of_three_models_on_sample_data(sample_data, tmp_path):
    sizes = {"x2face": 256}  # X2Face's 8-level U-Nets need 256x256 frames
    models = ",".join(f"{name}={_checkpoint(tmp_path, name, sizes.get(name, 64))}"
                      for name in ("fomm", "monkey-net", "x2face"))
    out = tmp_path / "bench"
    record = _benchmark(_args(dataset="sample", data=sample_data, models=models, out=out,
                                 bootstrap=200))
    per_frame = pd.read_parquet(out / "per_frame.parquet")
    per_clip = pd.read_parquet(out / "per_clip.parquet")
    models_seen = set(per_frame["model"])
    assert {"fomm", "monkey-net", "x2face", benchmark.NO_MOTION} == models_seen
    clips = sorted(p.name.removesuffix(".mp4") for p in (sample_data / "png" / "test").iterdir())
    for name in ("fomm", "monkey-net", "x2face"):
        rows = per_frame[per_frame["model"] == name]
        assert sorted(rows["clip"].unique()) == clips and len(rows) == 16
        assert rows["l1"].between(0, 1).all() and rows["ssim"].le(1).all()
        assert rows["motion_epe"].notna().all() and (rows["motion_epe"] >= 0).all()
    # L1 is the direct mean absolute difference of the frames the benchmark scored
    assert (per_clip["num_frames"] == 8).all()
    assert set(per_frame["pose_backend"]) == {"none"}  # sample is not a face/body dataset
    comparison = (out / "comparison.md").read_text()
    assert all(f"| {n} | ours |" in comparison for n in ("fomm", "monkey-net", "x2face"))
    assert "pose: none" in comparison and "no numbers" in comparison
    motion = (out / "motion.md").read_text()
    assert benchmark.NO_MOTION in motion and "| fomm | ours |" in motion
    assert (out / "comparison.csv").is_file() and (out / "comparison.html").is_file()
    assert record["samples"]["rows"][0] == "driving"
    assert (out / "samples" / "source.png").is_file()
    assert json.loads((out / "benchmark.json").read_text())["clips"] == clips


def test_a_model_that_copies_the_source_scores_as_the_direct_computation(sample_data, tmp_path, monkeypatch):
    """A fake 'still' model (prediction = source, deformation = identity grid) makes the
    expected values computable by hand: L1 = mean |frame_t - frame_0|, motion error = no motion."""
    from fomm.api import MotionTransferModel

    class Still(MotionTransferModel):
        name = "fomm"

        def detect(self, frames):
            return {"value": torch.zeros(len(frames), 1, 2)}

        def generate(self, source, motion_source, motion_driving):
            grid = torch.from_numpy(clip_scores.identity_grid(64)).expand(len(source), 64, 64, 2)
            return {"prediction": source, "deformation": grid}

        def generator_losses(self, source, driving, kit):
            raise NotImplementedError

        def optimizer_groups(self):
            return {}

    monkeypatch.setattr("fomm.registry.build_model", lambda config, name=None: Still())
    path = tmp_path / "still.pt"
    torch.save({"config": config_to_dict(_tiny_config("fomm"))}, path)
    out = tmp_path / "still"
    _benchmark(_args(dataset="sample", data=sample_data, models=f"fomm={path}", out=out, bootstrap=50))
    per_frame = pd.read_parquet(out / "per_frame.parquet")
    still = per_frame[per_frame["model"] == "fomm"].set_index(["clip", "frame"])
    for clip in still.index.unique("clip"):
        folder = clip_dir(sample_data, "test", clip)
        frames = np.stack([np.asarray(Image.open(p)) for p in sorted(folder.iterdir())]) / 255.0
        expected = np.abs(frames - frames[:1]).mean(axis=(1, 2, 3))
        # L1 is taken on the model's float32 tensors (as the original), so float32 rounding remains
        assert still.loc[clip, "l1"].to_numpy() == pytest.approx(expected, abs=1e-7)
    floor = per_frame[per_frame["model"] == benchmark.NO_MOTION].set_index(["clip", "frame"])
    assert still["motion_epe"].to_numpy() == pytest.approx(floor.loc[still.index, "motion_epe"].to_numpy(),
                                                          abs=1e-5)
    assert floor["motion_epe"].groupby("clip").first().eq(0).all()  # frame 0 is the photo itself
    assert (floor["motion_epe"] > 0).sum() > 0


def test_face_clip_is_scored_with_the_dlib_backends(shared_data, tmp_path, monkeypatch):
    """The original layout (`test/<clip>.mp4`) of a real talking-face clip, at 128 px."""
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # as on a machine without it
    monkeypatch.setenv("OPENFACE_WEIGHTS", str(tmp_path / "absent.pth"))
    monkeypatch.setattr("metrics.backends.openface.WEIGHTS_DIR", tmp_path)
    data = tmp_path / "faces"
    (data / "test").mkdir(parents=True)
    shutil.copy(shared_data / "faces" / "fomm-demo" / "04.mp4", data / "test" / "id04#04#000000#000211.mp4")
    models = f"fomm={_checkpoint(tmp_path, 'fomm', size=128)}"
    out = tmp_path / "bench"
    _benchmark(_args(dataset="vox", data=data, models=models, out=out, max_frames=6, bootstrap=50))
    per_frame = pd.read_parquet(out / "per_frame.parquet")
    assert len(per_frame) == 6
    # without face-alignment and OpenFace weights: the offline substitutes, labelled as such
    assert set(per_frame["pose_backend"]) == {"dlib68 (scheme dlib-68, substitute)"}
    assert per_frame["identity_backend"].str.startswith("dlib-face (scheme dlib-128, substitute").all()
    assert per_frame["joints_real"].eq(68).mean() >= 0.8  # dlib finds the real face
    comparison = (out / "comparison.md").read_text()
    assert "protocol: paper" in comparison  # vox has paper numbers: the paper protocol by default
    assert "dlib68" in comparison and "| fomm | paper |" in comparison and "1.294" in comparison
    # a substitute's AKD / AED sit in their own "not comparable" columns, apart from the paper's
    assert "AKD (px) ↓ (ours, not comparable)" in comparison and "AKD (px) ↓ (paper)" in comparison
    assert "AED ↓ (ours, not comparable)" in comparison and "| L1 ↓ |" in comparison
    record = json.loads((out / "benchmark.json").read_text())
    assert record["protocol"] == "paper" and record["comparable"] == {
        "l1": True, "akd": False, "mkr": False, "aed": False}
    found = int(per_frame["akd"].notna().sum())
    akd_counts = record["frame_counts"]["fomm"]["akd"]
    assert akd_counts["scored"] == found and found + sum(akd_counts["skipped"].values()) == 6
    assert (f"AKD (px) on {found}/6" in comparison) == (found < 6)  # coverage stated when partial
    assert record["frame_counts"]["fomm"]["mkr"]["skipped"] == {"faces: pose-evaluation reports no MKR": 6}
    assert "MKR" not in comparison.split("\n- ")[0]  # so no MKR column for faces
    assert (per_frame["aed_skip"] == "").eq(per_frame["aed"].notna()).all()  # a reason for every gap


def test_released_checkpoint_needs_and_takes_a_config(sample_data, tmp_path):
    """A released-format file (state dicts only, no config) loads with NAME=CKPT@CONFIG and
    reconstructs exactly as the same weights saved in the project's format."""
    from fomm.reconstruction import reconstruct_clip
    from fomm.registry import build_model
    torch.manual_seed(1)
    # align_corners explicit: left automatic, a file without config would run with the released True
    config = _tiny_config("fomm")
    config = config_from_dict(config_to_dict(config), ["model_params.align_corners=false"])
    model = build_model(config).eval()
    released = tmp_path / "released.pth.tar"
    torch.save({**model.checkpoint_state(), "epoch": 99}, released)
    with pytest.raises(UserError, match="embeds no config"):
        clip_scores.load_model(clip_scores.ModelSpec("fomm", released, None))
    config_file = tmp_path / "tiny64.yaml"
    from core.config import config_to_yaml
    config_file.write_text(config_to_yaml(config))
    loaded, loaded_config = clip_scores.load_model(clip_scores.ModelSpec("fomm", released, str(config_file)))
    assert loaded_config == config
    store, clips = clip_scores.open_test_clips(sample_data, "test", 1)
    ours, theirs = (reconstruct_clip(m, clip_scores.clip_batches(store, clips[0], (64, 64), 16, 4))
                    for m in (model, loaded))
    assert len(ours.fake) == 4 and np.array_equal(ours.fake, theirs.fake)


def test_reconstruct_and_benchmark_report_one_l1_computation(shared_data, tmp_path, capsys, monkeypatch):
    """Two real clips of different lengths (5 and 11 frames, 64 px): both stages report the
    values of fomm.reconstruction.frame_l1 (recorded here as each stage calls it), so clip by
    clip they agree exactly, and `reconstruct` prints the mean over all 16 frames."""
    from fomm import reconstruction
    from fomm.checkpoint import load_model
    from fomm.reconstruction import reconstruct
    root = tmp_path / "two"
    source = shared_data / "bodies" / "dwnet-taichi" / "1"
    for clip, count in (("a", 5), ("b", 11)):
        (root / "test" / clip).mkdir(parents=True)
        for index, path in enumerate(sorted(source.iterdir())[:count]):
            Image.open(path).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR).save(
                root / "test" / clip / f"{index:07d}.png")
    computed = []  # every value each stage got from the protocol's L1
    original = reconstruction.frame_l1
    monkeypatch.setattr(reconstruction, "frame_l1", lambda *pair: computed.append(original(*pair)) or computed[-1])
    path = _checkpoint(tmp_path, "fomm")
    config = _tiny_config("fomm")
    rows = reconstruct(load_model(config, path), config, root, tmp_path / "rec", batch_size=4, device="cpu")
    printed = float(capsys.readouterr().out.split("L1 ")[1].split()[0])
    by_reconstruct, computed[:] = np.concatenate(computed), []
    _benchmark(_args(dataset="sample", data=root, models=f"fomm={path}", out=tmp_path / "bench",
                        pose="none", identity="none", bootstrap=20, batch_size=4))
    by_benchmark = np.concatenate(computed)
    per_frame = pd.read_parquet(tmp_path / "bench" / "per_frame.parquet")
    per_frame = per_frame[per_frame["model"] == "fomm"]
    assert len(by_reconstruct) == len(by_benchmark) == len(per_frame) == 16
    np.testing.assert_array_equal(per_frame["l1"].to_numpy(), by_benchmark)  # the protocol's values, as they are
    # same frames, same batches: the same values to the bit, one computation and not two
    np.testing.assert_array_equal(by_benchmark, by_reconstruct)
    for row in rows:  # l1.csv: each clip's mean of the same values
        clip_frames = per_frame[per_frame["clip"] == row["clip"]]["l1"].to_numpy()
        assert len(clip_frames) == int(row["num_frames"]) and float(row["l1"]) == clip_frames.mean()
    assert printed == pytest.approx(per_frame["l1"].mean(), abs=5e-7)  # printed with 6 decimals
    clip_mean = np.mean([float(row["l1"]) for row in rows])  # one clip, one vote: not the paper's number
    assert abs(printed - clip_mean) > 1e-5
