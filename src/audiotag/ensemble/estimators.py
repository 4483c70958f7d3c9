"""Blending several models' predictions: plain means, fitted weights, greedy selection, stacking.

Every blender follows the scikit-learn estimator contract: ``__init__`` only stores parameters,
``fit(X, y)`` returns ``self`` with learned state in attributes ending in ``_``, and
``predict_proba(X)`` returns ``(n_clips, n_classes)``. ``X`` is ``(n_clips, n_models, n_classes)``
probabilities, so that rows are clips as scikit-learn expects and folds index the first axis.

A blender fitted on out-of-fold predictions must be scored on clips it was not fitted on, or its
score is optimistic; :func:`nested_oof` does that with the level-1 folds.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from ..metrics import lwlrap

_EPS = 1e-6


def as_stack(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3:
        raise ValueError(f"X must be (n_clips, n_models, n_classes), got shape {X.shape}")
    return X


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def weighted_mean(X: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.einsum("nmk,m->nk", X, weights / weights.sum())


class MeanBlend(BaseEstimator, ClassifierMixin):
    """Unfitted average of the members: ``arithmetic``, ``geometric`` or ``rank``.

    ``rank`` averages each model's ranks of the classes *within a clip* (scaled to 0..1): lwlrap
    ranks classes within a clip, and a clip's ranks do not depend on which other clips are predicted.
    """

    def __init__(self, kind: str = "arithmetic"):
        self.kind = kind

    def fit(self, X, y=None):
        if self.kind not in ("arithmetic", "geometric", "rank"):
            raise ValueError(f"kind must be arithmetic, geometric or rank, not {self.kind!r}")
        self.n_models_ = as_stack(X).shape[1]
        return self

    def predict_proba(self, X):
        X = as_stack(X)
        if self.kind == "geometric":
            return np.exp(np.log(np.clip(X, _EPS, 1.0)).mean(axis=1))
        if self.kind == "rank":
            ranks = np.argsort(np.argsort(X, axis=2, kind="stable"), axis=2, kind="stable")
            return ranks.mean(axis=1) / max(X.shape[2] - 1, 1)
        return X.mean(axis=1)


class WeightedBlend(BaseEstimator, ClassifierMixin):
    """A weighted arithmetic mean whose non-negative weights maximise lwlrap on the fitting clips.

    lwlrap is piecewise constant in the weights, so gradients are useless; a coordinate search
    scales one weight at a time by each of ``factors`` and keeps any change that helps.
    """

    def __init__(self, factors: tuple[float, ...] = (0.0, 0.5, 0.8, 1.25, 2.0), max_rounds: int = 20):
        self.factors = factors
        self.max_rounds = max_rounds

    def fit(self, X, y):
        X, y = as_stack(X), np.asarray(y)
        weights = np.ones(X.shape[1])
        best = lwlrap(y, weighted_mean(X, weights))
        for _ in range(self.max_rounds):
            improved = False
            for m in range(X.shape[1]):
                for factor in self.factors:
                    trial = weights.copy()
                    trial[m] *= factor
                    if trial.sum() <= 0:
                        continue
                    score = lwlrap(y, weighted_mean(X, trial))
                    if score > best + 1e-9:
                        best, weights, improved = score, trial, True
            if not improved:
                break
        self.weights_ = weights / weights.sum()
        self.fit_score_ = best
        return self

    def predict_proba(self, X):
        return weighted_mean(as_stack(X), self.weights_)


class CaruanaBlend(BaseEstimator, ClassifierMixin):
    """Greedy forward selection with replacement (Caruana et al., 2004): repeatedly add the member
    whose inclusion most improves lwlrap of the running mean; weights are how often each was added."""

    def __init__(self, n_iter: int = 25, n_init: int = 1):
        self.n_iter = n_iter
        self.n_init = n_init

    def fit(self, X, y):
        X, y = as_stack(X), np.asarray(y)
        singles = [lwlrap(y, X[:, m]) for m in range(X.shape[1])]
        counts = np.zeros(X.shape[1])
        for m in np.argsort(singles)[::-1][: self.n_init]:  # start from the best members
            counts[m] += 1
        best = lwlrap(y, weighted_mean(X, counts))
        for _ in range(self.n_iter):
            scores = []
            for m in range(X.shape[1]):
                trial = counts.copy()
                trial[m] += 1
                scores.append(lwlrap(y, weighted_mean(X, trial)))
            m = int(np.argmax(scores))
            counts[m] += 1  # with replacement, even when it does not improve: the bag just grows flatter
            best = max(best, scores[m])
        self.weights_ = counts / counts.sum()
        self.fit_score_ = best
        return self

    def predict_proba(self, X):
        return weighted_mean(as_stack(X), self.weights_)


class LogisticStack(BaseEstimator, ClassifierMixin):
    """Per class, a logistic regression on the members' logits for that class (FAT2019's 1st place
    stacked this way). A class with one target value in the fitting clips predicts its frequency."""

    def __init__(self, C: float = 1.0):
        self.C = C

    def fit(self, X, y):
        X, y = as_stack(X), np.asarray(y) > 0
        self.models_ = []
        for c in range(X.shape[2]):
            target = y[:, c]
            if target.all() or not target.any():
                self.models_.append(float(target.mean()))
                continue
            self.models_.append(LogisticRegression(C=self.C, max_iter=1000).fit(logit(X[:, :, c]), target))
        return self

    def predict_proba(self, X):
        X = as_stack(X)
        out = np.empty((X.shape[0], X.shape[2]))
        for c, model in enumerate(self.models_):
            out[:, c] = model if isinstance(model, float) else model.predict_proba(logit(X[:, :, c]))[:, 1]
        return out


class MLPStack(BaseEstimator, ClassifierMixin):
    """A small multi-label MLP on all members' logits for all classes at once (as FAT2019's 2nd
    place did), so it can learn how classes confuse each other."""

    def __init__(self, hidden: int = 128, alpha: float = 1e-3, max_iter: int = 300, random_state: int = 0):
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y):
        X, y = as_stack(X), (np.asarray(y) > 0).astype(int)
        self.mlp_ = MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=self.alpha, max_iter=self.max_iter,
                                  random_state=self.random_state)
        with warnings.catch_warnings():  # a capped iteration count is the regulariser here
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.mlp_.fit(logit(X).reshape(len(X), -1), y)
        return self

    def predict_proba(self, X):
        X = as_stack(X)
        return self.mlp_.predict_proba(logit(X).reshape(len(X), -1))


BLENDERS = {
    "mean": lambda: MeanBlend("arithmetic"),
    "geometric": lambda: MeanBlend("geometric"),
    "rank": lambda: MeanBlend("rank"),
    "weighted": WeightedBlend,
    "caruana": CaruanaBlend,
    "stack_logistic": LogisticStack,
    "stack_mlp": MLPStack,
}


def make_blender(name: str) -> BaseEstimator:
    if name not in BLENDERS:
        raise ValueError(f"unknown blend {name!r}; choose from {', '.join(BLENDERS)}")
    return BLENDERS[name]()


def nested_oof(blender: BaseEstimator, X, y, folds) -> np.ndarray:
    """Out-of-fold predictions of ``blender``: for each fold, fitted on the other folds' clips only."""
    X, y, folds = as_stack(X), np.asarray(y), np.asarray(folds)
    out = np.zeros((X.shape[0], X.shape[2]))
    for k in np.unique(folds):
        val = folds == k
        out[val] = clone(blender).fit(X[~val], y[~val]).predict_proba(X[val])
    return out


def correlation(X) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation between members ``(n_models, n_models)``: over all clip×class scores,
    and the mean over classes of the per-class correlation (classes a member scores constantly are skipped)."""
    X = as_stack(X)
    n, m, k = X.shape
    overall = np.corrcoef(X.transpose(1, 0, 2).reshape(m, n * k))
    per_class = []
    for c in range(k):
        cols = X[:, :, c]
        if (cols.std(axis=0) > 0).all():
            per_class.append(np.corrcoef(cols.T))
    mean_per_class = np.mean(per_class, axis=0) if per_class else np.full((m, m), np.nan)
    return overall, mean_per_class


def prune(scores: list[float], corr: np.ndarray, threshold: float) -> list[int]:
    """Members to keep, best first: a member is dropped when its correlation with a better kept
    member exceeds ``threshold`` (it adds little but another vote for the same mistakes). Among equal
    scores the member listed first counts as better."""
    kept: list[int] = []
    for m in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if all(corr[m, j] <= threshold for j in kept):
            kept.append(int(m))
    return kept
