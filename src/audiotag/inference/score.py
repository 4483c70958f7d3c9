"""Scoring a submission file: validated strictly, as Kaggle did, then lwlrap against the truth."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..data.csvio import read_vocabulary
from ..errors import DataError
from ..metrics import lwlrap, lwlrap_by_label_count, per_class_lwlrap


def _read_vocabulary_for(truth: Path, explicit: Path | None, header: list[str]) -> list[str]:
    for candidate in (explicit, truth.parent / "vocabulary.csv"):
        if candidate is not None and Path(candidate).exists():
            return list(read_vocabulary(Path(candidate), []))
    return header[1:]


def _rows(path: Path, what: str) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} ({what}) cannot be read as a CSV ({type(e).__name__})",
                        hint="give a UTF-8 CSV file") from None


def score_submission(submission: str | Path, truth: str | Path, *, vocabulary: str | Path | None = None) -> dict:
    """Validate a submission strictly (as Kaggle did) and compute its lwlrap against ``truth``
    (``fname,labels[,...]``). Raises :class:`DataError` listing every problem."""
    submission, truth = Path(submission), Path(truth)
    for path, what in ((submission, "the submission"), (truth, "--truth")):
        if not path.is_file():
            raise DataError(f"{path} ({what}) does not exist" if not path.is_dir() else f"{path} ({what}) is a folder",
                            hint="give the CSV file's path")
    rows = _rows(submission, "the submission")
    if not rows:
        raise DataError(f"{submission} is empty", hint="a submission is fname + one column per label, a row a clip")
    header, body = rows[0], rows[1:]
    labels = _read_vocabulary_for(truth, Path(vocabulary) if vocabulary else None, header)
    problems = []
    if header[:1] != ["fname"] or header[1:] != labels:
        missing = [v for v in labels if v not in header]
        extra = [h for h in header[1:] if h not in labels]
        problems.append(f"header must be fname + the {len(labels)} labels in vocabulary order"
                        + (f"; missing {missing[:5]}" if missing else "") + (f"; unexpected {extra[:5]}" if extra else "")
                        + ("; same labels, wrong order" if not missing and not extra else ""))
    truth_table = _rows(truth, "--truth")
    if not truth_table or "fname" not in truth_table[0]:
        raise DataError(f"{truth} (--truth) has no fname column", hint="the truth is fname,labels (test_labels.csv)")
    columns = truth_table[0]
    truth_rows = {row[columns.index("fname")]: (row[columns.index("labels")] if "labels" in columns
                                                 and len(row) > columns.index("labels") else "")
                  for row in truth_table[1:] if len(row) > columns.index("fname")}
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
        raise DataError(f"{submission} is not a valid submission:\n  " + "\n  ".join(problems[:30]),
                        hint="fname + the labels in vocabulary order, one row per test clip, finite numbers "
                             "(sample_submission.csv shows the layout)")
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
    return {"lwlrap": lwlrap(y, s), "clips": len(names), "by_label_count": lwlrap_by_label_count(y, s),
            "per_class": [{"label": label, "lwlrap": None if np.isnan(p) else float(p), "weight": float(w),
                           "positives": int(y[:, i].sum())} for i, (label, p, w) in enumerate(zip(labels, per_class, weights))]}
