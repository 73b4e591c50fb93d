"""The backend registry, the offline backends on real media, and the optional ones' absence."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch

from core.errors import UserError
from core.media import iter_frames, load_image
from metrics import backends
from metrics.backends import BackendUnavailable, get_identity_backend, get_pose_backend
from metrics.evaluate import resize_frames
from metrics.identity import pairwise

DETECTION_STEP = 8  # every 8th frame of every clip: about 280 frames, 10 s on an idle core


def test_registry_builds_by_name_and_names_unknown_ones():
    assert get_pose_backend("dlib68").scheme == "dlib-68"
    assert get_identity_backend("dlib-face").dim == 128
    with pytest.raises(UserError, match=r"'openpose'.*\['body-pose', 'dlib68', 'face-alignment', "
                                        r"'mediapipe-openpose-18', 'mediapipe-pose'\]"):
        get_pose_backend("openpose")
    with pytest.raises(UserError, match=r"'osnet'.*\['body-appearance', 'dlib-face', 'openface', 'reid'\]"):
        get_identity_backend("osnet")


def _no_paper_weights(monkeypatch, folder) -> None:
    """As on a machine without the paper networks' weights, whatever this machine has."""
    for module, env in (("openface", "OPENFACE_WEIGHTS"), ("body_pose", "RTPOSE_WEIGHTS"), ("reid", "REID_WEIGHTS")):
        monkeypatch.setenv(env, str(folder / f"absent-{module}.pth"))
        monkeypatch.setattr(f"metrics.backends.{module}.WEIGHTS_DIR", folder)


def test_available_backends_lists_every_backend_with_its_scheme(monkeypatch, tmp_path, shared_reference):
    """On a machine without the optional packages and weights (made so here, whatever this
    machine has): the offline backends run, every other one says what to install or where to
    put its weights; once the weights are there, that backend runs."""
    for module in ("face_alignment", "mediapipe"):
        monkeypatch.setitem(sys.modules, module, None)  # import -> ImportError, as when not installed
    _no_paper_weights(monkeypatch, tmp_path)
    rows = {(row["kind"], row["name"]): row for row in backends.available_backends()}
    assert set(rows) == ({("pose", name) for name in backends.POSE_BACKENDS}
                         | {("identity", name) for name in backends.IDENTITY_BACKENDS})
    schemes = {name: row["scheme"] for (_, name), row in rows.items()}
    assert schemes == {"dlib68": "dlib-68", "face-alignment": "fan-68", "mediapipe-pose": "mediapipe-33",
                       "mediapipe-openpose-18": "mediapipe-openpose-18", "body-pose": "openpose-18",
                       "openface": "openface-nn4.small2.v1", "reid": "reid-ft_net-resnet50",
                       "dlib-face": "dlib-128", "body-appearance": "body-appearance-v1"}
    hints = {"dlib68": "", "dlib-face": "", "body-appearance": "",  # offline: always run
             "face-alignment": "pip install 'motion-transfer[face-alignment]'",
             "mediapipe-pose": "pip install 'motion-transfer[pose]'",
             "mediapipe-openpose-18": "pip install 'motion-transfer[pose]'",
             "openface": "put thnkim/OpenFacePytorch's", "body-pose": "put pose-evaluation's pose_model.pth",
             "reid": "put pose-evaluation's reid_model.pth"}
    for (_, name), row in rows.items():
        assert row["available"] == (hints[name] == ""), row
        assert hints[name] in row["reason"], row
    golden = torch.load(shared_reference / "openface-golden.pt", weights_only=True)
    torch.save(golden["state_dict"], tmp_path / "openface.pth")  # the user's weights, found by name
    monkeypatch.delenv("OPENFACE_WEIGHTS")
    assert get_identity_backend("openface").scheme == "openface-nn4.small2.v1"


@pytest.mark.parametrize("module, name, hint", [
    ("mediapipe", "mediapipe-pose", r"pip install 'motion-transfer\[pose\]'.*numpy<2"),
    ("face_alignment", "face-alignment", r"pip install 'motion-transfer\[face-alignment\]'"),
])
def test_absent_optional_pose_backend_raises_with_install_hint(monkeypatch, module, name, hint):
    monkeypatch.setitem(sys.modules, module, None)  # import -> ImportError, as when not installed
    with pytest.raises(BackendUnavailable, match=hint):
        get_pose_backend(name)
    assert issubclass(BackendUnavailable, UserError)  # the CLI prints it as one line, exit 2


def test_default_backends_per_dataset_kind(monkeypatch, tmp_path, shared_reference):
    monkeypatch.setitem(sys.modules, "face_alignment", None)
    _no_paper_weights(monkeypatch, tmp_path)
    pose, identity = backends.default_backends("faces")  # the offline substitutes
    assert (pose.name, identity.name) == ("dlib68", "dlib-face")
    assert not (pose.paper_equivalent or identity.paper_equivalent)
    golden = torch.load(shared_reference / "openface-golden.pt", weights_only=True)
    torch.save(golden["state_dict"], tmp_path / "openface.pth")  # the user's weights, found by name
    pose, identity = backends.default_backends("vox")
    assert identity.name == "openface" and identity.paper_equivalent
    assert backends.dataset_kind("vox") == "faces" and backends.dataset_kind("taichi") == "bodies"
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    pose, identity = backends.default_backends("taichi")
    assert pose is None and identity.name == "body-appearance"
    assert backends.default_backends("sample") == (None, None)


def test_frames_must_be_uint8_rgb_clips():
    pose = get_pose_backend("dlib68")
    with pytest.raises(UserError, match=r"\(4, 4, 4\).*expected \(T, H, W, 3\) uint8"):
        pose.detect(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(UserError, match="float64"):
        get_identity_backend("body-appearance").embed(np.zeros((1, 8, 8, 3)))


def detection_rates(shared_data, step: int, record_property) -> dict:
    pose = get_pose_backend("dlib68")
    clips = sorted((shared_data / "faces").rglob("*.mp4"))
    assert len(clips) >= 10, clips
    rates = {}
    for path in clips:
        frames = resize_frames(np.stack([f for i, f in enumerate(iter_frames(path)) if i % step == 0]))
        keypoints = pose.detect(frames)  # (T, 68, 2) at 256x256
        detected = np.isfinite(keypoints).all(axis=(1, 2))
        inside = (keypoints[detected] > -16).all() and (keypoints[detected] < 256 + 16).all()
        assert inside, f"landmarks far outside the frame in {path.name}"
        rates[str(path.relative_to(shared_data))] = (float(detected.mean()), len(frames))
    report = "; ".join(f"{name}: {rate:.1%} of {count}" for name, (rate, count) in rates.items())
    print(f"dlib68 detection rate per clip (every {step} frame(s) at 256): {report}")
    record_property("dlib68_detection_rates", report)
    return {name: rate for name, (rate, _) in rates.items()}


def test_dlib_finds_landmarks_in_95_percent_of_face_clip_frames(shared_data, record_property):
    rates = detection_rates(shared_data, DETECTION_STEP, record_property)
    low = {name: rate for name, rate in rates.items() if rate < 0.95}
    assert not low, low


@pytest.mark.slow
def test_dlib_finds_landmarks_in_95_percent_of_every_frame(shared_data, record_property):
    rates = detection_rates(shared_data, 1, record_property)
    low = {name: rate for name, rate in rates.items() if rate < 0.95}
    assert not low, low


def test_dlib_backends_give_nan_rows_without_a_face(shared_data):
    face = load_image(shared_data / "faces/sadtalker/happy.png")  # (256, 256, 3)
    blank = np.full_like(face, 127)
    keypoints = get_pose_backend("dlib68").detect(np.stack([face, blank]))
    assert np.isfinite(keypoints[0]).all() and np.isnan(keypoints[1]).all()
    # iBUG-68 order: the chin (8) is the lowest jaw point, the nose tip (30) lies between the eyes' x
    assert keypoints[0, 8, 1] == keypoints[0, :17, 1].max()
    assert keypoints[0, 36, 0] < keypoints[0, 30, 0] < keypoints[0, 45, 0]
    embeddings = get_identity_backend("dlib-face").embed(np.stack([face, blank]))
    assert np.isfinite(embeddings[0]).all() and np.isnan(embeddings[1]).all()


def _folder_frames(folder, step: int = 8) -> np.ndarray:
    files = sorted(folder.glob("*.png"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    assert files, folder
    return np.stack([load_image(path) for path in files[::step]])


def test_body_appearance_is_deterministic_unit_and_separates_clips(shared_data):
    backend = get_identity_backend("body-appearance")
    folders = ["dwnet-taichi/1", "dwnet-taichi/2", "dwnet-fashion/1", "dwnet-fashion/2"]
    embeddings = {name: backend.embed(_folder_frames(shared_data / "bodies" / name)) for name in folders}
    first = embeddings[folders[0]]
    assert first.shape[1] == backend.dim
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0)
    np.testing.assert_array_equal(backend.embed(_folder_frames(shared_data / "bodies" / folders[0])), first)
    for name in folders:
        within = pairwise(embeddings[name], embeddings[name]).max()
        across = min(pairwise(embeddings[name], embeddings[other]).min() for other in folders if other != name)
        print(f"body-appearance {name}: farthest own frame {within:.3f}, nearest other clip {across:.3f}")
        assert within < across, name


def test_body_appearance_reacts_to_colour_more_than_to_a_small_shift(shared_data):
    frame = _folder_frames(shared_data / "bodies/dwnet-fashion/1", step=64)[:1]  # (1, 256, 256, 3)
    shifted = np.roll(frame, 4, axis=2)
    recoloured = frame[..., ::-1].copy()  # RGB -> BGR: same silhouette, other clothes colour
    backend = get_identity_backend("body-appearance")
    base, moved, other = backend.embed(np.concatenate([frame, shifted, recoloured]))
    assert np.linalg.norm(base - moved) < 0.5 * np.linalg.norm(base - other)


def test_blazepose_to_openpose18_mapping():
    from metrics.backends.mediapipe_pose import to_openpose18
    blaze = np.stack([np.arange(33.0), np.arange(33.0) + 100], axis=-1)  # joint i at (i, 100 + i)
    blaze[27] = np.nan  # left ankle not visible
    openpose = to_openpose18(blaze)
    assert openpose.shape == (18, 2)
    np.testing.assert_array_equal(openpose[0], [0, 100])            # nose
    np.testing.assert_array_equal(openpose[1], [11.5, 111.5])       # neck = shoulders' midpoint
    np.testing.assert_array_equal(openpose[2], [12, 112])           # right shoulder
    np.testing.assert_array_equal(openpose[[4, 7]], [[16, 116], [15, 115]])  # wrists
    assert np.isnan(openpose[13]).all()                             # left ankle stays missing
    blaze[11] = np.nan
    assert np.isnan(to_openpose18(blaze)[1]).all()                  # neck needs both shoulders
