"""Detection scores as DeepfakeBench reports them (REFERENCE §10): ROC AUC, average precision,
equal error rate and accuracy at a threshold, with seeded bootstrap 95 % intervals.

Labels are 1 for generated, 0 for real; a score is the probability of "generated". Video-level
numbers score one value per video (the mean of its frames' probabilities, FaceForensics++'s
aggregation); frame-level numbers score every frame. Either way the bootstrap resamples whole
videos, within each class (frames of one video are not independent, and a resample must hold
both classes for an AUC to exist).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("auc", "ap", "eer", "accuracy")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a generated item > score of a real one), ties counted half (Mann-Whitney U)."""
    from scipy.stats import rankdata
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Sum over distinct thresholds (high to low) of precision x the recall gained there."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    if labels.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    labels, scores = labels[order], scores[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]   # end of each tie group
    true_positives = np.cumsum(labels)[last]
    precision = true_positives / (last + 1)
    recall_gain = np.diff(np.r_[0, true_positives]) / labels.sum()
    return float((precision * recall_gain).sum())


def roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates, thresholds) from the highest threshold down."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    order = np.argsort(-scores, kind="stable")
    labels, scores = labels[order], scores[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tpr = np.r_[0, np.cumsum(labels)[last] / max(labels.sum(), 1)]
    fpr = np.r_[0, np.cumsum(~labels)[last] / max((~labels).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, scores[last]]


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """The rate where false positives equal misses, interpolated on the ROC curve."""
    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return float("nan")
    fpr, tpr, _ = roc(labels, scores)
    fnr = 1 - tpr
    crossing = int(np.flatnonzero(fnr <= fpr)[0])
    if crossing == 0:
        return float(fpr[0])
    # between points crossing - 1 and crossing, fnr - fpr changes sign
    a, b = fnr[crossing - 1] - fpr[crossing - 1], fnr[crossing] - fpr[crossing]
    t = a / (a - b)
    return float(fpr[crossing - 1] + t * (fpr[crossing] - fpr[crossing - 1]))


def accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    return float(np.mean((scores >= threshold) == labels)) if len(labels) else float("nan")


def all_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    return {"auc": auc(labels, scores), "ap": average_precision(labels, scores),
            "eer": equal_error_rate(labels, scores), "accuracy": accuracy(labels, scores, threshold)}


@dataclass(frozen=True)
class Scored:
    """Frame probabilities of a set of videos: a label per video and an array of its frames'
    scores; the video's score is their mean."""
    labels: np.ndarray          # (V,) 1 generated, 0 real
    frame_scores: list[np.ndarray]

    @property
    def video_scores(self) -> np.ndarray:
        return np.array([scores.mean() for scores in self.frame_scores])

    def frames(self, picks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(labels, scores) of every frame of the videos `picks` (all when None)."""
        picks = np.arange(len(self.labels)) if picks is None else picks
        labels = np.concatenate([np.full(len(self.frame_scores[i]), self.labels[i]) for i in picks])
        return labels, np.concatenate([self.frame_scores[i] for i in picks])


def report(scored: Scored, threshold: float, resamples: int = 1000, seed: int = 0) -> dict:
    """Video- and frame-level metrics, each with its bootstrap 95 % interval, and the counts."""
    labels = np.asarray(scored.labels, int)
    videos = scored.video_scores
    out = {"videos": {"generated": int(labels.sum()), "real": int((labels == 0).sum())},
           "frames": int(sum(len(s) for s in scored.frame_scores)), "threshold": threshold}
    out["video"] = all_metrics(labels, videos, threshold)
    out["frame"] = all_metrics(*scored.frames(), threshold)
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    samples: dict[str, list[list[float]]] = {"video": [], "frame": []}
    if len(positives) and len(negatives):
        for _ in range(resamples):
            picks = np.r_[rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))]
            samples["video"].append(list(all_metrics(labels[picks], videos[picks], threshold).values()))
            samples["frame"].append(list(all_metrics(*scored.frames(picks), threshold).values()))
    for level in ("video", "frame"):
        values = np.array(samples[level]) if samples[level] else np.full((1, len(METRICS)), np.nan)
        for index, metric in enumerate(METRICS):
            column = values[:, index]
            column = column[np.isfinite(column)]
            low, high = np.percentile(column, [2.5, 97.5]) if len(column) else (np.nan, np.nan)
            out[level][f"{metric}_ci"] = [float(low), float(high)]
    return out


def chance_auc_tail(auc_value: float, positives: int, negatives: int) -> float:
    """P(AUC >= auc_value) for a scorer that knows nothing (labels exchangeable), by the
    normal approximation to the Mann-Whitney U with its exact variance."""
    from math import erfc, sqrt
    if positives == 0 or negatives == 0:
        return float("nan")
    sigma = sqrt((positives + negatives + 1) / (12 * positives * negatives))
    return 0.5 * erfc((auc_value - 0.5) / (sigma * sqrt(2)))
