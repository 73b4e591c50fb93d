"""The paper protocol's arithmetic (metrics.protocol) on the values pose-evaluation's scripts
read, against numbers worked out by hand from cmp_kp.py, cmp_with_missing.py and cmp.py."""
from __future__ import annotations

import numpy as np
import pytest

from core.media import read_frames
from metrics import protocol
from metrics.backends.dlib68 import Dlib68Pose
from metrics.evaluate import score_clip


def _face(offset_x: float = 0.0, offset_y: float = 0.0) -> np.ndarray:
    base = np.stack([np.arange(68, dtype=float) * 2 + 40, np.arange(68, dtype=float) + 60], axis=1)
    return base + [offset_x, offset_y]  # (68, 2)


def test_face_akd_skips_missing_generated_faces_and_pools_frames_of_all_videos():
    # video A: frame 0 shifted by (1, 3) -> mean over 136 coordinates = (68*1 + 68*3) / 136 = 2;
    # frame 1: no generated face (skipped); frame 2: no real face (the script would stop).
    real_a = [_face(), _face(), None]
    fake_a = [_face(1, 3), None, _face()]
    # video B: one landmark's x off by 4 -> 4 / 136; then a frame with no face on either side.
    moved = _face()
    moved[10, 0] += 4
    real_b, fake_b = [_face(), None], [moved, None]
    video_a, video_b = protocol.face_akd(real_a, fake_a), protocol.face_akd(real_b, fake_b)
    assert video_a.values[0] == pytest.approx(2.0)
    assert np.isnan(video_a.values[1:]).all()
    assert video_b.values[0] == pytest.approx(4 / 136)
    assert video_a.skipped == {protocol.NO_FAKE_FACE: 1, protocol.NO_REAL_FACE: 1}
    assert video_b.skipped == {protocol.NO_FAKE_FACE: 1}  # cmp_kp.py checks the generated value first
    pooled = protocol.pooled([video_a, video_b])
    # the mean over the 2 scored frames of both videos, not the mean of per-video means (2 + 4/136) / 2
    assert pooled["value"] == pytest.approx((2.0 + 4 / 136) / 2)
    assert (pooled["frames"], pooled["scored"]) == (5, 2)
    assert pooled["skipped"] == {protocol.NO_FAKE_FACE: 2, protocol.NO_REAL_FACE: 1}


def _joints(present: list[int], offset: float = 0.0) -> np.ndarray:
    joints = -np.ones((18, 2))
    for index in present:
        joints[index] = [10.0 * index + offset, 5.0 * index + 2 * offset]
    return joints


def test_body_mkr_and_akd_follow_cmp_with_missing():
    real = np.stack([
        _joints(list(range(10))),        # 10 joints in the real frame
        -np.ones((18, 2)),               # no joint in the real frame
        _joints([0, 1, 2, 3]),           # 4 joints, none found in the generated frame
        _joints([5, 6]),                 # 2 joints, one kept
    ])
    fake = np.stack([
        _joints(list(range(8)) + [12], offset=1.0),  # joints 8, 9 lost; 12 extra (not counted)
        _joints([0, 1]),                              # extra joints where the real frame has none
        -np.ones((18, 2)),
        _joints([6, 7], offset=-2.0),
    ])
    mkr, akd = protocol.body_mkr_akd(real, fake)
    # MKR: 2/10; skipped; 4/4; 1/2.   AKD over joints in both: |dx| = 1, |dy| = 2 -> 1.5;
    # skipped (none shared); skipped; joint 6 only, |dx| = 2, |dy| = 4 -> 3.
    assert mkr.values[[0, 2, 3]] == pytest.approx([0.2, 1.0, 0.5]) and np.isnan(mkr.values[1])
    assert akd.values[[0, 3]] == pytest.approx([1.5, 3.0]) and np.isnan(akd.values[[1, 2]]).all()
    assert mkr.skipped == {protocol.NO_REAL_JOINT: 1}
    assert akd.skipped == {protocol.NO_SHARED_JOINT: 2}
    assert protocol.pooled([mkr])["value"] == pytest.approx((0.2 + 1.0 + 0.5) / 3)
    assert protocol.pooled([akd])["value"] == pytest.approx((1.5 + 3.0) / 2)


def test_aed_is_the_squared_distance_averaged_over_every_frame():
    real = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    fake = np.array([[1.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.5, 0.5, 0.5]])
    scores = protocol.aed(real, fake)  # sum of squared differences: 2, 4, 0
    assert scores.values == pytest.approx([2.0, 4.0, 0.0]) and scores.skipped == {}
    assert protocol.pooled([scores])["value"] == pytest.approx(2.0)
    assert protocol.aed(real, fake, squared=False).values == pytest.approx([np.sqrt(2), 2.0, 0.0])
    with_gap = protocol.aed(real, np.vstack([fake[:2], np.full(3, np.nan)]))
    assert with_gap.skipped == {protocol.NO_EMBEDDING: 1}


def test_backend_outputs_convert_to_the_scripts_values():
    keypoints = np.full((3, 18, 2), np.nan)
    keypoints[0, :5] = 7.0
    keypoints[1, 3] = [np.nan, 4.0]  # half a joint is no joint
    values = protocol.openpose_values(keypoints)
    assert (values[0, :5] == 7).all() and (values[0, 5:] == -1).all() and (values[1:] == -1).all()
    faces = protocol.face_values(np.stack([_face(), np.full((68, 2), np.nan)]))
    assert faces[1] is None and (faces[0] == _face()).all()


@pytest.fixture(scope="module")
def face_clip(shared_data):
    return read_frames(shared_data / "faces" / "fomm-demo" / "04.mp4", 0, 40)[::8]  # 5 frames, 256 px


def test_face_clip_against_itself_and_a_four_pixel_shift(face_clip):
    """dlib68 (offline stand-in for face-alignment): a clip against itself gives AKD and AED 0;
    shifted by 4 px right and down, the landmarks move by 4 px on both axes, so AKD is about 4."""
    pose = Dlib68Pose()
    itself = score_clip(face_clip, face_clip, pose=pose, identity="dlib-face", protocol="paper")
    assert itself["akd"].to_numpy() == pytest.approx(0.0) and itself["aed"].to_numpy() == pytest.approx(0.0)
    assert (itself["akd_skip"] == "").all() and itself["mkr_skip"].eq(
        "faces: pose-evaluation reports no MKR").all()
    shifted = np.zeros_like(face_clip)
    shifted[:, 4:, 4:] = face_clip[:, :-4, :-4]
    moved = score_clip(face_clip, shifted, pose=pose, protocol="paper")
    scored = moved["akd"].dropna()
    assert len(scored) == len(face_clip) - int((moved["akd_skip"] != "").sum())
    assert len(scored) >= 4 and scored.mean() == pytest.approx(4.0, abs=1.0)
    assert moved.attrs["pose_missing_fake"] == int((moved["akd_skip"] == protocol.NO_FAKE_FACE).sum())


def test_unknown_protocol_is_a_named_error(face_clip):
    from core.errors import UserError
    with pytest.raises(UserError, match=r"--protocol 'cvpr'.*\['paper', 'project'\]"):
        score_clip(face_clip[:1], face_clip[:1], protocol="cvpr")


def test_mediapipe_joints_reach_the_paper_tables_as_openpose_18_with_minus_one():
    """The offline body substitute: BlazePose's 33 joints -> OpenPose's 18; the neck is the
    shoulders' midpoint only where both shoulders were found, else -1 like any missing joint."""
    from metrics.backends.mediapipe_pose import to_openpose18
    blaze = np.arange(66, dtype=float).reshape(33, 2)
    one_shoulder = blaze.copy()
    one_shoulder[11] = np.nan  # left shoulder not visible
    joints = protocol.openpose_values(to_openpose18(np.stack([blaze, one_shoulder])))  # (2, 18, 2)
    np.testing.assert_array_equal(joints[0, 1], (blaze[11] + blaze[12]) / 2)
    assert (joints[1, 1] == -1).all() and (joints[1, 5] == -1).all()  # neck and left shoulder
    mkr, _ = protocol.body_mkr_akd(joints[:1], joints[1:])
    assert mkr.values[0] == pytest.approx(2 / 18)  # both lost joints count, out of 18 found in the real frame


def test_paper_protocol_scores_predictions_truncated_as_the_originals_pngs(tmp_path, monkeypatch):
    """The original reconstruction.py wrote `(255 * prediction).astype(uint8)` and
    pose-evaluation read those PNGs: under --protocol paper the benchmark's pose and identity
    backends see the predictions truncated; --protocol project rounds them."""
    import argparse

    import torch

    from core.config import config_to_dict
    from fomm.config import config_from_dict
    from fomm.api import MotionTransferModel
    from pipeline import sample
    from stages import benchmark as benchmark_stage

    class HalfGrey(MotionTransferModel):
        name = "fomm"

        def detect(self, frames):
            return {"value": torch.zeros(len(frames), 1, 2)}

        def generate(self, source, motion_source, motion_driving):
            return {"prediction": source * 0.5 + 0.25}  # the source frame, halved: fractions of 1/255

        def generator_losses(self, source, driving, kit):
            raise NotImplementedError

        def optimizer_groups(self):
            return {}

    data = tmp_path / "sample"
    for clip in sample.sample_clips(num_train=0, num_test=1, num_frames=3, size=64):
        assert sample.prepare_clip(clip, data)["status"] == "done"
    config = config_from_dict({}, ["model_params.name=fomm", "dataset_params.frame_shape=[64,64,3]"])
    checkpoint = tmp_path / "half.pt"
    torch.save({"config": config_to_dict(config)}, checkpoint)
    monkeypatch.setattr("fomm.registry.build_model", lambda config, name=None: HalfGrey())
    seen = {}
    scored = score_clip

    def recording(real, fake, **options):
        seen[options["protocol"]] = (real, fake)
        return scored(real, fake, **options)

    monkeypatch.setattr("metrics.evaluate.score_clip", recording)
    for chosen in protocol.PROTOCOLS:
        parser = argparse.ArgumentParser()
        benchmark_stage.add_arguments(parser)
        args = parser.parse_args(["--dataset", "sample", "--data", str(data), "--models", f"fomm={checkpoint}",
                                  "--out", str(tmp_path / chosen), "--protocol", chosen, "--bootstrap", "10"])
        benchmark_stage.run(benchmark_stage.options(args))
    real, truncated = seen["paper"]
    assert np.array_equal(seen["project"][0], real)
    source = torch.from_numpy(real[:1]).float().div(255)  # frame 0 drives nothing: it is the source
    prediction = (source * 0.5 + 0.25).expand(len(real), -1, -1, -1).numpy()  # the model's float32 output
    assert np.array_equal(truncated, (255 * prediction).astype(np.uint8))
    rounded = seen["project"][1]
    assert np.array_equal(rounded, (255 * prediction + 0.5).astype(np.uint8))
    assert (rounded.astype(int) - truncated).max() == 1 and (rounded != truncated).mean() > 0.3
