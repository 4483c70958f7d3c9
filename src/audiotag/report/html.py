"""``audiotag report``: one self-contained HTML page about a run or a pipeline.

Sections: the data summary (``inspect``), every stage with CV and test lwlrap, time and inference
cost, any ablation tables, per-class lwlrap of the final predictions (best and worst classes),
the ensemble's correlation heatmap, training curves, and example spectrograms with predicted vs
true tags. Images are embedded as data URIs so the page is one file that can be mailed or
archived; a small script marks the page's title when an image fails to load, which the tests'
headless browser reads.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .. import fsutil  # noqa: E402
from ..audio.io import load_audio  # noqa: E402
from ..errors import AudiotagError  # noqa: E402
from ..features.frontend import FrontEnd  # noqa: E402
from ..metrics import lwlrap, lwlrap_by_label_count, per_class_lwlrap  # noqa: E402
from ..ensemble.budget import kaggle_minutes  # noqa: E402
from ..runs import Run, read_oof_predictions, read_predictions  # noqa: E402
from .inspect import inspect_dataset  # noqa: E402

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}img{max-width:100%;margin:.5em 0}
.note{color:#555;font-size:.9em}code{background:#f4f4f4;padding:0 .2em}
"""
CHECK_IMAGES = """
window.addEventListener('load', function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken++; }
  document.title = (broken ? 'BROKEN ' + broken : 'images ok ' + imgs.length) + ' | ' + document.title;
});
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fig_img(fig, alt: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        fig.savefig(path, dpi=100, bbox_inches="tight", format="png")
        plt.close(fig)
        return _img(path, alt)


def _table(header: list[str], rows: list[list[object]]) -> str:
    def cell(v):
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4f}"
        return html.escape("-" if v is None else str(v))
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows]
    return "\n".join(out) + "</table>"


def _csv_table(path: Path) -> str:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return _table(rows[0], rows[1:]) if rows else ""


def _stages(target: Path) -> tuple[dict[str, dict], str | None]:
    """Stage name -> row, and the final stage, for a pipeline folder or a single run."""
    state = target / "pipeline.json"
    if state.exists():
        body = json.loads(state.read_text())
        # every stage is the folder of its name inside the pipeline, wherever the pipeline was run or moved
        stages = {name: {**row, "folder": str(target / name)} for name, row in body["stages"].items()}
        return stages, body.get("final_stage")
    run = Run.open(target)
    scores = run.scores or {}
    return {target.name: {"kind": "train", "folder": str(target), "oof_lwlrap": scores.get("oof_lwlrap"),
                          "test_lwlrap": scores.get("test_lwlrap"), "minutes": run.info.get("wall_seconds", 0) / 60,
                          "inference_ms_per_clip": scores.get("test_inference_ms_per_clip")}}, target.name


def _final_predictions(folder: Path) -> tuple[Path | None, Path | None]:
    oof = folder / "oof_predictions.csv"
    test = folder / "submission.csv" if (folder / "submission.csv").exists() else folder / "test_predictions.csv"
    return (oof if oof.exists() else None), (test if test.exists() else None)


def _per_class_plot(names: list[str], values: np.ndarray, title: str, n: int = 12):
    """Horizontal bars, best at the top: every class when there are few, else the worst and best ``n``."""
    keep = [i for i in np.argsort(values) if not np.isnan(values[i])]  # ascending
    panels = [("all classes", keep, "#4f81bd")] if len(keep) <= 2 * n else \
        [(f"worst {n} classes", keep[:n], "#c0504d"), (f"best {n} classes", keep[-n:], "#4f81bd")]
    height = 0.26 * max(len(idx) for _, idx, _ in panels) + 1.2
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), height), squeeze=False)
    for ax, (label, idx, color) in zip(axes[0], panels):
        ax.barh([names[i] for i in idx], values[idx], color=color)  # the first bar is drawn at the bottom
        ax.set_xlim(0, 1)
        ax.set_xlabel("lwlrap", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _examples(ds, run: Run, test_path: Path, *, n: int = 6):
    """Log-mel of ``n`` test clips with their true and top predicted tags."""
    fnames, labels, probs = read_predictions(test_path)
    index = {f: i for i, f in enumerate(fnames)}
    clips = [c for c in ds.split("test") if c.fname in index and c.path is not None and c.path.is_file()]
    if not clips:
        return None
    chosen = [clips[i] for i in np.linspace(0, len(clips) - 1, min(n, len(clips))).astype(int)]
    config = run.config
    frontend = FrontEnd(config.audio, config.features).eval()
    cols = min(3, len(chosen))
    fig, axes = plt.subplots(math.ceil(len(chosen) / cols), cols, figsize=(4.2 * cols, 2.8 * math.ceil(len(chosen) / cols)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, clip in zip(axes.flat, chosen):
        try:
            y, _ = load_audio(clip.path, sample_rate=config.audio.sample_rate, name=clip.fname)
        except AudiotagError:
            continue
        with torch.inference_mode():
            spec = frontend.logmel(torch.from_numpy(y)[None])[0, 0].numpy() if hasattr(frontend, "logmel") else None
        if spec is not None:
            ax.imshow(spec, origin="lower", aspect="auto", cmap="magma",
                      extent=(0, len(y) / config.audio.sample_rate, 0, spec.shape[0]))
            ax.axis("on")
            ax.tick_params(labelsize=6)
        p = probs[index[clip.fname]]
        top = np.argsort(p)[::-1][:3]
        predicted = ", ".join(f"{labels[i]} {p[i]:.2f}" for i in top)
        truth = ", ".join(clip.labels) if clip.labels else "(no labels)"
        ax.set_title(f"{clip.fname}\ntrue: {truth}\npredicted: {predicted}", fontsize=7)
    fig.tight_layout()
    return fig


def build_report(target: str | Path, out: str | Path, *, ablations: list[str | Path] = (), audio: bool = True,
                 progress: bool = True) -> Path:
    """Write ``out/index.html`` about the run or pipeline folder ``target``; returns its path."""
    target, out = Path(target), Path(out)
    fsutil.check_writable(out, folder=True)
    stages, final = _stages(target)
    train_stages = [name for name, r in stages.items() if r["kind"] == "train"]
    if not train_stages:
        raise AudiotagError(f"{target} has no finished training stage to report on")
    first = Run.open(Path(stages[train_stages[0]]["folder"]))
    ds = first.data.load(audio=audio)
    parts = [f"<h1>audiotag report: {html.escape(target.name)}</h1>",
             f"<p class='note'>{html.escape(str(target.resolve()))}</p>"]

    # data
    with tempfile.TemporaryDirectory() as tmp:
        summary = inspect_dataset(ds, tmp, audio=audio, config=first.config, progress=progress)
        parts.append("<h2>Data</h2>")
        rows = [[split, s["clips"], s["labelled_clips"], s["multi_label_clips"],
                 s["duration_s"]["total_hours"] if "duration_s" in s else None]
                for split, s in summary["splits"].items()]
        parts.append(_table(["split", "clips", "labelled", "multi-label", "hours"], rows))
        for name in ("label_counts.png", "examples.png"):
            if (Path(tmp) / name).exists():
                parts.append(_img(Path(tmp) / name, name))

    # stages and inference time
    parts.append("<h2>Stages</h2>")
    rows = []
    for name, r in stages.items():
        ms = r.get("inference_ms_per_clip")
        rows.append([name + (" (final)" if name == final else ""), r["kind"], r.get("oof_lwlrap"), r.get("test_lwlrap"),
                     f"{r.get('minutes', 0):.1f}", None if ms is None else f"{ms:.1f}",
                     None if ms is None else f"{kaggle_minutes(ms):.1f}"])
    parts.append(_table(["stage", "kind", "OOF lwlrap", "test lwlrap", "minutes", "inference ms/clip",
                         "minutes for 3,361 clips"], rows))
    parts.append("<p class='note'>Inference time: all folds and TTA views of each model on this machine; an "
                 "ensemble's is the sum of its members'. FAT2019 allowed one GPU hour for 3,361 test clips.</p>")
    cuts = [(name, cut) for name, r in stages.items() for cut in r.get("budget_cuts", [])]
    if cuts:
        parts.append("<h3>Inference budget cuts</h3>")
        parts.append(_table(["stage", "cut", "minutes before", "minutes after", "OOF lwlrap before", "OOF lwlrap after",
                             "change"],
                            [[name, cut["dropped"], f"{cut['minutes_before']:.1f}", f"{cut['minutes_after']:.1f}",
                              cut["oof_before"], cut["oof_after"], f"{cut['oof_after'] - cut['oof_before']:+.4f}"]
                             for name, cut in cuts]))

    for path in [Path(a) / "ablation.csv" if Path(a).is_dir() else Path(a) for a in ablations]:
        parts += [f"<h2>Ablation: {html.escape(path.parent.name)}</h2>", _csv_table(path)]

    # final predictions per class
    final_dir = Path(stages[final]["folder"]) if final in stages else Path(stages[train_stages[-1]]["folder"])
    oof_path, test_path = _final_predictions(final_dir)
    sections = []
    if oof_path is not None:
        fnames, labels, _, probs = read_oof_predictions(oof_path)
        sections.append(("out of fold", "OOF", "curated", fnames, labels, probs))
    if test_path is not None and ds.test_labelled:
        sections.append(("test", "test", "test", *read_predictions(test_path)))
    for title, short, split, fnames, labels, probs in sections:
        clips = {c.fname: c for c in ds.split(split)}
        keep = [i for i, f in enumerate(fnames) if f in clips]
        truth = ds.label_matrix([clips[fnames[i]] for i in keep])
        values, _ = per_class_lwlrap(truth, probs[keep])
        plot = _per_class_plot(labels, values, f"{final}: {short} lwlrap {lwlrap(truth, probs[keep]):.4f}")
        parts += [f"<h2>Per-class lwlrap ({title})</h2>", _fig_img(plot, f"per-class {short} lwlrap")]
        groups = lwlrap_by_label_count(truth, probs[keep])
        if len(groups) > 1:  # where a model misses the quieter of several sounds
            parts.append(_table(["labels per clip", "clips", f"{short} lwlrap", "share of positive labels"],
                                [[g["labels"], g["clips"], f"{g['lwlrap']:.4f}", f"{g['weight']:.3f}"] for g in groups]))

    for name, r in stages.items():
        if r["kind"] == "ensemble" and (Path(r["folder"]) / "correlation.png").exists():
            parts += [f"<h2>Correlation between members ({html.escape(name)})</h2>",
                      _img(Path(r["folder"]) / "correlation.png", "correlation heatmap")]
            if (Path(r["folder"]) / "blends.csv").exists():
                parts.append(_csv_table(Path(r["folder"]) / "blends.csv"))

    parts.append("<h2>Training curves</h2>")
    for name in train_stages:
        curves = Path(stages[name]["folder"]) / "training_curves.png"
        if curves.exists():
            parts += [f"<h3>{html.escape(name)}</h3>", _img(curves, f"training curves of {name}")]

    if test_path is not None and audio:
        fig = _examples(ds, first, test_path)
        if fig is not None:
            parts += ["<h2>Examples: predicted vs true tags (test)</h2>", _fig_img(fig, "example predictions")]

    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>audiotag report {html.escape(target.name)}"
            f"</title><style>{CSS}</style><script>{CHECK_IMAGES}</script></head><body>\n" + "\n".join(parts)
            + "\n</body></html>\n")
    return fsutil.write_text(out / "index.html", page)
