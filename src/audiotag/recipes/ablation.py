"""``audiotag ablate``: several variants on the same data, folds and seeds, one table.

A variant is a named set of config changes: a noisy-set strategy (``STRATEGIES``) or an input
representation / model family (``REPRESENTATIONS``). Each (variant, seed) is an ordinary run
folder ``OUT/<variant>-s<seed>``; finished runs are reused and interrupted ones resumed, so the
command can be re-run after a stop. Pseudo-labelling uses the curated-only run of the same seed as
its teacher (same folds, never saw a noisy clip).

The table reports, per variant, the mean and spread over seeds of pooled OOF lwlrap on curated
clips and of test lwlrap (when the data has test labels), a bootstrap interval over test clips for
its difference from the baseline (``curated`` when listed, else the first variant; paired: the
same resampled clips for both), so a difference inside the noise shows as such, and the Pearson
correlation of its OOF predictions with the baseline's: the lower, the more an ensemble gains.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np

from .. import fsutil
from ..config import Config, config_from_dict
from ..errors import AudiotagError
from ..metrics import lwlrap
from ..runs import DataSpec, Run, read_oof_predictions, read_predictions
from ..training.train import resume, train

STRATEGIES: dict[str, dict[str, object]] = {
    "curated": {"noisy.strategy": "none"},
    "joint": {"noisy.strategy": "joint"},
    "joint_smooth": {"noisy.strategy": "joint", "noisy.loss": "smooth"},
    "joint_bootstrap": {"noisy.strategy": "joint", "noisy.loss": "bootstrap"},
    "joint_lq": {"noisy.strategy": "joint", "noisy.loss": "lq"},
    "joint_drop": {"noisy.strategy": "joint", "noisy.loss": "drop"},
    "pretrain": {"noisy.strategy": "pretrain"},
    "pseudo_agree": {"noisy.strategy": "pseudo", "noisy.pseudo_rule": "agree"},
    "pseudo_relabel": {"noisy.strategy": "pseudo", "noisy.pseudo_rule": "relabel"},
    "pseudo_soft": {"noisy.strategy": "pseudo", "noisy.pseudo_rule": "soft"},
    "mixmatch": {"noisy.strategy": "mixmatch"},
}
DEFAULT_STRATEGIES = ("curated", "joint", "joint_lq", "pretrain", "pseudo_agree", "mixmatch")
# Curated-only training with other inputs or model families (all other settings from the base config).
REPRESENTATIONS: dict[str, dict[str, object]] = {
    "logmel": {},
    "logmel_deltas": {"features.deltas": True},
    "mfcc": {"features.channels": ["mfcc"]},
    "cqt": {"features.channels": ["cqt"]},
    "logmel_phase": {"features.channels": ["logmel", "phase"]},
    "logmel_chroma": {"features.channels": ["logmel", "chroma"]},
    "logmel_freqpos": {"features.channels": ["logmel", "freqpos"]},
    "logmel_denoised": {"features.channels": ["logmel", "denoised"]},
    "pcen": {"features.channels": ["pcen"]},
    "wavecnn": {"features.kind": "waveform", "model.name": "wavecnn"},
    "crnn": {"model.name": "crnn", "model.rnn_layers": 1},
    "rnn": {"model.name": "rnn"},
    "attention": {"model.pooling": "attention"},
    "resnet": {"model.name": "resnet"},
}
DEFAULT_REPRESENTATIONS = ("logmel", "logmel_deltas", "mfcc", "cqt", "logmel_phase", "wavecnn", "crnn")
# Levers aimed at recordings never heard (issue 30), each alone against the curated-only default.
LEVERS: dict[str, dict[str, object]] = {
    "ema": {"train.ema_decay": 0.999},
    "no_resized_crop": {"augment.resized_crop_prob": 0.0},  # on by default since 2026-12-05
    "freq_mixstyle": {"augment.freq_mixstyle_prob": 0.4},
    "specmix": {"augment.specmix_prob": 0.3},
    "random_eq": {"augment.eq_db": 6.0},
    "no_zoom_out": {"augment.resized_crop_max": 1.0},  # zooming out too is the default since 2026-12-06
    "mixup_three": {"augment.mixup_sources": 3},
    "uniform_crops": {"train.crop_energy": 0.0},  # crops weighted by their power are the default since 2026-12-06
    "band_context2": {"model.band_context_blocks": 2},
    "band_context2_w48": {"model.band_context_blocks": 2, "model.width": 48},
    "vgg": {"model.name": "vgg"},  # the default family until 2026-12-05
}
DEFAULT_LEVERS = ("curated", *LEVERS)
VARIANTS: dict[str, dict[str, object]] = {**STRATEGIES, **{k: {"noisy.strategy": "none", **v}
                                                           for k, v in {**REPRESENTATIONS, **LEVERS}.items()}}


def _with(config: Config, changes: dict[str, object]) -> Config:
    data = config.to_dict()
    for key, value in changes.items():
        section, name = key.split(".")
        data[section][name] = value
    return config_from_dict(data)


def _test_truth(run: Run):
    ds = run.data.load(audio=False)
    if not ds.test_labelled:
        return None
    clips = ds.split("test")
    return [c.fname for c in clips], ds.label_matrix(clips)


def _bootstrap_diff(truth, a, b, *, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """90% interval of lwlrap(a) - lwlrap(b) over test clips resampled with replacement."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(truth), len(truth))
        diffs.append(lwlrap(truth[idx], a[idx]) - lwlrap(truth[idx], b[idx]))
    return float(np.percentile(diffs, 5)), float(np.percentile(diffs, 95))


def _oof_matrix(run: Run) -> tuple[list[str], np.ndarray]:
    fnames, _, _, probs = read_oof_predictions(run.dir / "oof_predictions.csv")
    return fnames, probs


def _pearson(a: tuple[list[str], np.ndarray], b: tuple[list[str], np.ndarray]) -> float:
    index = {f: i for i, f in enumerate(b[0])}
    if set(index) != set(a[0]):
        raise AudiotagError("two ablation runs predicted different out-of-fold clips",
                            hint="runs of one ablation must share the data and folds; start a fresh --out folder")
    return float(np.corrcoef(a[1].ravel(), b[1][[index[f] for f in a[0]]].ravel())[0, 1])


def training_rate(run: Run) -> float:
    """Training clips per second: the median epoch of each fold (robust to a few epochs that shared
    the cores with something else), averaged over folds."""
    rates = []
    for k in run.finished_folds():
        folder = run.fold_dir(k)
        done = json.loads((folder / "done.json").read_text(encoding="utf-8"))
        n_train = done.get("epoch_clips", done["n_train"])  # folds finished before it was recorded: their clips
        with open(folder / "history.csv", newline="", encoding="utf-8") as f:
            seconds = [float(r["train_seconds"]) for r in csv.DictReader(f)]
        rates.append(n_train / float(np.median(seconds)))
    return float(np.mean(rates)) if rates else float("nan")


def ablate(data: DataSpec, base: Config, *, out: str | Path, strategies: tuple[str, ...] = DEFAULT_STRATEGIES,
           seeds: tuple[int, ...] = (0, 1), cache_dir: str | Path | None = None, progress: bool = True) -> dict:

    unknown = [s for s in strategies if s not in VARIANTS]
    if unknown:
        raise AudiotagError(f"unknown variant {unknown}", hint=f"choose from {', '.join(VARIANTS)}")
    data.load()  # a dataset that cannot be read at all is refused before any run folder is made
    needs_teacher = any(VARIANTS[s]["noisy.strategy"] == "pseudo" for s in strategies)
    order = list(dict.fromkeys((["curated"] if needs_teacher or "curated" in strategies else []) + list(strategies)))
    out = Path(out)
    runs: dict[tuple[str, int], Run] = {}
    for seed in seeds:
        for name in order:
            folder = out / f"{name}-s{seed}"
            changes = {**VARIANTS[name], "seed": seed}
            if VARIANTS[name]["noisy.strategy"] == "pseudo":
                changes["noisy.teacher"] = str(runs[("curated", seed)].dir.resolve())
            config = _with(base, {k: v for k, v in changes.items() if k != "seed"})
            config = config_from_dict({**config.to_dict(), "seed": seed})
            if (folder / "run.json").exists():
                run = Run.open(folder)
                if run.info.get("status") != "done":
                    run = resume(folder, progress=progress)
            else:
                run = train(data, config, out=folder, cache_dir=cache_dir, progress=progress)
            runs[(name, seed)] = run
    return write_table(runs, strategies=tuple(order), seeds=seeds, out=out)


def write_table(runs: dict[tuple[str, int], Run], *, strategies: tuple[str, ...], seeds: tuple[int, ...],
                out: Path) -> dict:
    truth = _test_truth(next(iter(runs.values())))
    preds = {}
    if truth is not None:
        for key, run in runs.items():
            fnames, _, probs = read_predictions(run.dir / "test_predictions.csv")
            index = {f: i for i, f in enumerate(fnames)}
            preds[key] = probs[[index[f] for f in truth[0]]]
    baseline = "curated" if "curated" in strategies else strategies[0]
    oof = {key: _oof_matrix(run) for key, run in runs.items()}
    rows = []
    for name in strategies:
        scores = [runs[(name, s)].scores for s in seeds]
        oof_scores = [sc["oof_lwlrap"] for sc in scores]
        minutes = [runs[(name, s)].info.get("wall_seconds", 0) / 60 for s in seeds]
        row = {"strategy": name, "seeds": len(seeds), "oof_lwlrap": float(np.mean(oof_scores)),
               "oof_std": float(np.std(oof_scores)), "minutes": float(np.mean(minutes)),
               "train_clips_per_s": float(np.mean([training_rate(runs[(name, s)]) for s in seeds]))}
        if name != baseline:
            row["oof_corr_baseline"] = float(np.mean([_pearson(oof[(name, s)], oof[(baseline, s)]) for s in seeds]))
        if truth is not None:
            test = [lwlrap(truth[1], preds[(name, s)]) for s in seeds]
            a = np.mean([preds[(name, s)] for s in seeds], axis=0)  # the seeds' runs as one ensemble
            row.update(test_lwlrap=float(np.mean(test)), test_std=float(np.std(test)),
                       test_seed_mean=float(lwlrap(truth[1], a)))
            if name != baseline:
                # seed-averaged predictions of both, the same resampled clips for both
                b = np.mean([preds[(baseline, s)] for s in seeds], axis=0)
                lo, hi = _bootstrap_diff(truth[1], a, b)
                row.update(test_vs_curated=float(lwlrap(truth[1], a) - lwlrap(truth[1], b)),
                           diff_ci90_low=lo, diff_ci90_high=hi)
        rows.append(row)
    columns = ["strategy", "seeds", "oof_lwlrap", "oof_std"]
    if truth is not None:
        columns += ["test_lwlrap", "test_std", "test_seed_mean", "test_vs_curated", "diff_ci90_low", "diff_ci90_high"]
    columns += ["oof_corr_baseline", "minutes", "train_clips_per_s"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([f"{r[c]:.4f}" if isinstance(r.get(c), float) else r.get(c, "") for c in columns])
    fsutil.write_text(out / "ablation.csv", text.getvalue())
    md = [f"| variant | OOF lwlrap (curated) | test lwlrap | test lwlrap of the seeds' mean | test vs {baseline} "
          f"[90% CI] | OOF corr. with {baseline} | minutes/run | training clips/s |", "|---" * 8 + "|"]
    for r in rows:
        test = f"{r['test_lwlrap']:.4f} ± {r['test_std']:.4f}" if "test_lwlrap" in r else "-"
        mean = f"{r['test_seed_mean']:.4f}" if "test_seed_mean" in r else "-"
        diff = (f"{r['test_vs_curated']:+.4f} [{r['diff_ci90_low']:+.4f}, {r['diff_ci90_high']:+.4f}]"
                if "test_vs_curated" in r else "-")
        corr = f"{r['oof_corr_baseline']:.3f}" if "oof_corr_baseline" in r else "-"
        md.append(f"| {r['strategy']} | {r['oof_lwlrap']:.4f} ± {r['oof_std']:.4f} | {test} | {mean} | {diff} "
                  f"| {corr} | {r['minutes']:.1f} | {r['train_clips_per_s']:.0f} |")
    md += ["", f"Seeds: {', '.join(map(str, seeds))} (± is the std over seeds). The interval is a paired bootstrap "
           f"over test clips of the seed-averaged predictions (the seeds' mean: their runs as one ensemble); "
           f"`test_vs_curated` in ablation.csv is the difference of those means from the baseline's ({baseline}). "
           f"The correlation is Pearson's over all OOF clip×class probabilities.", ""]
    fsutil.write_text(out / "ablation.md", "\n".join(md))
    summary = {"rows": rows, "runs": {f"{k[0]}-s{k[1]}": str(v.dir) for k, v in runs.items()},
               "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    fsutil.write_text(out / "ablation.json", json.dumps(summary, indent=2))
    return summary
