"""Run folders: everything one training run produced, described well enough to reproduce it.

::

    RUN/config.yaml            the resolved configuration
    RUN/run.json               command, dataset, versions, device/precision chosen, status
    RUN/log.txt                everything printed
    RUN/folds.csv              fname -> fold
    RUN/skipped.csv            clips left out by --skip-bad (when any)
    RUN/fold_K/                last.pt (resumable), best.pt, history.csv, oof.npy, test.npy, done.json
    RUN/oof_predictions.csv    fname, fold, one column per label
    RUN/test_predictions.csv   Kaggle submission format (fold-averaged)
    RUN/scores.json            per-fold and pooled OOF lwlrap, test lwlrap when ground truth exists
    RUN/training_curves.png
"""

from __future__ import annotations

import csv
import datetime as _dt
import fcntl
import io
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import yaml

import torch

from . import fsutil
from .config import Config, config_from_dict
from .data.layouts import load_dataset
from .data.records import Dataset, Problem
from .engine.checkpoint import load_checkpoint
from .errors import AudiotagError, ConfigError, DataError
from .features.cache import library_versions
from .models import new_model
from .version import code_version


@dataclass
class DataSpec:
    """How to load a dataset again (saved in run.json for ``--resume``)."""

    root: str | None = None
    csv: str | None = None
    audio_dir: str | None = None
    file_col: str | None = None
    label_col: str | None = None
    fold_col: str | None = None
    label_sep: str = ","
    vocabulary: str | None = None
    only_listed: bool = False  # the CSVs are the selection: unlisted audio files are not problems

    def load(self, *, audio: bool = True) -> Dataset:
        return load_dataset(self.root, csv=self.csv, audio_dir=self.audio_dir, file_col=self.file_col,
                            label_col=self.label_col, fold_col=self.fold_col, label_sep=self.label_sep,
                            vocabulary=self.vocabulary, audio=audio, only_listed=self.only_listed)

    def absolute(self) -> "DataSpec":
        paths = {f.name: str(Path(v).resolve()) for f in fields(self)
                 if f.name in ("root", "csv", "audio_dir", "vocabulary") and (v := getattr(self, f.name))}
        return DataSpec(**{**asdict(self), **paths})


def write_predictions(path: Path, fnames: list[str], vocabulary: tuple[str, ...], probs: np.ndarray,
                      *, extra: dict[str, list] | None = None) -> Path:
    """``fname[, extra...], <one column per label>`` with 6 decimals: what pandas and Kaggle read."""
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1)) if len(probs) else []
    if len(bad):  # a submission with a NaN row looks complete and is wrong: nothing is written
        raise AudiotagError(f"{path}: the predictions of {len(bad)} clip(s) are NaN or infinite "
                            f"(e.g. {fnames[bad[0]]}); nothing was written",
                            hint="check those clips (audiotag check) and the run's models")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    extra = extra or {}
    writer.writerow(["fname", *extra, *vocabulary])
    for i, name in enumerate(fnames):
        writer.writerow([name, *(col[i] for col in extra.values()), *(f"{p:.6f}" for p in probs[i])])
    return fsutil.write_text(path, out.getvalue())


def _read_table(path: Path, *, first: list[str], what: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a predictions CSV whose header starts with ``first``; a file that is not
    one is a :class:`DataError` naming it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r]
    except FileNotFoundError:
        raise DataError(f"{path} does not exist", hint=f"check the path; the {what} are written when a run "
                        "finishes (`audiotag train --resume RUN` finishes a stopped one)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} cannot be read as {what} ({type(e).__name__})",
                        hint="the file is damaged; restore it or produce it again") from None
    if not rows or rows[0][: len(first)] != first:
        found = rows[0][: len(first) + 1] if rows else "an empty file"
        raise DataError(f"{path}: expected {what} with columns {', '.join(first)}, <labels>; found {found}",
                        hint="the file is damaged; restore it or produce it again")
    width = len(rows[0])
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise DataError(f"{path}, line {line}: {len(row)} fields, the header has {width}",
                            hint="the file is damaged; restore it or produce it again")
    return rows[0], rows[1:]


def _numbers(path: Path, rows: list[list[str]], start: int) -> np.ndarray:
    try:
        values = np.array([[float(v) for v in r[start:]] for r in rows], dtype=np.float64)
    except ValueError:
        line = next(i for i, r in enumerate(rows, start=2) if not _all_numbers(r[start:]))
        raise DataError(f"{path}, line {line}: a probability is not a number",
                        hint="the file is damaged; restore it or produce it again") from None
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1)) if values.size else []
    if len(bad):
        raise DataError(f"{path}, line {bad[0] + 2}: a probability is NaN or infinite",
                        hint="the file is damaged; restore it or produce it again")
    return values


def _all_numbers(values: list[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


def read_predictions(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(fnames, label columns, probabilities) of a file written by :func:`write_predictions` (no extras)."""
    header, body = _read_table(path, first=["fname"], what="predictions")
    return [r[0] for r in body], header[1:], _numbers(path, body, 1)


def read_oof_predictions(path: Path) -> tuple[list[str], list[str], dict[str, int], np.ndarray]:
    """(fnames, label columns, fname -> fold, probabilities) of a run's ``oof_predictions.csv``."""
    header, body = _read_table(path, first=["fname", "fold"], what="out-of-fold predictions")
    try:
        folds = {r[0]: int(r[1]) for r in body}
    except ValueError:
        raise DataError(f"{path}: a fold is not a whole number", hint="the file is damaged; restore it") from None
    return [r[0] for r in body], header[2:], folds, _numbers(path, body, 2)


CLAIM = ".claimed"


def claim_folder(folder: Path) -> bool:
    """Atomically make ``folder`` this process's run folder: exclusive creation of a marker file
    succeeds in exactly one of several processes started at once with the same ``--out``."""
    marker = folder / CLAIM
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if claim_alive(marker):
            return False
        marker.unlink(missing_ok=True)  # left by a process that died before writing its run
        return claim_folder(folder)
    except OSError as e:
        raise fsutil.OutputError(f"cannot create run folder {folder}: {e.strerror or e}",
                                 hint="choose a writable --out folder") from None
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def claim_alive(marker: Path) -> bool:
    try:
        pid = int(marker.read_text() or 0)
    except (OSError, ValueError):
        return True  # being written right now
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def result_settings(config: Config) -> dict:
    """A config without the settings that only say where and how fast to compute (fold jobs on
    different machines may differ in them)."""
    d = config.to_dict()
    for section, key in (("train", "device"), ("train", "threads"), ("data", "num_workers")):
        d.get(section, {}).pop(key, None)
    return d


def fold_dir(run_dir: Path, k: int) -> Path:
    return run_dir / f"fold_{k}"


def fold_done(run_dir: Path, k: int) -> bool:
    """Whether fold ``k`` of the run in ``run_dir`` finished: its done.json is written last."""
    return (fold_dir(run_dir, k) / "done.json").exists()


class Run:
    def __init__(self, folder: Path):
        self.dir = Path(folder)

    # ------------------------------------------------------------------ creation and loading

    @classmethod
    def create(cls, out: str | Path | None, *, config: Config, data: DataSpec, name: str = "run",
               runs_root: str | Path = "runs") -> "Run":
        auto = out is None
        if auto:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path(runs_root) / f"{stamp}-{name}"
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise AudiotagError(f"--out {out} is a file, not a run folder", hint="choose a folder name for --out")
        while True:
            used = out.exists() and any(p.name != CLAIM for p in out.iterdir())
            if not used and claim_folder(out):
                break
            if auto:  # two runs started in the same second: the later one takes the next name
                out = out.with_name(out.name + "x")
                continue
            if used:
                raise AudiotagError(f"run folder {out} already exists and is not empty",
                                    hint=f"continue it with `audiotag train --resume {out}`, or choose another --out")
            raise AudiotagError(f"run folder {out} is being created by another audiotag process",
                                hint=f"choose another --out (if no other process is running, delete {out / CLAIM})")
        run = cls(out)
        try:
            run._write_new(config, data)
        except BaseException:
            for name in (CLAIM, "config.yaml", "run.json"):  # a run that could not start leaves nothing behind
                (out / name).unlink(missing_ok=True)
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise
        return run

    def _write_new(self, config: Config, data: DataSpec) -> None:
        run = self
        fsutil.write_text(run.dir / "config.yaml", config.to_yaml())
        run.write_info({
            **code_version(), "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "data": asdict(data.absolute()), "status": "created",
            "versions": {**library_versions(), "python": platform.python_version()},
            "host": platform.node(), "cpu_count": os.cpu_count(),
        })

    @classmethod
    def join(cls, out: str | Path, *, config: Config, data: DataSpec, name: str = "run",
             wait_seconds: float = 60.0) -> "Run":
        """The run folder shared by fold-parallel jobs: whichever job comes first creates it, the
        others check that it holds the same config and data and work in it."""
        out = Path(out)
        deadline = time.monotonic() + wait_seconds
        while True:
            if (out / "config.yaml").is_file() and (out / "run.json").is_file():
                run = cls.open(out)
                if result_settings(run.config) != result_settings(config):
                    raise AudiotagError(f"run folder {out} was started with a different config",
                                        hint="give every fold job the same --config and --set options, or use another --out")
                if run.data != data.absolute():
                    raise AudiotagError(f"run folder {out} was started on different data ({run.data.root or run.data.csv})",
                                        hint="give every fold job the same --data, or use another --out")
                return run
            try:
                return cls.create(out, config=config, data=data, name=name)
            except AudiotagError:
                if time.monotonic() > deadline:  # claimed, yet never written
                    raise
                time.sleep(0.2)

    def claim_fold(self, k: int) -> Path:
        """Make fold ``k`` this process's (one job per fold); returns the marker to remove when done."""
        folder = self.fold_dir(k)
        if not claim_folder(folder):
            raise AudiotagError(f"fold {k} of {self.dir} is being trained by another process "
                                f"(pid {(folder / CLAIM).read_text().strip() or '?'})",
                                hint=f"wait for it, or delete {folder / CLAIM} if that process is gone")
        return folder / CLAIM

    @classmethod
    def open(cls, folder: str | Path) -> "Run":
        run = cls(Path(folder))
        if not (run.dir / "run.json").is_file() or not (run.dir / "config.yaml").is_file():
            raise AudiotagError(f"{folder} is not an audiotag run folder (no run.json / config.yaml)",
                                hint="give the folder `audiotag train` wrote (it holds run.json and config.yaml)")
        return run

    @property
    def config(self) -> Config:
        path = self.dir / "config.yaml"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise DataError(f"{path} cannot be read as a config ({type(e).__name__}: {str(e).splitlines()[0]})",
                            hint="the run folder is damaged; restore config.yaml from a copy, or retrain") from None
        if not isinstance(data, dict):
            raise DataError(f"{path} is not a config (a mapping of settings)", hint="restore it from a copy, or retrain")
        try:
            return config_from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e.message}", hint=e.hint) from None

    @property
    def info(self) -> dict:
        path = self.dir / "run.json"
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DataError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})",
                            hint="the run folder is damaged; restore run.json from a copy, or retrain") from None
        if not isinstance(info, dict):
            raise DataError(f"{path} is not a run description", hint="restore it from a copy, or retrain")
        return info

    def write_info(self, info: dict) -> None:
        fsutil.write_text(self.dir / "run.json", json.dumps(info, indent=2))

    def update_info(self, *, drop: tuple[str, ...] = (), add_seconds: float = 0.0, **changes) -> None:
        """Set the ``changes`` in run.json, remove the keys in ``drop`` and add ``add_seconds`` to the
        run's compute time (``wall_seconds``)."""
        if not fsutil.writes_enabled():
            return
        # Fold-parallel jobs update one run.json: the read-modify-write holds a lock.
        with open(self.dir / ".run.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                info = {k: v for k, v in self.info.items() if k not in drop}
                if add_seconds:
                    info["wall_seconds"] = info.get("wall_seconds", 0) + add_seconds
                self.write_info({**info, **changes})
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @property
    def data(self) -> DataSpec:
        return DataSpec(**self.info["data"])

    @property
    def scores(self) -> dict | None:
        path = self.dir / "scores.json"
        if not path.exists():
            return None
        try:
            scores = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DataError(f"{path} cannot be read ({type(e).__name__})",
                            hint=f"re-assemble it: audiotag merge {self.dir}") from None
        if not isinstance(scores, dict):
            raise DataError(f"{path} is not a scores file", hint=f"re-assemble it: audiotag merge {self.dir}")
        return scores

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """The labels, in the order of the models' outputs (run.json; the first checkpoint's for older runs)."""
        saved = self.info.get("vocabulary")
        if saved:
            return tuple(saved)
        return tuple(load_checkpoint(self.fold_dir(self.finished_folds()[0]) / "best.pt")["vocabulary"])

    def fold_dir(self, k: int) -> Path:
        return fold_dir(self.dir, k)

    def fold_done(self, k: int) -> bool:
        return fold_done(self.dir, k)

    def finished_folds(self) -> list[int]:
        folds = sorted(int(p.parent.name.split("_")[1]) for p in self.dir.glob("fold_*/done.json"))
        if not folds:
            raise AudiotagError(f"{self.dir} has no finished fold to predict with",
                                hint=f"finish training first: audiotag train --resume {self.dir}")
        return folds

    def load_fold_model(self, k: int, *, device: torch.device, config: Config | None = None,
                        which: str | None = None) -> torch.nn.Module:
        """Fold ``k``'s chosen weights (``train.checkpoint``: best or last) in a fresh model, eval mode."""
        config = config or self.config
        which = which or config.train.checkpoint
        path = self.fold_dir(k) / f"{which}.pt"
        state = load_checkpoint(path)
        try:
            # "last" is what the trainer kept: its weight average when train.ema_decay is on
            weights = state["model"] if which == "best" else (state["trainer"].get("average") or state["trainer"])["model"]
            model = new_model(config, channels=state["channels"], bands=state["bands"],
                              n_classes=len(state["vocabulary"]), device=device)
            model.load_state_dict(weights)
        except (KeyError, TypeError, RuntimeError) as e:
            raise AudiotagError(f"checkpoint {path} does not fit the run's model ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]})",
                                hint=f"it is from another run or config; restore it, or delete {path.parent} and "
                                     f"train that fold again: audiotag train --resume {self.dir} --fold {k}") from None
        return model.eval()

    def expected_folds(self) -> list[int] | None:
        """The folds the run was configured to train (None when run.json does not say)."""
        n_folds = self.info.get("n_folds")
        if n_folds is None:
            return None
        only = self.config.train.only_folds
        return sorted(only) if only is not None else list(range(n_folds))

    def load_fold_models(self, *, device: torch.device, allow_missing: bool = False) -> list[torch.nn.Module]:
        """Every finished fold's model, in fold order. A fold the run should have but does not (a
        deleted or unfinished fold folder) is an error, unless ``allow_missing``."""
        config = self.config
        finished = self.finished_folds()
        missing = [k for k in (self.expected_folds() or []) if k not in finished]
        if missing and not allow_missing:
            raise AudiotagError(f"{self.dir} lacks the finished model of fold(s) {', '.join(map(str, missing))} "
                                f"(no {self.fold_dir(missing[0]).name}/done.json)",
                                hint=f"restore the folder, or train it: audiotag train --resume {self.dir} --fold "
                                     f"{missing[0]}; or predict with the other folds: --allow-missing-folds")
        return [self.load_fold_model(k, device=device, config=config) for k in finished]

    # ------------------------------------------------------------------ logging

    def log(self, message: str, *, echo: bool = True) -> None:
        """Append ``message`` to log.txt and print it (unless ``echo`` is off)."""
        if not fsutil.writes_enabled():  # a distributed run's other ranks: rank 0 speaks for them
            return
        if echo:
            print(message, flush=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "log.txt", "a", encoding="utf-8") as f:
            f.write(f"{_dt.datetime.now().isoformat(timespec='seconds')} {message}\n")

    def write_skipped(self, skipped: list[Problem]) -> None:
        if not skipped:
            return
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["split", "fname", "code", "message"])
        writer.writerows([p.split, p.fname, p.code, p.message] for p in skipped)
        fsutil.write_text(self.dir / "skipped.csv", out.getvalue())


def list_runs(root: str | Path = "runs") -> list[dict]:
    """One row per run folder under ``root``: name, model, status, scores."""
    rows = []
    for folder in sorted(Path(root).glob("*/run.json")):
        run = Run(folder.parent)
        try:
            info, cfg, scores = run.info, run.config, run.scores or {}
        except (OSError, ValueError, AudiotagError) as e:  # one damaged folder must not hide the others
            reason = e.message if isinstance(e, AudiotagError) else f"{type(e).__name__}: {e}"
            rows.append({"run": str(run.dir), "created": "", "status": "damaged", "model": "", "folds": "",
                         "oof_lwlrap": None, "test_lwlrap": None, "minutes": None, "problem": reason})
            continue
        rows.append({"run": str(run.dir), "created": info.get("created", ""), "status": info.get("status", ""),
                     "model": f"{cfg.model.name} w{cfg.model.width}", "folds": scores.get("n_folds", ""),
                     "oof_lwlrap": scores.get("oof_lwlrap"), "test_lwlrap": scores.get("test_lwlrap"),
                     "minutes": round(scores["train_seconds"] / 60, 1) if "train_seconds" in scores else None})
    return rows
