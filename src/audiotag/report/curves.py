"""Training curves: loss and validation lwlrap per epoch, one line per fold."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .. import fsutil  # noqa: E402


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
        ax_val.plot(epochs, [float(r["val_lwlrap"]) for r in rows], label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss (BCE, with mixup)", title="Training loss")
    ax_val.set(xlabel="epoch", ylabel="lwlrap", title="Validation lwlrap (clean windows)")
    ax_val.legend(fontsize=8)
    fig.tight_layout()
    with fsutil.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
