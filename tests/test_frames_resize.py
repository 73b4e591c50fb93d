"""core.frames.resize: each named filter is what its docstring says, on real frames."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import correlate1d

from core.frames import resize, to_uint8
from core.media import read_frames


@pytest.fixture(scope="module")
def frames(shared_data) -> np.ndarray:
    """Two real 512x512 face frames."""
    return read_frames(shared_data / "faces/liveportrait/d12.mp4", 0, 2)


def test_bilinear_halving_is_the_antialiased_triangle_filter(frames):
    """Anti-aliased bilinear at a factor of 2 is the triangle filter stretched by 2: taps
    [1, 3, 3, 1] / 8 at stride 2 (away from the border, where torch renormalises)."""
    image = frames.astype(np.float32) / 255
    half = resize(image, (256, 256))  # (2, 256, 256, 3)
    taps = np.array([1, 3, 3, 1], np.float64) / 8
    # output pixel j covers input pixels 2j-1 .. 2j+2 (origin -1 puts the taps there), every other j
    expected = correlate1d(correlate1d(image.astype(np.float64), taps, axis=1, origin=-1), taps, axis=2, origin=-1)
    expected = expected[:, ::2, ::2]
    inner = (slice(None), slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(half[inner], expected[inner], atol=2e-6)
    assert half.dtype == np.float32
    np.testing.assert_array_equal(resize(frames, (256, 256)), to_uint8(half))  # uint8: the same, rounded


def test_bicubic_reduced_is_bicubic_under_a_4x_reduction_only(frames):
    bicubic, reduced = resize(frames, (256, 256), "bicubic"), resize(frames, (256, 256), "bicubic-reduced")
    np.testing.assert_array_equal(bicubic, reduced)  # 2x: no box step
    small = resize(frames, (64, 64), "bicubic").astype(int) - resize(frames, (64, 64), "bicubic-reduced")
    assert 0 < np.abs(small).max() <= 8  # 8x: a 4x box step first, a few levels apart
    assert resize(frames[0], (64, 64), "bicubic").shape == (64, 64, 3)  # one frame in, one out


def test_same_size_is_unchanged_and_bad_requests_are_named(frames):
    np.testing.assert_array_equal(resize(frames, (512, 512)), frames)
    with pytest.raises(ValueError, match="filter 'nearest'"):
        resize(frames, (64, 64), "nearest")
    with pytest.raises(ValueError, match="takes uint8 frames, got float32"):
        resize(frames.astype(np.float32) / 255, (64, 64), "bicubic")
