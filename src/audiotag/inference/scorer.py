"""One finished run's fold models as a scorer of new audio: its own features, windows and TTA.

A scorer takes decoded audio at any sample rate (each run resamples as it was trained), a
dataset's test split through the feature cache, or one long recording cut into windows centred
at given times (for timelines). Ensembles blend several scorers (:mod:`audiotag.predictor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio.io import prepare_waveform
from ..audio.inventory import default_cache_dir
from ..data.records import Clip, Dataset
from ..engine.precision import inference_precision, resolve_device
from ..errors import AudioError
from ..features.bank import ClipBank
from ..features.cache import build_features, compute_features
from ..features.frontend import FrontEnd
from ..runs import Run, read_oof_predictions
from .predict import frames_per_second, inference_spec, predict_models


@dataclass
class Decoded:
    """Audio as decoded: samples ``(n,)`` or ``(n, channels)`` at ``sample_rate``, and its name."""

    name: str
    samples: np.ndarray
    sample_rate: int


class RunScorer:
    def __init__(self, run: Run, *, device: str | torch.device = "auto", views: int | None = None,
                 allow_missing_folds: bool = False):
        self.run, self.config = run, run.config
        self.labels = run.vocabulary
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.models = run.load_fold_models(device=self.device, allow_missing=allow_missing_folds)
        self.spec = inference_spec(self.config, views=views)
        self.precision = inference_precision(run.info.get("precision", "fp32"), self.device)
        self._frontend: FrontEnd | None = None

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def tta_views(self) -> int | None:
        return self.spec.views

    def _predict(self, bank: ClipBank, spec=None) -> tuple[np.ndarray, float]:
        return predict_models(self.models, bank, spec or self.spec, device=self.device, precision=self.precision,
                              fold_mean=self.config.predict.fold_mean)

    def features(self, audio: Decoded) -> np.ndarray:
        """``(C, F, T)`` features of ``audio``, computed as the run's cache computes them."""
        a = self.config.audio
        if self._frontend is None:
            self._frontend = FrontEnd(a, self.config.features).eval()
        y = prepare_waveform(audio.samples, audio.sample_rate, sample_rate=a.sample_rate, quality=a.resample_quality,
                             trim_top_db=a.trim_top_db if a.trim_silence else None)
        # stored as the cache stores them (float16 by default), so a file predicts as its cached copy does
        features = compute_features(y, self._frontend, dtype=self.config.features.cache_dtype)
        if not np.isfinite(features).all():
            raise AudioError("its features came out NaN or infinite", code="nonfinite-features", path=audio.name,
                             hint="the audio holds values the front-end cannot take; re-export the file")
        return features

    def clips(self, audio: list[Decoded]) -> np.ndarray:
        """Probabilities ``(n_clips, n_labels)``, TTA and fold averaging included."""
        return self._predict(ClipBank([self.features(a) for a in audio]))[0]

    def test_split(self, ds: Dataset, *, cache_dir: str | Path | None = None, skip_bad: bool = False,
                   progress: bool = True) -> tuple[list[Clip], np.ndarray, float]:
        """The usable test clips of ``ds``, their probabilities and the seconds spent per clip."""
        cache_dir = Path(cache_dir) if cache_dir is not None else Path(self.run.info.get("cache_dir")
                                                                       or default_cache_dir())
        features = build_features(ds, self.config, cache_dir=cache_dir, splits=("test",), skip_bad=skip_bad,
                                  progress=progress)
        good = features.dataset.split("test")
        probs, seconds = self._predict(ClipBank.from_features(features, good))
        return good, probs, seconds

    def windows(self, audio: Decoded, centres_s: np.ndarray) -> np.ndarray:
        """Probabilities ``(n_centres, n_labels)`` of windows of the run's length centred at
        ``centres_s``; a window reaching past an end holds the clip's floor value there. No TTA."""
        features = self.features(audio)
        fps = frames_per_second(self.config)
        spec = inference_spec(self.config, views=0)
        width, n = spec.window, features.shape[-1]
        pieces = []
        for centre in centres_s:
            start = int(round(centre * fps)) - width // 2
            piece = np.full(features.shape[:2] + (width,), features.min(), np.float32)
            lo, hi = max(start, 0), min(start + width, n)
            if hi > lo:
                piece[..., lo - start: hi - start] = features[..., lo:hi]
            pieces.append(piece)
        return self._predict(ClipBank(pieces), spec)[0]

    def window_seconds(self) -> float:
        return inference_spec(self.config, views=0).window / frames_per_second(self.config)

    def prior(self) -> np.ndarray:
        """The training label frequencies as the run predicted them out of fold (a stand-in row)."""
        path = self.run.dir / "oof_predictions.csv"
        if path.exists():
            return read_oof_predictions(path)[3].mean(axis=0)
        return np.full(len(self.labels), 1.0 / len(self.labels))
