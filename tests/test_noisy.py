"""The noisy-set strategies on the small demo dataset with a tiny model."""

import json

import numpy as np
import pandas as pd
import pytest

from audiotag.config import NoisyConfig, load_config
from audiotag.data.layouts import load_dataset
from audiotag.errors import AudiotagError, ConfigError
from audiotag.features.bank import ClipBank
from audiotag.training.batches import CropSampler
from audiotag.training.noisy import pretraining_warning, pseudo_labels_for_test_clips, select_pseudo
from audiotag.runs import DataSpec
from audiotag.training.train import train

from test_train import TINY


def tiny(*extra):
    return load_config(None, TINY + list(extra))


def train_tiny(data, out, cache, *extra):
    return train(DataSpec(root=str(data)), tiny(*extra), out=out, cache_dir=cache, progress=False)


def test_mixed_batches_hold_the_noisy_share_and_cover_the_curated_clips():
    arrays = [np.full((1, 2, 10), i, np.float32) for i in range(30)]
    targets = np.zeros((30, 3), np.float32)
    noisy = np.r_[np.zeros(10, bool), np.ones(20, bool)]
    sampler = CropSampler(ClipBank(arrays, targets), crop_frames=4, batch_size=4, seed=0, noisy=noisy,
                          noisy_fraction=0.5)
    assert sampler.batches_per_epoch == 5  # 10 curated clips, 2 per batch
    seen = []
    for x, _ in sampler.epoch(0):
        ids = x[:, 0, 0, 0].long().tolist()
        assert sum(i >= 10 for i in ids) == 2 and len(ids) == 4
        seen += [i for i in ids if i < 10]
    assert sorted(seen) == list(range(10))  # one pass over the curated clips
    plain = CropSampler(ClipBank(arrays, targets), crop_frames=4, batch_size=4, seed=0)
    assert plain.batches_per_epoch == 7


def test_pseudo_labelled_test_rows_get_their_own_batch_share():
    arrays = [np.full((1, 2, 10), i, np.float32) for i in range(40)]
    targets = np.zeros((40, 3), np.float32)
    noisy = np.r_[np.zeros(10, bool), np.ones(30, bool)]  # 10 curated, 27 noisy, 3 test rows (37-39)
    test = np.r_[np.zeros(37, bool), np.ones(3, bool)]
    bank = ClipBank(arrays, targets)

    def ids(sampler):
        return [x[:, 0, 0, 0].long().tolist() for x, _ in sampler.epoch(0)]

    shared = CropSampler(bank, crop_frames=4, batch_size=10, seed=0, noisy=noisy, noisy_fraction=0.3,
                         test_rows=test, test_fraction=0.2)
    assert shared.batches_per_epoch == 2  # 5 curated clips per batch
    seen = []
    for batch in ids(shared):
        assert len(batch) == 10
        assert sum(i < 10 for i in batch) == 5 and sum(10 <= i < 37 for i in batch) == 3
        assert sum(i >= 37 for i in batch) == 2  # the test rows' own share, not ~1% of the noisy draw
        seen += [i for i in batch if i < 10]
    assert sorted(seen) == list(range(10))
    # without a share of their own they are noisy rows like the others: the same batches as before
    same = dict(crop_frames=4, batch_size=10, seed=0, noisy=noisy, noisy_fraction=0.3)
    assert ids(CropSampler(bank, test_rows=test, test_fraction=0.0, **same)) == ids(CropSampler(bank, **same))
    # shares that leave no curated clip are cut back to one curated clip per batch
    crowded = CropSampler(bank, crop_frames=4, batch_size=4, seed=0, noisy=noisy, noisy_fraction=0.5,
                          test_rows=test, test_fraction=0.45)
    assert all(sum(i < 10 for i in batch) == 1 and sum(i >= 37 for i in batch) >= 1 for batch in ids(crowded))


def test_pseudo_rules():
    given = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
    teacher = np.array([[0.9, 0.1, 0.8], [0.2, 0.3, 0.1], [0.6, 0.2, 0.1]])
    kept, targets = select_pseudo(given, teacher, NoisyConfig(pseudo_rule="agree", pseudo_threshold=0.5))
    assert kept.tolist() == [True, False, True]
    np.testing.assert_array_equal(targets, [[1, 0, 0], [1, 0, 0]])  # clip 3 loses its unconfirmed label
    kept, targets = select_pseudo(given, teacher, NoisyConfig(pseudo_rule="relabel", pseudo_threshold=0.5))
    assert kept.tolist() == [True, False, True]
    np.testing.assert_array_equal(targets, [[1, 0, 1], [1, 0, 0]])  # the teacher adds a label
    kept, targets = select_pseudo(given, teacher, NoisyConfig(pseudo_rule="soft", soft_alpha=0.5))
    assert kept.all()
    np.testing.assert_allclose(targets, 0.5 * given + 0.5 * teacher)


def test_pseudo_needs_a_teacher():
    with pytest.raises(ConfigError, match="noisy.teacher"):
        tiny("noisy.strategy=pseudo")


def test_joint_training_uses_the_noisy_clips(demo_data, tmp_path):
    run = train_tiny(demo_data, tmp_path / "joint", tmp_path / "cache", "noisy.strategy=joint", "noisy.loss=lq")
    log = (run.dir / "log.txt").read_text()
    n_noisy = len(load_dataset(demo_data, audio=False).split("noisy"))
    assert f"+ {n_noisy} noisy clips" in log
    done = json.loads((run.dir / "fold_0" / "done.json").read_text())
    folds = pd.read_csv(run.dir / "folds.csv")
    assert done["n_train"] == (folds.fold != 0).sum() + n_noisy  # the other fold's curated clips + every noisy clip
    assert 0 < run.scores["oof_lwlrap"] <= 1


def test_the_pretraining_warning_measures_against_the_label_frequencies():
    curated = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    noisy = np.eye(3, dtype=np.float32)[[0, 0, 0, 1, 1, 2]]  # every clip ranked 0 > 1 > 2
    prior = (1 + 1 / 2 + 1 / 3 + 1) / 4  # precision at each true label's rank, by hand: 0.7083
    bce, lq = NoisyConfig(loss="bce"), NoisyConfig(loss="lq")
    assert pretraining_warning(prior + 0.06, curated, noisy, bce) is None  # learnt: silent
    assert pretraining_warning(1.0, curated, noisy, lq) is None
    said = pretraining_warning(prior + 0.04, curated, noisy, bce)
    assert f"{prior:.4f}" in said and "more noisy.pretrain_epochs" in said
    assert "noisy.loss=bce" in pretraining_warning(prior, curated, noisy, lq)


@pytest.mark.parametrize("loss, hint", [("lq", "pretrain with noisy.loss=bce"), ("bce", "more noisy.pretrain_epochs")])
def test_a_pretraining_that_learnt_nothing_is_reported(demo_data, tmp_path, loss, hint):
    run = train_tiny(demo_data, tmp_path / "pre", tmp_path / "cache", "noisy.strategy=pretrain",
                     "noisy.pretrain_epochs=1", f"noisy.loss={loss}", "train.lr=1e-9", "train.epochs=1",
                     "train.only_folds=[0]")
    log = (run.dir / "log.txt").read_text()
    assert "pretraining learnt next to nothing" in log and hint in log


def test_pretrain_then_fine_tune(demo_data, tmp_path):
    run = train_tiny(demo_data, tmp_path / "pre", tmp_path / "cache", "noisy.strategy=pretrain",
                     "noisy.pretrain_epochs=2", "noisy.finetune_lr_scale=1.0")
    pre = json.loads((run.dir / "pretrain" / "done.json").read_text())
    assert pre["epochs"] == 2 and 0 < pre["curated_lwlrap"] <= 1
    assert "from the pretrained model" in (run.dir / "log.txt").read_text()
    # same seed, folds and learning rate: only the starting weights can make the first epoch differ
    cold = train_tiny(demo_data, tmp_path / "cold", tmp_path / "cache")
    first = lambda r: pd.read_csv(r.dir / "fold_0" / "history.csv").val_lwlrap[0]  # noqa: E731
    assert first(run) != first(cold)


def test_pseudo_labels_from_a_teacher_run(demo_data, tmp_path):
    teacher = train_tiny(demo_data, tmp_path / "teacher", tmp_path / "cache")
    student = train_tiny(demo_data, tmp_path / "student", tmp_path / "cache", "noisy.strategy=pseudo",
                         f"noisy.teacher={teacher.dir}", "noisy.pseudo_rule=relabel", "noisy.pseudo_threshold=0.05")
    summary = json.loads((student.dir / "pseudo" / "selection.json").read_text())
    assert set(summary) == {"0", "1"}
    n_noisy = len(load_dataset(demo_data, audio=False).split("noisy"))
    for k in ("0", "1"):
        assert summary[k]["noisy_clips"] == n_noisy and 0 < summary[k]["kept"] <= n_noisy
        sel = pd.read_csv(student.dir / "pseudo" / f"selection_fold_{k}.csv", keep_default_na=False)
        assert len(sel) == n_noisy and sel.kept.sum() == summary[k]["kept"]
    # fold k's targets come from the teacher's fold-k model only
    t0, t1 = (np.load(student.dir / "pseudo" / f"teacher_fold_{k}.npy") for k in (0, 1))
    assert t0.shape == (n_noisy, 14) and not np.allclose(t0, t1)
    # a teacher trained on other folds is refused
    other = train_tiny(demo_data, tmp_path / "other", tmp_path / "cache", "seed=5")
    with pytest.raises(AudiotagError, match="other folds"):
        train_tiny(demo_data, tmp_path / "bad", tmp_path / "cache", "noisy.strategy=pseudo",
                   f"noisy.teacher={other.dir}")
    # a teacher of fold 0 alone is enough for a student of fold 0 alone
    half = train_tiny(demo_data, tmp_path / "half", tmp_path / "cache", "train.only_folds=[0]")
    student0 = train_tiny(demo_data, tmp_path / "student0", tmp_path / "cache", "train.only_folds=[0]",
                          "noisy.strategy=pseudo", f"noisy.teacher={half.dir}", "noisy.pseudo_rule=soft")
    assert [p.name for p in (student0.dir / "pseudo").glob("teacher_fold_*.npy")] == ["teacher_fold_0.npy"]
    # ... but not for a student of both folds
    with pytest.raises(AudiotagError, match="has not finished fold 1"):
        train_tiny(demo_data, tmp_path / "student01", tmp_path / "cache", "noisy.strategy=pseudo",
                   f"noisy.teacher={half.dir}", "noisy.pseudo_rule=soft")


class _Clip:
    def __init__(self, fname):
        self.fname = fname


def test_test_clips_take_the_labels_predicted_at_the_threshold(tmp_path):
    clips = [_Clip(n) for n in ("a.wav", "b.wav", "c.wav")]
    path = tmp_path / "pred.csv"
    # rows in another order than the clips; c has no label >= 0.5 and is left out
    path.write_text("fname,x,y,z\nc.wav,0.1,0.49,0.2\na.wav,0.9,0.5,0.1\nb.wav,0.2,0.3,0.7\n")
    kept, targets = pseudo_labels_for_test_clips(path, clips, ("x", "y", "z"), 0.5)
    assert kept.tolist() == [True, True, False]
    np.testing.assert_array_equal(targets, [[1, 1, 0], [0, 0, 1]])
    kept, _ = pseudo_labels_for_test_clips(path, clips, ("x", "y", "z"), 0.95)
    assert not kept.any()
    # soft targets: every clip, in the clips' order, its predicted probabilities (distillation)
    kept, targets = pseudo_labels_for_test_clips(path, clips, ("x", "y", "z"), 0.95, "soft")
    assert kept.all()
    np.testing.assert_allclose(targets, [[0.9, 0.5, 0.1], [0.2, 0.3, 0.7], [0.1, 0.49, 0.2]], rtol=1e-6)
    # standardised soft targets: each label's logits over the clips get one shared mean and spread
    kept, targets = pseudo_labels_for_test_clips(path, clips, ("x", "y", "z"), 0.95, "standardized")
    assert kept.all() and targets.dtype == np.float32
    logits = np.log(targets) - np.log1p(-targets)
    np.testing.assert_allclose(logits.mean(axis=0), logits.mean(), atol=1e-4)
    np.testing.assert_allclose(logits.std(axis=0), logits.std(), rtol=1e-3)
    assert np.argmax(targets[:, 0]) == 0 and np.argmin(targets[:, 2]) == 0  # within a label, order is kept

    def refused(text, match, vocabulary=("x", "y", "z")):
        path.write_text(text)
        with pytest.raises(AudiotagError, match=match):
            pseudo_labels_for_test_clips(path, clips, vocabulary, 0.5)

    good = "a.wav,0.9,0.5,0.1\nb.wav,0.2,0.3,0.7\nc.wav,0.1,0.4,0.2\n"
    refused("fname,y,x,z\n" + good, "vocabulary order")  # columns in another order
    refused("fname,x,y,z\n" + good + "d.wav,0.1,0.1,0.1\n", r"line 5: 'd.wav' is not a test clip")
    refused("fname,x,y,z\n" + good + "a.wav,0.1,0.1,0.1\n", "line 5: 'a.wav' appears twice")
    refused("fname,x,y,z\na.wav,0.9,0.5,0.1\n", r"no predictions for 2 test clip\(s\) \(e.g. b.wav\)")
    refused("fname,x,y,z\na.wav,0.9,nan,0.1\nb.wav,1,1,1\nc.wav,1,1,1\n", "line 2: expected 3 finite numbers")
    refused("fname,x,y,z\na.wav,0.9,high,0.1\nb.wav,1,1,1\nc.wav,1,1,1\n", "line 2: expected 3 finite numbers")
    with pytest.raises(AudiotagError, match="cannot read"):
        pseudo_labels_for_test_clips(tmp_path / "absent.csv", clips, ("x", "y", "z"), 0.5)


def test_pseudo_labelled_test_clips_join_every_fold(demo_data, tmp_path):
    teacher = train_tiny(demo_data, tmp_path / "teacher", tmp_path / "cache")
    predictions = pd.read_csv(teacher.dir / "test_predictions.csv").set_index("fname")
    threshold = float(np.quantile(predictions.max(axis=1), 0.5))  # about half the test clips keep a label
    for strategy, share in (("none", "null"), ("joint", "0.25")):
        student = train_tiny(demo_data, tmp_path / strategy, tmp_path / "cache", f"noisy.strategy={strategy}",
                             f"noisy.test_predictions={teacher.dir / 'test_predictions.csv'}",
                             f"noisy.test_threshold={threshold}", f"noisy.test_batch_fraction={share}")
        chosen = pd.read_csv(student.dir / "test_pseudo_labels.csv", keep_default_na=False).set_index("fname")
        assert chosen.index.tolist() == predictions.index.tolist()
        expected = predictions.max(axis=1) >= threshold
        assert (chosen.kept == expected.astype(int)).all() and 0 < expected.sum() < len(expected)
        for name, row in chosen[chosen.kept == 1].iterrows():
            assert set(row.new.split(",")) == set(predictions.columns[predictions.loc[name] >= threshold])
        folds = pd.read_csv(student.dir / "folds.csv")
        n_noisy = len(load_dataset(demo_data, audio=False).split("noisy")) if strategy == "joint" else 0
        for k in (0, 1):
            done = json.loads((student.dir / f"fold_{k}" / "done.json").read_text())
            assert done["n_train"] == (folds.fold != k).sum() + n_noisy + expected.sum()
    soft = train_tiny(demo_data, tmp_path / "soft", tmp_path / "cache", "noisy.test_targets=soft",
                      f"noisy.test_predictions={teacher.dir / 'test_predictions.csv'}")
    n_test = len(predictions)
    for k in (0, 1):  # every test clip joins, whatever its probabilities
        done = json.loads((soft.dir / f"fold_{k}" / "done.json").read_text())
        assert done["n_train"] == (folds.fold != k).sum() + n_test
    with pytest.raises(ConfigError, match="mixmatch"):
        tiny("noisy.strategy=mixmatch", "noisy.test_predictions=x.csv")
    with pytest.raises(ConfigError, match="test_batch_fraction is set but"):
        tiny("noisy.test_batch_fraction=0.2")
    with pytest.raises(ConfigError, match="less than 5%"):
        tiny("noisy.strategy=joint", "noisy.batch_fraction=0.8", "noisy.test_batch_fraction=0.2",
             "noisy.test_predictions=x.csv")


def test_noise_estimate_recovers_a_known_wrong_label_rate():
    from audiotag.training.audit import estimate_noise

    rng = np.random.default_rng(0)
    k, n_cur, n_noisy, wrong = 10, 2000, 4000, 0.3

    def labels(n):
        y = np.zeros((n, k))
        y[np.arange(n), rng.integers(0, k, n)] = 1
        return y

    def probs(truth):  # a model that hears true labels at ~0.7 and absent ones at ~0.05
        return np.where(truth > 0, rng.beta(7, 3, truth.shape), rng.beta(1, 19, truth.shape))

    cur = labels(n_cur)
    true_noisy = labels(n_noisy)
    given = true_noisy.copy()
    flip = rng.random(n_noisy) < wrong  # these clips' label is replaced by another class
    shifted = (true_noisy.argmax(1) + rng.integers(1, k, n_noisy)) % k
    given[flip] = 0
    given[np.flatnonzero(flip), shifted[flip]] = 1
    est = estimate_noise(given, probs(true_noisy), cur, probs(cur))
    assert est["wrong_given_labels"] == pytest.approx(wrong, abs=0.03)
    # the true label of each flipped clip is missing from its given labels
    assert est["missing_true_labels"] == pytest.approx(wrong, abs=0.03)
    clean = estimate_noise(true_noisy, probs(true_noisy), cur, probs(cur))
    assert clean["wrong_given_labels"] < 0.03


def test_audit_of_a_curated_only_run(demo_data, tmp_path):
    from audiotag.cli import main

    teacher = train_tiny(demo_data, tmp_path / "teacher", tmp_path / "cache")
    assert main(["audit", str(teacher.dir), "-q"]) == 0
    out = teacher.dir / "audit"
    summary = json.loads((out / "audit.json").read_text())
    assert summary["noisy_clips"] == 28 and summary["fold_models"] == 2 and not summary["models_saw_noisy_clips"]
    assert 0 <= summary["estimated_wrong_given_labels"] <= 1
    clips = pd.read_csv(out / "audit_clips.csv", keep_default_na=False)
    assert len(clips) == 28 and clips.best_given_prob.is_monotonic_increasing  # most suspicious first
    classes = pd.read_csv(out / "audit_classes.csv")
    assert len(classes) == 14 and classes.given.sum() == int(load_dataset(demo_data, audio=False)
                                                              .label_matrix(load_dataset(demo_data, audio=False)
                                                                            .split("noisy")).sum())
    assert "Clips most likely mislabelled" in (out / "audit.md").read_text()
    assert (out / "audit.png").stat().st_size > 5000


def test_ablation_table_over_strategies_and_seeds(demo_data, tmp_path):
    from audiotag.recipes.ablation import ablate

    out = tmp_path / "abl"
    summary = ablate(DataSpec(root=str(demo_data)), tiny(), out=out, strategies=("joint_lq", "pseudo_soft"),
                     seeds=(0, 1), cache_dir=tmp_path / "cache", progress=False)
    table = pd.read_csv(out / "ablation.csv")
    assert list(table.strategy) == ["curated", "joint_lq", "pseudo_soft"]  # the teacher is trained and listed
    assert set(summary["runs"]) == {f"{s}-s{seed}" for s in table.strategy for seed in (0, 1)}
    assert (table.seeds == 2).all() and (table.oof_std >= 0).all()
    assert (table.diff_ci90_low[1:] <= table.test_vs_curated[1:]).all()
    assert (table.test_vs_curated[1:] <= table.diff_ci90_high[1:]).all()
    # the seeds' runs averaged into one ensemble, scored on the test labels; the difference is between those
    ds = load_dataset(demo_data, audio=False)
    names = [c.fname for c in ds.split("test")]

    def seed_mean(name):
        return np.mean([pd.read_csv(out / f"{name}-s{s}" / "test_predictions.csv").set_index("fname").loc[names]
                        for s in (0, 1)], axis=0)

    from audiotag.metrics import lwlrap
    truth = ds.label_matrix(ds.split("test"))
    for i, name in enumerate(table.strategy):
        assert table.test_seed_mean[i] == pytest.approx(lwlrap(truth, seed_mean(name)), abs=1e-4)
    assert np.allclose(table.test_vs_curated[1:], table.test_seed_mean[1:] - table.test_seed_mean[0], atol=2e-4)
    assert "curated-s1" in (out / "pseudo_soft-s1" / "config.yaml").read_text()
    # correlation with the baseline's OOF predictions, averaged over seeds, aligned by fname
    from audiotag.runs import read_oof_predictions

    def oof(name, seed):
        f, _, _, p = read_oof_predictions(out / f"{name}-s{seed}" / "oof_predictions.csv")
        return p[np.argsort(f)]

    expected = np.mean([np.corrcoef(oof("joint_lq", s).ravel(), oof("curated", s).ravel())[0, 1] for s in (0, 1)])
    assert table.oof_corr_baseline[1] == pytest.approx(expected, abs=1e-4)
    assert np.isnan(table.oof_corr_baseline[0])
    # training clips/s: each fold's median epoch, averaged over folds, then over seeds

    def rate(seed):
        folds = [out / f"curated-s{seed}" / f"fold_{k}" for k in (0, 1)]
        return np.mean([json.loads((f / "done.json").read_text())["epoch_clips"]
                        / pd.read_csv(f / "history.csv").train_seconds.median() for f in folds])

    assert table.train_clips_per_s[0] == pytest.approx(np.mean([rate(0), rate(1)]), rel=1e-3)
    # a second call reuses every finished run
    before = {p: p.stat().st_mtime for p in out.glob("*/scores.json")}
    ablate(DataSpec(root=str(demo_data)), tiny(), out=out, strategies=("joint_lq", "pseudo_soft"), seeds=(0, 1),
           cache_dir=tmp_path / "cache", progress=False)
    assert before == {p: p.stat().st_mtime for p in out.glob("*/scores.json")}


def test_representation_variants_compare_against_the_first(demo_data, tmp_path):
    from audiotag.recipes.ablation import ablate

    out = tmp_path / "abl"
    ablate(DataSpec(root=str(demo_data)), tiny("train.epochs=1"), out=out, strategies=("logmel", "logmel_freqpos"),
           seeds=(0,), cache_dir=tmp_path / "cache", progress=False)
    table = pd.read_csv(out / "ablation.csv")
    assert list(table.strategy) == ["logmel", "logmel_freqpos"]
    assert -1 <= table.oof_corr_baseline[1] < 1  # different inputs, different predictions
    assert "freqpos" in (out / "logmel_freqpos-s0" / "config.yaml").read_text()
    assert "vs logmel" in (out / "ablation.md").read_text()


def test_sharpening():
    import torch

    from audiotag.engine.mixmatch import sharpen

    p = torch.tensor([0.1, 0.5, 0.7, 0.99])
    torch.testing.assert_close(sharpen(p, 1.0), p)
    s = sharpen(p, 0.5)
    assert s[1] == 0.5 and s[0] < 0.1 and s[2] > 0.7  # pushed away from 0.5, symmetric around it
    torch.testing.assert_close(sharpen(1 - p, 0.5), 1 - s)
    assert torch.allclose(sharpen(p, 0.01), torch.tensor([0.0, 0.5, 1.0, 1.0]), atol=1e-6)


def test_mixmatch_unlabelled_loss_ramps_and_uses_no_noisy_labels(demo_data, tmp_path):
    import torch

    from audiotag.engine.mixmatch import MixMatchTrainer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 6, 3))
    wrapped = type("M", (torch.nn.Module,), {"__init__": lambda s: (torch.nn.Module.__init__(s), setattr(s, "m", model))[0],
                                             "forward": lambda s, x: {"logits": s.m(x)}})()
    x = torch.randn(8, 2, 4, 6)
    y = torch.cat([torch.randint(0, 2, (8, 3)).float(), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1.0])[:, None]], 1)

    def loss_after_one_step(ramp_epochs, noisy_labels):
        torch.manual_seed(0)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        yy = y.clone()
        yy[4:, :3] = noisy_labels
        opt = torch.optim.SGD(wrapped.parameters(), lr=0.0)
        trainer = MixMatchTrainer(wrapped, optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                                  transforms=[], device=torch.device("cpu"), ramp_epochs=ramp_epochs, seed=1)
        trainer.epoch = 1
        loss = trainer.train_epoch([(x, yy)])
        model.load_state_dict(state)
        return loss

    assert loss_after_one_step(0, 0.0) > loss_after_one_step(1000, 0.0)  # ramp ~0 early: less unlabelled loss
    assert loss_after_one_step(0, 0.0) == pytest.approx(loss_after_one_step(0, 1.0))  # noisy labels unused


def test_mixmatch_run(demo_data, tmp_path):
    run = train_tiny(demo_data, tmp_path / "mm", tmp_path / "cache", "noisy.strategy=mixmatch", "noisy.mixmatch_k=2")
    assert "noisy (unlabelled) clips" in (run.dir / "log.txt").read_text()
    assert 0 < run.scores["oof_lwlrap"] <= 1


def test_every_lever_variant_is_a_valid_change_of_the_default():
    from audiotag.recipes.ablation import DEFAULT_LEVERS, VARIANTS, _with

    base = tiny()
    for name in DEFAULT_LEVERS[1:]:
        changed = _with(base, VARIANTS[name]).to_dict()
        for key, value in VARIANTS[name].items() - {("noisy.strategy", "none")}:
            section, field = key.split(".")
            assert changed[section][field] == value != base.to_dict()[section][field], (name, key)


def test_a_student_learns_the_teachers_soft_targets_on_test_clips(demo_data, tmp_path):
    # The "teacher" calls every test clip one class, whatever it sounds like: a student that trains on
    # those targets ranks that class first on the test clips, one trained on curated clips does not.
    from audiotag.metrics import lwlrap

    ds = load_dataset(demo_data, audio=False)
    names = [c.fname for c in ds.split("test")]
    made_up = np.zeros((len(names), len(ds.vocabulary)))
    made_up[:, 1] = 1.0
    teacher = tmp_path / "teacher.csv"
    pd.DataFrame(made_up, index=pd.Index(names, name="fname"), columns=list(ds.vocabulary)).to_csv(teacher)

    def agreement(*extra):
        run = train_tiny(demo_data, tmp_path / str(len(extra)), tmp_path / "cache", "train.epochs=20",
                        "train.checkpoint=last", *extra)
        predicted = pd.read_csv(run.dir / "test_predictions.csv").set_index("fname").loc[names].to_numpy()
        return lwlrap(made_up, predicted)  # here: the mean reciprocal rank of that class

    alone = agreement()
    distilled = agreement(f"noisy.test_predictions={teacher}", "noisy.test_targets=soft",
                          "noisy.test_batch_fraction=0.5")
    assert alone < 0.6 and distilled > 0.9, (alone, distilled)


@pytest.mark.parametrize("strategy", ["none", "pretrain"])
def test_train_crop_energy_reaches_the_samplers_of_folds_and_pretraining(demo_data, tmp_path, monkeypatch, strategy):
    import audiotag.training.cv as cv

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop(kwargs)

    monkeypatch.setattr(cv, "CropSampler", stop)
    with pytest.raises(Stop) as info:
        train_tiny(demo_data, tmp_path / "run", tmp_path / "cache", "train.crop_energy=0.5",
                   f"noisy.strategy={strategy}", "features.channels=[mfcc,logmel]")
    assert (info.value.args[0]["crop_energy"], info.value.args[0]["energy_channel"]) == (0.5, 1)
