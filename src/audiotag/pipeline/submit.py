"""Using a finished run: predict a test set into a submission, score a submission, tag files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..audio.io import load_audio
from ..data.layouts import audio_files_under
from ..audio.inventory import default_cache_dir
from ..errors import AudioError, AudiotagError, DataError
from ..features.cache import build_features, compute_features
from ..features.frontend import FrontEnd
from ..engine.precision import inference_precision, resolve_device
from ..metrics import lwlrap, per_class_lwlrap
from .cv import inference_spec, load_fold_model
from .inputs import ClipBank
from .predict import predict_models
from .runs import DataSpec, Run, write_predictions


def finished_folds(run: Run) -> list[int]:
    folds = sorted(int(p.parent.name.split("_")[1]) for p in run.dir.glob("fold_*/done.json"))
    if not folds:
        raise AudiotagError(f"{run.dir} has no finished fold to predict with",
                            hint=f"finish training first: audiotag train --resume {run.dir}")
    return folds


def load_models(run: Run, *, device: torch.device) -> list[torch.nn.Module]:
    config = run.config
    return [load_fold_model(run, k, config=config, device=device) for k in finished_folds(run)]


def predict_run(run_dir: str | Path, data: DataSpec, *, out: str | Path, cache_dir: str | Path | None = None,
                tta_views: int | None = None, skip_bad: bool = False, progress: bool = True,
                device: str = "auto") -> dict:
    """Write a Kaggle-format submission for the test clips of ``data`` with the run's fold models
    (on ``device``: auto takes a GPU when there is one, whatever the run was trained on).

    ``data`` may hold only ``test/`` and ``sample_submission.csv``. Its labels must be the run's, in
    the same order. With ``skip_bad``, an unusable test clip still gets a row (the training label
    frequencies, so the file stays complete) and is listed in the result.
    """
    run = Run.open(run_dir)
    config = run.config
    ds = data.load()
    test = ds.split("test")
    if not test:
        raise DataError(f"{data.root or data.csv}: no test clips (expected sample_submission.csv or a test/ folder)")
    vocabulary = tuple(run.info.get("vocabulary") or _run_vocabulary(run))
    if tuple(ds.vocabulary) != vocabulary:
        raise DataError("the dataset's labels differ from the run's (names or order)",
                        hint=f"the run was trained on {len(vocabulary)} labels starting {', '.join(vocabulary[:3])}")
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(run.info.get("cache_dir") or default_cache_dir())
    features = build_features(ds, config, cache_dir=cache_dir, splits=("test",), skip_bad=skip_bad, progress=progress)
    good = features.dataset.split("test")
    device = resolve_device(device)
    models = load_models(run, device=device)
    spec = inference_spec(config, views=tta_views)
    probs, seconds_per_clip = predict_models(models, ClipBank.from_features(features, good), spec, device=device,
                                             precision=inference_precision(run.info.get("precision", "fp32"), device),
                                             fold_mean=config.predict.fold_mean)
    by_name = dict(zip((c.fname for c in good), probs))
    prior = _training_prior(run, len(vocabulary))
    rows = np.stack([by_name.get(c.fname, prior) for c in test])
    write_predictions(Path(out), [c.fname for c in test], vocabulary, rows)
    result = {"out": str(out), "clips": len(test), "filled_with_prior": [c.fname for c in test if c.fname not in by_name],
              "models": len(models), "tta_views": spec.views, "seconds_per_clip": seconds_per_clip}
    if ds.test_labelled and not result["filled_with_prior"]:
        result["lwlrap"] = lwlrap(ds.label_matrix(test), rows)
    return result


def _run_vocabulary(run: Run) -> list[str]:
    from ..engine.checkpoint import load_checkpoint

    return load_checkpoint(run.fold_dir(finished_folds(run)[0]) / "best.pt")["vocabulary"]


def _training_prior(run: Run, n_classes: int) -> np.ndarray:
    path = run.dir / "oof_predictions.csv"
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        return np.array([[float(v) for v in r[2:]] for r in rows[1:]]).mean(axis=0)
    return np.full(n_classes, 1.0 / n_classes)


# ----------------------------------------------------------------------------- scoring


def _read_vocabulary_for(truth: Path, explicit: Path | None, header: list[str]) -> list[str]:
    from ..data.csvio import read_vocabulary

    for candidate in (explicit, truth.parent / "vocabulary.csv"):
        if candidate is not None and Path(candidate).exists():
            return list(read_vocabulary(Path(candidate), []))
    return header[1:]


def score_submission(submission: str | Path, truth: str | Path, *, vocabulary: str | Path | None = None) -> dict:
    """Validate a submission strictly (as Kaggle did) and compute its lwlrap against ``truth``
    (``fname,labels[,...]``). Raises :class:`DataError` listing every problem."""
    submission, truth = Path(submission), Path(truth)
    for path in (submission, truth):
        if not path.is_file():
            raise DataError(f"{path} does not exist")
    with open(submission, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise DataError(f"{submission} is empty")
    header, body = rows[0], rows[1:]
    labels = _read_vocabulary_for(truth, Path(vocabulary) if vocabulary else None, header)
    problems = []
    if header[:1] != ["fname"] or header[1:] != labels:
        missing = [v for v in labels if v not in header]
        extra = [h for h in header[1:] if h not in labels]
        problems.append(f"header must be fname + the {len(labels)} labels in vocabulary order"
                        + (f"; missing {missing[:5]}" if missing else "") + (f"; unexpected {extra[:5]}" if extra else "")
                        + ("; same labels, wrong order" if not missing and not extra else ""))
    with open(truth, newline="", encoding="utf-8-sig") as f:
        truth_rows = {r["fname"]: r.get("labels", "") for r in csv.DictReader(f)}
    seen, scores = {}, {}
    for line, r in enumerate(body, start=2):
        if len(r) != len(header):
            problems.append(f"line {line}: {len(r)} fields, expected {len(header)}")
            continue
        if r[0] in seen:
            problems.append(f"line {line}: {r[0]} repeats line {seen[r[0]]}")
            continue
        seen[r[0]] = line
        try:
            values = np.array([float(v) for v in r[1:]])
        except ValueError:
            problems.append(f"line {line}: a score is not a number")
            continue
        if not np.isfinite(values).all():
            problems.append(f"line {line}: a score is NaN or infinite")
            continue
        scores[r[0]] = values
    missing = [n for n in truth_rows if n not in seen]
    unknown = [n for n in seen if n not in truth_rows]
    if missing:
        problems.append(f"{len(missing)} test clips have no row (e.g. {', '.join(missing[:5])})")
    if unknown:
        problems.append(f"{len(unknown)} rows name clips not in the truth (e.g. {', '.join(unknown[:5])})")
    if problems:
        raise DataError(f"{submission} is not a valid submission:\n  " + "\n  ".join(problems[:30]))
    names = list(truth_rows)
    index = {label: i for i, label in enumerate(labels)}
    y = np.zeros((len(names), len(labels)))
    for i, name in enumerate(names):
        for label in filter(None, (t.strip() for t in truth_rows[name].split(","))):
            if label not in index:
                raise DataError(f"{truth}: {name} has label {label!r}, which is not in the vocabulary")
            y[i, index[label]] = 1
    s = np.stack([scores[n] for n in names])
    per_class, weights = per_class_lwlrap(y, s)
    return {"lwlrap": lwlrap(y, s), "clips": len(names),
            "per_class": [{"label": label, "lwlrap": None if np.isnan(p) else float(p), "weight": float(w),
                           "positives": int(y[:, i].sum())} for i, (label, p, w) in enumerate(zip(labels, per_class, weights))]}


# ----------------------------------------------------------------------------- tagging


def tag_files(run_dir: str | Path, files: list[str | Path], *, top: int = 5, device: str = "auto") -> list[dict]:
    """The ``top`` labels of each audio file (a folder stands for the audio files under it), with
    fold-averaged probabilities: ``{"file", "tags"}``, or ``{"file", "error", "hint"}`` for a file
    that cannot be used, so one bad file does not stop the others."""
    run = Run.open(run_dir)
    config = run.config
    paths = []
    for item in map(Path, files):
        if item.is_dir():
            found = audio_files_under(item)
            if not found:
                raise DataError(f"{item} holds no audio files", hint="pass audio files, or a folder that has some")
            paths += found
        else:
            paths.append(item)
    frontend = FrontEnd(config.audio, config.features).eval()
    arrays, out = [], []
    for path in paths:
        try:
            y, _ = load_audio(path, sample_rate=config.audio.sample_rate, quality=config.audio.resample_quality,
                              trim_top_db=config.audio.trim_top_db if config.audio.trim_silence else None)
        except AudioError as e:
            out.append({"file": str(path), "error": e.detail, "hint": e.hint or ""})
            continue
        arrays.append(compute_features(y, frontend))
        out.append({"file": str(path)})
    if arrays:
        device = resolve_device(device)
        probs, _ = predict_models(load_models(run, device=device), ClipBank(arrays), inference_spec(config),
                                  device=device, precision=inference_precision(run.info.get("precision", "fp32"), device),
                                  fold_mean=config.predict.fold_mean)
        vocabulary = _run_vocabulary(run)
        for item, p in zip((item for item in out if "error" not in item), probs):
            best = np.argsort(-p, kind="stable")[:top]
            item["tags"] = [(vocabulary[i], float(p[i])) for i in best]
    return out
