"""metrics/jitter.py against values computed by hand on synthetic trajectories and frames, and
the `jitter` and `flicker` entries of `pipeline run evaluate`'s summary.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import UserError
from metrics import jitter
from metrics.evaluate import score_clip


def track(xs, ys=None) -> np.ndarray:
    """(T, 1, 2) trajectory of one landmark."""
    xs = np.asarray(xs, np.float64)
    ys = np.zeros_like(xs) if ys is None else np.asarray(ys, np.float64)
    return np.stack([xs, ys], axis=-1)[:, None]


# --------------------------------------------------------------------------- acceleration error
def test_acceleration_error_by_hand():
    # reference x = t^2: acceleration 2 everywhere; generated: frame 2 off by one pixel
    reference = track([0, 1, 4, 9, 16])
    generated = track([0, 1, 5, 9, 16])
    # a_gen at t = 1, 2, 3: 5 - 2 + 0 = 3, 9 - 10 + 1 = 0, 16 - 18 + 5 = 3 -> |diff| 1, 2, 1
    scores = jitter.acceleration_error(reference, generated)
    np.testing.assert_allclose(scores.values[1:-1], [1.0, 2.0, 1.0], rtol=0, atol=1e-12)
    assert np.isnan(scores.values[[0, -1]]).all() and scores.reasons[0] == scores.reasons[-1] == jitter.CLIP_EDGE
    # an L2 norm per joint: 3 px in x and 4 px in y at frame 2 -> 5 there, 2.5 beside it
    diagonal = jitter.acceleration_error(track([0] * 5), track([0, 0, 3, 0, 0], [0, 0, 4, 0, 0]))
    np.testing.assert_allclose(diagonal.values[1:-1], [5.0, 10.0, 5.0], rtol=0, atol=1e-12)


def test_a_tremble_scores_four_times_its_amplitude_and_motion_scores_nothing():
    still = np.zeros((12, 2, 2))
    trembling = still.copy()
    trembling[:, 0, 0] = 0.25 * (-1.0) ** np.arange(12)    # joint 0 trembles by +-0.25 px in x
    scores = jitter.acceleration_error(still, trembling)
    np.testing.assert_allclose(scores.values[1:-1], 0.5, rtol=0, atol=1e-12)  # (4 * 0.25 + 0) / 2 joints
    t = np.arange(12.0)[:, None, None]
    moving = still + np.array([3.0, -1.0]) * t + np.array([[10.0, 20.0], [-5.0, 7.0]])  # constant velocity
    assert np.nanmax(jitter.acceleration_error(still, moving).values) == 0  # another place, no acceleration
    curve = still + 0.1 * t ** 2
    np.testing.assert_allclose(jitter.acceleration_error(curve, curve + 40.0).values[1:-1], 0, atol=1e-9)


def test_missing_landmarks_skip_the_frames_that_need_them():
    reference, generated = track(np.arange(8.0) ** 2), track(np.arange(8.0) ** 2)
    generated[4] = np.nan                                   # not found at frame 4: frames 3, 4, 5 undefined
    scores = jitter.acceleration_error(reference, generated)
    assert [t for t, r in enumerate(scores.reasons) if r == jitter.NO_LANDMARKS] == [3, 4, 5]
    assert scores.skipped == {jitter.CLIP_EDGE: 2, jitter.NO_LANDMARKS: 3}
    bodies = np.zeros((5, 2, 2))
    shaky = bodies.copy()
    shaky[:, 1, 1] = [0, 0, 1, 0, 0]
    shaky[2, 0] = np.nan                                    # joint 0 missing: joint 1 alone counts
    np.testing.assert_allclose(jitter.acceleration_error(bodies, shaky).values[1:-1], [1.0, 2.0, 1.0])
    with pytest.raises(UserError, match="expected the same"):
        jitter.acceleration_error(np.zeros((5, 68, 2)), np.zeros((5, 5, 2)))


# --------------------------------------------------------------------------- flicker
def frames_with_a_moving_square(count: int = 5, size: int = 32) -> np.ndarray:
    """Grey frames, static but for a 6 px white square moving 4 px right per frame."""
    video = np.full((count, size, size, 3), 100, np.uint8)
    for t in range(count):
        video[t, 10:16, 2 + 4 * t:8 + 4 * t] = 255
    return video


def test_flicker_by_hand():
    reference = frames_with_a_moving_square()
    scores = jitter.static_flicker(reference, reference)
    assert scores.reasons[0] == jitter.FIRST_FRAME and np.all(scores.values[1:] == 0)
    # the static region of frames 0 -> 1: all but the square's rows 10..15 and columns 2..11,
    # grown by the 2 px margin
    static = ~jitter._dilate(np.abs(reference[1].astype(int) - reference[0]).mean(-1) > jitter.STATIC_THRESHOLD,
                             jitter.STATIC_MARGIN)
    expected = np.ones((32, 32), bool)
    expected[8:18, 0:14] = False
    np.testing.assert_array_equal(static, expected)
    generated = reference.astype(int)
    generated[1::2] += 4                                    # every odd frame 4 levels brighter
    flicker = jitter.static_flicker(reference, generated.clip(0, 255).astype(np.uint8))
    # static pixels change by 4 (the reference's by 0); the square's 155-level change is left out
    np.testing.assert_allclose(flicker.values[1:], 4.0, rtol=0, atol=1e-9)


def test_flicker_subtracts_the_references_own_noise_and_skips_moving_frames():
    reference = np.full((4, 16, 16, 3), 100, np.uint8)
    reference[1::2] += 1                                    # the reference's own 1-level flicker (under tau)
    generated = reference.copy()
    generated[1::2] += 4                                    # |dG| = 5, |dR| = 1 -> 4
    np.testing.assert_allclose(jitter.static_flicker(reference, generated).values[1:], 4.0)
    moving = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert jitter.static_flicker(moving, moving).reasons[1:] == [jitter.NO_STATIC_PIXELS] * 2


# --------------------------------------------------------------------------- evaluate
class _FakeFaces:
    """A pose backend whose landmark is the brightest pixel's position (rows, columns)."""
    name, scheme, num_joints, paper_equivalent = "fake", "brightest", 1, False

    def detect(self, frames):
        flat = frames.astype(int).sum(-1).reshape(len(frames), -1).argmax(axis=1)
        rows, cols = np.divmod(flat, frames.shape[2])
        return np.stack([cols, rows], axis=-1)[:, None].astype(np.float64)


def test_score_clip_columns_and_the_evaluate_summary(tmp_path, monkeypatch):
    from core.media import VideoWriter
    from metrics import evaluate
    from stages import evaluate as evaluate_stage
    real = np.full((6, 256, 256, 3), 60, np.uint8)
    fake = real.copy()
    for t in range(6):
        real[t, 100:104, 40 + 8 * t:44 + 8 * t] = 255      # a spot moving at constant speed
        shift = 4 * (t % 2)                                 # the generated spot trembles by +-2 px
        fake[t, 100:104, 40 + 8 * t + shift:44 + 8 * t + shift] = 255
    table = score_clip(real, fake, pose=_FakeFaces())
    np.testing.assert_allclose(table["jitter"].to_numpy()[1:-1], 8.0)  # 4 x 2 px
    assert table["jitter_skip"].iloc[0] == jitter.CLIP_EDGE and table["flicker_skip"].iloc[0] == jitter.FIRST_FRAME
    # frames 0 -> 1: the real spot moves over columns 32..43 (30..45 with the margin, rows 98..105),
    # the generated one lands on 52..55: 2 columns x 4 rows of it change by 195 levels outside
    # the moving region, over 256^2 - 8 * 16 static pixels; on even frames it stays inside
    step = 8 * 195 / (256 ** 2 - 8 * 16)
    np.testing.assert_allclose(table["flicker"].to_numpy()[1:], [step, 0, step, 0, step], rtol=1e-12, atol=1e-12)
    for name, video in (("real", real), ("fake", fake)):
        with VideoWriter(tmp_path / f"{name}.mp4", 25, crf=0) as writer:  # lossless
            writer.write_all(video)
    monkeypatch.setattr(evaluate, "_backend", lambda kind, name, default: _FakeFaces() if kind == "pose" else None)
    from stages.cli import build_parser
    args = build_parser("evaluate").parse_args(["run", "evaluate", "--real", str(tmp_path / "real.mp4"), "--generated",
                                                str(tmp_path / "fake.mp4"), "--out", str(tmp_path / "out"),
                                                "--identity", "none"])
    evaluate_stage.run(evaluate_stage.options(args))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["jitter"] == pytest.approx(8.0, abs=0.5)  # yuv420p blurs the spot's colour, not its place
    assert summary["frames"]["jitter"] == {"frames": 6, "scored": 4, "skipped": {jitter.CLIP_EDGE: 2}}
    assert summary["frames"]["flicker"] == {"frames": 6, "scored": 5, "skipped": {jitter.FIRST_FRAME: 1}}
    assert summary["flicker"] == pytest.approx(3 * step / 5, abs=0.05)
