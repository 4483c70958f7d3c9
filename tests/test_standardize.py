"""Per-label standardisation of a test set's scores (audiotag.inference.standardize)."""

from __future__ import annotations

import numpy as np
import pytest

from audiotag import cli
from audiotag.errors import AudiotagError
from audiotag.inference.standardize import MIN_CLIPS_PER_LABEL, applies, standardize_labels
from audiotag.metrics import lwlrap


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _scores_and_truth(seed=0, clips=400, labels=10):
    """Logits that rank each clip's labels well: 1-3 true labels per clip score higher."""
    rng = np.random.default_rng(seed)
    y = np.zeros((clips, labels))
    for i in range(clips):
        y[i, rng.choice(labels, rng.integers(1, 4), replace=False)] = 1
    return rng.normal(size=(clips, labels)) + 2.5 * y - 2, y


def test_a_drift_of_each_labels_scores_is_undone():
    z, y = _scores_and_truth()
    rng = np.random.default_rng(1)
    drifted = z * rng.uniform(0.3, 3, z.shape[1]) + rng.uniform(-3, 3, z.shape[1])  # per label: scale and shift
    clean, after = standardize_labels(_sigmoid(z)), standardize_labels(_sigmoid(drifted))
    assert lwlrap(y, _sigmoid(drifted)) < lwlrap(y, _sigmoid(z)) - 0.05  # the drift costs
    # ... and standardising gives the same ranks within every clip as standardising the undrifted scores
    np.testing.assert_array_equal(np.argsort(clean, axis=1), np.argsort(after, axis=1))
    assert lwlrap(y, after) == pytest.approx(lwlrap(y, clean), abs=1e-12)


def test_every_label_gets_the_pooled_mean_and_spread_of_the_logits():
    z, _ = _scores_and_truth(labels=6)
    z[:, 0] += 4  # a label that fires on everything
    z[:, 1] *= 0.2  # one that hardly moves
    out = _logit(standardize_labels(_sigmoid(z)))
    np.testing.assert_allclose(out.mean(axis=0), z.mean(), atol=1e-6)
    np.testing.assert_allclose(out.std(axis=0), z.std(), atol=1e-6)
    written = standardize_labels(_sigmoid(z))
    assert ((written > 0) & (written < 1)).all()  # still reads as a probability in a submission


def test_a_label_scored_alike_on_every_clip_stays_finite():
    p = np.full((20, 3), 0.3)  # a logit of 0.3 is not exact: its spread comes out at ~1e-16, not 0
    p[:, 0] = 0.5
    p[:, 1] = np.linspace(0.1, 0.9, 20)
    out = standardize_labels(p)
    assert np.isfinite(out).all() and np.ptp(out[:, 0]) < 1e-9 and np.ptp(out[:, 2]) < 1e-9
    assert standardize_labels(np.zeros((5, 2))).shape == (5, 2)  # probabilities of exactly 0 or 1 are clipped


def test_what_a_submission_holds_is_standardised_so_a_written_file_gives_the_same_scores():
    rng = np.random.default_rng(2)
    p = 10.0 ** rng.uniform(-6, -1, (200, 5))  # small probabilities, where 6 decimals cut the most
    np.testing.assert_array_equal(standardize_labels(p), standardize_labels(np.round(p, 6)))


def test_auto_standardises_only_with_enough_clips_per_label():
    assert applies("auto", MIN_CLIPS_PER_LABEL * 50, 50) and not applies("auto", MIN_CLIPS_PER_LABEL * 50 - 1, 50)
    assert applies("yes", 3, 50) and not applies("no", 10_000, 50)
    with pytest.raises(AudiotagError, match="standardize"):
        applies("sometimes", 100, 5)


@pytest.mark.parametrize("command", [["predict", "run", "--out", "s.csv"], ["pipeline", "demo", "--out", "p"]])
def test_predict_and_pipeline_spell_the_option_alike_and_refuse_a_bad_value(command, capsys):
    parser = cli.build_parser()
    assert parser.parse_args(command).standardize == "auto"
    assert parser.parse_args([*command, "--standardize", "no"]).standardize == "no"
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--standardize", "maybe"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--standardize" in err and "'maybe'" in err and "auto" in err
