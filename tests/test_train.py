"""End-to-end training on the small demo dataset with a tiny model (seconds per run)."""

import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from audiotag import cli
from audiotag.config import load_config
from audiotag.data.layouts import load_dataset
from audiotag.engine.callbacks import History, duration
from audiotag.errors import AudiotagError
from audiotag.metrics import lwlrap
from audiotag.training import batches as inputs
from audiotag.training import context
from audiotag.inference.standardize import standardize_labels
from audiotag.runs import DataSpec, Run, read_predictions
from audiotag.training.train import resume, train

from conftest import shared_path

# Validating every epoch: the tests follow each epoch's validation (the default validates every 5th)
TINY = ["model.width=8", "model.depth=2", "model.convs_per_block=1", "train.epochs=3", "train.validate_every=1",
        "train.folds=2", "train.crop_seconds=1.0", "train.batch_size=8", "train.precision=fp32",
        "predict.tta_views=1", "data.num_workers=1"]


def tiny(*extra):
    return load_config(None, TINY + list(extra))


def read(path):
    return path.read_bytes()


def train_tiny(demo_data, out, cache_dir, *extra):
    return train(DataSpec(root=str(demo_data)), tiny(*extra), out=out, cache_dir=cache_dir, progress=False)


def test_a_run_folder_has_everything(demo_data, tmp_path):
    run = train_tiny(demo_data, tmp_path / "run", tmp_path / "cache")
    d = run.dir
    for name in ("config.yaml", "run.json", "log.txt", "folds.csv", "oof_predictions.csv", "test_predictions.csv",
                 "scores.json", "training_curves.png"):
        assert (d / name).is_file(), name
    for k in (0, 1):
        for name in ("best.pt", "last.pt", "history.csv", "oof.npy", "test.npy", "done.json"):
            assert (d / f"fold_{k}" / name).is_file()
    scores = json.loads((d / "scores.json").read_text())
    assert scores["n_folds"] == 2 and len(scores["fold_lwlrap"]) == 2 and 0 < scores["oof_lwlrap"] <= 1
    assert 0 < scores["test_lwlrap"] <= 1
    ds = load_dataset(demo_data, audio=False)
    truth = ds.label_matrix(ds.split("test"))
    for k in (0, 1):  # each fold model alone, scored on the test labels
        alone = lwlrap(truth, np.load(d / f"fold_{k}" / "test.npy"))
        assert scores["fold_test_lwlrap"][k] == pytest.approx(alone, abs=1e-9)
    each = scores["fold_test_lwlrap"]  # the log's summary of the same numbers
    assert (f"fold models alone {min(each):.4f}-{max(each):.4f}, mean {sum(each) / len(each):.4f}"
            in (d / "log.txt").read_text())
    assert run.config == tiny() and run.info["status"] == "done" and run.info["precision"] == "fp32"
    with open(d / "oof_predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["fname", "fold"] and len(rows) - 1 == 56  # every curated clip, once
    probs = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    assert ((probs >= 0) & (probs <= 1)).all()


def test_same_seed_same_numbers(demo_data, tmp_path):
    a = train_tiny(demo_data, tmp_path / "a", tmp_path / "cache")
    b = train_tiny(demo_data, tmp_path / "b", tmp_path / "cache")
    assert read(a.dir / "test_predictions.csv") == read(b.dir / "test_predictions.csv")
    c = train_tiny(demo_data, tmp_path / "c", tmp_path / "cache", "seed=1")
    assert read(a.dir / "test_predictions.csv") != read(c.dir / "test_predictions.csv")
    assert read(a.dir / "folds.csv") != read(c.dir / "folds.csv")
    # a seed ensemble's member: another seed, the same folds
    d = train_tiny(demo_data, tmp_path / "d", tmp_path / "cache", "seed=1", "train.fold_seed=0")
    assert read(a.dir / "folds.csv") == read(d.dir / "folds.csv")
    assert read(a.dir / "test_predictions.csv") != read(d.dir / "test_predictions.csv")


def _same_results(a: Run, b: Run):
    for name in ("oof_predictions.csv", "test_predictions.csv", "folds.csv"):
        assert read(a.dir / name) == read(b.dir / name), name
    sa, sb = a.scores, b.scores
    for key in ("oof_lwlrap", "fold_lwlrap", "test_lwlrap", "epochs", "best_epochs"):
        assert sa[key] == sb[key], key


@pytest.mark.parametrize("extra", [(), ("train.ema_decay=0.9",)], ids=["plain", "weight-average"])
def test_resume_after_an_epoch_equals_training_straight(demo_data, tmp_path, monkeypatch, extra):
    straight = train_tiny(demo_data, tmp_path / "straight", tmp_path / "cache", *extra)
    original = History.on_epoch_end

    def stop_after_epoch_2_of_fold_1(self, trainer, result):
        original(self, trainer, result)
        if self.prefix.startswith("fold 1") and result["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(History, "on_epoch_end", stop_after_epoch_2_of_fold_1)
    with pytest.raises(KeyboardInterrupt):
        train_tiny(demo_data, tmp_path / "cut", tmp_path / "cache", *extra)
    monkeypatch.setattr(History, "on_epoch_end", original)
    assert (tmp_path / "cut" / "fold_0" / "done.json").exists()
    assert not (tmp_path / "cut" / "fold_1" / "done.json").exists()
    assert Run.open(tmp_path / "cut").info["status"] == "interrupted"
    # The run's minutes count the stopped session's finished fold, and the resumed fold's epochs before the
    # stop: with the resumed session's clock frozen, exactly the seconds of those epochs are added.
    counted = Run.open(tmp_path / "cut").info.get("wall_seconds", 0)
    assert counted >= json.loads((tmp_path / "cut" / "fold_0" / "done.json").read_text())["train_seconds"] > 0
    monkeypatch.setattr(context, "time", SimpleNamespace(perf_counter=lambda: 0.0))
    _same_results(straight, resume(tmp_path / "cut", progress=False))
    resumed_after = int(re.search(r"fold 1: resuming after epoch (\d+)", (tmp_path / "cut" / "log.txt").read_text())[1])
    history = pd.read_csv(tmp_path / "cut" / "fold_1" / "history.csv")
    before_stop = history[history.epoch <= resumed_after].seconds.sum()
    assert before_stop > 0
    assert Run.open(tmp_path / "cut").info["wall_seconds"] == pytest.approx(counted + before_stop)


def test_a_failed_run_says_so_and_resumes_once_fixed(demo_data, tmp_path, monkeypatch):
    # data that is not there: refused before a run folder is made (nothing to resume, nothing left behind)
    with pytest.raises(AudiotagError, match="does not exist"):
        train(DataSpec(root=str(tmp_path / "nowhere")), tiny(), out=tmp_path / "nodata", cache_dir=tmp_path / "cache",
              progress=False)
    assert not (tmp_path / "nodata").exists()

    # a crash in the middle of training: failed, then resumed to the end once the cause is gone
    original = History.on_epoch_end

    def crashes_in_fold_1(self, trainer, result):
        original(self, trainer, result)
        if self.prefix.startswith("fold 1"):
            raise RuntimeError("disk on fire")

    monkeypatch.setattr(History, "on_epoch_end", crashes_in_fold_1)
    with pytest.raises(RuntimeError):
        train_tiny(demo_data, tmp_path / "crash", tmp_path / "cache")
    info = Run.open(tmp_path / "crash").info
    assert (info["status"], info["error"]) == ("failed", "RuntimeError: disk on fire")
    log = (tmp_path / "crash" / "log.txt").read_text()
    assert f"failed: RuntimeError: disk on fire; after fixing the cause, continue with: audiotag train --resume " in log
    monkeypatch.setattr(History, "on_epoch_end", original)
    info = resume(tmp_path / "crash", progress=False).info
    assert info["status"] == "done" and "error" not in info


def test_resume_after_a_kill_mid_epoch_equals_training_straight(demo_data, tmp_path, monkeypatch):
    straight = train_tiny(demo_data, tmp_path / "straight", tmp_path / "cache")
    original = inputs.CropSampler.epoch

    def dies_in_epoch_3(self, epoch):
        for i, item in enumerate(original(self, epoch)):
            if self.stream == 0 and epoch == 2 and i == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(inputs.CropSampler, "epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_tiny(demo_data, tmp_path / "cut", tmp_path / "cache")
    monkeypatch.setattr(inputs.CropSampler, "epoch", original)
    _same_results(straight, resume(tmp_path / "cut", progress=False))


def test_cli_train_predict_score_tag_runs(demo_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = [a for s in TINY for a in ("--set", s)]
    assert cli.main(["train", "--data", str(demo_data), "--out", "runs/r", "--cache-dir", "cache", "-q", *sets]) == 0
    assert cli.main(["train", "--data", str(demo_data), "--out", "runs/r", "--cache-dir", "cache", *sets]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["predict", "runs/r", "--data", str(demo_data), "--out", "sub.csv", "--cache-dir", "cache", "-q"]) == 0
    out = capsys.readouterr().out
    assert "wrote sub.csv" in out and "ms per clip" in out
    # 28 test clips of 14 labels are too few to standardise each label's scores over (--standardize auto)
    assert "not standardised" in out and read(Path("sub.csv")) == read(tmp_path / "runs" / "r" / "test_predictions.csv")
    # the competition's own scorer accepts the file unchanged and agrees with ours
    score_py = shared_path("bench", "score.py")
    result = subprocess.run([sys.executable, str(score_py), "--truth", str(demo_data / "test_labels.csv"),
                             "--submission", "sub.csv"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    theirs = float(result.stdout.strip().splitlines()[-1].split()[-1])
    assert cli.main(["score", "sub.csv", "--truth", str(demo_data / "test_labels.csv"), "--per-class"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    ours = float(lines[-1].split()[-1])
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert lines[-2].startswith("by labels per clip: 1: ")  # the demo's test set mixes several sounds per clip
    scores = json.loads((tmp_path / "runs" / "r" / "scores.json").read_text())
    assert ours == pytest.approx(scores["test_lwlrap"], abs=1e-5)  # predict reproduces the run's own test predictions
    assert cli.main(["predict", "runs/r", "--data", str(demo_data), "--out", "std.csv", "--cache-dir", "cache", "-q",
                     "--standardize", "yes"]) == 0
    out = capsys.readouterr().out
    assert "standardised over the test set" in out
    fnames, _, probs = read_predictions(tmp_path / "runs" / "r" / "test_predictions.csv")
    written = pd.read_csv("std.csv", index_col="fname")
    assert list(written.index) == fnames
    np.testing.assert_allclose(written.values, standardize_labels(probs), atol=2e-5)  # from 6-decimal probabilities
    before = float(out.split("(")[-1].split()[0])  # "lwlrap ...: X (Y before standardising)"
    assert before == pytest.approx(scores["test_lwlrap"], abs=1e-4)  # printed to 4 decimals
    wav = next((demo_data / "test").glob("*.wav"))
    assert cli.main(["tag", "--run", "runs/r", str(wav), "--top", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    # a folder stands for its audio files; a bad file is reported and the others are still tagged
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.wav").write_bytes(wav.read_bytes())
    (tmp_path / "mixed" / "notes.txt").write_text("not audio, not listed")
    (tmp_path / "broken.wav").write_bytes(wav.read_bytes()[:1000])
    assert cli.main(["tag", "--run", "runs/r", "mixed", "broken.wav", "--top", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == str(Path("mixed") / "a.wav") and len(captured.out.splitlines()) == 3
    assert "broken.wav: truncated WAV" in captured.err and "1 of 2 files could not be tagged" in captured.err
    assert cli.main(["runs"]) == 0
    assert "runs/r" in capsys.readouterr().out


def test_predict_needs_only_the_test_folder_and_checks_labels(demo_data, tmp_path, capsys):
    run = train_tiny(demo_data, tmp_path / "run", tmp_path / "cache")
    only_test = tmp_path / "stage2"
    only_test.mkdir()
    (only_test / "test").symlink_to(demo_data / "test")
    (only_test / "sample_submission.csv").write_bytes((demo_data / "sample_submission.csv").read_bytes())
    out = tmp_path / "sub.csv"
    assert cli.main(["predict", str(run.dir), "--data", str(only_test), "--out", str(out), "-q"]) == 0
    assert read(out) == read(run.dir / "test_predictions.csv")
    header = (only_test / "sample_submission.csv").read_text().splitlines()
    cols = header[0].split(",")
    cols[1], cols[2] = cols[2], cols[1]
    (only_test / "sample_submission.csv").write_text("\n".join([",".join(cols), *header[1:]]) + "\n")
    assert cli.main(["predict", str(run.dir), "--data", str(only_test), "--out", str(out), "-q"]) == 2
    assert "labels differ" in capsys.readouterr().err


def test_score_rejects_broken_submissions(demo_data, tmp_path, capsys):
    truth = demo_data / "test_labels.csv"
    lines = (demo_data / "sample_submission.csv").read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], lines[1], lines[1].replace(",0", ",nan", 1)] + lines[3:]) + "\n")
    assert cli.main(["score", str(bad), "--truth", str(truth)]) == 2
    err = capsys.readouterr().err
    assert "repeats line 2" in err and "have no row" in err


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_result(demo_data, tmp_path):
    sets = [a for s in TINY + ["train.epochs=6"] for a in ("--set", s)]
    base = [sys.executable, "-m", "audiotag", "train", "--data", str(demo_data), "--cache-dir", str(tmp_path / "cache"), "-q"]
    subprocess.run(base + ["--out", str(tmp_path / "straight"), *sets], check=True, capture_output=True)
    proc = subprocess.Popen(base + ["--out", str(tmp_path / "cut"), *sets], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    history = tmp_path / "cut" / "fold_0" / "history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (history.exists() and history.read_text().count("\n") >= 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "scores.json").exists()
    subprocess.run([sys.executable, "-m", "audiotag", "train", "--resume", str(tmp_path / "cut"), "-q"], check=True,
                   capture_output=True)
    _same_results(Run.open(tmp_path / "straight"), Run.open(tmp_path / "cut"))


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (42.4, "42 s"), (89.4, "89 s"), (90, "2 min"),
                                           (1010, "17 min"), (3569, "59 min"), (3571, "1 h 00 min"),
                                           (11100, "3 h 05 min")])
def test_durations_read_as_seconds_minutes_or_hours(seconds, text):
    assert duration(seconds) == text


def test_epoch_lines_give_the_fit_s_eta_and_the_run_s_from_the_last_five_epochs(tmp_path):
    lines = []
    history = History(tmp_path / "h.csv", log=lines.append, prefix="fold 0  ", total_epochs=10, epochs_after=20)
    trainer = SimpleNamespace(history=[])
    for epoch, seconds in enumerate([100, 100] + [4] * 8, 1):  # the slow first epochs drop out of the mean
        row = {"epoch": epoch, "train_loss": 0.5, "lr": 1e-3, "seconds": seconds}
        trainer.history.append(row)
        history.on_epoch_end(trainer, row)
    assert lines[0].endswith("ETA 15 min, run 48 min"), lines[0]  # 9 and 29 epochs at 100 s
    assert lines[6].endswith("4.0s  ETA 12 s, run 2 min"), lines[6]  # 3 and 23 epochs at 4 s
    assert lines[-1].endswith("4.0s  ETA run 80 s"), lines[-1]  # the fit is done; 20 epochs follow
    assert (tmp_path / "h.csv").read_text().count("\n") == 11  # the header and 10 epochs


def test_training_benchmark_reports_rates(demo_data, tmp_path):
    from audiotag.bench import bench_training

    report = tmp_path / "B.md"
    r = bench_training(demo_data, config=tiny(), cache_dir=tmp_path / "cache", steps=2, report=report, progress=False)
    # Rates are timing-dependent, so only their presence and sign are checked, never their order.
    assert min(r["train_clips_per_s"], r["inference_clips_per_s"], r["tta_clips_per_s"]) > 0
    assert r["tta_views"] == (tiny().predict.tta_views or 4)
    text = report.read_text()
    assert "<!-- bench:training -->" in text and "TTA views" in text


def test_the_log_says_which_fold_of_how_many_what_is_left_and_which_checkpoint_is_kept(demo_data, tmp_path):
    run = train(DataSpec(root=str(demo_data)), tiny(), out=tmp_path / "run", cache_dir=tmp_path / "cache",
                progress=False)
    log = (run.dir / "log.txt").read_text()
    assert "fold 0 (1/2)" in log and "fold 1 (2/2); about " in log and " left for this run" in log
    assert "epoch 1/3" in log and "ETA " in log.split("epoch 1/3")[1].splitlines()[0]
    # fold 0's epoch lines also give the run's ETA (fold 1's 3 epochs still to come); the last fold's do not
    first = next(l for l in log.splitlines() if "fold 0  epoch 1/3" in l)
    last = next(l for l in log.splitlines() if "fold 1  epoch 1/3" in l)
    assert ", run " in first and ", run " not in last and "ETA " in last
    history = pd.read_csv(run.dir / "fold_0" / "history.csv")
    assert {"val_lwlrap", "val_loss"} <= set(history.columns) and (history.val_loss > 0).all()
    best = history.loc[history.val_lwlrap.idxmax()]
    line = next(l for l in log.splitlines() if "fold 0: lwlrap" in l and "on its validation clips" in l)
    assert f"keeps the best checkpoint, epoch {int(best.epoch)} of 3" in line
    assert f"validation lwlrap {best.val_lwlrap:.4f}" in line and "TTA views" in line


def test_clip_bce_is_the_mean_binary_cross_entropy():
    from audiotag.training.cv import clip_bce

    targets = np.array([[1.0, 0.0], [0.0, 1.0]])
    probs = np.array([[0.9, 0.2], [0.4, 0.6]])
    expected = -np.mean([np.log(0.9), np.log(0.8), np.log(0.6), np.log(0.6)])
    assert abs(clip_bce(targets, probs) - expected) < 1e-12
    assert np.isfinite(clip_bce(targets, np.array([[1.0, 0.0], [0.0, 1.0]])))  # clipped, never infinite


def test_tensorboard_scalars_when_installed(demo_data, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install -e '.[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(DataSpec(root=str(demo_data)), tiny(), out=tmp_path / "run", cache_dir=tmp_path / "cache",
                progress=False)
    events = EventAccumulator(str(run.dir / "fold_1" / "tensorboard"))
    events.Reload()
    assert {"loss/train", "loss/validation", "lwlrap/validation", "learning_rate"} <= set(events.Tags()["scalars"])
    history = pd.read_csv(run.dir / "fold_1" / "history.csv")
    logged = [e.value for e in events.Scalars("lwlrap/validation")]
    np.testing.assert_allclose(logged, history.val_lwlrap.values, rtol=1e-6)


def test_validating_every_few_epochs_keeps_the_best_of_those_and_always_the_last(demo_data, tmp_path):
    run = train_tiny(demo_data, tmp_path / "sparse", tmp_path / "cache", "train.epochs=5", "train.validate_every=2")
    history = pd.read_csv(run.dir / "fold_0" / "history.csv")
    assert history.epoch.tolist() == [1, 2, 3, 4, 5]
    assert history.val_lwlrap.notna().tolist() == [False, True, False, True, True]
    done = json.loads((run.dir / "fold_0" / "done.json").read_text())
    validated = history.dropna(subset=["val_lwlrap"])
    assert done["best_epoch"] == int(validated.epoch[validated.val_lwlrap.idxmax()])
    assert (run.dir / "training_curves.png").stat().st_size > 0
