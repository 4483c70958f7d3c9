"""Ensemble members: finished runs' out-of-fold and test predictions, loaded and aligned clip by clip."""


from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio.inventory import digest_bytes
from ..errors import AudiotagError, DataError
from ..runs import Run, read_oof_predictions, read_predictions


@dataclass
class Member:
    name: str
    run: Run
    vocabulary: list[str]
    oof_fnames: list[str]
    folds: dict[str, int]
    oof: np.ndarray
    test_fnames: list[str]
    test: np.ndarray
    views: int | None = None  # TTA views its predictions hold when cut by a budget; None: as trained (its CSVs)

    @property
    def predicted_views(self) -> int:
        return self.run.config.predict.tta_views if self.views is None else self.views


def run_fingerprint(run: Run) -> str:
    """Changes whenever the run's fold models or predictions are made again."""
    return digest_bytes((run.dir / "oof_predictions.csv").read_bytes())


def member_records(members: list[Member], out: Path) -> dict:
    """How a predictor finds and uses each member later: its folder (relative to ``out`` first),
    the TTA views its blended predictions held, whether they were read back from its 6-decimal
    CSVs, and a fingerprint that changes if the run is trained again."""
    out = Path(out).resolve()
    return {m.name: {"folder": os.path.relpath(m.run.dir.resolve(), out), "absolute": str(m.run.dir.resolve()),
                     "views": m.predicted_views, "from_csv": m.views is None, "fingerprint": run_fingerprint(m.run)}
            for m in members}


def load_member(run_dir: str | Path, name: str | None = None) -> Member:
    run = Run.open(run_dir)
    oof_path, test_path = run.dir / "oof_predictions.csv", run.dir / "test_predictions.csv"
    for path in (oof_path, test_path):
        if not path.is_file():
            raise AudiotagError(f"{run.dir} has no {path.name}: it has not finished training",
                                hint=f"finish it with `audiotag train --resume {run.dir}`")
    fnames, vocabulary, folds, oof = read_oof_predictions(oof_path)
    test_fnames, test_vocabulary, test = read_predictions(test_path)
    if test_vocabulary != vocabulary:
        raise DataError(f"{run.dir}: oof_predictions.csv and test_predictions.csv have different label columns")
    done = run.scores or {}
    if done.get("folds_done") is not None and len(done["folds_done"]) < done.get("n_folds", 0):
        raise AudiotagError(f"{run.dir} trained only folds {done['folds_done']} of {done['n_folds']}: its OOF "
                            "predictions do not cover every clip", hint=f"finish it with `audiotag train --resume {run.dir}`")
    return Member(name or run.dir.name, run, vocabulary, fnames, folds, oof, test_fnames, test)


def check_aligned(members: list[Member]) -> None:
    """Refuse members that cannot be blended clip by clip: different labels, clips or folds."""
    first = members[0]
    problems = []
    for m in members[1:]:
        if m.vocabulary != first.vocabulary:
            same_set = sorted(m.vocabulary) == sorted(first.vocabulary)
            problems.append(f"{m.name}: its labels {'are in a different order' if same_set else 'differ'} from {first.name}'s")
            continue
        if set(m.oof_fnames) != set(first.oof_fnames):
            only_a, only_b = set(first.oof_fnames) - set(m.oof_fnames), set(m.oof_fnames) - set(first.oof_fnames)
            problems.append(f"{m.name}: OOF clips differ from {first.name}'s ({len(only_a)} only in {first.name}, "
                            f"{len(only_b)} only in {m.name}, e.g. {sorted(only_a | only_b)[:3]})")
            continue
        moved = [f for f in first.oof_fnames if m.folds[f] != first.folds[f]]
        if moved:
            problems.append(f"{m.name}: {len(moved)} clips are in different folds than in {first.name} "
                            f"(e.g. {moved[:3]}); nested evaluation needs the same folds")
        if set(m.test_fnames) != set(first.test_fnames):
            problems.append(f"{m.name}: its test clips differ from {first.name}'s")
    if problems:
        raise DataError("these runs cannot be ensembled:\n  " + "\n  ".join(problems),
                        hint="ensemble runs trained on the same dataset with the same fold settings "
                             "(train.folds, train.fold_seed or else seed, use_dataset_folds)")


def stack_members(members: list[Member]) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """``(fnames, X_oof (n, M, K), test fnames, X_test)`` in the first member's row order."""
    fnames, test_fnames = members[0].oof_fnames, members[0].test_fnames

    def rows(names: list[str], wanted: list[str]) -> list[int]:
        index = {name: i for i, name in enumerate(names)}
        return [index[name] for name in wanted]

    oof = np.stack([m.oof[rows(m.oof_fnames, fnames)] for m in members], axis=1)
    test = np.stack([m.test[rows(m.test_fnames, test_fnames)] for m in members], axis=1)
    return fnames, oof, test_fnames, test


def member_truth(member: Member, fnames: list[str], test_fnames: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    ds = member.run.data.load(audio=False)
    if list(ds.vocabulary) != member.vocabulary:
        raise DataError(f"{member.name}: the dataset's labels are no longer the ones the run was trained on")
    labels = {c.fname: c for c in ds.clips if c.split != "test"}
    missing = [f for f in fnames if f not in labels]
    if missing:
        raise DataError(f"{len(missing)} OOF clips are not in the dataset any more (e.g. {missing[:3]})")
    y = ds.label_matrix([labels[f] for f in fnames])
    y_test = None
    if ds.test_labelled:
        tests = {c.fname: c for c in ds.split("test")}
        if all(f in tests for f in test_fnames):
            y_test = ds.label_matrix([tests[f] for f in test_fnames])
    return y, y_test
