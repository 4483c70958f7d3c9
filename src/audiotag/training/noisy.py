"""The noisily-labelled set in training: which noisy clips each fold sees, with which targets.

- ``joint``: every fold trains on its curated clips plus all noisy clips with their given labels;
- ``pretrain``: one model trains on the noisy clips (``RUN/pretrain/``), every fold starts from it;
- ``pseudo``: a finished curated-only *teacher* run predicts the noisy clips; fold ``k`` uses only
  the teacher's fold-``k`` model, which was trained on the same curated clips as the student's fold
  ``k``, so no validation clip leaks into the student's training targets. A rule then keeps or
  relabels the noisy clips; what it kept is written to ``RUN/pseudo/``;
- ``mixmatch``: every fold's batches hold noisy clips as unlabelled data (:mod:`audiotag.engine.mixmatch`).

With ``noisy.test_predictions``, the test clips labelled by earlier predictions join the noisy rows
of every fold, under any strategy but MixMatch (pseudo-labelling the test set).

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
from ..config import NoisyConfig
from ..data.folds import Folds, read_folds_csv
from ..data.records import Clip, Dataset
from ..engine.losses import SourceAwareLoss
from ..errors import AudiotagError
from ..features.bank import ClipBank
from ..features.cache import FeatureSet
from ..inference.predict import inference_spec, predict_model
from ..inference.standardize import standardize_labels
from ..metrics import lwlrap
from ..runs import Run
from .context import TrainingContext

# a pretraining must beat the label frequencies' lwlrap by this much to count as having learnt
PRETRAIN_MARGIN = 0.05


@dataclass
class NoisyPart:
    """The noisy clips one fold trains on and their targets ``(n, K)`` (hard or soft); the last
    ``n_test`` of them are pseudo-labelled test clips."""

    clips: list[Clip]
    targets: np.ndarray
    n_test: int = 0


def noisy_loss(cfg: NoisyConfig) -> SourceAwareLoss:
    return SourceAwareLoss(cfg.loss, noisy_weight=cfg.weight, smoothing=cfg.smoothing, beta=cfg.bootstrap_beta,
                           q=cfg.lq_q, drop=cfg.drop_fraction)


def pretraining_warning(curated_lwlrap: float, curated_targets: np.ndarray, noisy_given: np.ndarray,
                        cfg: NoisyConfig) -> str | None:
    """What to tell the user when a noisy-only pretraining scores the curated clips little better than
    the noisy labels' frequencies alone (the same ranking for every clip); ``None`` when it learnt."""
    prior = lwlrap(curated_targets, np.tile(noisy_given.mean(axis=0), (len(curated_targets), 1)))
    if curated_lwlrap >= prior + PRETRAIN_MARGIN:
        return None
    why = (f"a robust loss (noisy.loss = {cfg.loss}) on noisy rows alone can settle on predicting no label; "
           "pretrain with noisy.loss=bce" if cfg.loss != "bce" else "give it more noisy.pretrain_epochs")
    return (f"the pretraining learnt next to nothing: lwlrap {curated_lwlrap:.4f} on the curated clips, and "
            f"scoring every clip by the noisy labels' frequencies alone gives {prior:.4f}; {why}, "
            "or use another noisy.strategy")


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
                  part: NoisyPart | None) -> tuple[ClipBank, np.ndarray | None, np.ndarray | None]:
    """The fold's training clips; with a noisy part, targets gain the source column, and the masks
    of noisy rows and of pseudo-labelled test rows (a subset of them) are returned for the sampler."""
    if part is None:
        return ClipBank.from_features(features, curated, curated_targets), None, None
    targets = np.concatenate([
        np.concatenate([curated_targets, np.zeros((len(curated), 1), np.float32)], axis=1),
        np.concatenate([part.targets.astype(np.float32), np.ones((len(part.clips), 1), np.float32)], axis=1)])
    mask = np.r_[np.zeros(len(curated), bool), np.ones(len(part.clips), bool)]
    test = np.r_[np.zeros(len(curated) + len(part.clips) - part.n_test, bool), np.ones(part.n_test, bool)]
    return ClipBank.from_features(features, curated + part.clips, targets), mask, test


# ----------------------------------------------------------------------------- pseudo-labels


def teacher_predictions(teacher: Run, features: FeatureSet, clips: list[Clip], *, folds: Folds, device: torch.device,
                        cache: Path, progress_log=print, only: list[int] | None = None) -> dict[int, np.ndarray]:
    """Each teacher fold model's probabilities for ``clips`` (clean windows, no TTA), cached in ``cache``;
    ``only`` the folds listed, when given (a student of ``train.only_folds`` needs no others)."""
    teacher_folds = read_folds_csv(teacher.dir / "folds.csv")
    if teacher_folds.fold != folds.fold:
        raise AudiotagError(f"the teacher run {teacher.dir} used other folds than this run",
                            hint="train the teacher with the same folds (train.folds, and seed or train.fold_seed) "
                                 "on the same data")
    config = teacher.config
    out = {}
    bank = ClipBank.from_features(features, clips)
    for k in range(folds.n_folds) if only is None else only:
        path = cache / f"teacher_fold_{k}.npy"
        if path.exists() and np.load(path, mmap_mode="r").shape[0] == len(clips):
            out[k] = np.load(path)
            continue
        if not teacher.fold_done(k):
            raise AudiotagError(f"the teacher run {teacher.dir} has not finished fold {k}",
                                hint=f"finish it: audiotag train --resume {teacher.dir}")
        progress_log(f"teacher fold {k}: predicting {len(clips)} noisy clips")
        model = teacher.load_fold_model(k, config=config, device=device)
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


# ----------------------------------------------------------------------------- test pseudo-labels


def pseudo_labels_for_test_clips(path: str | Path, test_clips: list[Clip], vocabulary: tuple[str, ...],
                                 threshold: float, targets: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """``(kept mask over test_clips, targets (n_kept, K))`` from a Kaggle-format prediction CSV:
    ``labels``: a test clip keeps the labels predicted at ``threshold`` or above, clips with none
    are left out; ``soft``: every clip, the predicted probabilities as its targets;
    ``standardized``: every clip, the probabilities standardised per label over these clips as a
    submission's are (:func:`audiotag.inference.standardize.standardize_labels`)."""
    path = Path(path)
    where = f"noisy.test_predictions = {path}"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError) as e:
        raise AudiotagError(f"{where}: cannot read it ({e})",
                            hint="give a run's test_predictions.csv or a submission.csv") from None
    if not rows or [c.strip() for c in rows[0]] != ["fname", *vocabulary]:
        found = rows[0][:4] if rows else "an empty file"
        raise AudiotagError(f"{where}: expected the columns fname + the {len(vocabulary)} labels in vocabulary order "
                            f"(like sample_submission.csv); found {found}…",
                            hint="predictions of this dataset's test clips: a run's test_predictions.csv or a submission")
    wanted = {c.fname: i for i, c in enumerate(test_clips)}
    probs = np.full((len(test_clips), len(vocabulary)), np.nan, np.float32)
    for line, row in enumerate(rows[1:], start=2):
        name = row[0].strip()
        if name not in wanted:
            raise AudiotagError(f"{where}, line {line}: {name!r} is not a test clip of this dataset",
                                hint="the predictions must come from the same dataset's test split")
        if not np.isnan(probs[wanted[name]]).all():
            raise AudiotagError(f"{where}, line {line}: {name!r} appears twice")
        try:
            values = np.array([float(v) for v in row[1:]], np.float32)
        except ValueError:
            values = np.array([])
        if values.shape != (len(vocabulary),) or not np.isfinite(values).all():
            raise AudiotagError(f"{where}, line {line}: expected {len(vocabulary)} finite numbers after the fname")
        probs[wanted[name]] = values
    missing = [c.fname for c, row in zip(test_clips, probs) if np.isnan(row).all()]
    if missing:
        raise AudiotagError(f"{where}: no predictions for {len(missing)} test clip(s) (e.g. {missing[0]})",
                            hint="predict the whole test split (audiotag predict RUN --data DATA)")
    if targets == "soft":
        return np.ones(len(test_clips), bool), probs
    if targets == "standardized":
        return np.ones(len(test_clips), bool), standardize_labels(probs).astype(np.float32)
    labels = probs >= threshold
    kept = labels.any(axis=1)
    return kept, labels[kept].astype(np.float32)


# ----------------------------------------------------------------------------- per run


class NoisyPlan:
    """What ``config.noisy`` means for one run: the noisy part of each fold's training set."""

    def __init__(self, ctx: TrainingContext):
        config, ds = ctx.config, ctx.ds
        self.cfg, self.run, self.features, self.folds, self.device = config.noisy, ctx.run, ctx.features, ctx.folds, ctx.device
        self.vocabulary = ds.vocabulary
        self.clips = noisy_clips(ds, config.noisy, seed=config.seed) if self.strategy != "none" else []
        self.given = ds.label_matrix(self.clips)
        self._teacher: dict[int, np.ndarray] = {}
        self.test_part = self._test_part(ds.split("test")) if self.cfg.test_predictions else None

    @property
    def strategy(self) -> str:
        return self.cfg.strategy

    def part(self, k: int) -> NoisyPart | None:
        part = None
        if self.strategy in ("joint", "mixmatch"):  # mixmatch ignores the given labels
            part = NoisyPart(self.clips, self.given)
        elif self.strategy == "pseudo":
            part = self._pseudo_part(k)
        if self.test_part is None:
            return part
        if part is None:
            return self.test_part
        return NoisyPart(part.clips + self.test_part.clips, np.concatenate([part.targets, self.test_part.targets]),
                         n_test=len(self.test_part.clips))

    def _test_part(self, test_clips: list[Clip]) -> NoisyPart:
        if not test_clips:
            raise AudiotagError("noisy.test_predictions is set but the dataset has no test clips",
                                hint="pseudo-labelling the test set needs its audio (test/ in the Kaggle layout)")
        kept, targets = pseudo_labels_for_test_clips(self.cfg.test_predictions, test_clips, self.vocabulary,
                                                     self.cfg.test_threshold, self.cfg.test_targets)
        clips = [c for c, keep in zip(test_clips, kept) if keep]
        fsutil.write_text(self.run.dir / "test_pseudo_labels.csv", _selection_csv(
            test_clips, self.vocabulary, np.zeros((len(test_clips), len(self.vocabulary))), kept, targets))
        how = {"soft": f"all {len(clips)}, the predicted probabilities as targets",
               "standardized": f"all {len(clips)}, the predicted probabilities standardised per label as targets",
               }.get(self.cfg.test_targets, f"{len(clips)} of {len(test_clips)} have a prediction >= "
                                            f"{self.cfg.test_threshold} ({int(targets.sum())} labels)")
        self.run.log(f"pseudo-labelled test clips: {how}; they join every fold as noisy rows"
                     + (f", {self.cfg.test_batch_fraction:.0%} of each batch" if self.cfg.test_batch_fraction else ""))
        return NoisyPart(clips, targets, n_test=len(clips))

    def _pseudo_part(self, k: int) -> NoisyPart:
        folder = self.run.dir / "pseudo"
        if k not in self._teacher:
            teacher_dir = Path(self.cfg.teacher)
            if not (teacher_dir / "run.json").exists():
                raise AudiotagError(f"noisy.teacher = {self.cfg.teacher} is not a run folder")
            self._teacher |= teacher_predictions(Run.open(teacher_dir), self.features, self.clips, folds=self.folds,
                                                 device=self.device, cache=folder, progress_log=self.run.log, only=[k])
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
