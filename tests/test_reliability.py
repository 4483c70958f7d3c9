"""Reliability under bad input and faults: a generated bad-input corpus, SIGKILL during feature
extraction, a full disk, a read-only output, and no network use."""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from audiotag import cli, fsutil
from audiotag.config import Config
from audiotag.data.check import check_dataset
from audiotag.data.layouts import load_dataset
from audiotag.features.cache import FeatureStore, build_features

SR = 16000

# name -> (how to make it, the error code `check` must give, or None when it must be accepted)
GOOD = {
    "rate8k.wav": lambda p, r: sf.write(p, _noise(r, 8000, 1.0), 8000),
    "rate96k.wav": lambda p, r: sf.write(p, _noise(r, 96000, 1.0), 96000),
    "pcm24.wav": lambda p, r: sf.write(p, _noise(r, SR, 1.0), SR, subtype="PCM_24"),
    "float32.wav": lambda p, r: sf.write(p, _noise(r, SR, 1.0), SR, subtype="FLOAT"),
    "stereo.wav": lambda p, r: sf.write(p, _noise(r, SR, 1.0, 2), SR),
    "surround.wav": lambda p, r: sf.write(p, _noise(r, SR, 1.0, 6), SR),
    "long.wav": lambda p, r: sf.write(p, _noise(r, SR, 600.0), SR),  # ten minutes
    "short.wav": lambda p, r: sf.write(p, _noise(r, SR, 0.001), SR),  # 16 samples: under one frame
    "flac.flac": lambda p, r: sf.write(p, _noise(r, SR, 1.0), SR, format="FLAC"),
}


def _with_nonfinite(value):
    def make(p, r):
        x = _noise(r, SR, 1.0)
        x[100] = value
        sf.write(p, x, SR, subtype="FLOAT")
    return make


def _truncated(p, r):
    sf.write(p, _noise(r, SR, 1.0), SR)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


BAD = {
    "nan.wav": (_with_nonfinite(np.nan), "nonfinite"),
    "inf.wav": (_with_nonfinite(np.inf), "nonfinite"),
    "huge.wav": (lambda p, r: sf.write(p, _noise(r, SR, 1.0) * 1e30, SR, subtype="FLOAT"), "absurd-level"),
    "empty.wav": (lambda p, r: p.write_bytes(b""), "empty"),
    "truncated.wav": (_truncated, "truncated"),
    "garbage.wav": (lambda p, r: p.write_bytes(r.bytes(5000)), "unreadable"),
    "text.mp3": (lambda p, r: p.write_text("not audio\n" * 100), "unreadable"),  # wrong container
    "silent.wav": (lambda p, r: sf.write(p, np.zeros(SR, np.float32), SR), "silent"),
}


def _noise(rng, sr, seconds, channels=1):
    x = (0.1 * rng.standard_normal((max(1, int(sr * seconds)), channels))).astype(np.float32)
    return x if channels > 1 else x[:, 0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    audio = root / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, (name, make) in enumerate(GOOD.items()):
        make(audio / name, rng)
        rows.append([name, ["dog", "cat"][i % 2]])
    for i, (name, (make, _)) in enumerate(BAD.items()):
        make(audio / name, rng)
        rows.append([name, ["dog", "cat"][i % 2]])
    rows += [["missing.wav", "dog"], ["../escape.wav", "cat"], ["rate8k.wav", "cat"]]
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fname", "labels"])
        writer.writerows(rows)
    return root


def test_every_bad_input_is_named_with_its_problem_and_every_good_one_accepted(corpus, tmp_path):
    ds = load_dataset(csv=corpus / "labels.csv", audio_dir=corpus / "audio")
    report = check_dataset(ds, cache_dir=tmp_path / "cache", progress=False, sample_rate=SR)
    codes = {}
    for problem in report.errors:
        codes.setdefault(problem.code, []).append(f"{problem.fname} {problem.message}")
    for name, (_, code) in BAD.items():
        assert any(name in m for m in codes.get(code, [])), (name, code, codes)
    assert any("missing.wav" in m for m in codes["missing-file"])
    assert any("escape.wav" in m for m in codes["unsafe-path"])
    assert any("rate8k.wav" in m for m in codes["duplicate-fname"])
    flagged = " ".join(m for ms in codes.values() for m in ms)
    for name in set(GOOD) - {"rate8k.wav"}:  # (rate8k.wav is the duplicated row)
        assert name not in flagged, name
    # every problem names its CSV row and says what to do
    assert all(p.source and p.row and p.hint for p in report.errors)


def test_good_inputs_of_any_rate_width_and_channel_count_become_features(corpus, tmp_path):
    ds = load_dataset(csv=corpus / "labels.csv", audio_dir=corpus / "audio")
    built = build_features(ds, Config(), cache_dir=tmp_path / "cache", skip_bad=True, progress=False)
    kept = {c.fname: c for c in built.dataset.clips}
    assert set(kept) == set(GOOD) - {"rate8k.wav"}  # the duplicated name is left out, never guessed
    for name, clip in kept.items():
        x = np.asarray(built.load(clip), np.float32)
        assert x.shape[:2] == (1, 64) and np.isfinite(x).all(), name
    assert built.n_frames(kept["long.wav"]) == 1 + 600 * SR // 320
    assert built.n_frames(kept["short.wav"]) == 1
    assert built.n_frames(kept["rate96k.wav"]) == 1 + SR // 320  # resampled to 16 kHz first


def test_the_cli_reports_the_corpus_in_one_pass_without_a_traceback(corpus, tmp_path, capsys):
    code = cli.main(["check", "--csv", str(corpus / "labels.csv"), "--audio-dir", str(corpus / "audio"),
                     "--cache-dir", str(tmp_path / "cache"), "-q"])
    out = capsys.readouterr()
    assert code == 1 and "Traceback" not in out.out + out.err
    for name in BAD:
        assert name in out.out + out.err




def _entries(cache):
    """The cache's indexed entries: digest -> the bytes of its features."""
    store = FeatureStore(cache, Config().audio, Config().features)
    if not store.dir.exists():
        return {}
    return {digest: store.load(digest, mmap=False).tobytes() for digest in store.entries()}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_features_killed_at_a_random_moment_resume_to_the_same_cache(demo_data, tmp_path, seed):
    cmd = [sys.executable, "-m", "audiotag", "features", str(demo_data), "-q"]
    reference, interrupted = tmp_path / "ref", tmp_path / "cut"
    subprocess.run(cmd + ["--cache-dir", str(reference)], check=True, capture_output=True)
    ref = _entries(reference)
    total = len(ref)
    target = int(np.random.default_rng(seed).integers(1, total - 100))  # entries written before the kill
    proc = subprocess.Popen(cmd + ["--cache-dir", str(interrupted)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(_entries(interrupted)) < target:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the workers too
    proc.wait()
    assert len(_entries(interrupted)) < total, "the build finished before the kill: nothing was tested"
    subprocess.run(cmd + ["--cache-dir", str(interrupted)], check=True, capture_output=True)
    cut = _entries(interrupted)
    assert ref and ref.keys() == cut.keys()  # every entry present
    assert all(ref[k] == cut[k] for k in ref)  # and bit-identical
    # the index only ever points at packs that exist (a killed writer's unindexed bytes are never read)
    store = FeatureStore(interrupted, Config().audio, Config().features)
    indexed = {e.pack for e in store.entries().values()}
    assert all((store.packs / name).is_file() and not name.startswith(fsutil.TMP_PREFIX) for name in indexed)


TRAIN_SETS = ["model.width=8", "model.depth=2", "model.convs_per_block=1", "train.epochs=6", "train.folds=2",
              "train.crop_seconds=1.0", "train.batch_size=8", "train.precision=fp32", "predict.tta_views=1",
              "data.num_workers=1", "train.threads=1"]


def _train_cmd(demo_data, cache):
    sets = [a for s in TRAIN_SETS for a in ("--set", s)]
    return [sys.executable, "-m", "audiotag", "train", "--data", str(demo_data), "--cache-dir", str(cache), "-q", *sets]


@pytest.fixture(scope="module")
def straight_run(demo_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    subprocess.run(_train_cmd(demo_data, folder / "cache") + ["--out", str(folder / "run")], check=True,
                   capture_output=True)
    return folder / "run"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_killed_at_a_random_moment_resumes_to_the_uninterrupted_result(demo_data, straight_run, tmp_path,
                                                                                 seed):
    rng = np.random.default_rng(seed)
    fold, epochs_done, delay = int(rng.integers(0, 2)), int(rng.integers(0, 6)), float(rng.uniform(0, 0.3))
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_train_cmd(demo_data, straight_run.parent / "cache") + ["--out", str(cut)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    history = cut / f"fold_{fold}" / "history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (history.exists() and history.read_text().count("\n") > epochs_done):
        time.sleep(0.005)
    time.sleep(delay)  # somewhere inside the next epoch, or in the fold's predictions
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "scores.json").exists(), "the run finished before the kill: nothing was tested"
    subprocess.run([sys.executable, "-m", "audiotag", "train", "--resume", str(cut), "-q"], check=True,
                   capture_output=True)
    for name in ("oof_predictions.csv", "test_predictions.csv", "folds.csv"):
        assert (cut / name).read_bytes() == (straight_run / name).read_bytes(), name


def test_a_full_disk_leaves_no_file_behind_and_says_so(tmp_path, monkeypatch):
    def full(file, array, allow_pickle=False):
        file.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.np, "save", full)
    with pytest.raises(fsutil.OutputError, match="disk is full"):
        fsutil.save_npy(tmp_path / "fold_0" / "oof.npy", np.zeros(3))
    assert list((tmp_path / "fold_0").iterdir()) == []


def test_checking_an_output_path_creates_nothing_and_the_first_write_makes_its_folders(tmp_path):
    out = tmp_path / "new" / "deeper"
    assert fsutil.check_writable(out, folder=True) == out
    assert fsutil.check_writable(tmp_path / "other" / "s.csv") == tmp_path / "other" / "s.csv"
    assert list(tmp_path.iterdir()) == []  # a command that fails after its checks leaves no empty folder
    fsutil.write_text(out / "x.txt", "x")
    assert (out / "x.txt").read_text() == "x"
    (tmp_path / "a-file").write_text("")
    for path, folder in ((tmp_path / "a-file" / "sub", True), (tmp_path / "a-file" / "sub" / "s.csv", False)):
        with pytest.raises(fsutil.OutputError, match="cannot write under .*a-file, which is a file"):
            fsutil.check_writable(path, folder=folder)


def test_a_read_only_output_folder_is_one_clear_error(demo_data, tmp_path, monkeypatch, capsys):
    real_replace = os.replace

    def read_only(src, dst):
        if str(tmp_path / "ro") in str(dst):
            os.unlink(src)
            raise OSError(errno.EROFS, "Read-only file system")
        return real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", read_only)
    code = cli.main(["train", "--data", str(demo_data), "--out", str(tmp_path / "ro" / "run"), "--cache-dir",
                     str(tmp_path / "cache"), "--set", "train.epochs=1", "-q"])
    err = capsys.readouterr().err
    assert code != 0 and "not writable" in err and "Traceback" not in err
    assert not [p for p in (tmp_path / "ro").rglob("*") if p.is_file()]  # nothing half-written


def test_training_and_prediction_never_touch_the_network(demo_data, tmp_path, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("audiotag tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    from test_train import train_tiny

    run = train_tiny(demo_data, tmp_path / "run", tmp_path / "cache", "train.epochs=1", "data.num_workers=1")
    assert run.scores["test_lwlrap"] > 0


def test_runs_started_at_once_never_share_a_folder(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from audiotag.errors import AudiotagError
    from audiotag.runs import DataSpec, Run

    def create(out):
        try:
            return Run.create(out, config=Config(), data=DataSpec(root=str(tmp_path)), name="vgg",
                              runs_root=tmp_path / "auto").dir
        except AudiotagError as e:
            return e

    with ThreadPoolExecutor(8) as pool:
        same = list(pool.map(create, [tmp_path / "same"] * 8))
        auto = list(pool.map(create, [None] * 8))
    winners = [r for r in same if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all("another audiotag process" in str(e) or "not empty" in str(e) for e in same if isinstance(e, Exception))
    assert len({str(r) for r in auto}) == 8 and not any(isinstance(r, Exception) for r in auto)  # own folders


def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path):
    from audiotag.runs import CLAIM, DataSpec, Run

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CLAIM).write_text(proc.stdout.strip())  # that process has exited
    run = Run.create(tmp_path / "run", config=Config(), data=DataSpec(root=str(tmp_path)))
    assert (run.dir / "run.json").exists()
