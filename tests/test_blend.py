import numpy as np
import pytest
from sklearn.base import clone

from audiotag.ensemble.estimators import (BLENDERS, CaruanaBlend, LogisticStack, MeanBlend, MLPStack, WeightedBlend, correlation,
                            make_blender, nested_oof, prune)
from audiotag.metrics import lwlrap


def problem(n=240, k=8, informative=(0.9, 0.6, 0.0), seed=0):
    """Labels and members whose scores carry ``informative`` shares of signal (0 = pure noise)."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, k))
    y[np.arange(n), rng.integers(0, k, n)] = 1
    y[rng.random((n, k)) < 0.08] = 1
    members = [1 / (1 + np.exp(-(4 * s * (y - 0.5) + rng.normal(0, 1, (n, k))))) for s in informative]
    return np.stack(members, axis=1), y, np.arange(n) % 5


def test_means_match_their_definitions():
    X = np.array([[[0.2, 0.9, 0.5], [0.4, 0.1, 0.5]]])
    np.testing.assert_allclose(MeanBlend().fit(X).predict_proba(X), [[0.3, 0.5, 0.5]])
    np.testing.assert_allclose(MeanBlend("geometric").fit(X).predict_proba(X),
                               [[np.sqrt(0.08), np.sqrt(0.09), 0.5]])
    # ranks within the clip: model 1 orders (0.2, 0.5, 0.9) -> (0, 2, 1)/2; model 2 (0.1, 0.4, 0.5) -> (1, 0, 2)/2
    np.testing.assert_allclose(MeanBlend("rank").fit(X).predict_proba(X), [[0.25, 0.5, 0.75]])
    with pytest.raises(ValueError, match="kind"):
        MeanBlend("median").fit(X)
    with pytest.raises(ValueError, match="n_models"):
        MeanBlend().fit(X[0])


def test_fitted_weights_favour_the_informative_member():
    X, y, _ = problem()
    for blender in (WeightedBlend(), CaruanaBlend()):
        blender.fit(X, y)
        w = blender.weights_
        assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
        assert w[0] > w[2], type(blender).__name__  # the signal member outweighs the noise member
        assert blender.fit_score_ >= lwlrap(y, X.mean(axis=1)) - 1e-9
        assert blender.fit_score_ == pytest.approx(lwlrap(y, blender.predict_proba(X))) or \
            isinstance(blender, CaruanaBlend)  # Caruana reports its best bag, predicts with the final one


def test_stackers_learn_from_informative_members():
    X, y, folds = problem()
    chance = lwlrap(y, problem(informative=(0.0,), seed=1)[0][:, 0])
    for blender in (LogisticStack(), MLPStack(max_iter=200)):
        oof = nested_oof(blender, X, y, folds)
        assert oof.shape == y.shape and np.isfinite(oof).all()
        assert lwlrap(y, oof) > chance + 0.2


def test_every_blender_follows_the_estimator_contract():
    X, y, _ = problem(n=60)
    for name in BLENDERS:
        blender = make_blender(name)
        copy = clone(blender)
        assert copy.get_params() == blender.get_params()
        assert blender.fit(X, y) is blender
        assert blender.predict_proba(X).shape == y.shape
        assert not any(k.endswith("_") for k in copy.__dict__)  # nothing learned before fit
    with pytest.raises(ValueError, match="unknown blend"):
        make_blender("median")


def test_nested_evaluation_does_not_leak_on_pure_noise():
    """Labels unrelated to every member: honest scores stay at chance, in-sample ones do not."""
    rng = np.random.default_rng(3)
    n, m, k = 400, 4, 10
    X = rng.random((n, m, k))
    y = (rng.random((n, k)) < 0.15).astype(float)
    y[np.arange(n), rng.integers(0, k, n)] = 1
    folds = np.arange(n) % 5
    # chance: the lwlrap of scores unrelated to the labels, averaged over many draws
    chance = np.mean([lwlrap(y, rng.random((n, k))) for _ in range(20)])
    spread = np.std([lwlrap(y, rng.random((n, k))) for _ in range(20)])
    for name in ("weighted", "caruana", "stack_logistic", "stack_mlp"):
        honest = lwlrap(y, nested_oof(make_blender(name), X, y, folds))
        assert honest < chance + 4 * spread + 0.01, (name, honest, chance)
    in_sample = lwlrap(y, MLPStack().fit(X, y).predict_proba(X))
    assert in_sample > chance + 0.1  # what a non-nested evaluation would have reported


def test_correlation_and_pruning():
    X, y, _ = problem(informative=(0.9, 0.9, 0.0))
    X = np.concatenate([X, X[:, :1]], axis=1)  # member 3 duplicates member 0
    overall, per_class = correlation(X)
    assert overall.shape == per_class.shape == (4, 4)
    np.testing.assert_allclose(np.diag(overall), 1.0)
    assert overall[0, 3] == pytest.approx(1.0) and per_class[0, 3] == pytest.approx(1.0)
    assert abs(overall[0, 2]) < overall[0, 1]
    scores = [lwlrap(y, X[:, i]) for i in range(4)]
    kept = prune(scores, overall, threshold=0.97)
    assert len(kept) == 3 and not {0, 3} <= set(kept)  # one of the duplicates goes
    assert kept[0] == int(np.argmax(scores))
    assert sorted(prune(scores, overall, threshold=1.0 + 1e-9)) == [0, 1, 2, 3]
