"""``audiotag audit``: how far the noisy set's labels are from what curated-trained models hear.

The run's fold models (trained on curated clips only, so they never saw a noisy clip) predict every
noisy clip. Their out-of-fold predictions on curated clips calibrate what a correct and an absent
label look like for each class: ``pos_c`` and ``neg_c``, the mean probability of class ``c`` on
curated clips with and without it. Among noisy clips given label ``c`` with mean probability
``m_c``, the share whose label is right is estimated as the mixture proportion
``(m_c - neg_c) / (pos_c - neg_c)``, clipped to 0..1; one minus it is the class's estimated noise
rate. The same estimate over clips *not* given ``c`` counts labels that are missing.

Noisy clips sound different (backgrounds, channel effects), which lowers the models' confidence
on correct labels too, so these rates lean high; compare classes with each other first.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .. import fsutil
from ..audio.inventory import default_cache_dir
from ..data.folds import read_folds_csv
from ..engine.precision import resolve_device
from ..errors import AudiotagError
from ..features.cache import build_features
from ..plots import plt, save_figure
from ..runs import DataSpec, Run, read_oof_predictions
from .noisy import teacher_predictions


def mixture_share(mean: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Estimated share of true members in a group with mean probability ``mean`` (per class)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip((mean - neg) / (pos - neg), 0.0, 1.0)


def estimate_noise(given: np.ndarray, probs: np.ndarray, oof_truth: np.ndarray, oof_probs: np.ndarray) -> dict:
    """Per-class and overall estimates of wrong given labels and missing true labels."""
    given = given > 0
    truth = oof_truth > 0
    with np.errstate(invalid="ignore"):
        pos = np.where(truth.any(0), (oof_probs * truth).sum(0) / truth.sum(0), np.nan)
        neg = np.where((~truth).any(0), (oof_probs * ~truth).sum(0) / (~truth).sum(0), np.nan)
        m_given = np.where(given.any(0), (probs * given).sum(0) / given.sum(0), np.nan)
        m_other = np.where((~given).any(0), (probs * ~given).sum(0) / (~given).sum(0), np.nan)
    correct_share = mixture_share(m_given, pos, neg)
    missing_share = mixture_share(m_other, pos, neg)
    n_given, n_other = given.sum(0), (~given).sum(0)
    correct = np.nan_to_num(correct_share * n_given)
    missing = np.nan_to_num(missing_share * n_other)
    return {
        "per_class_wrong_rate": 1 - correct_share, "per_class_missing": missing, "given_counts": n_given,
        "pos": pos, "neg": neg,
        "wrong_given_labels": float(1 - correct.sum() / max(n_given.sum(), 1)),
        "missing_true_labels": float(missing.sum() / max(missing.sum() + correct.sum(), 1e-12)),
    }


def audit_run(run_dir: str | Path, *, data: DataSpec | None = None, out: str | Path | None = None,
              cache_dir: str | Path | None = None, top: int = 50, progress: bool = True) -> dict:
    run = Run.open(run_dir)
    config = run.config
    out = fsutil.check_writable(Path(out) if out is not None else run.dir / "audit", folder=True)
    data = data or run.data
    ds = data.load()
    if not ds.split("noisy"):
        raise AudiotagError(f"{data.root or data.csv}: no noisy clips to audit",
                            hint="the Kaggle layout reads them from train_noisy.csv + train_noisy/")
    oof_path = run.dir / "oof_predictions.csv"
    if not oof_path.exists():
        raise AudiotagError(f"{run.dir} has no oof_predictions.csv: finish training first",
                            hint=f"audiotag train --resume {run.dir}")
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(run.info.get("cache_dir") or default_cache_dir())
    features = build_features(ds, config, cache_dir=cache_dir, splits=("noisy",), skip_bad=True, progress=progress)
    clips = features.dataset.split("noisy")
    folds = read_folds_csv(run.dir / "folds.csv")
    per_fold = teacher_predictions(run, features, clips, folds=folds, device=resolve_device(config.train.device),
                                   cache=out, progress_log=print if progress else (lambda _m: None))
    probs = np.mean([per_fold[k] for k in sorted(per_fold)], axis=0)
    given = ds.label_matrix(clips)

    fnames, vocabulary, _, oof = read_oof_predictions(oof_path)
    if tuple(vocabulary) != tuple(ds.vocabulary):
        raise AudiotagError("the run's labels differ from the dataset's")
    curated = {c.fname: c for c in ds.clips if c.split != "test" and c.split != "noisy"}
    oof_truth = ds.label_matrix([curated[f] for f in fnames])
    est = estimate_noise(given, probs, oof_truth, oof)

    # per clip: the best-supported given label; low support = likely mislabelled
    support = np.where(given > 0, probs, np.inf).min(axis=1)
    support = np.where(np.isfinite(support), support, 0.0)
    best_given = np.where(given > 0, probs, -np.inf).max(axis=1)
    order = np.argsort(best_given, kind="stable")
    names = list(ds.vocabulary)
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["fname", "given", "best_given_prob", "weakest_given_prob", "predicted", "suggested_missing"])
    for i in order:
        top3 = np.argsort(probs[i])[::-1][:3]
        writer.writerow([clips[i].fname, ",".join(names[j] for j in np.flatnonzero(given[i])),
                         f"{best_given[i]:.4f}", f"{support[i]:.4f}",
                         ",".join(f"{names[j]}:{probs[i, j]:.2f}" for j in top3),
                         ",".join(names[j] for j in np.flatnonzero((probs[i] >= 0.5) & (given[i] == 0)))])
    fsutil.write_text(out / "audit_clips.csv", rows.getvalue())
    classes = io.StringIO()
    writer = csv.writer(classes, lineterminator="\n")
    writer.writerow(["label", "given", "estimated_wrong_rate", "estimated_missing", "curated_pos_mean",
                     "curated_neg_mean"])
    for c, name in enumerate(names):
        writer.writerow([name, int(est["given_counts"][c]), f"{est['per_class_wrong_rate'][c]:.3f}",
                         f"{est['per_class_missing'][c]:.1f}", f"{est['pos'][c]:.3f}", f"{est['neg'][c]:.3f}"])
    fsutil.write_text(out / "audit_classes.csv", classes.getvalue())
    summary = {"run": str(run.dir), "noisy_clips": len(clips), "fold_models": len(per_fold),
               "estimated_wrong_given_labels": est["wrong_given_labels"],
               "estimated_missing_true_labels": est["missing_true_labels"],
               "clips_with_no_supported_label": int((best_given < 0.5 * np.nanmean(est["pos"])).sum()),
               "models_saw_noisy_clips": config.noisy.strategy != "none"}
    fsutil.write_text(out / "audit.json", json.dumps(summary, indent=2))
    _write_report(out, summary, names, est, clips, given, probs, best_given, order[:top])
    _plot(out / "audit.png", best_given, oof, oof_truth)
    return summary


def _write_report(out, summary, names, est, clips, given, probs, best_given, worst) -> None:
    lines = [f"# Noisy-label audit of {summary['run']}", ""]
    if summary["models_saw_noisy_clips"]:
        lines += ["**Warning:** this run trained on noisy clips, so its models have partly memorised their "
                  "labels; audit with a curated-only run.", ""]
    lines += [f"{summary['noisy_clips']} noisy clips, predicted by {summary['fold_models']} fold models trained on "
              "curated clips only.", "",
              f"- estimated share of given labels that are wrong: **{summary['estimated_wrong_given_labels']:.1%}**",
              f"- estimated share of true labels that are missing: **{summary['estimated_missing_true_labels']:.1%}**",
              "", "Estimates are mixture proportions calibrated on the run's out-of-fold curated predictions; "
              "they lean high when noisy clips sound unlike curated ones.", "",
              "## Classes with the noisiest labels", "", "| label | given | est. wrong | est. missing |", "|---|---|---|---|"]
    rates = np.nan_to_num(est["per_class_wrong_rate"], nan=-1)
    for c in np.argsort(rates)[::-1][:15]:
        lines.append(f"| {names[c]} | {int(est['given_counts'][c])} | {est['per_class_wrong_rate'][c]:.0%} | "
                     f"{est['per_class_missing'][c]:.0f} |")
    lines += ["", "## Clips most likely mislabelled", "", "| fname | given | best given p | models hear |",
              "|---|---|---|---|"]
    for i in worst:
        top3 = np.argsort(probs[i])[::-1][:3]
        lines.append(f"| {clips[i].fname} | {', '.join(names[j] for j in np.flatnonzero(given[i]))} | "
                     f"{best_given[i]:.3f} | {', '.join(f'{names[j]} {probs[i, j]:.2f}' for j in top3)} |")
    lines += ["", "All clips: `audit_clips.csv` (most suspicious first); classes: `audit_classes.csv`; "
              "`audit.png` compares the probability of given labels on noisy clips with true labels on curated ones.", ""]
    fsutil.write_text(out / "audit.md", "\n".join(lines))


def _plot(path: Path, best_given: np.ndarray, oof: np.ndarray, oof_truth: np.ndarray) -> None:
    curated = np.where(oof_truth > 0, oof, -np.inf).max(axis=1)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    bins = np.linspace(0, 1, 41)
    ax.hist(curated[np.isfinite(curated)], bins=bins, density=True, alpha=0.6, label="curated (OOF), true labels")
    ax.hist(best_given, bins=bins, density=True, alpha=0.6, label="noisy, given labels")
    ax.set(xlabel="model probability of the clip's best-supported label", ylabel="density",
           title="How well the models support each clip's labels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
