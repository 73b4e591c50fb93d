"""AKD and MKR as REFERENCE §2 defines them: hand-built cases and real face clips."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import UserError
from core.media import iter_frames
from metrics.backends import get_pose_backend
from metrics.evaluate import score_clip
from metrics.keypoints import akd, found, mkr, scale_to

NAN = np.nan


def shift(frames: np.ndarray, k: int) -> np.ndarray:
    """Move the content k pixels right and k down (edge padding, then crop to the same size)."""
    height, width = frames.shape[1:3]
    return np.pad(frames, ((0, 0), (k, 0), (k, 0), (0, 0)), mode="edge")[:, :height, :width]


def every(path, step: int) -> np.ndarray:
    return np.stack([frame for index, frame in enumerate(iter_frames(path)) if index % step == 0])


@pytest.fixture(scope="module")
def dlib68():
    return get_pose_backend("dlib68")


def test_mkr_on_a_hand_built_case():
    real = np.array([[[1, 1], [2, 2], [3, 3], [NAN, NAN]],     # frame 0: joints 0-2 found
                     [[1, 1], [NAN, NAN], [NAN, NAN], [4, 4]],  # frame 1: joints 0, 3 found
                     [[NAN, NAN]] * 4])                         # frame 2: nothing found
    fake = np.array([[[1, 1], [NAN, NAN], [3, 3], [4, 4]],     # lost joint 1 of 3; extra joint 3 ignored
                     [[NAN, NAN], [2, 2], [3, 3], [NAN, 4]],    # lost both (half-NaN counts as missing)
                     [[1, 1]] * 4])
    np.testing.assert_allclose(mkr(real, fake), [1 / 3, 1.0, NAN])
    np.testing.assert_array_equal(found(fake)[1], [False, True, True, False])


def test_akd_counts_only_joints_found_in_both():
    real = np.array([[[0, 0], [10, 10], [NAN, NAN], [5, 5]],
                     [[0, 0], [NAN, NAN], [NAN, NAN], [NAN, NAN]]])
    fake = np.array([[[3, 1], [10, 14], [0, 0], [NAN, NAN]],
                     [[NAN, NAN], [1, 1], [1, 1], [1, 1]]])
    # frame 0: joints 0 and 1 in both; |dx|,|dy| = (3, 1) and (0, 4) -> mean of 3, 1, 0, 4 = 2
    np.testing.assert_allclose(akd(real, fake), [2.0, NAN])
    # euclidean: sqrt(10) and 4
    np.testing.assert_allclose(akd(real, fake, distance="euclidean"), [(np.sqrt(10) + 4) / 2, NAN])
    with pytest.raises(UserError, match="'manhattan'"):
        akd(real, fake, distance="manhattan")
    with pytest.raises(UserError, match=r"\(2, 4, 2\).*\(1, 4, 2\)"):
        akd(real, fake[:1])


def test_scale_to_256():
    points = np.array([[[512.0, 256.0]]])
    np.testing.assert_allclose(scale_to(points, (512, 1024)), [[[128.0, 128.0]]])


def test_akd_is_zero_against_itself_and_about_k_against_a_shift(shared_data, dlib68):
    real = every(shared_data / "faces/fomm-demo/04.mp4", 15)  # (15, 256, 256, 3)
    keypoints = dlib68.detect(real)
    assert found(keypoints).all()
    same = score_clip(real, real, pose=dlib68, real_keypoints=keypoints)
    np.testing.assert_array_equal(same["akd"], 0.0)
    np.testing.assert_array_equal(same["mkr"], 0.0)
    measured = {}
    for k in (2, 4, 8, 16):
        table = score_clip(real, shift(real, k), pose=dlib68, real_keypoints=keypoints)
        assert table.attrs["pose_missing_fake"] == 0
        measured[k] = float(table["akd"].mean())
    print("AKD of 04.mp4 against itself shifted by k px:", {k: round(v, 2) for k, v in measured.items()})
    for k, value in measured.items():
        assert abs(value - k) < 0.1 * k + 0.5, (k, value)


def test_akd_is_in_pixels_at_256(shared_data, dlib68):
    """A 512x512 clip shifted by 8 px is 4 px at 256x256."""
    real = every(shared_data / "faces/liveportrait/d12.mp4", 30)  # (7, 512, 512, 3)
    assert real.shape[1:3] == (512, 512)
    table = score_clip(real, shift(real, 8), pose=dlib68)
    assert table.attrs["pose_scheme"] == "dlib-68"
    assert abs(table["akd"].mean() - 4.0) < 0.9, table["akd"].mean()


def test_missing_face_gives_nan_akd_and_full_mkr(shared_data, dlib68):
    real = every(shared_data / "faces/fomm-demo/08.mp4", 50)  # (3, 256, 256, 3)
    fake = real.copy()
    fake[1] = 128  # a generated frame with no face in it
    table = score_clip(real, fake, pose=dlib68)
    assert np.isnan(table["akd"][1]) and table["mkr"][1] == 1.0
    assert table["joints_fake"].tolist() == [68, 0, 68]
    assert table.attrs["pose_missing_fake"] == 1 and table.attrs["pose_missing_real"] == 0
    assert table["akd"][[0, 2]].eq(0).all()
