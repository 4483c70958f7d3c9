"""A finished run's fold models predict a test set into a Kaggle submission."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .. import fsutil
from ..audio.inventory import default_cache_dir
from ..engine.precision import inference_precision, resolve_device
from ..errors import AudiotagError, DataError
from ..features.bank import ClipBank
from ..features.cache import build_features
from ..metrics import lwlrap
from ..runs import DataSpec, Run, write_predictions
from .predict import inference_spec, predict_models


def predict_run(run_dir: str | Path, data: DataSpec, *, out: str | Path, cache_dir: str | Path | None = None,
                tta_views: int | None = None, skip_bad: bool = False, progress: bool = True,
                device: str = "auto", allow_missing_folds: bool = False) -> dict:
    """Write a Kaggle-format submission for the test clips of ``data`` with the run's fold models
    (on ``device``: auto takes a GPU when there is one, whatever the run was trained on).

    ``data`` may hold only ``test/`` and ``sample_submission.csv``. Its labels must be the run's, in
    the same order. With ``skip_bad``, an unusable test clip still gets a row (the training label
    frequencies, so the file stays complete) and is listed in the result. A fold model the run
    should have and lacks is an error unless ``allow_missing_folds``.
    """
    if tta_views is not None and (isinstance(tta_views, bool) or not isinstance(tta_views, int) or tta_views < 0):
        raise AudiotagError(f"TTA views (--tta) = {tta_views!r}: a whole number of 0 or more",
                            hint="0 predicts the clean windows only")
    run = Run.open(run_dir)
    fsutil.check_writable(out)
    config = run.config
    ds = data.load()
    test = ds.split("test")
    if not test:
        raise DataError(f"{data.root or data.csv}: no test clips (expected sample_submission.csv or a test/ folder)")
    vocabulary = run.vocabulary
    if tuple(ds.vocabulary) != vocabulary:
        raise DataError("the dataset's labels differ from the run's (names or order)",
                        hint=f"the run was trained on {len(vocabulary)} labels starting {', '.join(vocabulary[:3])}")
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(run.info.get("cache_dir") or default_cache_dir())
    features = build_features(ds, config, cache_dir=cache_dir, splits=("test",), skip_bad=skip_bad, progress=progress)
    good = features.dataset.split("test")
    device = resolve_device(device)
    models = run.load_fold_models(device=device, allow_missing=allow_missing_folds)
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


def _training_prior(run: Run, n_classes: int) -> np.ndarray:
    path = run.dir / "oof_predictions.csv"
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        return np.array([[float(v) for v in r[2:]] for r in rows[1:]]).mean(axis=0)
    return np.full(n_classes, 1.0 / n_classes)
