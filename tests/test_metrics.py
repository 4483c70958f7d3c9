import importlib.util

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from audiotag.metrics import lwlrap, lwlrap_by_label_count, per_class_lwlrap

from conftest import shared_path


def naive_lwlrap(truth, scores):
    """Straight from the definition, one positive pair at a time (ties: later column first)."""
    precisions = []
    for t, s in zip(truth, scores):
        ranking = sorted(range(len(s)), key=lambda j: (-s[j], -j))
        for label in np.flatnonzero(t):
            rank = ranking.index(label) + 1
            precisions.append(sum(t[j] for j in ranking[:rank]) / rank)
    return float(np.mean(precisions))


def random_case(rng, n=40, c=12, ties=False):
    truth = (rng.random((n, c)) < 0.15).astype(int)
    truth[rng.random(n) < 0.1] = 0  # some rows without any label
    scores = rng.integers(0, 4, (n, c)).astype(float) if ties else rng.random((n, c))
    return truth, scores


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_equals_the_naive_definition(seed, ties):
    truth, scores = random_case(np.random.default_rng(seed), ties=ties)
    assert lwlrap(truth, scores) == pytest.approx(naive_lwlrap(truth, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_equals_sklearn_lrap_weighted_by_labels_per_clip(seed):
    truth, scores = random_case(np.random.default_rng(seed))
    keep = truth.sum(1) > 0  # sklearn gives label-less rows a score of 1; lwlrap ignores them
    expected = label_ranking_average_precision_score(truth[keep], scores[keep], sample_weight=truth[keep].sum(1))
    assert lwlrap(truth, scores) == pytest.approx(expected, abs=1e-12)


def test_per_class_scores_weighted_sum_to_the_total():
    truth, scores = random_case(np.random.default_rng(9), c=8)
    per_class, weights = per_class_lwlrap(truth, scores)
    assert weights.sum() == pytest.approx(1.0)
    used = weights > 0
    assert (per_class[used] * weights[used]).sum() == pytest.approx(lwlrap(truth, scores))
    truth[:, 3] = 0
    per_class, weights = per_class_lwlrap(truth, scores)
    assert np.isnan(per_class[3]) and weights[3] == 0


def test_by_label_count_is_each_group_of_clips_own_lwlrap_and_weights_to_the_total():
    truth, scores = random_case(np.random.default_rng(4), n=200, c=6)
    truth[:5] = 0
    truth[5:10] = 1  # a few clips with every label
    rows = lwlrap_by_label_count(truth, scores)
    counts = truth.sum(1)
    assert [r["labels"] for r in rows] == sorted(set(counts[counts > 0]))
    for r in rows:
        group = counts == r["labels"]
        assert r["clips"] == group.sum()
        assert r["lwlrap"] == pytest.approx(naive_lwlrap(truth[group], scores[group]), abs=1e-12)
    assert sum(r["weight"] for r in rows) == pytest.approx(1.0)
    assert sum(r["lwlrap"] * r["weight"] for r in rows) == pytest.approx(lwlrap(truth, scores))
    assert rows[-1] == {"labels": 6, "clips": 5, "lwlrap": 1.0, "weight": pytest.approx(30 / truth.sum())}


def test_known_values():
    assert lwlrap(np.array([[1, 0, 0]]), np.array([[0.9, 0.1, 0.2]])) == 1.0
    assert lwlrap(np.array([[0, 0, 1]]), np.array([[0.9, 0.5, 0.2]])) == pytest.approx(1 / 3)
    # two positives ranked 1st and 3rd: (1/1 + 2/3) / 2
    assert lwlrap(np.array([[1, 0, 1]]), np.array([[0.9, 0.5, 0.2]])) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(lwlrap(np.zeros((2, 3)), np.ones((2, 3))))


def test_bad_inputs():
    with pytest.raises(ValueError, match="same"):
        lwlrap(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        lwlrap(np.ones((1, 2)), np.array([[np.nan, 1.0]]))


def test_agrees_with_the_competition_scorer_including_ties():
    spec = importlib.util.spec_from_file_location("score", shared_path("bench", "score.py"))
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    fn = next(getattr(score, name) for name in ("lwlrap", "calculate_lwlrap", "compute_lwlrap") if hasattr(score, name))
    for seed in range(4):
        truth, scores = random_case(np.random.default_rng(seed), ties=seed % 2 == 1)
        assert lwlrap(truth, scores) == pytest.approx(fn(truth, scores), abs=1e-12)
