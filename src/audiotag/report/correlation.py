"""Heatmaps of the Pearson correlation between ensemble members."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .. import fsutil  # noqa: E402


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
    with fsutil.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
