"""The paper's metric weights in the originals' file formats, found where the README says,
and `pipeline run evaluate` with them on pose-evaluation's golden frames.

The recipe weights of ../shared/reference/pose-evaluation-golden.pt are saved as the originals
shipped theirs: float32 state dicts in torch's pre-1.6 (non-zip) format, `pose_model.pth` the
plain rtpose state dict that extract.py loads before wrapping the network in DataParallel,
`reid_model.pth` the whole ft_net(751) (head included, as extract_body_id loads it before
removing it), `openface.pth` the port's without BatchNorm counters. The backends then run in
float32, as the originals did, on the golden's real and generated frames written as PNG
folders. The joints decide AKD and MKR, so they equal the golden's exactly (the float64 and
float32 decodes agree: the closest decision is 1.2e-5 from flipping, float32 moves the maps by
about 1e-6); AED is a squared distance of float32 embeddings, so it agrees to float32 rounding:
relative 1e-3, ten times the largest per-frame error measured (8.3e-5 for reid, whose inputs
vary by only 0.33 around -2 after the double normalisation and whose per-frame BatchNorm
rescales every layer; 4.1e-5 for OpenFace, whose distances of ~2e-3 are differences of unit
vectors), for other CPUs' float32 kernels.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from golden_recipe import rebuild, state_sha256
from PIL import Image

from core.errors import UserError
from metrics.backends import BackendUnavailable, get_identity_backend, get_pose_backend
from stages.cli import main as cli

AED_RTOL = 1e-3  # float32 networks against the float64 golden (module docstring)
FILES = {"body_pose": "pose_model.pth", "body_id": "reid_model.pth", "face_id": "openface.pth"}
MODULES = {"body_pose": "body_pose", "body_id": "reid", "face_id": "openface"}
ENV = {"body_pose": "RTPOSE_WEIGHTS", "body_id": "REID_WEIGHTS", "face_id": "OPENFACE_WEIGHTS"}


@pytest.fixture(scope="module")
def golden(shared_reference) -> dict:
    return torch.load(shared_reference / "pose-evaluation-golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def weights(golden, tmp_path_factory):
    """{part: path} of the three files (about 330 MB, removed after the module)."""
    folder = tmp_path_factory.mktemp("paper-weights")
    paths = {}
    for part, name in FILES.items():
        recipe = golden[part]["recipe"]
        state = rebuild(recipe, golden[part]["layout"])[recipe["modules"][0]]
        assert state_sha256(state) == golden[part]["state_dict_sha256"], part
        if part == "face_id":  # converted before torch 0.4.1: no BatchNorm counters
            state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
        state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
        paths[part] = folder / name
        torch.save(state, paths[part], _use_new_zipfile_serialization=False)
        del state
    yield paths
    shutil.rmtree(folder)


@pytest.fixture
def installed(weights, monkeypatch, tmp_path):
    """rtpose and reid weights named by their environment variables, OpenFace's in the cache
    folder; nothing else on this machine is seen."""
    monkeypatch.setenv("RTPOSE_WEIGHTS", str(weights["body_pose"]))
    monkeypatch.setenv("REID_WEIGHTS", str(weights["body_id"]))
    monkeypatch.delenv("OPENFACE_WEIGHTS", raising=False)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "openface.pth").symlink_to(weights["face_id"])
    for module in MODULES.values():
        monkeypatch.setattr(f"metrics.backends.{module}.WEIGHTS_DIR", cache)
    return weights


def _build(part: str):
    name = {"body_pose": "body-pose", "body_id": "reid", "face_id": "openface"}[part]
    return get_pose_backend(name) if part == "body_pose" else get_identity_backend(name)


@pytest.mark.parametrize("part", list(FILES))
def test_each_file_loads_from_its_variable_and_from_the_cache_folder(part, weights, monkeypatch, tmp_path):
    module = MODULES[part]
    monkeypatch.setattr(f"metrics.backends.{module}.WEIGHTS_DIR", tmp_path)
    monkeypatch.delenv(ENV[part], raising=False)
    with pytest.raises(BackendUnavailable, match=f"put .*{FILES[part]} at \\${ENV[part]} or {tmp_path}"):
        _build(part)
    monkeypatch.setenv(ENV[part], str(weights[part]))
    assert _build(part).path == weights[part]
    monkeypatch.delenv(ENV[part])
    (tmp_path / FILES[part]).symlink_to(weights[part])
    backend = _build(part)
    assert backend.path == tmp_path / FILES[part] and backend.paper_equivalent
    first = next(iter(backend.model.parameters()))
    assert first.dtype == torch.float32  # as the original ran


def test_wrong_or_wrapped_files(weights, tmp_path, monkeypatch):
    """A file of another network is refused by name; DataParallel's `module.` prefix is not
    in extract.py's file but is accepted; a file that is no checkpoint is a UserError."""
    monkeypatch.setenv("REID_WEIGHTS", str(weights["face_id"]))
    with pytest.raises(BackendUnavailable, match="reid weights do not match ft_net"):
        get_identity_backend("reid")
    state = torch.load(weights["face_id"], weights_only=True)
    torch.save({f"module.{key}": value for key, value in state.items()}, tmp_path / "wrapped.pth")
    monkeypatch.setenv("OPENFACE_WEIGHTS", str(tmp_path / "wrapped.pth"))
    assert get_identity_backend("openface").path == tmp_path / "wrapped.pth"
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("OPENFACE_WEIGHTS", str(tmp_path / "broken.pth"))
    with pytest.raises(UserError, match="broken.pth could not be read"):
        get_identity_backend("openface")


def _write_clip(folder, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:07d}.png")


def _evaluate(tmp_path, name: str, real: np.ndarray, generated: np.ndarray, *options: str) -> dict:
    _write_clip(tmp_path / "real" / name, real)
    _write_clip(tmp_path / "generated" / name, generated)
    out = tmp_path / "out"
    assert cli(["run", "evaluate", "--real", str(tmp_path / "real"), "--generated", str(tmp_path / "generated"),
                "--out", str(out), *options]) == 0
    return json.loads((out / "summary.json").read_text())


def _body_frames(golden, count: int) -> tuple[np.ndarray, np.ndarray]:
    return (golden["body_pose"]["input_frames_rgb"][:count].numpy(),
            golden["body_pose"]["generated"]["input_frames_rgb"][:count].numpy())


def test_evaluate_gives_the_golden_body_numbers_of_a_frame(golden, installed, tmp_path):
    """Frame 0 of the Tai-Chi clip against its 4-px shift: cmp_with_missing.py's per-frame
    AKD (17.15) and MKR (1/14), cmp.py's AED, with the defaults for bodies."""
    summary = _evaluate(tmp_path, "1", *_body_frames(golden, 1), "--kind", "bodies")
    assert summary["backends"] == {
        "pose": {"name": "body-pose", "scheme": "openpose-18", "paper_equivalent": True},
        "identity": {"name": "reid", "scheme": "reid-ft_net-resnet50", "paper_equivalent": True}}
    assert summary["protocol"] == "paper" and summary["comparable_with_paper"]
    cmp = golden["cmp"]
    assert summary["akd"] == pytest.approx(float(cmp["body_pose"]["scores"][0]), rel=1e-12)
    assert summary["mkr"] == pytest.approx(float(cmp["body_pose"]["missing"][0]), rel=1e-12)
    assert summary["aed"] == pytest.approx(float(cmp["body_id"]["scores"][0]), rel=AED_RTOL)


@pytest.mark.slow
def test_evaluate_gives_the_golden_body_numbers(golden, installed, tmp_path):
    """All three frames: AKD 17.8649, MKR 0.1896, AED 6.9420 (12 float32 rtpose passes)."""
    summary = _evaluate(tmp_path, "1", *_body_frames(golden, 3), "--kind", "bodies")
    cmp = golden["cmp"]
    assert summary["akd"] == pytest.approx(cmp["body_pose"]["average_difference"], rel=1e-12)
    assert summary["mkr"] == pytest.approx(cmp["body_pose"]["missing_count"], rel=1e-12)
    assert summary["aed"] == pytest.approx(cmp["body_id"]["average_difference"], rel=AED_RTOL)


def test_evaluate_gives_the_golden_face_aed(golden, installed, tmp_path):
    """Four frames of 04.mp4 against their shift: cmp.py's 4.0456e-06 with OpenFace."""
    face = golden["face_id"]
    summary = _evaluate(tmp_path, "04", face["inputs_raw_256"].numpy(), face["generated"]["inputs_raw_256"].numpy(),
                        "--kind", "faces", "--pose", "none")
    assert summary["backends"]["identity"]["name"] == "openface" and summary["backends"]["pose"] is None
    assert summary["aed"] == pytest.approx(golden["cmp"]["face_id"]["average_difference"], rel=AED_RTOL)
    assert summary["frames"]["aed"] == {"frames": 4, "scored": 4, "skipped": {}}
