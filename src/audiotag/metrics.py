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
    return order[hits], precision[hits]  # row-major: the pairs of clip 0 first, then clip 1, ...


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


def lwlrap_by_label_count(truth: np.ndarray, scores: np.ndarray) -> list[dict]:
    """lwlrap of the positive pairs of the clips with 1, 2, 3, ... labels: a row per count present,
    ``{"labels", "clips", "lwlrap", "weight"}``; ``sum(lwlrap * weight) == lwlrap(truth, scores)``.

    Clips with several sounds are where a tagger misses the quieter ones; this shows how much."""
    _, precisions = _pair_precisions(truth, scores)
    counts = (np.asarray(truth) > 0).sum(1)
    pair_counts = np.repeat(counts, counts)  # each pair's clip's label count, in _pair_precisions' order
    return [{"labels": int(k), "clips": int((counts == k).sum()), "lwlrap": float(precisions[pair_counts == k].mean()),
             "weight": float((pair_counts == k).mean())} for k in np.unique(counts[counts > 0])]
