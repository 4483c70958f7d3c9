"""``audiotag train``: validate, cache features, split folds, cross-validate, predict the test set.

:func:`train` starts a run; :func:`resume` continues an interrupted one from its folder, skipping
finished folds and continuing the unfinished one from its last checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import Config
from ..data.folds import make_folds, read_folds_csv
from ..errors import AudiotagError
from ..features.cache import build_features
from ..audio.inventory import default_cache_dir
from ..parallel import resolve_workers
from ..report.curves import plot_training_curves
from .. import fsutil
from ..engine.precision import resolve_device, resolve_precision
from .cv import crop_frames, new_model, run_cv
from .runs import DataSpec, Run


def _threads(config: Config) -> None:
    torch.set_num_threads(config.train.threads or resolve_workers(0))


def _prepare(run: Run, config: Config, data: DataSpec, *, cache_dir: Path, progress: bool):
    ds = data.load()
    wanted = ("curated", "noisy", "test") if config.noisy.strategy != "none" else ("curated", "test")
    splits = tuple(s for s in wanted if ds.split(s))
    if not ds.split("curated"):
        raise AudiotagError(f"{data.root or data.csv}: no labelled training clips",
                            hint="training needs train_curated.csv (Kaggle layout), a labels CSV, or class folders")
    features = build_features(ds, config, cache_dir=cache_dir, splits=splits, progress=progress)
    ds = features.dataset
    run.write_skipped(ds.skipped)
    if ds.skipped:
        run.log(f"skipped {len(ds.skipped)} bad clips (--skip-bad); listed in {run.dir / 'skipped.csv'}")
    return ds, features


def _execute(run: Run, config: Config, data: DataSpec, *, cache_dir: Path, progress: bool) -> Run:
    _threads(config)
    ds, features = _prepare(run, config, data, cache_dir=cache_dir, progress=progress)
    train_clips, test_clips = ds.split("curated"), ds.split("test")
    folds_path = run.dir / "folds.csv"
    if folds_path.exists():
        folds = read_folds_csv(folds_path, source=run.info.get("folds_source", "stratified"))
        missing = {c.fname for c in train_clips} - set(folds.fold)
        if missing:
            raise AudiotagError(f"the dataset has {len(missing)} training clips that {folds_path} does not know "
                                f"(e.g. {sorted(missing)[0]})", hint="the data changed since the run began; start a new run")
    else:
        folds = make_folds(ds, train_clips, n_folds=config.train.folds, seed=config.seed,
                           use_dataset_folds=config.train.use_dataset_folds, cache_dir=cache_dir)
        fsutil.write_text(folds_path, folds.to_csv())
    info = run.info
    device = resolve_device(config.train.device)
    precision = info.get("precision")
    if precision is None:  # chosen once per run (by timing, for "auto"), so a resumed run keeps it
        channels, bands = features.load(train_clips[0]).shape[:2]
        probe = new_model(config, channels=channels, bands=bands, n_classes=len(ds.vocabulary), device=device)
        example = torch.randn(min(config.train.batch_size, 16), channels, bands, crop_frames(config), device=device)
        precision = resolve_precision(config.train.precision, device=device, model=probe, example=example)
    run.update_info(status="running", device=str(device), precision=precision, folds_source=folds.source,
                    vocabulary=list(ds.vocabulary),
                    n_folds=folds.n_folds, n_train_clips=len(train_clips), n_test_clips=len(test_clips),
                    threads=torch.get_num_threads())
    run.log(f"{len(train_clips)} training clips in {folds.n_folds} folds ({folds.source}), {len(test_clips)} test clips; "
            f"{config.model.name} on {device} ({precision}, {torch.get_num_threads()} threads)")
    start = time.perf_counter()
    try:
        scores = run_cv(run=run, config=config, ds=ds, features=features, folds=folds, train_clips=train_clips,
                        test_clips=test_clips, device=device, precision=precision)
    except KeyboardInterrupt:
        run.update_info(status="interrupted")
        run.log(f"interrupted; continue with: audiotag train --resume {run.dir}")
        raise
    plot_training_curves(run.dir, run.dir / "training_curves.png")
    run.update_info(status="done", wall_seconds=run.info.get("wall_seconds", 0) + time.perf_counter() - start)
    text = f"OOF lwlrap {scores['oof_lwlrap']:.4f} (folds {scores['fold_lwlrap_mean']:.4f} ± {scores['fold_lwlrap_std']:.4f})"
    if "test_lwlrap" in scores:
        text += f"; test lwlrap {scores['test_lwlrap']:.4f}"
    run.log(text)
    if (run.dir / "test_predictions.csv").exists():
        run.log(f"test predictions (Kaggle format): {run.dir / 'test_predictions.csv'}")
    return run


def train(data: DataSpec, config: Config, *, out: str | Path | None = None, cache_dir: str | Path | None = None,
          progress: bool = True) -> Run:
    """Start a run in ``out`` (default ``runs/<time>-<model>``) and train it to the end."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    run = Run.create(out, config=config, data=data, name=config.model.name)
    run.update_info(cache_dir=str(cache_dir.resolve()))
    run.log(f"run folder: {run.dir}")
    return _execute(run, config, data, cache_dir=cache_dir, progress=progress)


def resume(folder: str | Path, *, progress: bool = True) -> Run:
    """Continue the run in ``folder`` with its saved config and dataset."""
    run = Run.open(folder)
    info = run.info
    if info.get("status") == "done":
        run.log(f"{folder} is already complete; nothing to do")
        return run
    run.log(f"resuming {run.dir}")
    cache_dir = Path(info.get("cache_dir") or default_cache_dir())
    return _execute(run, run.config, run.data, cache_dir=cache_dir, progress=progress)
