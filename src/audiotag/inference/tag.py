"""Tagging audio files with a finished run: each file's top labels, one bad file never stopping the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..audio.io import load_audio
from ..data.layouts import audio_files_under
from ..engine.precision import inference_precision, resolve_device
from ..errors import AudioError, AudiotagError, DataError
from ..features.bank import ClipBank
from ..features.cache import compute_features
from ..features.frontend import FrontEnd
from ..runs import Run
from .predict import inference_spec, predict_models


def tag_files(run_dir: str | Path, files: list[str | Path], *, top: int = 5, device: str = "auto",
              allow_missing_folds: bool = False) -> list[dict]:
    """The ``top`` labels of each audio file (a folder stands for the audio files under it), with
    fold-averaged probabilities: ``{"file", "tags"}``, or ``{"file", "error", "hint"}`` for a file
    that cannot be used, so one bad file does not stop the others."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise AudiotagError(f"top (--top) = {top!r}: the number of labels to show is a whole number of 1 or more")
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
        features = compute_features(y, frontend)
        if not np.isfinite(features).all():
            out.append({"file": str(path), "error": "its features came out NaN or infinite",
                        "hint": "the audio holds values the front-end cannot take; re-export the file"})
            continue
        arrays.append(features)
        out.append({"file": str(path)})
    if arrays:
        device = resolve_device(device)
        models = run.load_fold_models(device=device, allow_missing=allow_missing_folds)
        probs, _ = predict_models(models, ClipBank(arrays), inference_spec(config),
                                  device=device, precision=inference_precision(run.info.get("precision", "fp32"), device),
                                  fold_mean=config.predict.fold_mean)
        vocabulary = run.vocabulary
        for item, p in zip((item for item in out if "error" not in item), probs):
            best = np.argsort(-p, kind="stable")[:top]
            item["tags"] = [(vocabulary[i], float(p[i])) for i in best]
    return out
