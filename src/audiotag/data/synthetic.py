"""A synthetic dataset in the FAT2019 Kaggle layout, generated on the spot.

Real recordings cannot ship with the package, so ``audiotag demo`` makes its own: fourteen
synthetic sound-event classes with distinct spectro-temporal shapes (and a few deliberately
confusable pairs), mixed into multi-label clips. Like FAT2019 it has a clean ``curated`` split, a
larger ``noisy`` split with background noise, channel degradation and label noise, and a ``test``
split with exhaustive ground truth. The same seed always gives byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, sosfilt

from .. import fsutil
from ..errors import DataError

GENERATOR_VERSION = 1


def _env(n: int, sr: int, attack_s: float = 0.01, release_s: float = 0.05) -> np.ndarray:
    env = np.ones(n)
    a, r = min(n // 2, int(attack_s * sr)), min(n // 2, int(release_s * sr))
    if a:
        env[:a] = np.linspace(0, 1, a)
    if r:
        env[n - r :] = np.linspace(1, 0, r)
    return env


def _noise(rng, n):
    return rng.standard_normal(n)


def _filtered_noise(rng, n, sr, kind, hz):
    sos = butter(4, hz, btype=kind, fs=sr, output="sos")
    return sosfilt(sos, _noise(rng, n + 512))[512:]


def _sine(freq_hz, sr):
    """Phase-continuous sine for a per-sample frequency track."""
    return np.sin(2 * np.pi * np.cumsum(freq_hz) / sr)


def ev_tone(rng, n, sr):
    return _sine(np.full(n, np.exp(rng.uniform(np.log(300), np.log(1500)))), sr) * _env(n, sr)


def ev_chirp_up(rng, n, sr):
    f0 = rng.uniform(200, 800)
    f1 = min(f0 * rng.uniform(3, 8), 0.4 * sr)
    return _sine(np.geomspace(f0, f1, n), sr) * _env(n, sr)


def ev_chirp_down(rng, n, sr):
    return ev_chirp_up(rng, n, sr)[::-1].copy()


def ev_noise_burst(rng, n, sr):
    out = np.zeros(n)
    for _ in range(rng.integers(1, 4)):
        length = int(rng.uniform(0.1, 0.35) * sr)
        start = rng.integers(0, max(1, n - length))
        seg = _noise(rng, min(length, n - start)) * np.exp(-np.arange(min(length, n - start)) / (0.08 * sr))
        out[start : start + len(seg)] += seg
    return out


def ev_rumble(rng, n, sr):
    return _filtered_noise(rng, n, sr, "lowpass", rng.uniform(150, 350)) * _env(n, sr, 0.1, 0.1)


def ev_hiss(rng, n, sr):
    return _filtered_noise(rng, n, sr, "highpass", rng.uniform(4000, 6000)) * _env(n, sr, 0.05, 0.05)


def ev_click_train(rng, n, sr):
    out = np.zeros(n)
    period = int(sr / rng.uniform(5, 30))
    click = np.hanning(24) * rng.choice([-1, 1], 24)
    for start in range(rng.integers(0, period), n - 24, period):
        out[start : start + 24] += click
    return out


def ev_harmonic_stack(rng, n, sr):
    f0 = rng.uniform(100, 300)
    t = np.arange(n) / sr
    ks = np.arange(1, int(min(15, 0.45 * sr / f0)) + 1)
    return (np.sin(2 * np.pi * f0 * ks[:, None] * t[None, :]) / ks[:, None]).sum(0) * _env(n, sr, 0.03, 0.1)


def ev_am_tone(rng, n, sr):
    t = np.arange(n) / sr
    depth = rng.uniform(0.8, 1.0)
    mod = 1 - depth * 0.5 * (1 + np.cos(2 * np.pi * rng.uniform(3, 12) * t))
    return _sine(np.full(n, rng.uniform(500, 2000)), sr) * mod * _env(n, sr)


def ev_fm_warble(rng, n, sr):
    t = np.arange(n) / sr
    freq = rng.uniform(800, 2500) + rng.uniform(50, 300) * np.sin(2 * np.pi * rng.uniform(4, 10) * t)
    return _sine(freq, sr) * _env(n, sr)


def ev_drum_hit(rng, n, sr):
    out = np.zeros(n)
    period = int(sr / rng.uniform(1.5, 4))
    f = rng.uniform(60, 150)
    length = min(int(0.3 * sr), n)
    tt = np.arange(length) / sr
    hit = np.sin(2 * np.pi * np.cumsum(f * (1 + 2 * np.exp(-tt / 0.02))) / sr) * np.exp(-tt / 0.08)
    hit[: int(0.005 * sr)] += 0.5 * _noise(rng, int(0.005 * sr))
    for start in range(rng.integers(0, max(1, period // 2)), n - length + 1, period):
        out[start : start + length] += hit
    return out if out.any() else np.pad(hit, (0, n - length))


def ev_bell(rng, n, sr):
    t = np.arange(n) / sr
    f0 = rng.uniform(300, 900)
    ratios, decays = (1.0, 2.76, 5.40, 8.93), (1.2, 0.8, 0.5, 0.3)
    return sum(np.sin(2 * np.pi * f0 * r * t) * np.exp(-t / d) / (i + 1)
               for i, (r, d) in enumerate(zip(ratios, decays)) if f0 * r < 0.45 * sr)


def ev_beeps(rng, n, sr):
    t = np.arange(n) / sr
    f1, f2 = rng.uniform(600, 1000), rng.uniform(1200, 1700)
    gate = (np.floor(t / rng.uniform(0.08, 0.15)) % 2 == 0).astype(float)
    return (np.sin(2 * np.pi * f1 * t) + np.sin(2 * np.pi * f2 * t)) * gate * 0.5


def ev_trill(rng, n, sr):
    """Bird-like: rapid short upward syllables at 2-5 kHz."""
    out = np.zeros(n)
    syl = int(rng.uniform(0.03, 0.07) * sr)
    gap = int(rng.uniform(0.02, 0.06) * sr)
    base = rng.uniform(2000, 4000)
    for start in range(0, n - syl, syl + gap):
        out[start : start + syl] += _sine(np.linspace(base, base * 1.3, syl), sr) * np.hanning(syl)
    return out


CLASSES = {
    "tone": ev_tone, "chirp_up": ev_chirp_up, "chirp_down": ev_chirp_down, "noise_burst": ev_noise_burst,
    "rumble": ev_rumble, "hiss": ev_hiss, "click_train": ev_click_train, "harmonic_stack": ev_harmonic_stack,
    "am_tone": ev_am_tone, "fm_warble": ev_fm_warble, "drum_hit": ev_drum_hit, "bell": ev_bell, "beeps": ev_beeps,
    "trill": ev_trill,
}


@dataclass(frozen=True)
class DemoSpec:
    seed: int = 0
    sample_rate: int = 16000
    n_curated: int = 280
    n_noisy: int = 420
    n_test: int = 140
    min_duration_s: float = 1.0
    max_duration_s: float = 5.0
    label_drop_prob: float = 0.25
    wrong_label_prob: float = 0.3


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)) + 1e-12)


def _render_clip(rng, spec: DemoSpec, main: str, k_probs, *, noisy: bool, background_prob: float, snr_db):
    sr = spec.sample_rate
    dur = float(np.exp(rng.uniform(np.log(spec.min_duration_s), np.log(spec.max_duration_s))))
    n = int(dur * sr)
    k = int(rng.choice(len(k_probs), p=k_probs)) + 1
    others = [c for c in CLASSES if c != main]
    labels = [main] + list(rng.choice(others, size=k - 1, replace=False))
    mix = np.zeros(n)
    main_level_db = rng.uniform(-26, -14)
    for i, label in enumerate(labels):
        length = int(min(n, rng.uniform(0.5, 3.0) * sr))
        start = int(rng.integers(0, n - length + 1))
        ev = CLASSES[label](rng, length, sr)
        level_db = main_level_db if i == 0 else main_level_db + rng.uniform(-10, 3)
        mix[start : start + length] += ev / _rms(ev) * 10 ** (level_db / 20)
    if rng.random() < background_prob:
        bg = np.cumsum(_noise(rng, n)) if rng.random() < 0.5 else _noise(rng, n)  # brown or white
        bg = bg - bg.mean()
        mix += bg / _rms(bg) * 10 ** ((main_level_db - rng.uniform(*snr_db)) / 20)
    if noisy and rng.random() < 0.3:
        mix = sosfilt(butter(6, rng.uniform(2000, 4000), fs=sr, output="sos"), mix)
    peak = np.abs(mix).max()
    if peak > 0.99:
        mix *= 0.99 / peak
    return mix.astype(np.float32), labels


def _noisy_labels(rng, true: list[str], spec: DemoSpec) -> list[str]:
    kept = [label for label in true if rng.random() >= spec.label_drop_prob]
    if rng.random() < spec.wrong_label_prob:
        wrong = str(rng.choice([c for c in CLASSES if c not in true]))
        if kept and rng.random() < 0.5:
            kept[int(rng.integers(len(kept)))] = wrong
        else:
            kept.append(wrong)
    if not kept:
        kept = [str(rng.choice([c for c in CLASSES if c not in true]))]
    return list(dict.fromkeys(kept))


def _wav_bytes(y: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _csv_text(rows: list[tuple[str, str]], header=("fname", "labels")) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def make_demo_dataset(out_dir: str | Path, spec: DemoSpec = DemoSpec(), *, overwrite: bool = False) -> Path:
    """Write the demo dataset to ``out_dir`` (Kaggle layout) and return the folder.

    An existing folder built from the same spec is reused as it is; one from another spec is an
    error unless ``overwrite``.
    """
    out = Path(out_dir)
    info_path = out / "dataset_info.json"
    if info_path.exists() and not overwrite:
        try:
            previous = json.loads(info_path.read_text())
        except (OSError, ValueError):
            previous = {}
        if previous.get("spec") == asdict(spec) and previous.get("generator_version") == GENERATOR_VERSION:
            return out
        raise DataError(f"{out} holds a different demo dataset", hint="pass --overwrite or choose another folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite and not info_path.exists():
            raise DataError(f"{out} is not empty", hint="choose an empty or new folder")
        for name in ("train_curated", "train_noisy", "test"):
            shutil.rmtree(out / name, ignore_errors=True)
        info_path.unlink(missing_ok=True)
    vocabulary = list(CLASSES)
    root_rng = np.random.default_rng(spec.seed)
    names: set[str] = set()

    def new_name() -> str:
        while True:
            name = f"{int(root_rng.integers(0, 2**32)):08x}.wav"
            if name not in names:
                names.add(name)
                return name

    settings = {
        "curated": dict(k_probs=(0.75, 0.2, 0.05), noisy=False, background_prob=0.3, snr_db=(25, 40)),
        "noisy": dict(k_probs=(0.8, 0.15, 0.05), noisy=True, background_prob=1.0, snr_db=(0, 15)),
        "test": dict(k_probs=(0.6, 0.3, 0.1), noisy=False, background_prob=0.3, snr_db=(25, 40)),
    }
    counts = {"curated": spec.n_curated, "noisy": spec.n_noisy, "test": spec.n_test}
    rows: dict[str, list[tuple[str, str]]] = {}
    stats = {"wrong_given_labels": 0, "given_labels": 0, "missed_true_labels": 0, "true_labels": 0}
    per_class_wrong = {c: [0, 0] for c in vocabulary}  # given-label count, wrong count
    for split_index, split in enumerate(("curated", "noisy", "test")):
        rng = np.random.default_rng([spec.seed, split_index])
        folder = "test" if split == "test" else f"train_{split}"
        rows[split] = []
        order = [vocabulary[i % len(vocabulary)] for i in range(counts[split])]
        rng.shuffle(order)
        for main in order:
            y, true = _render_clip(rng, spec, main, **settings[split])
            name = new_name()
            fsutil.write_bytes(out / folder / name, _wav_bytes(y, spec.sample_rate))
            given = _noisy_labels(rng, true, spec) if split == "noisy" else true
            if split == "noisy":
                wrong = [g for g in given if g not in true]
                stats["wrong_given_labels"] += len(wrong)
                stats["given_labels"] += len(given)
                stats["missed_true_labels"] += len([t for t in true if t not in given])
                stats["true_labels"] += len(true)
                for g in given:
                    per_class_wrong[g][0] += 1
                    per_class_wrong[g][1] += g not in true
            rows[split].append((name, ",".join(given)))
    for split in ("curated", "noisy"):
        fsutil.write_text(out / f"train_{split}.csv", _csv_text(sorted(rows[split])))
    test_rows = sorted(rows["test"])
    fsutil.write_text(out / "test_labels.csv", _csv_text(test_rows))
    fsutil.write_text(out / "sample_submission.csv",
                      _csv_text([(name, *["0"] * len(vocabulary)) for name, _ in test_rows], header=("fname", *vocabulary)))
    fsutil.write_text(out / "vocabulary.csv", "".join(f"{i},{label}\n" for i, label in enumerate(vocabulary)))
    info = {
        "generator": "audiotag.demo", "generator_version": GENERATOR_VERSION, "spec": asdict(spec),
        "counts": counts, "vocabulary_size": len(vocabulary),
        "noisy_label_noise": {
            "wrong_fraction_of_given_labels": stats["wrong_given_labels"] / max(1, stats["given_labels"]),
            "missed_fraction_of_true_labels": stats["missed_true_labels"] / max(1, stats["true_labels"]),
            "per_class_wrong_fraction": {c: (w / g if g else None) for c, (g, w) in per_class_wrong.items()},
        },
    }
    fsutil.write_text(info_path, json.dumps(info, indent=2))  # written last: marks the build complete
    return out
