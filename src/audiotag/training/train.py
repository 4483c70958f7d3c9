"""``audiotag train``: validate, cache features, split folds, cross-validate, predict the test set.

:func:`train` starts a run; :func:`resume` continues an interrupted one from its folder, skipping
finished folds and continuing the unfinished one from its last checkpoint. ``train(..., fold=K)``
trains one fold as an independent job in a run folder shared with the other folds' jobs, and
:func:`merge` assembles their predictions exactly as a serial run does. Under ``torchrun`` every
process runs the same code; :mod:`..engine.distributed` keeps them in step.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import fsutil
from ..audio.inventory import default_cache_dir
from ..config import Config
from ..data.folds import make_folds, read_folds_csv
from ..engine import distributed
from ..engine.precision import MEMORY_FILE, resolve_device, resolve_precision
from ..errors import AudiotagError
from ..features.cache import build_features
from ..models import new_model
from ..parallel import resolve_workers
from ..plots import plot_training_curves
from ..runs import DataSpec, Run
from .context import RunClock, TrainingContext
from .cv import assemble, crop_frames, crop_weighting, load_fold_result, run_cv


def _threads(config: Config) -> None:
    # The processes of one machine share its cores.
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(config.train.threads or max(1, resolve_workers(0) // local))


def _prepare(run: Run, config: Config, data: DataSpec, *, cache_dir: Path, progress: bool):
    ds = data.load()
    wanted = ("curated", "noisy", "test") if config.noisy.strategy != "none" else ("curated", "test")
    splits = tuple(s for s in wanted if ds.split(s))
    if not ds.split("curated"):
        raise AudiotagError(f"{data.root or data.csv}: no labelled training clips",
                            hint="training needs train_curated.csv (Kaggle layout), a labels CSV, or class folders")
    if not distributed.is_main():
        distributed.barrier()  # rank 0 builds the cache; the others then find every entry in it
    features = build_features(ds, config, cache_dir=cache_dir, splits=splits, progress=progress and distributed.is_main())
    if distributed.is_main():
        distributed.barrier()
    ds = features.dataset
    run.write_skipped(ds.skipped)
    if ds.skipped:
        files = len({(p.split, p.fname) for p in ds.skipped})
        run.log(f"skipped {files} bad files (--skip-bad); their problems are listed in {run.dir / 'skipped.csv'}")
    return ds, features


def _load_folds(run: Run, config: Config, ds, train_clips, cache_dir: Path):
    folds_path = run.dir / "folds.csv"
    if folds_path.exists():
        folds = read_folds_csv(folds_path, source=run.info.get("folds_source", "stratified"))
        missing = {c.fname for c in train_clips} - set(folds.fold)
        if missing:
            raise AudiotagError(f"the dataset has {len(missing)} training clips that {folds_path} does not know "
                                f"(e.g. {sorted(missing)[0]})", hint="the data changed since the run began; start a new run")
    else:
        fold_seed = config.seed if config.train.fold_seed is None else config.train.fold_seed
        folds = make_folds(ds, train_clips, n_folds=config.train.folds, seed=fold_seed,
                           use_dataset_folds=config.train.use_dataset_folds, cache_dir=cache_dir)
        fsutil.write_text(folds_path, folds.to_csv())
    return folds


def _execute(run: Run, config: Config, data: DataSpec, *, cache_dir: Path, progress: bool, device: torch.device,
             fold: int | None = None) -> Run:
    """Train ``run`` (or one ``fold`` of it). However it stops, run.json and log.txt say how: a
    run folder never stays "created" or "running" after its process has ended."""
    resume_hint = f"audiotag train --resume {run.dir}" + (f" --fold {fold}" if fold is not None else "")
    try:
        return _train_run(run, config, data, cache_dir=cache_dir, progress=progress, device=device, fold=fold)
    except KeyboardInterrupt:
        if fold is None:  # a fold job's siblings may still be running: run.json speaks for all of them
            run.update_info(status="interrupted")
        run.log(f"interrupted; continue with: {resume_hint}")
        raise
    except Exception as e:
        reason = e.message if isinstance(e, AudiotagError) else f"{type(e).__name__}: {e}"
        if fold is None:
            run.update_info(status="failed", error=reason.splitlines()[0])  # the log has all of it
        run.log(f"failed: {reason}" + (f" (hint: {e.hint})" if isinstance(e, AudiotagError) and e.hint else "")
                + f"; after fixing the cause, continue with: {resume_hint}", echo=False)  # the CLI prints the error
        raise


def _train_run(run: Run, config: Config, data: DataSpec, *, cache_dir: Path, progress: bool, device: torch.device,
               fold: int | None) -> Run:
    _threads(config)
    ds, features = _prepare(run, config, data, cache_dir=cache_dir, progress=progress)
    train_clips, test_clips = ds.split("curated"), ds.split("test")
    folds = _load_folds(run, config, ds, train_clips, cache_dir)
    if fold is not None and not 0 <= fold < folds.n_folds:
        raise AudiotagError(f"--fold {fold}: the run has folds 0 to {folds.n_folds - 1}",
                            hint=f"give --fold a number from 0 to {folds.n_folds - 1}")
    info = run.info
    precision = info.get("precision")
    if precision is None:  # chosen once per run (by timing, for "auto"), so a resumed run keeps it
        channels, bands = features.load(train_clips[0]).shape[:2]
        probe = new_model(config, channels=channels, bands=bands, n_classes=len(ds.vocabulary), device=device)
        example = torch.randn(min(config.train.batch_size, 16), channels, bands, crop_frames(config), device=device)
        precision = resolve_precision(config.train.precision, device=device, model=probe, example=example,
                                      memory=cache_dir / MEMORY_FILE)
        precision = distributed.broadcast(precision)  # timings differ between processes; rank 0 decides
    processes = distributed.world_size()
    run.update_info(status="running", drop=("error",), device=str(device), precision=precision, folds_source=folds.source,
                    vocabulary=list(ds.vocabulary),
                    n_folds=folds.n_folds, n_train_clips=len(train_clips), n_test_clips=len(test_clips),
                    threads=torch.get_num_threads(), processes=processes)
    where = f"{processes} processes" if processes > 1 else f"{torch.get_num_threads()} threads"
    run.log(f"{len(train_clips)} training clips in {folds.n_folds} folds ({folds.source}), {len(test_clips)} test clips; "
            f"{config.model.name} on {device} ({precision}, {where})" + (f"; this job: fold {fold}" if fold is not None else ""))
    if config.train.crop_energy > 0 and not crop_weighting(config):
        run.log("train.crop_energy: no logmel or cqt channel to weigh crops by, so crop starts are drawn uniformly")
    clock = RunClock(run)
    marker = run.claim_fold(fold) if fold is not None and distributed.is_main() else None
    try:
        ctx = TrainingContext(run=run, config=config, ds=ds, features=features, folds=folds, train_clips=train_clips,
                              test_clips=test_clips, device=device, precision=precision, clock=clock)
        scores = run_cv(ctx, folds_to_train=[fold] if fold is not None else None)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    if scores is None:  # a fold job whose siblings are not all done yet
        pending = [k for k in range(folds.n_folds) if not run.fold_done(k)]
        run.log(f"fold {fold} done; waiting for fold(s) {', '.join(map(str, pending))}; when they are done, "
                f"`audiotag merge {run.dir}` assembles the run (the last fold job does it by itself)")
        clock.lap()
        return run
    clock.lap()
    return _finish(run, scores)


def _finish(run: Run, scores: dict) -> Run:
    plot_training_curves(run.dir, run.dir / "training_curves.png")
    run.update_info(status="done")
    text = f"OOF lwlrap {scores['oof_lwlrap']:.4f} (folds {scores['fold_lwlrap_mean']:.4f} ± {scores['fold_lwlrap_std']:.4f})"
    if "test_lwlrap" in scores:
        text += f"; test lwlrap {scores['test_lwlrap']:.4f}"
        if len(scores.get("fold_test_lwlrap", [])) > 1:
            each = scores["fold_test_lwlrap"]
            text += f" (fold models alone {min(each):.4f}-{max(each):.4f}, mean {sum(each) / len(each):.4f})"
    run.log(text)
    if (run.dir / "test_predictions.csv").exists():
        run.log(f"test predictions (Kaggle format): {run.dir / 'test_predictions.csv'}")
    return run


def _device(config: Config) -> torch.device:
    device = resolve_device(config.train.device)
    distributed.setup(device)
    return distributed.local_device(device)


def train(data: DataSpec, config: Config, *, out: str | Path | None = None, cache_dir: str | Path | None = None,
          progress: bool = True, fold: int | None = None) -> Run:
    """Start a run in ``out`` (default ``runs/<time>-<model>``) and train it to the end.

    With ``fold``, train only that fold, in a run folder that the jobs of the other folds share
    (``out`` is then required): the first job creates it, the others join it."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if fold is not None and fold < 0:
        raise AudiotagError(f"--fold {fold}: folds are numbered from 0", hint="e.g. --fold 0")
    if fold is not None and out is None:
        raise AudiotagError("--fold needs --out: every fold's job must name the same run folder",
                            hint="e.g. audiotag train --data DATA --out runs/big --fold 0")
    data.load()  # a dataset that cannot be read at all is refused before a run folder is made
    device = _device(config)
    try:
        if distributed.is_main():
            run = (Run.join(out, config=config, data=data, name=config.model.name) if fold is not None
                   else Run.create(out, config=config, data=data, name=config.model.name))
            run.update_info(cache_dir=str(cache_dir.resolve()))
        run = Run(Path(distributed.broadcast(str(run.dir) if distributed.is_main() else None)))
        run.log(f"run folder: {run.dir}")
        run = _execute(run, config, data, cache_dir=cache_dir, progress=progress, device=device, fold=fold)
    except BaseException:
        distributed.teardown(failed=True)
        raise
    distributed.teardown()
    return run


def resume(folder: str | Path, *, progress: bool = True, fold: int | None = None) -> Run:
    """Continue the run in ``folder`` with its saved config and dataset (only ``fold``, if given)."""
    run = Run.open(folder)
    info = run.info
    if info.get("status") == "done":
        run.log(f"{folder} is already complete; nothing to do")
        return run
    device = _device(run.config)
    try:
        run.log(f"resuming {run.dir}")
        if distributed.is_main():
            for path in fsutil.remove_orphaned_temporaries(run.dir):
                run.log(f"removed {path.relative_to(run.dir)}, left half-written by the interrupted process")
        cache_dir = Path(info.get("cache_dir") or default_cache_dir())
        run = _execute(run, run.config, run.data, cache_dir=cache_dir, progress=progress, device=device, fold=fold)
    except BaseException:
        distributed.teardown(failed=True)
        raise
    distributed.teardown()
    return run


def merge(folder: str | Path, *, progress: bool = True) -> Run:
    """Assemble a run whose folds were trained by separate jobs (``audiotag train --fold K``): OOF
    and fold-averaged test predictions and scores, exactly as a serial run writes them."""
    run = Run.open(folder)
    config, info = run.config, run.info
    cache_dir = Path(info.get("cache_dir") or default_cache_dir())
    ds, features = _prepare(run, config, run.data, cache_dir=cache_dir, progress=progress)
    train_clips, test_clips = ds.split("curated"), ds.split("test")
    folds = _load_folds(run, config, ds, train_clips, cache_dir)
    todo = config.train.only_folds if config.train.only_folds is not None else range(folds.n_folds)
    missing = [k for k in todo if not run.fold_done(k)]
    if missing:
        raise AudiotagError(f"{run.dir}: fold(s) {', '.join(map(str, missing))} are not done",
                            hint="train them first: " + "; ".join(f"audiotag train --resume {run.dir} --fold {k}"
                                                                  for k in missing))
    results = [load_fold_result(run, k, folds=folds, train_clips=train_clips) for k in todo]
    ctx = TrainingContext(run=run, config=config, ds=ds, features=features, folds=folds, train_clips=train_clips,
                          test_clips=test_clips, device=torch.device("cpu"), precision=info.get("precision", "fp32"))
    scores = assemble(ctx, results)
    return _finish(run, scores)
