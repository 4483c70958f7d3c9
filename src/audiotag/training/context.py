"""What every fold of one training run shares: its folder, data, folds, config, device and precision."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data.folds import Folds
from ..data.records import Clip, Dataset
from ..features.cache import FeatureSet
from ..runs import Run


class RunClock:
    """Counts a run's compute time into run.json as each fold finishes, so the folds of a session
    that was stopped (SIGKILL, a lost machine) still count once the run is resumed."""

    def __init__(self, run: Run):
        self.run, self.since = run, time.perf_counter()

    def lap(self, *, earlier: float = 0.0) -> None:
        """Counts the time since the last lap, plus ``earlier`` seconds spent by stopped sessions."""
        now = time.perf_counter()
        self.run.update_info(add_seconds=now - self.since + earlier)
        self.since = now


@dataclass
class TrainingContext:
    """One run's shared state, handed down ``run_cv -> run_fold -> fit`` instead of keyword lists.

    ``plan`` (the noisy set's part of each fold) and ``pretrained`` (weights every fold starts
    from) are filled in by :func:`audiotag.training.cv.run_cv` once the run's strategy has made them."""

    run: Run
    config: Config
    ds: Dataset
    features: FeatureSet
    folds: Folds
    train_clips: list[Clip]
    test_clips: list[Clip]
    device: torch.device
    precision: str
    plan: object | None = None  # a noisy.NoisyPlan (which is built from a context)
    pretrained: Path | None = None
    clock: RunClock | None = field(default=None, repr=False)

    @property
    def vocabulary(self) -> tuple[str, ...]:
        return self.ds.vocabulary

    def targets(self, clips: list[Clip]) -> np.ndarray:
        return self.ds.label_matrix(clips)

    def fold_split(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices into ``train_clips`` of fold ``k``'s training and validation clips."""
        return self.folds.indices(self.train_clips, k)
