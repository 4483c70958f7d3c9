"""K-fold cross-validation: one ``run_fold``, out-of-fold and fold-averaged test predictions.

Each fold trains on the other folds' clips, validates every epoch on its own (lwlrap over
sliding windows), keeps the best and last checkpoints, then predicts its validation clips (the
out-of-fold predictions) and the test clips with the configured TTA. A fold that finished is
never trained again; one that was interrupted continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import fsutil
from ..augment import build_transforms
from ..config import Config
from ..data.folds import Folds
from ..data.records import Clip
from ..engine import distributed
from ..engine.callbacks import (Checkpointer, EarlyStopping, History, TensorBoardScalars, duration,
                                tensorboard_available)
from ..engine.checkpoint import load_checkpoint
from ..engine.mixmatch import MixMatchTrainer
from ..engine.trainer import Trainer, lr_lambda
from ..errors import AudiotagError, DataError
from ..features.bank import ClipBank
from ..features.frontend import DB_CHANNELS, channel_names
from ..inference.predict import average_folds, frames_per_second, inference_spec, predict_model
from ..metrics import lwlrap
from ..models import new_model
from ..runs import CLAIM, Run, claim_folder, write_predictions
from .batches import CropSampler, prefetch
from .context import TrainingContext
from .noisy import NoisyPlan, noisy_loss, pretraining_warning, training_bank


def crop_weighting(config: Config) -> dict:
    """The sampler's crop-start weighting: ``train.crop_energy`` and the first channel in dB of a power;
    none (uniform starts) when it is off or no channel is a power in dB (waveform, MFCC, chroma ...)."""
    energy_channel = next((i for i, name in enumerate(channel_names(config.features)) if name in DB_CHANNELS), None)
    if config.train.crop_energy <= 0 or energy_channel is None:
        return {}
    return {"crop_energy": config.train.crop_energy, "energy_channel": energy_channel}


def crop_frames(config: Config) -> int:
    return max(1, int(round(config.train.crop_seconds * frames_per_second(config))))


@dataclass
class FoldResult:
    fold: int
    oof: np.ndarray  # (n_val, K) probabilities, in the order of the fold's validation clips
    val_index: np.ndarray
    test: np.ndarray | None
    summary: dict


def load_fold_result(run: Run, k: int, *, folds: Folds, train_clips: list[Clip]) -> FoldResult | None:
    """The saved result of a finished fold (None when the fold is not done)."""
    return _load_done(run.fold_dir(k), folds.indices(train_clips, k)[1])


def _load_done(folder, val_index) -> FoldResult | None:
    done = folder / "done.json"
    if not done.exists():
        return None
    try:
        summary = json.loads(done.read_text(encoding="utf-8"))
        test = np.load(folder / "test.npy") if (folder / "test.npy").exists() else None
        return FoldResult(summary["fold"], np.load(folder / "oof.npy"), val_index, test, summary)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{folder} holds a damaged finished fold ({type(e).__name__} in done.json, oof.npy or "
                        "test.npy)", hint=f"delete {done} to train that fold again") from None


@dataclass
class FitJob:
    """One model to train in ``folder`` for ``epochs`` (continuing from its last.pt when there is
    one), validated on ``val_bank`` every epoch; ``stream`` seeds its augmentation and dropout."""

    folder: Path
    model: torch.nn.Module
    sampler: CropSampler
    val_bank: ClipBank
    epochs: int
    lr: float
    loss_fn: object
    meta: dict
    prefix: str
    stream: int
    mixmatch: bool = False
    early_stopping: bool = True
    epochs_after: int = 0  # epochs of the folds still to train after this one, for the run's ETA


def clip_bce(targets: np.ndarray, probs: np.ndarray) -> float:
    """Binary cross-entropy of clip-level probabilities (windows aggregated, no augmentation)."""
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    t = targets[:, : p.shape[1]]
    return float(-(t * np.log(p) + (1 - t) * np.log1p(-p)).mean())


def _trainer(job: FitJob, ctx: TrainingContext) -> Trainer:
    config, t = ctx.config, ctx.config.train
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(job.model.parameters(), lr=job.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(t.schedule, total_steps=job.epochs * job.sampler.batches_per_epoch,
                             warmup_fraction=t.warmup_fraction))
    callbacks = [Checkpointer(job.folder, meta=job.meta),
                 History(job.folder / "history.csv", log=ctx.run.log, prefix=job.prefix, total_epochs=job.epochs,
                         epochs_after=job.epochs_after)]
    if t.early_stopping_patience and job.early_stopping:
        callbacks.append(EarlyStopping(patience=t.early_stopping_patience))
    if tensorboard_available():
        callbacks.append(TensorBoardScalars(job.folder / "tensorboard"))
    common = dict(optimizer=optimizer, scheduler=scheduler, device=ctx.device, precision=ctx.precision,
                  transforms=build_transforms(config.augment, seed=config.seed * 1000 + job.stream,
                                              channels=channel_names(config.features)),
                  grad_clip=t.grad_clip, callbacks=callbacks, loss_fn=job.loss_fn, ema_decay=t.ema_decay)
    if job.mixmatch:
        n = config.noisy
        return MixMatchTrainer(job.model, k=n.mixmatch_k, temperature=n.mixmatch_temperature, alpha=n.mixmatch_alpha,
                               weight=n.mixmatch_weight, ramp_epochs=n.mixmatch_ramp_epochs,
                               seed=config.seed * 1000 + job.stream + 500, **common)
    return Trainer(job.model, **common)


def fit(job: FitJob, ctx: TrainingContext) -> Trainer:
    """Train ``job.model`` as ``job`` says; returns the trainer (its history holds every epoch)."""
    clean = inference_spec(ctx.config, views=0)

    def evaluate() -> dict:
        probs = predict_model(trainer.kept_model, job.val_bank, clean, device=ctx.device, precision=ctx.precision)
        return {"val_lwlrap": lwlrap(job.val_bank.targets, probs), "val_loss": clip_bce(job.val_bank.targets, probs)}

    trainer = _trainer(job, ctx)
    if distributed.rank():  # each process its own dropout stream (rank 0 keeps a 1-process run's)
        torch.manual_seed(ctx.config.seed * 1000 + job.stream + 7919 * distributed.rank())
    if (job.folder / "last.pt").exists():
        trainer.load_state_dict(load_checkpoint(job.folder / "last.pt")["trainer"])
        ctx.run.log(f"{job.prefix.strip()}: resuming after epoch {trainer.epoch}")
        if ctx.clock is not None:  # the epochs of the stopped session were never counted
            ctx.clock.lap(earlier=sum(r["seconds"] for r in trainer.history))
    batches_for = job.sampler.epoch
    if ctx.device.type == "cuda":  # on a CPU the cores are better spent on the model itself
        def batches_for(epoch: int):
            return prefetch(job.sampler.epoch(epoch), pin_memory=True)
    trainer.fit(epochs=job.epochs, batches_for=batches_for, evaluate=evaluate,
                validate_every=ctx.config.train.validate_every)
    return trainer


PRETRAIN_STREAM = 999  # the pretraining model's seed stream, apart from every fold's


def _meta(ctx: TrainingContext, fold, bank: ClipBank) -> dict:
    return {"fold": fold, "config": ctx.config.to_dict(), "vocabulary": list(ctx.vocabulary),
            "channels": bank.channels, "bands": bank.bands}


def pretrain_on_noisy(ctx: TrainingContext) -> Path:
    """Train one model on the noisy clips (``RUN/pretrain``); its last weights start every fold.

    Validation lwlrap on all curated clips is reported (how a noisy-only model does on clean data)
    but chooses nothing, so no fold's validation clips influence the starting point."""
    run, config, plan = ctx.run, ctx.config, ctx.plan
    folder = run.dir / "pretrain"
    weights = folder / "last.pt"
    if (folder / "done.json").exists():
        return weights
    if distributed.is_main() and not claim_folder(folder):  # a sibling fold job is pretraining: use its model
        run.log(f"waiting for another job's pretraining in {folder}")
        while not (folder / "done.json").exists() and not claim_folder(folder):
            time.sleep(10)
    distributed.barrier()
    if (folder / "done.json").exists():
        return weights
    n = config.noisy
    bank = ClipBank.from_features(ctx.features, plan.clips, np.concatenate(
        [plan.given, np.ones((len(plan.clips), 1), np.float32)], axis=1))
    curated = ClipBank.from_features(ctx.features, ctx.train_clips, ctx.targets(ctx.train_clips))
    sampler = CropSampler(bank, crop_frames=crop_frames(config), batch_size=config.train.batch_size,
                          seed=config.seed, stream=PRETRAIN_STREAM, pad_mode=config.train.pad_mode,
                          **crop_weighting(config))
    torch.manual_seed(config.seed * 1000 + PRETRAIN_STREAM)
    model = new_model(config, channels=bank.channels, bands=bank.bands, n_classes=len(ctx.vocabulary),
                      device=ctx.device)
    run.log(f"pretraining on {len(bank)} noisy clips for {n.pretrain_epochs} epochs (loss {n.loss})")
    job = FitJob(folder, model, sampler, curated, epochs=n.pretrain_epochs, lr=config.train.lr, loss_fn=noisy_loss(n),
                 meta=_meta(ctx, "pretrain", bank), prefix="pretrain  ", stream=PRETRAIN_STREAM,
                 early_stopping=False)  # stopping on curated lwlrap would let validation clips choose
    trainer = fit(job, ctx)
    summary = {"epochs": trainer.epoch, "noisy_clips": len(bank),
               "curated_lwlrap": trainer.history[-1]["val_lwlrap"],
               "train_seconds": sum(r["seconds"] for r in trainer.history)}
    fsutil.write_text(folder / "done.json", json.dumps(summary, indent=2))
    if distributed.is_main():
        (folder / CLAIM).unlink(missing_ok=True)
    run.log(f"pretraining done: lwlrap {summary['curated_lwlrap']:.4f} on all curated clips")
    warning = pretraining_warning(summary["curated_lwlrap"], curated.targets, plan.given, n)
    if warning:
        run.log(f"warning: {warning}")
    return weights


def _fold_sampler(ctx: TrainingContext, train_bank: ClipBank, noisy_mask, test_mask, k: int) -> CropSampler:
    t = ctx.config.train
    sampler = CropSampler(train_bank, crop_frames=crop_frames(ctx.config), batch_size=t.batch_size,
                          seed=ctx.config.seed, stream=k, pad_mode=t.pad_mode, balanced=t.balanced_sampling,
                          noisy=noisy_mask,
                          noisy_fraction=ctx.config.noisy.batch_fraction if noisy_mask is not None else 0.0,
                          test_rows=test_mask, test_fraction=ctx.config.noisy.test_batch_fraction or 0.0,
                          **crop_weighting(ctx.config))
    if min(t.batch_size, len(train_bank)) < 2 * distributed.world_size():
        raise AudiotagError(f"a batch of {min(t.batch_size, len(train_bank))} clips cannot be shared by "
                            f"{distributed.world_size()} processes (batch norm needs 2 or more clips in each)",
                            hint="raise train.batch_size (it is the batch of all processes together) or use fewer processes")
    return sampler


def run_fold(k: int, ctx: TrainingContext, *, epochs_after: int = 0) -> FoldResult:
    run, config, t = ctx.run, ctx.config, ctx.config.train
    folder = run.fold_dir(k)
    train_idx, val_idx = ctx.fold_split(k)
    finished = _load_done(folder, val_idx)
    if finished is not None:
        run.log(f"fold {k}: already done (val lwlrap {finished.summary['val_lwlrap']:.4f}), reusing it")
        finished.summary["reused"] = True
        return finished
    targets = ctx.targets(ctx.train_clips)
    part = ctx.plan.part(k) if ctx.plan is not None else None
    train_bank, noisy_mask, test_mask = training_bank(ctx.features, [ctx.train_clips[i] for i in train_idx],
                                                      targets[train_idx], part)
    val_bank = ClipBank.from_features(ctx.features, [ctx.train_clips[i] for i in val_idx], targets[val_idx])
    sampler = _fold_sampler(ctx, train_bank, noisy_mask, test_mask, k)

    torch.manual_seed(config.seed * 1000 + k)
    model = new_model(config, channels=train_bank.channels, bands=train_bank.bands, n_classes=len(ctx.vocabulary),
                      device=ctx.device)
    lr = t.lr
    if ctx.pretrained is not None:
        trained = load_checkpoint(ctx.pretrained)["trainer"]
        model.load_state_dict((trained.get("average") or trained)["model"])
        lr = t.lr * config.noisy.finetune_lr_scale
    if not (folder / "last.pt").exists():
        extra = f" + {len(part.clips)} noisy" if part is not None else ""
        extra += " (unlabelled)" if config.noisy.strategy == "mixmatch" else ""
        start_from = " from the pretrained model" if ctx.pretrained is not None else ""
        run.log(f"fold {k}: training on {int((noisy_mask == 0).sum()) if noisy_mask is not None else len(train_bank)}"
                f" curated{extra} clips{start_from}, validating on {len(val_bank)}")
    loss_fn = noisy_loss(config.noisy) if noisy_mask is not None else torch.nn.functional.binary_cross_entropy_with_logits
    start = time.perf_counter()
    trainer = fit(FitJob(folder, model, sampler, val_bank, epochs=t.epochs, lr=lr, loss_fn=loss_fn,
                         meta=_meta(ctx, k, train_bank), prefix=f"fold {k}  ", stream=k,
                         mixmatch=config.noisy.strategy == "mixmatch", epochs_after=epochs_after), ctx)
    train_s = time.perf_counter() - start  # this session's share (a resumed fold trained before too)
    return _predict_fold(k, ctx, trainer, val_bank, val_idx, n_train=len(train_bank), train_s=train_s,
                         epoch_clips=sampler.batches_per_epoch * min(t.batch_size, len(train_bank)))


def _predict_fold(k: int, ctx: TrainingContext, trainer: Trainer, val_bank: ClipBank, val_idx: np.ndarray, *,
                  n_train: int, train_s: float, epoch_clips: int) -> FoldResult:
    """The trained fold's OOF and test predictions and its summary; done.json marks it complete."""
    run, config, folder = ctx.run, ctx.config, ctx.run.fold_dir(k)
    distributed.barrier()  # rank 0 wrote the checkpoint that every process loads
    chosen = run.load_fold_model(k, config=config, device=ctx.device)
    spec = inference_spec(config)
    oof = predict_model(chosen, val_bank, spec, device=ctx.device, precision=ctx.precision)
    test, test_s_per_clip = None, None
    if ctx.test_clips:
        start = time.perf_counter()
        test = predict_model(chosen, ClipBank.from_features(ctx.features, ctx.test_clips), spec, device=ctx.device,
                             precision=ctx.precision)
        test_s_per_clip = (time.perf_counter() - start) / len(ctx.test_clips)
        fsutil.save_npy(folder / "test.npy", test)
    fsutil.save_npy(folder / "oof.npy", oof)
    best = max((r for r in trainer.history if "val_lwlrap" in r), key=lambda r: r["val_lwlrap"])
    summary = {"fold": k, "val_lwlrap": lwlrap(val_bank.targets, oof), "epochs": trainer.epoch,
               "best_epoch": best["epoch"], "best_epoch_val_lwlrap": best["val_lwlrap"],
               "checkpoint": config.train.checkpoint, "n_train": n_train, "epoch_clips": epoch_clips,
               "n_val": len(val_bank),
               "train_seconds": sum(r["seconds"] for r in trainer.history), "session_seconds": train_s,
               "tta_views": spec.views, "test_seconds_per_clip": test_s_per_clip}
    fsutil.write_text(folder / "done.json", json.dumps(summary, indent=2))  # last: marks the fold complete
    last = trainer.history[-1]
    if config.train.checkpoint == "best":
        why = (f"keeps the best checkpoint, epoch {best['epoch']} of {trainer.epoch} (validation lwlrap "
               f"{best['val_lwlrap']:.4f}; the last epoch had {last['val_lwlrap']:.4f})")
    else:
        why = f"keeps the last checkpoint, epoch {trainer.epoch} (train.checkpoint = last)"
    run.log(f"fold {k}: lwlrap {summary['val_lwlrap']:.4f} on its validation clips with {spec.views} TTA views; "
            f"{why}")
    return FoldResult(k, oof, val_idx, test, summary)


def run_cv(ctx: TrainingContext, *, folds_to_train: list[int] | None = None) -> dict | None:
    """Train the configured folds and write OOF/test predictions and scores; returns the scores.

    ``folds_to_train`` (a fold-parallel job's fold) trains only those; the run is assembled (and
    its scores returned) only once every configured fold is done, else None."""
    config = ctx.config
    wanted = list(config.train.only_folds if config.train.only_folds is not None else range(ctx.folds.n_folds))
    todo = wanted if folds_to_train is None else folds_to_train
    if config.noisy.strategy != "none" or config.noisy.test_predictions:
        ctx = dataclasses.replace(ctx, plan=NoisyPlan(ctx))
    if config.noisy.strategy == "pretrain":
        ctx = dataclasses.replace(ctx, pretrained=pretrain_on_noisy(ctx))
    results, took = [], []
    for i, k in enumerate(todo, 1):
        eta = f"; about {duration(np.mean(took) * (len(todo) - i + 1))} left for this run" if took else ""
        ctx.run.log(f"fold {k} ({i}/{len(todo)}){eta}")
        start = time.perf_counter()
        later = sum(not ctx.run.fold_done(j) for j in todo[i:])
        results.append(run_fold(k, ctx, epochs_after=later * config.train.epochs))
        if not results[-1].summary.get("reused"):
            took.append(time.perf_counter() - start)
            if ctx.clock is not None:
                ctx.clock.lap()
    if folds_to_train is not None:
        done = [load_fold_result(ctx.run, k, folds=ctx.folds, train_clips=ctx.train_clips) for k in wanted]
        if any(r is None for r in done):
            return None
        results = done
    return assemble(ctx, results)


def assemble(ctx: TrainingContext, results: list[FoldResult]) -> dict:
    """The run's pooled OOF predictions, fold-averaged test predictions and scores.json."""
    run, config, ds, folds, train_clips, test_clips = ctx.run, ctx.config, ctx.ds, ctx.folds, ctx.train_clips, ctx.test_clips
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
            truth = ds.label_matrix(test_clips)
            scores["test_lwlrap"] = lwlrap(truth, test)
            # each fold model alone: how much the fold mean gains over its members
            scores["fold_test_lwlrap"] = [lwlrap(truth, t) for t in tests]
    fsutil.write_text(run.dir / "scores.json", json.dumps(scores, indent=2))
    return scores
