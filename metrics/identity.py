"""AED (REFERENCE §2): distance between identity embeddings of real and generated frames.

The paper reports "average Euclidean distance"; the original evaluation script, however, sums
squared differences (squared L2). Both are offered: `squared=False` (default, the name's
meaning) and `squared=True` (the original script's number). Scale matters too: the
embedding space (the backend's scheme) must be named beside every AED.
"""
from __future__ import annotations

import numpy as np

from core.errors import UserError


def _check(emb_real: np.ndarray, emb_fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    emb_real, emb_fake = np.asarray(emb_real, dtype=np.float64), np.asarray(emb_fake, dtype=np.float64)
    if emb_real.shape != emb_fake.shape or emb_real.ndim != 2:
        raise UserError(f"embeddings of shapes {emb_real.shape} and {emb_fake.shape}; expected the same (T, D)")
    return emb_real, emb_fake


def aed(emb_real: np.ndarray, emb_fake: np.ndarray, squared: bool = False) -> np.ndarray:
    """Per-frame distance ||e_real - e_fake||_2 (or its square), (T,); NaN where either is missing."""
    emb_real, emb_fake = _check(emb_real, emb_fake)
    squared_distance = ((emb_real - emb_fake) ** 2).sum(axis=1)  # NaN propagates from missing rows
    return squared_distance if squared else np.sqrt(squared_distance)


def pairwise(emb_a: np.ndarray, emb_b: np.ndarray, squared: bool = False) -> np.ndarray:
    """All distances between rows of emb_a (N, D) and emb_b (M, D), (N, M)."""
    emb_a, emb_b = np.asarray(emb_a, dtype=np.float64), np.asarray(emb_b, dtype=np.float64)
    if emb_a.ndim != 2 or emb_b.ndim != 2 or emb_a.shape[1] != emb_b.shape[1]:
        raise UserError(f"embeddings of shapes {emb_a.shape} and {emb_b.shape}; expected (N, D) and (M, D)")
    squared_distance = ((emb_a[:, None, :] - emb_b[None, :, :]) ** 2).sum(axis=-1)
    return squared_distance if squared else np.sqrt(squared_distance)
