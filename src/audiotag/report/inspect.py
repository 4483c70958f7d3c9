""""Know your data": a dataset summary with plots, from the CSVs alone or with the audio.

Writes ``summary.md`` (readable), ``summary.json`` (for scripts) and PNG plots to a folder:
clip counts, label distribution per split, labels per clip, class imbalance, the label shift
between curated and noisy, durations and sample rates, and an example spectrogram per class.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from ..progress import progress_bar  # noqa: E402

from .. import fsutil  # noqa: E402
from ..audio.io import load_audio  # noqa: E402
from ..config import Config  # noqa: E402
from ..data.records import Dataset  # noqa: E402
from ..errors import AudiotagError  # noqa: E402
from ..features.frontend import FrontEnd  # noqa: E402

SPLIT_COLORS = {"curated": "#1f77b4", "noisy": "#ff7f0e", "test": "#2ca02c"}


def _label_counts(ds: Dataset, split: str) -> np.ndarray:
    clips = ds.split(split)
    known = set(ds.vocabulary)
    return ds.label_matrix([c for c in clips if set(c.labels) <= known]).sum(0) if clips else np.zeros(len(ds.vocabulary))


def _js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits between two count vectors (0 = same, 1 = disjoint)."""
    p, q = p / max(p.sum(), 1e-12), q / max(q.sum(), 1e-12)
    m = (p + q) / 2

    def kl(a, b):
        mask = a > 0
        return float((a[mask] * np.log2(a[mask] / b[mask])).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def _imbalance(counts: np.ndarray, vocabulary: tuple[str, ...]) -> dict:
    present = counts[counts > 0]
    order = np.argsort(-counts, kind="stable")
    return {
        "max_count": int(counts.max()) if len(counts) else 0,
        "min_count": int(counts.min()) if len(counts) else 0,
        "max_over_min": float(counts.max() / present.min()) if len(present) else None,
        "classes_without_clips": int((counts == 0).sum()),
        "most_frequent": [[vocabulary[i], int(counts[i])] for i in order[:5]],
        "least_frequent": [[vocabulary[i], int(counts[i])] for i in order[::-1][:5]],
    }


def summarize(ds: Dataset, *, durations: dict[str, list[float]] | None = None,
              sample_rates: dict[str, Counter] | None = None) -> dict:
    out: dict = {"root": str(ds.root), "layout": ds.layout, "vocabulary_size": len(ds.vocabulary),
                 "test_labelled": ds.test_labelled, "splits": {}}
    for split in ds.splits:
        clips = ds.split(split)
        n_labels = Counter(len(c.labels) for c in clips)
        counts = _label_counts(ds, split)
        info = {
            "clips": len(clips),
            "labelled_clips": sum(1 for c in clips if c.labels),
            "multi_label_clips": sum(1 for c in clips if len(c.labels) > 1),
            "labels_per_clip": {str(k): n_labels[k] for k in sorted(n_labels)},
            "mean_labels_per_clip": float(np.mean([len(c.labels) for c in clips if c.labels])) if any(c.labels for c in clips) else None,
            "label_counts": {label: int(n) for label, n in zip(ds.vocabulary, counts)},
        }
        if info["labelled_clips"]:
            info["imbalance"] = _imbalance(counts, ds.vocabulary)
        folds = Counter(c.fold for c in clips if c.fold is not None)
        if folds:
            info["folds"] = {str(k): folds[k] for k in sorted(folds)}
        if durations and durations.get(split):
            d = np.array(durations[split])
            info["duration_s"] = {"min": float(d.min()), "median": float(np.median(d)), "mean": float(d.mean()),
                                  "max": float(d.max()), "total_hours": float(d.sum() / 3600)}
        if sample_rates and sample_rates.get(split):
            info["sample_rates"] = {str(k): v for k, v in sorted(sample_rates[split].items())}
        out["splits"][split] = info
    if "curated" in ds.splits and "noisy" in ds.splits:
        c, n = _label_counts(ds, "curated"), _label_counts(ds, "noisy")
        cs, ns = c / max(c.sum(), 1), n / max(n.sum(), 1)
        ratio = np.where(cs > 0, ns / np.maximum(cs, 1e-12), np.inf)
        order = np.argsort(-ratio, kind="stable")
        finite = [i for i in order if np.isfinite(ratio[i])]
        out["shift_curated_to_noisy"] = {
            "js_divergence_bits": _js_divergence(c, n),
            "over_represented_in_noisy": [[ds.vocabulary[i], float(ratio[i])] for i in finite[:5]],
            "under_represented_in_noisy": [[ds.vocabulary[i], float(ratio[i])] for i in finite[::-1][:5]],
        }
    return out


# ----------------------------------------------------------------------------- plots


def _save(fig, path: Path) -> str:
    with fsutil.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path.name


def plot_label_counts(ds: Dataset, path: Path) -> str:
    splits = [s for s in ds.splits if any(c.labels for c in ds.split(s))]
    counts = {s: _label_counts(ds, s) for s in splits}
    order = np.argsort(-counts[splits[0]], kind="stable")
    n = len(ds.vocabulary)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.16 * n + 1)))
    height = 0.8 / len(splits)
    for k, split in enumerate(splits):
        share = counts[split][order] / max(counts[split].sum(), 1) * 100
        ax.barh(np.arange(n) + k * height, share, height=height, label=split, color=SPLIT_COLORS.get(split))
    ax.set_yticks(np.arange(n) + 0.4 - height / 2)
    ax.set_yticklabels([ds.vocabulary[i] for i in order], fontsize=7 if n > 30 else 9)
    ax.invert_yaxis()
    ax.set_xlabel("share of the split's labels (%)")
    ax.set_title("Label distribution per split")
    ax.legend()
    return _save(fig, path)


def plot_labels_per_clip(ds: Dataset, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    splits = [s for s in ds.splits if any(c.labels for c in ds.split(s))]
    width = 0.8 / max(1, len(splits))
    for k, split in enumerate(splits):
        counts = Counter(len(c.labels) for c in ds.split(split) if c.labels)
        xs = np.arange(1, max(counts) + 1)
        total = sum(counts.values())
        ax.bar(xs + k * width, [counts[x] / total * 100 for x in xs], width=width, label=split,
               color=SPLIT_COLORS.get(split))
    ax.set_xlabel("labels per clip")
    ax.set_ylabel("% of clips")
    ax.set_title("Labels per clip")
    ax.legend()
    return _save(fig, path)


def plot_shift(ds: Dataset, path: Path) -> str:
    c, n = _label_counts(ds, "curated"), _label_counts(ds, "noisy")
    cs, ns = c / max(c.sum(), 1) * 100, n / max(n.sum(), 1) * 100
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(cs, ns, s=14)
    top = max(cs.max(), ns.max()) * 1.05
    ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
    far = np.argsort(-np.abs(np.log((ns + 1e-3) / (cs + 1e-3))))[:6]
    for i in far:
        ax.annotate(ds.vocabulary[i], (cs[i], ns[i]), fontsize=7)
    ax.set_xlabel("share of curated labels (%)")
    ax.set_ylabel("share of noisy labels (%)")
    ax.set_title("Label shift: curated vs noisy")
    return _save(fig, path)


def plot_durations(durations: dict[str, list[float]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = [d for v in durations.values() for d in v]
    bins = np.geomspace(max(min(values), 1e-2), max(values) * 1.01, 30) if min(values) > 0 else 30
    for split, d in durations.items():
        ax.hist(d, bins=bins, alpha=0.55, label=split, color=SPLIT_COLORS.get(split))
    if not isinstance(bins, int):
        ax.set_xscale("log")
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("clips")
    ax.set_title("Clip durations")
    ax.legend()
    return _save(fig, path)


def plot_examples(ds: Dataset, config: Config, path: Path, *, max_classes: int) -> tuple[str, list[str]]:
    """One single-label curated clip per class (up to ``max_classes``), as log-mel images."""
    frontend = FrontEnd(config.audio, config.features).eval()
    pool = ds.split("curated") or ds.clips
    chosen, failed = [], []
    for label in ds.vocabulary[:max_classes]:
        clip = next((c for c in pool if c.labels == (label,) and c.path is not None and c.path.is_file()), None)
        if clip is not None:
            chosen.append((label, clip))
    if not chosen:
        return "", failed
    cols = min(4, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, clip) in zip(axes.flat, chosen):
        try:
            y, _ = load_audio(clip.path, sample_rate=config.audio.sample_rate, name=clip.fname)
        except AudiotagError:
            failed.append(clip.fname)
            continue
        with torch.inference_mode():
            spec = frontend(torch.from_numpy(y)[None])[0, 0].numpy()
        ax.imshow(spec, origin="lower", aspect="auto", cmap="magma",
                  extent=(0, len(y) / config.audio.sample_rate, 0, spec.shape[0]))
        ax.set_title(f"{label}\n{clip.fname}", fontsize=8)
        ax.axis("on")
        ax.tick_params(labelsize=6)
    fig.suptitle("Example log-mel spectrogram per class (x: seconds, y: mel bin)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path), failed


# ----------------------------------------------------------------------------- report


def _markdown(summary: dict, images: dict[str, str], notes: list[str]) -> str:
    lines = [f"# Dataset summary: `{summary['root']}`", "",
             f"Layout **{summary['layout']}**, **{summary['vocabulary_size']} labels**"
             + (", test ground truth present." if summary["test_labelled"] else "."), ""]
    lines += ["| split | clips | labelled | multi-label | mean labels/clip | hours | classes max/min |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for split, s in summary["splits"].items():
        mean = f"{s['mean_labels_per_clip']:.2f}" if s["mean_labels_per_clip"] else "-"
        hours = f"{s['duration_s']['total_hours']:.2f}" if "duration_s" in s else "-"
        imb = s.get("imbalance", {}).get("max_over_min")
        lines.append(f"| {split} | {s['clips']} | {s['labelled_clips']} | {s['multi_label_clips']} | {mean} | {hours} | "
                     f"{f'{imb:.1f}' if imb else '-'} |")
    lines.append("")
    for split, s in summary["splits"].items():
        if "imbalance" in s:
            imb = s["imbalance"]
            if imb["max_count"] == imb["min_count"]:  # balanced by design (FAT2019's noisy set: 300 each)
                lines.append(f"- **{split}**: every label has {imb['max_count']} clips.")
            else:
                most = ", ".join(f"{a} ({b})" for a, b in imb["most_frequent"])
                least = ", ".join(f"{a} ({b})" for a, b in imb["least_frequent"])
                lines.append(f"- **{split}**: most frequent {most}; least frequent {least}.")
        if "duration_s" in s:
            d = s["duration_s"]
            lines.append(f"  Durations {d['min']:.2f}-{d['max']:.2f} s (median {d['median']:.2f} s).")
        if "folds" in s:
            lines.append(f"  Folds: {', '.join(f'{k}: {v}' for k, v in s['folds'].items())}.")
    if "shift_curated_to_noisy" in summary:
        sh = summary["shift_curated_to_noisy"]
        over = ", ".join(f"{a} (x{b:.2f})" for a, b in sh["over_represented_in_noisy"])
        under = ", ".join(f"{a} (x{b:.2f})" for a, b in sh["under_represented_in_noisy"])
        lines += ["", "## Curated vs noisy label shift", "",
                  f"Jensen-Shannon divergence of the label distributions: **{sh['js_divergence_bits']:.3f} bits** "
                  "(0 = same distribution, 1 = disjoint).", "",
                  f"- Over-represented in noisy: {over}", f"- Under-represented in noisy: {under}"]
    titles = {"label_counts": "Label distribution", "labels_per_clip": "Labels per clip", "shift": "Label shift",
              "durations": "Durations", "examples": "Example spectrograms"}
    for key, name in images.items():
        lines += ["", f"## {titles.get(key, key)}", "", f"![{titles.get(key, key)}]({name})"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def inspect_dataset(ds: Dataset, out_dir: str | Path, *, audio: bool = True, config: Config | None = None,
                    max_example_classes: int = 24, progress: bool = True) -> dict:
    """Write the summary and plots of ``ds`` to ``out_dir`` and return the summary dict."""
    out = Path(out_dir)
    config = config or Config()
    notes: list[str] = []
    durations: dict[str, list[float]] = {}
    rates: dict[str, Counter] = {}
    if audio:
        unreadable = 0
        clips = [c for c in ds.clips if c.path is not None]
        for clip in progress_bar(clips, desc="reading headers", enabled=progress, unit="file"):
            try:
                info = sf.info(str(clip.path))
            except (sf.LibsndfileError, RuntimeError, OSError):
                unreadable += 1
                continue
            if info.frames > 0:
                durations.setdefault(clip.split, []).append(info.frames / info.samplerate)
            rates.setdefault(clip.split, Counter())[info.samplerate] += 1
        if unreadable:
            notes.append(f"{unreadable} files could not be opened; `audiotag check` names them.")
    summary = summarize(ds, durations=durations, sample_rates=rates)
    images: dict[str, str] = {}
    if any(c.labels for c in ds.clips):
        images["label_counts"] = plot_label_counts(ds, out / "label_counts.png")
        images["labels_per_clip"] = plot_labels_per_clip(ds, out / "labels_per_clip.png")
    if "shift_curated_to_noisy" in summary:
        images["shift"] = plot_shift(ds, out / "label_shift.png")
    if durations:
        images["durations"] = plot_durations(durations, out / "durations.png")
    if audio:
        name, failed = plot_examples(ds, config, out / "examples.png", max_classes=max_example_classes)
        if name:
            images["examples"] = name
        if failed:
            notes.append(f"{len(failed)} example clips could not be decoded: {', '.join(failed[:5])}")
        if len(ds.vocabulary) > max_example_classes:
            notes.append(f"Example spectrograms show the first {max_example_classes} of {len(ds.vocabulary)} classes "
                         "(--max-examples changes this).")
    summary["images"] = images
    summary["notes"] = notes
    fsutil.write_text(out / "summary.json", json.dumps(summary, indent=2))
    fsutil.write_text(out / "summary.md", _markdown(summary, images, notes))
    return summary
