"""AED (REFERENCE §2) with dlib's 128-d face descriptor on the real face clips."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import UserError
from core.media import iter_frames
from metrics.backends import get_identity_backend
from metrics.evaluate import resize_frames, score_clip
from metrics.identity import aed, pairwise

NAN = np.nan


def person(path) -> str:
    """The person in a clip: 10-backward.mp4 is 10.mp4 played backwards (measured distance 0.06)."""
    return path.stem.removesuffix("-backward") if path.parent.name == "fomm-demo" else path.stem


@pytest.fixture(scope="module")
def embeddings(shared_data):
    """{clip: (N, 128)} descriptors of every 30th frame of every face clip, frames at 256."""
    backend = get_identity_backend("dlib-face")
    clips = sorted((shared_data / "faces").rglob("*.mp4"))
    assert len(clips) >= 10, clips
    out = {}
    for path in clips:
        frames = resize_frames(np.stack([f for i, f in enumerate(iter_frames(path)) if i % 30 == 0]))
        out[path] = backend.embed(frames)
        assert np.isfinite(out[path]).all(), f"dlib found no face in a frame of {path}"
    return out


def test_aed_on_a_hand_built_case():
    real = np.array([[0.0, 0.0], [1.0, 1.0], [NAN, NAN]])
    fake = np.array([[3.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(aed(real, fake), [5.0, 0.0, NAN])
    np.testing.assert_allclose(aed(real, fake, squared=True), [25.0, 0.0, NAN])  # the original script's
    with pytest.raises(UserError, match=r"\(3, 2\).*\(2, 2\)"):
        aed(real, fake[:2])


def test_same_person_pairs_are_closer_than_different_person_pairs(embeddings):
    clips = list(embeddings)
    same, different = [], []
    for i, a in enumerate(clips):
        for b in clips[i:]:
            distances = pairwise(embeddings[a], embeddings[b])
            if a == b:
                same.append(distances[np.triu_indices(len(distances), 1)])
            elif person(a) == person(b):
                same.append(distances.ravel())
            else:
                different.append(distances.ravel())
    same, different = np.concatenate(same), np.concatenate(different)
    overlap = int((different <= same.max()).sum())
    auc = float((same[:, None] < different[None, :]).mean())
    print(f"AED dlib-128: same-person pairs {len(same)} (mean {same.mean():.3f}, max {same.max():.3f}); "
          f"different-person pairs {len(different)} (mean {different.mean():.3f}, min {different.min():.3f}); "
          f"different pairs closer than the farthest same pair: {overlap}; P(same < different) = {auc:.4f}")
    assert same.mean() < different.mean()
    assert auc > 0.99
    assert overlap <= 0.01 * len(different)


def test_each_clip_is_nearest_to_its_own_person(embeddings):
    clips = list(embeddings)
    for a in clips:
        own = np.median(pairwise(embeddings[a], embeddings[a]))
        others = [np.median(pairwise(embeddings[a], embeddings[b])) for b in clips if person(b) != person(a)]
        assert own < min(others), (a.name, own, min(others))


def test_squared_variant_is_the_square_and_self_is_zero(shared_data):
    frames = resize_frames(np.stack([f for i, f in enumerate(iter_frames(
        shared_data / "faces/liveportrait/d11.mp4")) if i % 100 == 0]))  # (3, 256, 256, 3)
    backend = get_identity_backend("dlib-face")
    real_embeddings = backend.embed(frames)
    itself = score_clip(frames, frames, identity=backend)
    np.testing.assert_array_equal(itself["aed"], 0.0)
    assert itself.attrs["identity_scheme"] == "dlib-128" and itself.attrs["aed_distance"] == "l2"
    later = frames[::-1].copy()
    squared = score_clip(frames, later, identity=backend, aed_squared=True, real_embeddings=real_embeddings)
    plain = aed(real_embeddings, real_embeddings[::-1])
    np.testing.assert_allclose(squared["aed"], plain ** 2, rtol=1e-12)
    assert squared.attrs["aed_distance"] == "squared-l2"
    assert plain[0] > 0 and plain[1] == 0
