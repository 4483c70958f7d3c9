"""K-fold cross-validation: one ``run_fold``, out-of-fold and fold-averaged test predictions.

Each fold trains on the other folds' clips, validates every epoch on its own (lwlrap over
sliding windows), keeps the best and last checkpoints, then predicts its validation clips (the
out-of-fold predictions) and the test clips with the configured TTA. A fold that finished is
never trained again; one that was interrupted continues from its last checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import fsutil
from ..augment import build_transforms
from ..config import Config
from ..data.folds import Folds
from ..data.records import Clip, Dataset
from ..engine.callbacks import Checkpointer, EarlyStopping, History
from ..engine.checkpoint import load_checkpoint
from ..engine.trainer import Trainer, lr_lambda
from ..features.cache import FeatureSet
from ..metrics import lwlrap
from ..models import build_model
from .inputs import ClipBank, CropSampler
from .predict import InferenceSpec, average_folds, predict_model
from .runs import Run, write_predictions


def frames_per_second(config: Config) -> float:
    return config.audio.sample_rate / config.features.hop_length


def crop_frames(config: Config) -> int:
    return max(1, int(round(config.train.crop_seconds * frames_per_second(config))))


def window_frames(config: Config) -> int:
    seconds = config.predict.window_seconds or config.train.crop_seconds
    return max(1, int(round(seconds * frames_per_second(config))))


def new_model(config: Config, *, channels: int, bands: int, n_classes: int, device: torch.device) -> torch.nn.Module:
    model = build_model(config.model, in_channels=channels, n_mels=bands, n_classes=n_classes)
    if config.train.channels_last and hasattr(model, "use_channels_last"):
        model = model.use_channels_last()
    return model.to(device)


def inference_spec(config: Config, *, views: int | None = None) -> InferenceSpec:
    return InferenceSpec.from_config(config.predict, window=window_frames(config), pad_mode=config.train.pad_mode,
                                     seed=config.seed, views=views)


@dataclass
class FoldResult:
    fold: int
    oof: np.ndarray  # (n_val, K) probabilities, in the order of the fold's validation clips
    val_index: np.ndarray
    test: np.ndarray | None
    summary: dict


def _load_done(folder, val_index) -> FoldResult | None:
    done = folder / "done.json"
    if not done.exists():
        return None
    summary = json.loads(done.read_text())
    test = np.load(folder / "test.npy") if (folder / "test.npy").exists() else None
    return FoldResult(summary["fold"], np.load(folder / "oof.npy"), val_index, test, summary)


def load_fold_model(run: Run, k: int, *, config: Config, device: torch.device, which: str | None = None) -> torch.nn.Module:
    """The fold's chosen weights (``train.checkpoint``: best or last) in a fresh model, eval mode."""
    which = which or config.train.checkpoint
    state = load_checkpoint(run.fold_dir(k) / f"{which}.pt")
    weights = state["model"] if which == "best" else state["trainer"]["model"]
    model = new_model(config, channels=state["channels"], bands=state["bands"], n_classes=len(state["vocabulary"]),
                      device=device)
    model.load_state_dict(weights)
    return model.eval()


def run_fold(k: int, *, run: Run, config: Config, ds: Dataset, features: FeatureSet, folds: Folds,
             train_clips: list[Clip], test_clips: list[Clip], device: torch.device, precision: str) -> FoldResult:
    folder = run.fold_dir(k)
    train_idx, val_idx = folds.indices(train_clips, k)
    finished = _load_done(folder, val_idx)
    if finished is not None:
        run.log(f"fold {k}: already done (val lwlrap {finished.summary['val_lwlrap']:.4f}), reusing it")
        return finished
    t = config.train
    targets = ds.label_matrix(train_clips)
    train_bank = ClipBank.from_features(features, [train_clips[i] for i in train_idx], targets[train_idx])
    val_bank = ClipBank.from_features(features, [train_clips[i] for i in val_idx], targets[val_idx])
    sampler = CropSampler(train_bank, crop_frames=crop_frames(config), batch_size=t.batch_size, seed=config.seed,
                          stream=k, pad_mode=t.pad_mode, balanced=t.balanced_sampling)

    torch.manual_seed(config.seed * 1000 + k)
    model = new_model(config, channels=train_bank.channels, bands=train_bank.bands, n_classes=len(ds.vocabulary),
                      device=device)
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    total_steps = t.epochs * sampler.batches_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(t.schedule, total_steps=total_steps, warmup_fraction=t.warmup_fraction))
    clean = inference_spec(config, views=0)
    last_val: dict[str, np.ndarray] = {}

    def evaluate() -> dict:
        probs = predict_model(model, val_bank, clean, device=device, precision=precision)
        last_val["probs"] = probs
        return {"val_lwlrap": lwlrap(val_bank.targets, probs)}

    meta = {"fold": k, "config": config.to_dict(), "vocabulary": list(ds.vocabulary), "channels": train_bank.channels,
            "bands": train_bank.bands}
    callbacks = [Checkpointer(folder, meta=meta),
                 History(folder / "history.csv", log=run.log, prefix=f"fold {k}  ", total_epochs=t.epochs)]
    if t.early_stopping_patience:
        callbacks.append(EarlyStopping(patience=t.early_stopping_patience))
    trainer = Trainer(model, optimizer=optimizer, scheduler=scheduler, device=device, precision=precision,
                      transforms=build_transforms(config.augment, seed=config.seed * 1000 + k),
                      grad_clip=t.grad_clip, callbacks=callbacks)
    if (folder / "last.pt").exists():
        trainer.load_state_dict(load_checkpoint(folder / "last.pt")["trainer"])
        run.log(f"fold {k}: resuming after epoch {trainer.epoch}")
    else:
        run.log(f"fold {k}: training on {len(train_bank)} clips, validating on {len(val_bank)}")
    start = time.perf_counter()
    trainer.fit(epochs=t.epochs, batches_for=sampler.epoch, evaluate=evaluate)
    train_s = time.perf_counter() - start  # this session's share (a resumed fold trained before too)

    chosen = load_fold_model(run, k, config=config, device=device)
    spec = inference_spec(config)
    oof = predict_model(chosen, val_bank, spec, device=device, precision=precision)
    test, test_s_per_clip = None, None
    if test_clips:
        start = time.perf_counter()
        test = predict_model(chosen, ClipBank.from_features(features, test_clips), spec, device=device,
                             precision=precision)
        test_s_per_clip = (time.perf_counter() - start) / len(test_clips)
        fsutil.save_npy(folder / "test.npy", test)
    fsutil.save_npy(folder / "oof.npy", oof)
    best = max(trainer.history, key=lambda r: r["val_lwlrap"])
    summary = {"fold": k, "val_lwlrap": lwlrap(val_bank.targets, oof), "epochs": trainer.epoch,
               "best_epoch": best["epoch"], "best_epoch_val_lwlrap": best["val_lwlrap"],
               "checkpoint": config.train.checkpoint, "n_train": len(train_bank), "n_val": len(val_bank),
               "train_seconds": sum(r["seconds"] for r in trainer.history), "session_seconds": train_s,
               "tta_views": spec.views, "test_seconds_per_clip": test_s_per_clip}
    fsutil.write_text(folder / "done.json", json.dumps(summary, indent=2))  # last: marks the fold complete
    run.log(f"fold {k}: val lwlrap {summary['val_lwlrap']:.4f} ({config.train.checkpoint} checkpoint, epoch "
            f"{best['epoch'] if config.train.checkpoint == 'best' else trainer.epoch})")
    return FoldResult(k, oof, val_idx, test, summary)


def run_cv(*, run: Run, config: Config, ds: Dataset, features: FeatureSet, folds: Folds, train_clips: list[Clip],
           test_clips: list[Clip], device: torch.device, precision: str) -> dict:
    """Train the configured folds and write OOF/test predictions and scores; returns the scores."""
    todo = config.train.only_folds if config.train.only_folds is not None else range(folds.n_folds)
    results = [run_fold(k, run=run, config=config, ds=ds, features=features, folds=folds, train_clips=train_clips,
                        test_clips=test_clips, device=device, precision=precision) for k in todo]
    return assemble(run=run, config=config, ds=ds, folds=folds, train_clips=train_clips, test_clips=test_clips,
                    results=results)


def assemble(*, run: Run, config: Config, ds: Dataset, folds: Folds, train_clips: list[Clip], test_clips: list[Clip],
             results: list[FoldResult]) -> dict:
    targets = ds.label_matrix(train_clips)
    covered = np.concatenate([r.val_index for r in results])
    oof = np.zeros((len(train_clips), len(ds.vocabulary)), dtype=np.float32)
    for r in results:
        oof[r.val_index] = r.oof
    order = np.sort(covered)
    fold_ids = [folds.fold[train_clips[i].fname] for i in order]
    write_predictions(run.dir / "oof_predictions.csv", [train_clips[i].fname for i in order], ds.vocabulary,
                      oof[order], extra={"fold": fold_ids})
    fold_scores = [r.summary["val_lwlrap"] for r in results]
    scores = {
        "n_folds": folds.n_folds, "folds_done": [r.fold for r in results], "folds_source": folds.source,
        "oof_lwlrap": lwlrap(targets[order], oof[order]),
        "fold_lwlrap": fold_scores, "fold_lwlrap_mean": float(np.mean(fold_scores)),
        "fold_lwlrap_std": float(np.std(fold_scores)),
        "train_seconds": float(sum(r.summary["train_seconds"] for r in results)),
        "epochs": [r.summary["epochs"] for r in results], "best_epochs": [r.summary["best_epoch"] for r in results],
    }
    per_clip = [r.summary.get("test_seconds_per_clip") for r in results]
    if all(v is not None for v in per_clip):
        # what predicting one test clip with the whole fold ensemble costs, TTA included
        scores["test_inference_ms_per_clip"] = 1000 * float(sum(per_clip))
        scores["tta_views"] = results[0].summary.get("tta_views", 0)
    tests = [r.test for r in results if r.test is not None]
    if tests:
        test = average_folds(tests, config.predict.fold_mean)
        write_predictions(run.dir / "test_predictions.csv", [c.fname for c in test_clips], ds.vocabulary, test)
        if ds.test_labelled:
            scores["test_lwlrap"] = lwlrap(ds.label_matrix(test_clips), test)
    fsutil.write_text(run.dir / "scores.json", json.dumps(scores, indent=2))
    return scores
