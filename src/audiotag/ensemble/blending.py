"""Ensembling finished runs: align their predictions, measure how alike they are, prune, blend.

::

    OUT/members.csv              each run's pooled OOF lwlrap (and test lwlrap), kept or pruned
    OUT/correlation.csv          Pearson correlation over all clip x class scores
    OUT/correlation_per_class.csv  the same per class, averaged over classes
    OUT/correlation.png          heatmap of both
    OUT/blends.csv, blends.md    each blend's nested OOF lwlrap (and test lwlrap)
    OUT/ensemble.json            members, kept, chosen blend, its weights, settings
    OUT/oof_predictions.csv      the chosen blend's nested OOF predictions
    OUT/submission.csv           the chosen blend fitted on all OOF predictions, applied to the test set

Fitted blends (weights, selection, stackers) are scored by nested CV over the runs' own folds, and
the chosen blend is the one with the best *nested* OOF lwlrap; test labels never choose anything.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import numpy as np

from .. import fsutil
from ..errors import AudiotagError
from ..metrics import lwlrap
from ..plots import plot_correlation
from ..progress import progress_bar
from ..runs import write_predictions
from .estimators import BLENDERS, correlation, make_blender, nested_oof, prune
from .members import Member, check_aligned, load_member, member_records, member_truth, stack_members
from .persist import save_blender

DEFAULT_BLENDS = ("mean", "geometric", "rank", "weighted", "caruana", "stack_logistic", "stack_mlp")


def _table(rows: list[dict], columns: list[str]) -> tuple[str, str]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[r.get(c, "") for c in columns] for r in rows])
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return out.getvalue(), "\n".join(md) + "\n"


def _matrix_csv(names: list[str], matrix: np.ndarray) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model", *names])
    writer.writerows([[n, *(f"{v:.4f}" for v in row)] for n, row in zip(names, matrix)])
    return out.getvalue()


def ensemble_runs(run_dirs: list[str | Path], *, out: str | Path, blends: tuple[str, ...] = DEFAULT_BLENDS,
                  prune_threshold: float = 0.97, progress: bool = True) -> dict:
    """Blend finished runs into ``out`` (see the module docstring); returns the summary."""
    if len(run_dirs) < 2:
        raise AudiotagError("an ensemble needs at least two runs", hint="list two or more finished run folders")
    names = []
    for d in run_dirs:
        name = Path(d).name
        names.append(name if name not in names else f"{name}-{len(names)}")
    return blend_members([load_member(d, name) for d, name in zip(run_dirs, names)], out=out, blends=blends,
                         prune_threshold=prune_threshold, progress=progress)


def blend_members(members: list[Member], *, out: str | Path, blends: tuple[str, ...] = DEFAULT_BLENDS,
                  prune_threshold: float = 0.97, progress: bool = True, extra: dict | None = None) -> dict:
    """:func:`ensemble_runs` on members already loaded (or with predictions of fewer TTA views);
    ``extra`` is added to the summary (``ensemble.json``, written last: it marks the blend done)."""
    if not (math.isfinite(prune_threshold) and -1.0 <= prune_threshold <= 1.0):
        raise AudiotagError(f"prune threshold (--prune, or an ensemble stage's prune) = {prune_threshold!r} is not "
                            "a correlation", hint="give a number from -1 to 1; 1 keeps every member")
    unknown = [b for b in blends if b not in BLENDERS]
    if unknown:
        raise AudiotagError(f"unknown blend(s) {unknown}", hint=f"choose from {', '.join(BLENDERS)}")
    fsutil.check_writable(out, folder=True)
    names = [m.name for m in members]
    check_aligned(members)
    fnames, X, test_fnames, X_test = stack_members(members)
    y, y_test = member_truth(members[0], fnames, test_fnames)
    folds = np.array([members[0].folds[f] for f in fnames])
    out = Path(out)

    member_rows = []
    for i, m in enumerate(members):
        row = {"model": m.name, "oof_lwlrap": lwlrap(y, X[:, i])}
        if y_test is not None:
            row["test_lwlrap"] = lwlrap(y_test, X_test[:, i])
        member_rows.append(row)
    overall, per_class = correlation(X)
    kept = prune([r["oof_lwlrap"] for r in member_rows], overall, prune_threshold)
    for i, row in enumerate(member_rows):
        better = [j for j in kept if j != i and member_rows[j]["oof_lwlrap"] >= row["oof_lwlrap"]]
        row["kept"] = "yes" if i in kept else f"no (r={max(overall[i, j] for j in better):.3f} with " \
                                              f"{members[max(better, key=lambda j: overall[i, j])].name})"
    columns = ["model", "oof_lwlrap"] + (["test_lwlrap"] if y_test is not None else []) + ["kept"]
    members_csv, members_md = _table(member_rows, columns)
    fsutil.write_text(out / "members.csv", members_csv)
    fsutil.write_text(out / "correlation.csv", _matrix_csv(names, overall))
    fsutil.write_text(out / "correlation_per_class.csv", _matrix_csv(names, per_class))
    plot_correlation(names, overall, per_class, out / "correlation.png")

    Xk, Xk_test = X[:, kept], X_test[:, kept]
    blend_rows, fitted = [], {}
    for name in progress_bar(blends, desc="blends", unit="blend", enabled=progress):
        start = time.perf_counter()
        blender = make_blender(name)
        oof = nested_oof(blender, Xk, y, folds)
        final = make_blender(name).fit(Xk, y)
        test = final.predict_proba(Xk_test)
        row = {"blend": name, "nested_oof_lwlrap": lwlrap(y, oof)}
        if y_test is not None:
            row["test_lwlrap"] = lwlrap(y_test, test)
        weights = getattr(final, "weights_", None)
        row["weights"] = " ".join(f"{names[kept[j]]}={w:.2f}" for j, w in enumerate(weights) if w > 0) \
            if weights is not None else ""
        row["seconds"] = round(time.perf_counter() - start, 2)
        blend_rows.append(row)
        fitted[name] = (oof, test, weights, final)
    chosen = max(blend_rows, key=lambda r: r["nested_oof_lwlrap"])["blend"]  # first wins ties: simpler blends first
    columns = ["blend", "nested_oof_lwlrap"] + (["test_lwlrap"] if y_test is not None else []) + ["weights", "seconds"]
    blends_csv, blends_md = _table(blend_rows, columns)
    fsutil.write_text(out / "blends.csv", blends_csv)
    oof, test, weights, final = fitted[chosen]
    save_blender(out, chosen, final, members=[names[j] for j in kept])
    write_predictions(out / "oof_predictions.csv", fnames, tuple(members[0].vocabulary), oof,
                      extra={"fold": folds.tolist()})
    write_predictions(out / "submission.csv", test_fnames, tuple(members[0].vocabulary), test)
    best_single = max(member_rows, key=lambda r: r["oof_lwlrap"])
    summary = {
        "members": [str(m.run.dir) for m in members], "kept": [names[j] for j in kept],
        "prune_threshold": prune_threshold, "blends": blend_rows, "chosen": chosen,
        "chosen_weights": None if weights is None else {names[kept[j]]: float(w) for j, w in enumerate(weights)},
        "best_member": best_single, "submission": str(out / "submission.csv"),
        "member_records": member_records([members[j] for j in kept], out), **(extra or {}),
    }
    report = [f"# Ensemble of {len(members)} runs", "", "## Members", "", members_md,
              f"Pruned when Pearson r with a better kept member exceeds {prune_threshold}. "
              "Correlation heatmap: `correlation.png`.", "", "## Blends (fitted ones scored by nested CV)", "",
              blends_md, f"Chosen by nested OOF lwlrap: **{chosen}** → `submission.csv`.", ""]
    fsutil.write_text(out / "blends.md", "\n".join(report))
    fsutil.write_text(out / "ensemble.json", json.dumps(summary, indent=2))
    return summary
