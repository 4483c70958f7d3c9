"""Side concerns of training, as callbacks that keep their own state."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
from collections.abc import Callable
from pathlib import Path

from .. import fsutil
from .checkpoint import save_checkpoint
from .trainer import Callback, Trainer


class Checkpointer(Callback):
    """After every epoch: the full trainer state to ``last.pt``; on a new best ``monitor``, the
    model to ``best.pt`` and ``on_best()`` (e.g. to keep that epoch's validation predictions).
    ``meta`` (config, vocabulary, fold...) goes into both so each file describes itself."""

    def __init__(self, folder: Path, *, meta: dict, monitor: str = "val_lwlrap",
                 on_best: Callable[[int], None] | None = None):
        self.folder, self.meta, self.monitor, self.on_best = Path(folder), meta, monitor, on_best
        self.best_score, self.best_epoch = -math.inf, 0

    def on_epoch_end(self, trainer: Trainer, result: dict) -> None:
        score = result.get(self.monitor)
        if score is not None and score > self.best_score:
            self.best_score, self.best_epoch = score, result["epoch"]
            if self.on_best is not None:
                self.on_best(result["epoch"])
            save_checkpoint(self.folder / "best.pt", {**self.meta, "model": trainer.kept_model.state_dict(),
                                                      "epoch": result["epoch"], "score": score})
        save_checkpoint(self.folder / "last.pt", {**self.meta, "trainer": trainer.state_dict()})

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]


class EarlyStopping(Callback):
    def __init__(self, *, patience: int, monitor: str = "val_lwlrap"):
        self.patience, self.monitor = patience, monitor
        self.best, self.bad_epochs = -math.inf, 0

    def on_epoch_end(self, trainer: Trainer, result: dict) -> None:
        score = result.get(self.monitor)
        if score is None:
            return
        if score > self.best:
            self.best, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


def duration(seconds: float) -> str:
    """``42 s``, ``17 min``, ``3 h 05 min``: how long, at the precision an ETA deserves."""
    seconds = round(seconds)
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class History(Callback):
    """The per-epoch table as ``history.csv`` (rewritten atomically each epoch) and a log line that
    ends with the ETA of this fit and, when ``epochs_after`` more follow (later folds), of the run."""

    def __init__(self, path: Path, *, log: Callable[[str], None], prefix: str = "", total_epochs: int = 0,
                 epochs_after: int = 0):
        self.path, self.log, self.prefix, self.total_epochs = Path(path), log, prefix, total_epochs
        self.epochs_after = epochs_after

    def on_epoch_end(self, trainer: Trainer, result: dict) -> None:
        keys = list(dict.fromkeys(k for row in trainer.history for k in row))  # epochs without validation lack some
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(trainer.history)
        fsutil.write_text(self.path, out.getvalue())
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k.startswith("val_"))
        left = self.total_epochs - result["epoch"]
        recent = [r["seconds"] for r in trainer.history[-5:]]
        per_epoch = sum(recent) / len(recent)
        eta = f"  ETA {duration(left * per_epoch)}" if left > 0 else ""
        if self.epochs_after:
            eta += f"{',' if eta else '  ETA'} run {duration((left + self.epochs_after) * per_epoch)}"
        self.log(f"{self.prefix}epoch {result['epoch']}/{self.total_epochs}  loss {result['train_loss']:.4f}  "
                 f"{metrics}  lr {result['lr']:.2e}  {result['seconds']:.1f}s{eta}")


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardScalars(Callback):
    """Each epoch's training loss, validation metrics and learning rate as TensorBoard scalars in
    ``folder`` (the ``tensorboard`` extra; without it training runs exactly as it does with it)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._writer = None

    def on_epoch_end(self, trainer: Trainer, result: dict) -> None:
        if not fsutil.writes_enabled():
            return
        if self._writer is None:
            # deferred: torch's TensorBoard writer imports the optional tensorboard package
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder))
        names = {"train_loss": "loss/train", "val_loss": "loss/validation", "val_lwlrap": "lwlrap/validation",
                 "lr": "learning_rate"}
        for key, tag in names.items():
            if key in result:
                self._writer.add_scalar(tag, result[key], result["epoch"])
        self._writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
