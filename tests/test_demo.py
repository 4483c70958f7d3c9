import hashlib
import json

import numpy as np

from audiotag.data.layouts import load_dataset
from audiotag.data.synthetic import CLASSES, DemoSpec, make_demo_dataset

import pytest
from audiotag.errors import DataError

SPEC = DemoSpec(seed=3, n_curated=28, n_noisy=28, n_test=14, max_duration_s=2.0)


def tree_digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = make_demo_dataset(tmp_path / "a", SPEC)
    b = make_demo_dataset(tmp_path / "b", SPEC)
    c = make_demo_dataset(tmp_path / "c", DemoSpec(**{**SPEC.__dict__, "seed": 4}))
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)


def test_layout_classes_mixtures_and_label_noise(tmp_path):
    root = make_demo_dataset(tmp_path / "d", SPEC)
    ds = load_dataset(root)
    assert len(ds.vocabulary) >= 10 and ds.vocabulary == tuple(CLASSES)
    assert not [p for p in ds.problems if p.severity == "error"]
    assert any(len(c.labels) > 1 for c in ds.split("test"))
    assert ds.test_labelled
    info = json.loads((root / "dataset_info.json").read_text())
    noise = info["noisy_label_noise"]["wrong_fraction_of_given_labels"]
    assert 0.1 < noise < 0.6  # label noise is really there, and labels are not all wrong


def test_every_class_has_its_own_sound():
    rng = np.random.default_rng(0)
    spectra = {}
    for name, make in CLASSES.items():
        y = make(rng, 16000, 16000)
        assert y.shape == (16000,) and np.isfinite(y).all() and np.abs(y).max() > 0
        s = np.abs(np.fft.rfft(y))[:8000]
        spectra[name] = s / np.linalg.norm(s)
    names = list(spectra)
    worst = max(float(spectra[a] @ spectra[b]) for i, a in enumerate(names) for b in names[i + 1 :])
    assert worst < 0.99  # no two classes have the same long-term spectrum


def test_reuse_and_refusal(tmp_path):
    root = make_demo_dataset(tmp_path / "e", SPEC)
    stamp = (root / "dataset_info.json").stat().st_mtime_ns
    assert make_demo_dataset(root, SPEC) == root and (root / "dataset_info.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="different demo dataset"):
        make_demo_dataset(root, DemoSpec(seed=99))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        make_demo_dataset(tmp_path / "full", SPEC)
