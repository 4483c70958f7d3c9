"""Cross-validation folds, decided in exactly one place.

A dataset's own folds (ESC-50, UrbanSound8K) are used when it has them; otherwise clips are split
by iterative multilabel stratification (Sechidis et al., via ``iterative-stratification``), which
keeps every label's frequency close to equal across folds. The assignment is written once per
(clips and labels, number of folds, seed) under the cache and reused, so every experiment on a
dataset is evaluated on the same folds.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from .. import fsutil
from ..errors import DataError
from .records import Clip, Dataset


@dataclass(frozen=True)
class Folds:
    """``fold[fname]`` in ``0 .. n_folds - 1``; ``source`` says where they came from."""

    fold: dict[str, int]
    n_folds: int
    source: str  # "dataset" | "stratified"

    def indices(self, clips: list[Clip], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) positions in ``clips`` for fold ``k``."""
        ids = np.array([self.fold[c.fname] for c in clips])
        return np.flatnonzero(ids != k), np.flatnonzero(ids == k)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["fname", "fold"])
        writer.writerows(sorted(self.fold.items()))
        return out.getvalue()


def read_folds_csv(path: Path, *, source: str = "stratified") -> Folds:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    fold = {r["fname"]: int(r["fold"]) for r in rows}
    return Folds(fold=fold, n_folds=max(fold.values()) + 1, source=source)


def _fingerprint(clips: list[Clip], n_folds: int, seed: int) -> str:
    h = hashlib.sha256(f"{n_folds}:{seed}".encode())
    for clip in sorted(clips, key=lambda c: c.fname):
        h.update(f"\n{clip.fname}\t{','.join(sorted(clip.labels))}".encode())
    return h.hexdigest()[:16]


def make_folds(ds: Dataset, clips: list[Clip], *, n_folds: int, seed: int, use_dataset_folds: bool = True,
               cache_dir: Path | None = None) -> Folds:
    """Assign each of ``clips`` (the labelled training clips) to a fold."""
    if use_dataset_folds and clips and all(c.fold is not None for c in clips):
        values = sorted({c.fold for c in clips})
        if len(values) < 2:
            raise DataError(f"the dataset's fold column has a single value ({values[0]}); cross-validation needs two or more",
                            hint="set train.use_dataset_folds=false to stratify instead")
        index = {v: i for i, v in enumerate(values)}
        return Folds({c.fname: index[c.fold] for c in clips}, len(values), "dataset")
    if len(clips) < n_folds:
        raise DataError(f"{len(clips)} labelled clips cannot be split into {n_folds} folds",
                        hint="lower train.folds or add data")
    path = Path(cache_dir) / "folds" / f"{_fingerprint(clips, n_folds, seed)}.csv" if cache_dir else None
    if path is not None and path.exists():
        folds = read_folds_csv(path)
        if set(folds.fold) == {c.fname for c in clips}:
            return folds
    y = ds.label_matrix(clips)
    assignment = np.zeros(len(clips), dtype=int)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(clips)), y)):
        assignment[val] = k
    folds = Folds({c.fname: int(k) for c, k in zip(clips, assignment)}, n_folds, "stratified")
    if path is not None:
        fsutil.write_text(path, folds.to_csv())
    return folds
