"""Figures that several stages draw: training curves (training) and correlation heatmaps (ensembles).

Everything is drawn off-screen (matplotlib's Agg backend) and written atomically as PNG.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import fsutil  # noqa: E402


def save_figure(fig, out: Path, *, dpi: int = 110) -> Path:
    with fsutil.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return out


def plot_training_curves(run_dir: Path, out: Path) -> Path | None:
    histories = sorted(Path(run_dir).glob("fold_*/history.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not histories:
        return None
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.8))
    for path in histories:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        epochs = [int(r["epoch"]) for r in rows]
        label = path.parent.name.replace("_", " ")
        ax_loss.plot(epochs, [float(r["train_loss"]) for r in rows], label=label)
        validated = [(e, float(r["val_lwlrap"])) for e, r in zip(epochs, rows) if r.get("val_lwlrap")]
        if validated:
            ax_val.plot(*zip(*validated), label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss (BCE, with mixup)", title="Training loss")
    ax_val.set(xlabel="epoch", ylabel="lwlrap", title="Validation lwlrap (clean windows)")
    ax_val.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_correlation(names: list[str], overall: np.ndarray, per_class: np.ndarray, out: Path) -> Path:
    size = max(4.0, 0.6 * len(names) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, matrix, title in ((axes[0], overall, "Pearson r, all clip x class scores"),
                              (axes[1], per_class, "Pearson r per class, averaged")):
        low = float(np.nanmin(matrix)) if np.isfinite(matrix).any() else 0.0
        image = ax.imshow(matrix, vmin=min(low, 0.9), vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] < (low + 1) / 2 else "black")
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, out)
