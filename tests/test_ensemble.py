"""`audiotag ensemble` over run folders whose predictions are synthesised (no training needed)."""

import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from audiotag.config import Config
from audiotag.data.layouts import load_dataset
from audiotag.errors import DataError
from audiotag.ensemble.blending import DEFAULT_BLENDS, ensemble_runs
from audiotag.runs import DataSpec, Run, write_predictions
from audiotag.inference.score import score_submission


def fake_run(folder, data, *, signal, seed, folds=None, vocabulary=None, drop=0, folds_done=None):
    """A finished-looking run whose predictions carry ``signal`` (0 = noise) about the true labels."""
    ds = load_dataset(data, audio=False)
    rng = np.random.default_rng(seed)
    train, test = ds.split("curated")[drop:], ds.split("test")
    folds = folds or {c.fname: i % 5 for i, c in enumerate(train)}

    def scores(clips):
        y = ds.label_matrix(clips)
        return 1 / (1 + np.exp(-(4 * signal * (y - 0.5) + rng.normal(0, 1, y.shape))))

    vocab = vocabulary or ds.vocabulary
    order = [ds.vocabulary.index(v) for v in vocab]
    run = Run.create(folder, config=Config(), data=DataSpec(root=str(data)))
    write_predictions(run.dir / "oof_predictions.csv", [c.fname for c in train], tuple(vocab),
                      scores(train)[:, order], extra={"fold": [folds[c.fname] for c in train]})
    write_predictions(run.dir / "test_predictions.csv", [c.fname for c in test], tuple(vocab), scores(test)[:, order])
    (run.dir / "scores.json").write_text(json.dumps({"n_folds": 5, "folds_done": folds_done or [0, 1, 2, 3, 4]}))
    return run.dir


def test_ensemble_writes_a_scored_report_and_a_valid_submission(demo_data, tmp_path):
    runs = [fake_run(tmp_path / f"r{i}", demo_data, signal=s, seed=i) for i, s in enumerate((0.8, 0.6, 0.5))]
    duplicate = tmp_path / "dup"
    shutil.copytree(runs[0], duplicate)
    out = tmp_path / "ens"
    summary = ensemble_runs([*runs, duplicate], out=out, progress=False)

    members = pd.read_csv(out / "members.csv")
    assert list(members.model) == ["r0", "r1", "r2", "dup"]
    assert members.kept.tolist()[:3] == ["yes"] * 3 and members.kept[3].startswith("no (r=1.000 with r0)")
    blends = pd.read_csv(out / "blends.csv")
    assert list(blends.blend) == list(DEFAULT_BLENDS)
    assert summary["chosen"] == blends.blend[blends.nested_oof_lwlrap.idxmax()]
    # averaging independent noisy members beats the best of them, on OOF and on test
    mean = blends.set_index("blend").loc["mean"]
    assert mean.nested_oof_lwlrap > members.oof_lwlrap.max() and mean.test_lwlrap > members.test_lwlrap.max()
    corr = pd.read_csv(out / "correlation.csv", index_col=0)
    assert corr.loc["r0", "dup"] == pytest.approx(1.0) and corr.loc["r0", "r1"] < 0.9
    assert (out / "correlation.png").stat().st_size > 10_000
    assert "Chosen by nested OOF lwlrap" in (out / "blends.md").read_text()
    result = score_submission(out / "submission.csv", demo_data / "test_labels.csv")
    chosen = blends.set_index("blend").loc[summary["chosen"]]
    assert result["lwlrap"] == pytest.approx(chosen.test_lwlrap, abs=1e-5)
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert list(oof.columns[:2]) == ["fname", "fold"]
    assert len(oof) == len(load_dataset(demo_data, audio=False).split("curated"))


def test_misaligned_runs_are_refused_with_the_reason(demo_data, tmp_path):
    ds = load_dataset(demo_data, audio=False)
    base = fake_run(tmp_path / "base", demo_data, signal=0.5, seed=0)
    reordered = fake_run(tmp_path / "reordered", demo_data, signal=0.5, seed=1, vocabulary=ds.vocabulary[::-1])
    fewer = fake_run(tmp_path / "fewer", demo_data, signal=0.5, seed=2, drop=3)
    moved = fake_run(tmp_path / "moved", demo_data, signal=0.5, seed=3,
                     folds={c.fname: (i + 1) % 5 for i, c in enumerate(ds.split("curated"))})
    unfinished = fake_run(tmp_path / "unfinished", demo_data, signal=0.5, seed=4, folds_done=[0, 1])
    for other, message in ((reordered, "labels are in a different order"), (fewer, "OOF clips differ"),
                           (moved, "clips are in different folds")):
        with pytest.raises(DataError, match=message):
            ensemble_runs([base, other], out=tmp_path / "x", progress=False)
    with pytest.raises(Exception, match="trained only folds"):
        ensemble_runs([base, unfinished], out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x" / "submission.csv").exists()


def test_cli_ensemble(demo_data, tmp_path):
    from audiotag.cli import main

    runs = [fake_run(tmp_path / f"r{i}", demo_data, signal=0.6, seed=i) for i in range(2)]
    assert main(["ensemble", *map(str, runs), "--out", str(tmp_path / "e"), "--blends", "mean,caruana", "-q"]) == 0
    with open(tmp_path / "e" / "blends.csv", newline="") as f:
        assert [r["blend"] for r in csv.DictReader(f)] == ["mean", "caruana"]
    assert main(["ensemble", str(runs[0]), "--out", str(tmp_path / "f"), "-q"]) != 0  # one run is not an ensemble


def test_cli_help_names_every_blend():
    from audiotag.cli import build_parser

    ensemble = build_parser()._subparsers._group_actions[0].choices["ensemble"]
    assert all(name in ensemble.format_help() for name in DEFAULT_BLENDS)
