"""lwlrap: label-weighted label-ranking average precision, FAT2019's metric.

Definition (D. Ellis, for the competition): for every positive (clip, label) pair, rank the clip's
labels by descending score; the pair's precision is the number of the clip's positive labels
ranked at or above that label, divided by that label's rank. lwlrap is the mean over all positive
pairs, which equals the mean of per-class scores weighted by each class's share of positive pairs.
Clips without positive labels contribute nothing.

Ties are broken the way ``../shared/bench/score.py`` (and ``np.argsort(kind="stable")[::-1]``)
breaks them: among equal scores the later column ranks first.
"""

from __future__ import annotations

import numpy as np


def _pair_precisions(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every positive pair: its class index and its precision. Inputs ``(n_clips, n_classes)``."""
    truth = np.asarray(truth) > 0
    scores = np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape or truth.ndim != 2:
        raise ValueError(f"truth {truth.shape} and scores {scores.shape} must be the same (n_clips, n_classes) shape")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    order = np.argsort(scores, axis=1, kind="stable")[:, ::-1]  # best first
    hits = np.take_along_axis(truth, order, axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, truth.shape[1] + 1)
    return order[hits], precision[hits]


def lwlrap(truth: np.ndarray, scores: np.ndarray) -> float:
    """Label-weighted LRAP of ``scores`` against binary ``truth``, both ``(n_clips, n_classes)``."""
    _, precisions = _pair_precisions(truth, scores)
    return float(precisions.mean()) if len(precisions) else float("nan")


def per_class_lwlrap(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each class's lwlrap and its weight (share of positive pairs); ``(scores * weights).sum() == lwlrap``.

    Classes without positives get NaN and weight 0.
    """
    classes, precisions = _pair_precisions(truth, scores)
    n_classes = np.asarray(truth).shape[1]
    positives = np.bincount(classes, minlength=n_classes)
    sums = np.bincount(classes, weights=precisions, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(positives > 0, sums / positives, np.nan)
    return per_class, positives / max(positives.sum(), 1)
