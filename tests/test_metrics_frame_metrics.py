"""L1, SSIM, PSNR and LPIPS per frame on real face clips (REFERENCE §2)."""
from __future__ import annotations

import functools
import sys

import numpy as np
import pytest

from core.errors import UserError
from core.media import read_frames
from metrics import frame_metrics
from metrics.backends import BackendUnavailable
from metrics.evaluate import score_clip


@pytest.fixture(scope="module")
def clips(shared_data):
    """Two different real clips, 6 frames each, 256x256."""
    first = read_frames(shared_data / "faces/fomm-demo/04.mp4", 0, 6)
    second = read_frames(shared_data / "faces/fomm-demo/00.mp4", 0, 6)
    return first, second


def test_l1_is_identical_to_a_direct_computation(clips):
    real, fake = clips
    direct = np.array([np.mean(np.abs(r / 255.0 - f / 255.0)) for r, f in zip(real, fake)])
    np.testing.assert_allclose(frame_metrics.l1(real, fake), direct, rtol=1e-12, atol=0)
    assert np.all(direct > 0.02)  # different people: a real difference, not a degenerate zero
    np.testing.assert_array_equal(frame_metrics.l1(real, real), np.zeros(len(real)))


def test_l1_is_symmetric_and_in_unit_range():
    black = np.zeros((2, 8, 8, 3), np.uint8)
    white = np.full((2, 8, 8, 3), 255, np.uint8)
    np.testing.assert_array_equal(frame_metrics.l1(black, white), [1.0, 1.0])
    half = np.full((1, 8, 8, 3), 51, np.uint8)
    np.testing.assert_allclose(frame_metrics.l1(black[:1], half), [0.2])
    np.testing.assert_allclose(frame_metrics.l1(half, black[:1]), [0.2])


def test_psnr_matches_its_formula_and_is_inf_for_identical_frames(clips):
    real, fake = clips
    mse = ((real.astype(np.float64) - fake) ** 2).reshape(len(real), -1).mean(axis=1)
    np.testing.assert_allclose(frame_metrics.psnr(real, fake), 10 * np.log10(255.0 ** 2 / mse), rtol=1e-10)
    assert np.all(np.isposinf(frame_metrics.psnr(real, real)))


def test_ssim_is_one_for_identical_frames_and_falls_with_noise(clips):
    real = clips[0][:2]
    np.testing.assert_allclose(frame_metrics.ssim(real, real), 1.0)
    np.testing.assert_allclose(frame_metrics.ssim(real, real, gaussian_weights=True), 1.0)
    rng = np.random.default_rng(0)
    previous = np.ones(len(real))
    for sigma in (5, 20, 60):
        noisy = np.clip(real + rng.normal(0, sigma, real.shape), 0, 255).astype(np.uint8)
        score = frame_metrics.ssim(real, noisy)
        assert np.all(score < previous), (sigma, score, previous)
        previous = score


def test_bad_inputs_name_the_shapes_and_dtypes(clips):
    real = clips[0]
    with pytest.raises(UserError, match=r"\(5, 256, 256, 3\).*\(6, 256, 256, 3\)"):
        frame_metrics.l1(real, real[:5])
    with pytest.raises(UserError, match="empty clips"):
        frame_metrics.l1(real[:0], real[:0])
    with pytest.raises(UserError, match="float32"):
        frame_metrics.ssim(real.astype(np.float32), real.astype(np.float32))


def test_lpips_absent_raises_install_hint_at_construction(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError, as when not installed
    with pytest.raises(BackendUnavailable, match=r"pip install 'motion-transfer\[lpips\]'"):
        frame_metrics.LPIPS()


def test_score_clip_reports_lpips_status_instead_of_crashing(clips, monkeypatch):
    """Where lpips cannot load (made so here, whatever this machine has), the column is NaN
    and the status says what to install; nothing raises."""
    real, fake = clips
    monkeypatch.setitem(sys.modules, "lpips", None)
    monkeypatch.setattr(frame_metrics, "_LPIPS_FAILURES", {})
    frame_metrics._load_lpips.cache_clear()
    table = score_clip(real, fake, lpips=True)
    status = table.attrs["lpips_status"]
    assert status.startswith("unavailable") and "pip install 'motion-transfer[lpips]'" in status
    assert table["lpips"].isna().all() and table["l1"].notna().all()
    assert frame_metrics.lpips_status() == status  # the failure is remembered, not retried
    frame_metrics._load_lpips.cache_clear()


def _ssim_by_hand(real: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """SSIM per frame from its formula (Wang et al. 2004) with a 7x7 mean window, sample
    covariances and C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = 255, averaged over RGB and over the
    pixels whose window lies inside the frame."""
    from scipy.ndimage import uniform_filter
    c1, c2, pad, n = (0.01 * 255) ** 2, (0.03 * 255) ** 2, 3, 49
    mean = functools.partial(uniform_filter, size=7)  # over each pixel's 7x7 window
    scores = []
    for r, f in zip(real.astype(np.float64), fake.astype(np.float64)):
        per_channel = []
        for x, y in zip(np.moveaxis(r, -1, 0), np.moveaxis(f, -1, 0)):
            mx, my = mean(x), mean(y)
            vx, vy, cxy = ((mean(a * b) - ma * mb) * n / (n - 1) for a, b, ma, mb in
                           ((x, x, mx, mx), (y, y, my, my), (x, y, mx, my)))
            ssim = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
            per_channel.append(ssim[pad:-pad, pad:-pad].mean())
        scores.append(np.mean(per_channel))
    return np.array(scores)


def test_score_clip_rows_are_the_metrics_computed_by_hand(clips):
    """Each column against its formula computed here on two different real faces (not
    against the functions score_clip calls)."""
    real, fake = clips
    table = score_clip(real, fake)
    assert list(table["frame"]) == list(range(len(real)))
    difference = real.astype(np.float64) - fake  # (T, H, W, 3)
    np.testing.assert_allclose(table["l1"], np.abs(difference).mean(axis=(1, 2, 3)) / 255, rtol=1e-12)
    mse = (difference ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(table["psnr"], 10 * np.log10(255.0 ** 2 / mse), rtol=1e-10)
    np.testing.assert_allclose(table["ssim"], _ssim_by_hand(real, fake), rtol=1e-6)
    assert (table["ssim"] < 0.9).all()  # two people: far from identical
    assert table[["akd", "mkr", "aed"]].isna().all().all()  # no backend given: NaN, not zero
    assert "lpips" not in table


def test_score_clip_takes_the_protocols_l1_when_given(clips):
    """The benchmark passes L1 of the model's float output (fomm.reconstruction): the column
    holds it as given."""
    real, fake = clips
    given = np.linspace(0.1, 0.2, len(real))
    table = score_clip(real, fake, l1=given)
    np.testing.assert_array_equal(table["l1"], given)
