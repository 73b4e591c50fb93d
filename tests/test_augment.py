"""fomm/augment.py: the flip rule of the original's RandomFlip (first-order-model augmentation.py)."""
from __future__ import annotations

import numpy as np

from core.config import FlipParams
from fomm.augment import random_flip

TRIALS = 4000


def _outcomes(params: FlipParams) -> dict[str, int]:
    """How often 4000 clips come out unchanged, time-flipped, mirrored, or both."""
    clip = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1)  # no flip maps it to itself
    variants = {"none": clip, "time": clip[::-1], "mirror": clip[:, :, ::-1], "both": clip[::-1, :, ::-1]}
    counts = dict.fromkeys(variants, 0)
    for seed in range(TRIALS):
        out = random_flip(clip, params, np.random.default_rng(seed))
        counts[next(name for name, v in variants.items() if np.array_equal(out, v))] += 1
    return counts


def test_a_time_flip_is_never_mirrored_too():
    counts = _outcomes(FlipParams(horizontal_flip=True, time_flip=True))
    assert counts["both"] == 0
    # 1/2, 1/4, 1/4: four binomial standard deviations are about 0.03 at 4000 trials
    assert abs(counts["time"] / TRIALS - 0.5) < 0.04
    assert abs(counts["mirror"] / TRIALS - 0.25) < 0.04
    assert abs(counts["none"] / TRIALS - 0.25) < 0.04


def test_each_flip_alone_happens_half_the_time():
    mirror = _outcomes(FlipParams(horizontal_flip=True))
    assert mirror["time"] == mirror["both"] == 0 and abs(mirror["mirror"] / TRIALS - 0.5) < 0.04
    time = _outcomes(FlipParams(time_flip=True))
    assert time["mirror"] == time["both"] == 0 and abs(time["time"] / TRIALS - 0.5) < 0.04
    assert _outcomes(FlipParams()) == {"none": TRIALS, "time": 0, "mirror": 0, "both": 0}
