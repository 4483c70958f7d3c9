"""The noisily-labelled set in training: which noisy clips each fold sees, with which targets.

- ``joint``: every fold trains on its curated clips plus all noisy clips with their given labels;
- ``pretrain``: one model trains on the noisy clips (``RUN/pretrain/``), every fold starts from it;
- ``pseudo``: a finished curated-only *teacher* run predicts the noisy clips; fold ``k`` uses only
  the teacher's fold-``k`` model, which was trained on the same curated clips as the student's fold
  ``k``, so no validation clip leaks into the student's training targets. A rule then keeps or
  relabels the noisy clips; what it kept is written to ``RUN/pseudo/``;
- ``mixmatch``: every fold's batches hold noisy clips as unlabelled data (:mod:`audiotag.engine.mixmatch`).

Noisy rows always carry a source column (see :mod:`audiotag.engine.losses`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import fsutil
from ..config import Config, NoisyConfig
from ..data.folds import Folds, read_folds_csv
from ..data.records import Clip, Dataset
from ..engine.losses import SourceAwareLoss
from ..errors import AudiotagError
from ..features.cache import FeatureSet
from .inputs import ClipBank
from .predict import predict_model
from .runs import Run


@dataclass
class NoisyPart:
    """The noisy clips one fold trains on and their targets ``(n, K)`` (hard or soft)."""

    clips: list[Clip]
    targets: np.ndarray


def noisy_loss(cfg: NoisyConfig) -> SourceAwareLoss:
    return SourceAwareLoss(cfg.loss, noisy_weight=cfg.weight, smoothing=cfg.smoothing, beta=cfg.bootstrap_beta,
                           q=cfg.lq_q, drop=cfg.drop_fraction)


def noisy_clips(ds: Dataset, cfg: NoisyConfig, *, seed: int) -> list[Clip]:
    clips = ds.split("noisy")
    if not clips:
        raise AudiotagError(f"noisy.strategy = {cfg.strategy} but the dataset has no noisy clips",
                            hint="the Kaggle layout reads them from train_noisy.csv + train_noisy/; "
                                 "or use noisy.strategy=none")
    if cfg.max_clips is not None and cfg.max_clips < len(clips):
        keep = np.sort(np.random.default_rng([seed, 7]).choice(len(clips), cfg.max_clips, replace=False))
        clips = [clips[i] for i in keep]
    return clips


def training_bank(features: FeatureSet, curated: list[Clip], curated_targets: np.ndarray,
                  part: NoisyPart | None) -> tuple[ClipBank, np.ndarray | None]:
    """The fold's training clips; with a noisy part, targets gain the source column and the mask
    of noisy rows is returned for the sampler."""
    if part is None:
        return ClipBank.from_features(features, curated, curated_targets), None
    targets = np.concatenate([
        np.concatenate([curated_targets, np.zeros((len(curated), 1), np.float32)], axis=1),
        np.concatenate([part.targets.astype(np.float32), np.ones((len(part.clips), 1), np.float32)], axis=1)])
    mask = np.r_[np.zeros(len(curated), bool), np.ones(len(part.clips), bool)]
    return ClipBank.from_features(features, curated + part.clips, targets), mask


# ----------------------------------------------------------------------------- pseudo-labels


def teacher_predictions(teacher: Run, features: FeatureSet, clips: list[Clip], *, folds: Folds, device: torch.device,
                        cache: Path, progress_log=print) -> dict[int, np.ndarray]:
    """Each teacher fold model's probabilities for ``clips`` (clean windows, no TTA), cached in ``cache``."""
    from .cv import inference_spec, load_fold_model  # cv imports this module

    teacher_folds = read_folds_csv(teacher.dir / "folds.csv")
    if teacher_folds.fold != folds.fold:
        raise AudiotagError(f"the teacher run {teacher.dir} used other folds than this run",
                            hint="train the teacher with the same seed and train.folds on the same data")
    config = teacher.config
    out = {}
    bank = ClipBank.from_features(features, clips)
    for k in range(folds.n_folds):
        path = cache / f"teacher_fold_{k}.npy"
        if path.exists() and np.load(path, mmap_mode="r").shape[0] == len(clips):
            out[k] = np.load(path)
            continue
        if not (teacher.fold_dir(k) / "done.json").exists():
            raise AudiotagError(f"the teacher run {teacher.dir} has not finished fold {k}",
                                hint=f"finish it: audiotag train --resume {teacher.dir}")
        progress_log(f"teacher fold {k}: predicting {len(clips)} noisy clips")
        model = load_fold_model(teacher, k, config=config, device=device)
        out[k] = predict_model(model, bank, inference_spec(config, views=0), device=device,
                               precision=teacher.info.get("precision", "fp32"))
        fsutil.save_npy(path, out[k])
    return out


def select_pseudo(given: np.ndarray, teacher: np.ndarray, cfg: NoisyConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(kept mask (n,), targets (n_kept, K))`` of the noisy clips under ``cfg.pseudo_rule``.

    agree: keep the given labels the teacher gives at least ``pseudo_threshold``; clips left with
    none are dropped. relabel: the teacher's labels above the threshold replace the given ones.
    soft: every clip, target ``soft_alpha * given + (1 - soft_alpha) * teacher``.
    """
    t = cfg.pseudo_threshold
    if cfg.pseudo_rule == "soft":
        return np.ones(len(given), bool), cfg.soft_alpha * given + (1 - cfg.soft_alpha) * teacher
    labels = (given > 0) & (teacher >= t) if cfg.pseudo_rule == "agree" else teacher >= t
    kept = labels.any(axis=1)
    return kept, labels[kept].astype(np.float32)


def _selection_csv(clips: list[Clip], vocabulary, given, kept, targets) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["fname", "given", "kept", "new"])
    rows = iter(targets)
    for clip, g, keep in zip(clips, given, kept):
        new = next(rows) if keep else None
        fmt = lambda v: ",".join(vocabulary[i] for i in np.flatnonzero(v >= 0.5))  # noqa: E731
        writer.writerow([clip.fname, fmt(g), int(keep), fmt(new) if new is not None else ""])
    return out.getvalue()


# ----------------------------------------------------------------------------- per run


class NoisyPlan:
    """What ``config.noisy`` means for one run: the noisy part of each fold's training set."""

    def __init__(self, *, run: Run, config: Config, ds: Dataset, features: FeatureSet, folds: Folds,
                 device: torch.device):
        self.cfg, self.run, self.features, self.folds, self.device = config.noisy, run, features, folds, device
        self.vocabulary = ds.vocabulary
        self.clips = noisy_clips(ds, config.noisy, seed=config.seed)
        self.given = ds.label_matrix(self.clips)
        self._teacher: dict[int, np.ndarray] | None = None

    @property
    def strategy(self) -> str:
        return self.cfg.strategy

    def part(self, k: int) -> NoisyPart | None:
        if self.strategy in ("joint", "mixmatch"):  # mixmatch ignores the given labels
            return NoisyPart(self.clips, self.given)
        if self.strategy == "pseudo":
            return self._pseudo_part(k)
        return None

    def _pseudo_part(self, k: int) -> NoisyPart:
        folder = self.run.dir / "pseudo"
        if self._teacher is None:
            teacher_dir = Path(self.cfg.teacher)
            if not (teacher_dir / "run.json").exists():
                raise AudiotagError(f"noisy.teacher = {self.cfg.teacher} is not a run folder")
            self._teacher = teacher_predictions(Run.open(teacher_dir), self.features, self.clips, folds=self.folds,
                                                device=self.device, cache=folder, progress_log=self.run.log)
        kept, targets = select_pseudo(self.given, self._teacher[k], self.cfg)
        fsutil.write_text(folder / f"selection_fold_{k}.csv",
                          _selection_csv(self.clips, self.vocabulary, self.given, kept, targets))
        summary_path = folder / "selection.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        summary[str(k)] = {"rule": self.cfg.pseudo_rule, "threshold": self.cfg.pseudo_threshold,
                           "noisy_clips": len(self.clips), "kept": int(kept.sum()),
                           "given_labels": int((self.given > 0).sum()),
                           "labels_after": int((targets >= 0.5).sum())}
        fsutil.write_text(summary_path, json.dumps(summary, indent=2))
        self.run.log(f"fold {k}: pseudo-labels ({self.cfg.pseudo_rule}, threshold {self.cfg.pseudo_threshold}) kept "
                     f"{int(kept.sum())} of {len(self.clips)} noisy clips")
        return NoisyPart([c for c, keep in zip(self.clips, kept) if keep], targets)
