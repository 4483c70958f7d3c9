"""One record model for every dataset layout.

A :class:`Dataset` is a vocabulary plus a list of :class:`Clip` records, each in one of three
roles: ``curated`` (clean labelled training data; every clip of a generic CSV or class-folder
dataset), ``noisy`` (training data with unreliable labels) and ``test`` (to predict; labelled only
when ground truth is available). Problems found while reading are kept as :class:`Problem` rows
so validation can report all of them at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("curated", "noisy", "test")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, phrased for the user.

    A problem that names a clip (``fname``) can be skipped with ``--skip-bad``; one that does not
    (a vocabulary mismatch, a missing folder) stops everything until it is fixed.
    """

    code: str
    message: str
    hint: str = ""
    severity: str = "error"  # "error" | "warning"
    split: str | None = None
    fname: str | None = None
    source: str | None = None
    row: int | None = None

    @property
    def skippable(self) -> bool:
        return self.fname is not None and self.split is not None

    def format(self) -> str:
        where = ""
        if self.source and self.row:
            where = f"{self.source}:{self.row}: "
        elif self.source:
            where = f"{self.source}: "
        text = f"[{self.severity} {self.code}] {where}{self.message}"
        return f"{text}\n    -> {self.hint}" if self.hint else text


@dataclass(frozen=True)
class Clip:
    fname: str
    split: str
    path: Path | None  # None when the name is unsafe (escapes its folder)
    labels: tuple[str, ...] = ()
    fold: int | None = None
    source: str | None = None  # the CSV it came from
    row: int | None = None  # its line in that CSV (header = line 1)

    @property
    def key(self) -> tuple[str, str]:
        return (self.split, self.fname)


@dataclass
class Dataset:
    root: Path
    layout: str  # "kaggle" | "csv" | "folder"
    vocabulary: tuple[str, ...]
    clips: list[Clip]
    problems: list[Problem] = field(default_factory=list)
    # Folder holding each split's audio, scanned for files no CSV row names.
    audio_dirs: dict[str, Path] = field(default_factory=dict)
    # True when test clips carry ground-truth labels (test_labels.csv / test_post_competition.csv).
    test_labelled: bool = False
    skipped: list[Problem] = field(default_factory=list)

    def split(self, name: str) -> list[Clip]:
        return [c for c in self.clips if c.split == name]

    @property
    def splits(self) -> list[str]:
        present = {c.split for c in self.clips}
        return [s for s in SPLITS if s in present]

    @property
    def has_folds(self) -> bool:
        curated = self.split("curated")
        return bool(curated) and all(c.fold is not None for c in curated)

    def label_matrix(self, clips: list[Clip]) -> np.ndarray:
        """Binary targets ``[shape=(len(clips), len(vocabulary))]``, float32, vocabulary order."""
        index = {label: i for i, label in enumerate(self.vocabulary)}
        y = np.zeros((len(clips), len(self.vocabulary)), dtype=np.float32)
        for row, clip in enumerate(clips):
            for label in clip.labels:
                y[row, index[label]] = 1.0
        return y

    def without(self, problems: list[Problem]) -> "Dataset":
        """A copy without the clips these problems name, which are remembered in ``skipped``."""
        bad = {(p.split, p.fname) for p in problems if p.skippable}
        kept = [c for c in self.clips if c.key not in bad]
        return dataclasses.replace(self, clips=kept, skipped=list(self.skipped) + [p for p in problems if p.skippable])
