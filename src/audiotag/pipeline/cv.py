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
from pathlib import Path

import numpy as np
import torch

from .. import fsutil
from ..augment import build_transforms
from ..config import Config
from ..data.folds import Folds
from ..data.records import Clip, Dataset
from ..errors import AudiotagError
from ..engine import distributed
from ..engine.callbacks import Checkpointer, EarlyStopping, History
from ..engine.checkpoint import load_checkpoint
from ..engine.mixmatch import MixMatchTrainer
from ..engine.trainer import Trainer, lr_lambda
from ..features.cache import FeatureSet
from ..features.frontend import channel_names
from ..metrics import lwlrap
from ..models import build_model
from .inputs import ClipBank, CropSampler, prefetch
from .noisy import NoisyPlan, noisy_loss, training_bank
from .predict import InferenceSpec, average_folds, predict_model
from .runs import CLAIM, Run, claim_folder, write_predictions


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


def load_fold_result(run: Run, k: int, *, folds: Folds, train_clips: list[Clip]) -> FoldResult | None:
    """The saved result of a finished fold (None when the fold is not done)."""
    return _load_done(run.fold_dir(k), folds.indices(train_clips, k)[1])


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


def _fit(folder, *, model: torch.nn.Module, sampler: CropSampler, val_bank: ClipBank, config: Config, epochs: int,
         lr: float, loss_fn, meta: dict, run: Run, prefix: str, stream: int, device: torch.device,
         precision: str, mixmatch: bool = False, early_stopping: bool = True) -> Trainer:
    """Train ``model`` for ``epochs`` in ``folder`` (continuing from its last.pt when there is one),
    validating on ``val_bank`` every epoch."""
    t = config.train
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(t.schedule, total_steps=epochs * sampler.batches_per_epoch,
                             warmup_fraction=t.warmup_fraction))
    clean = inference_spec(config, views=0)

    def evaluate() -> dict:
        return {"val_lwlrap": lwlrap(val_bank.targets, predict_model(model, val_bank, clean, device=device,
                                                                      precision=precision))}

    callbacks = [Checkpointer(folder, meta=meta),
                 History(folder / "history.csv", log=run.log, prefix=prefix, total_epochs=epochs)]
    if t.early_stopping_patience and early_stopping:
        callbacks.append(EarlyStopping(patience=t.early_stopping_patience))
    common = dict(optimizer=optimizer, scheduler=scheduler, device=device, precision=precision,
                  transforms=build_transforms(config.augment, seed=config.seed * 1000 + stream,
                                              channels=channel_names(config.features)),
                  grad_clip=t.grad_clip, callbacks=callbacks, loss_fn=loss_fn)
    if mixmatch:
        n = config.noisy
        trainer = MixMatchTrainer(model, k=n.mixmatch_k, temperature=n.mixmatch_temperature, alpha=n.mixmatch_alpha,
                                  weight=n.mixmatch_weight, ramp_epochs=n.mixmatch_ramp_epochs,
                                  seed=config.seed * 1000 + stream + 500, **common)
    else:
        trainer = Trainer(model, **common)
    if distributed.rank():  # each process its own dropout stream (rank 0 keeps a 1-process run's)
        torch.manual_seed(config.seed * 1000 + stream + 7919 * distributed.rank())
    if (folder / "last.pt").exists():
        trainer.load_state_dict(load_checkpoint(folder / "last.pt")["trainer"])
        run.log(f"{prefix.strip()}: resuming after epoch {trainer.epoch}")
    batches_for = sampler.epoch
    if device.type == "cuda":  # on a CPU the cores are better spent on the model itself
        def batches_for(epoch: int):
            return prefetch(sampler.epoch(epoch), pin_memory=True)
    trainer.fit(epochs=epochs, batches_for=batches_for, evaluate=evaluate)
    return trainer


PRETRAIN_STREAM = 999  # the pretraining model's seed stream, apart from every fold's


def pretrain_on_noisy(*, run: Run, config: Config, ds: Dataset, features: FeatureSet, plan: NoisyPlan,
                      train_clips: list[Clip], device: torch.device, precision: str) -> Path:
    """Train one model on the noisy clips (``RUN/pretrain``); its last weights start every fold.

    Validation lwlrap on all curated clips is reported (how a noisy-only model does on clean data)
    but chooses nothing, so no fold's validation clips influence the starting point."""
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
    bank = ClipBank.from_features(features, plan.clips, np.concatenate(
        [plan.given, np.ones((len(plan.clips), 1), np.float32)], axis=1))
    curated = ClipBank.from_features(features, train_clips, ds.label_matrix(train_clips))
    sampler = CropSampler(bank, crop_frames=crop_frames(config), batch_size=config.train.batch_size,
                          seed=config.seed, stream=PRETRAIN_STREAM, pad_mode=config.train.pad_mode)
    torch.manual_seed(config.seed * 1000 + PRETRAIN_STREAM)
    model = new_model(config, channels=bank.channels, bands=bank.bands, n_classes=len(ds.vocabulary), device=device)
    run.log(f"pretraining on {len(bank)} noisy clips for {n.pretrain_epochs} epochs (loss {n.loss})")
    meta = {"fold": "pretrain", "config": config.to_dict(), "vocabulary": list(ds.vocabulary),
            "channels": bank.channels, "bands": bank.bands}
    trainer = _fit(folder, model=model, sampler=sampler, val_bank=curated, config=config, epochs=n.pretrain_epochs,
                   lr=config.train.lr, loss_fn=noisy_loss(n), meta=meta, run=run, prefix="pretrain  ",
                   stream=PRETRAIN_STREAM, device=device, precision=precision,
                   early_stopping=False)  # stopping on curated lwlrap would let validation clips choose
    summary = {"epochs": trainer.epoch, "noisy_clips": len(bank),
               "curated_lwlrap": trainer.history[-1]["val_lwlrap"],
               "train_seconds": sum(r["seconds"] for r in trainer.history)}
    fsutil.write_text(folder / "done.json", json.dumps(summary, indent=2))
    if distributed.is_main():
        (folder / CLAIM).unlink(missing_ok=True)
    run.log(f"pretraining done: lwlrap {summary['curated_lwlrap']:.4f} on all curated clips")
    return weights


def run_fold(k: int, *, run: Run, config: Config, ds: Dataset, features: FeatureSet, folds: Folds,
             train_clips: list[Clip], test_clips: list[Clip], device: torch.device, precision: str,
             plan: NoisyPlan | None = None, pretrained: Path | None = None) -> FoldResult:
    folder = run.fold_dir(k)
    train_idx, val_idx = folds.indices(train_clips, k)
    finished = _load_done(folder, val_idx)
    if finished is not None:
        run.log(f"fold {k}: already done (val lwlrap {finished.summary['val_lwlrap']:.4f}), reusing it")
        return finished
    t = config.train
    targets = ds.label_matrix(train_clips)
    part = plan.part(k) if plan is not None else None
    train_bank, noisy_mask, test_mask = training_bank(features, [train_clips[i] for i in train_idx], targets[train_idx], part)
    val_bank = ClipBank.from_features(features, [train_clips[i] for i in val_idx], targets[val_idx])
    sampler = CropSampler(train_bank, crop_frames=crop_frames(config), batch_size=t.batch_size, seed=config.seed,
                          stream=k, pad_mode=t.pad_mode, balanced=t.balanced_sampling, noisy=noisy_mask,
                          noisy_fraction=config.noisy.batch_fraction if noisy_mask is not None else 0.0,
                          test_rows=test_mask, test_fraction=config.noisy.test_batch_fraction or 0.0)
    if min(t.batch_size, len(train_bank)) < 2 * distributed.world_size():
        raise AudiotagError(f"a batch of {min(t.batch_size, len(train_bank))} clips cannot be shared by "
                            f"{distributed.world_size()} processes (batch norm needs 2 or more clips in each)",
                            hint="raise train.batch_size (it is the batch of all processes together) or use fewer processes")

    torch.manual_seed(config.seed * 1000 + k)
    model = new_model(config, channels=train_bank.channels, bands=train_bank.bands, n_classes=len(ds.vocabulary),
                      device=device)
    lr = t.lr
    if pretrained is not None:
        model.load_state_dict(load_checkpoint(pretrained)["trainer"]["model"])
        lr = t.lr * config.noisy.finetune_lr_scale
    meta = {"fold": k, "config": config.to_dict(), "vocabulary": list(ds.vocabulary), "channels": train_bank.channels,
            "bands": train_bank.bands}
    if not (folder / "last.pt").exists():
        extra = f" + {len(part.clips)} noisy" if part is not None else ""
        extra += " (unlabelled)" if config.noisy.strategy == "mixmatch" else ""
        start_from = " from the pretrained model" if pretrained is not None else ""
        run.log(f"fold {k}: training on {int((noisy_mask == 0).sum()) if noisy_mask is not None else len(train_bank)}"
                f" curated{extra} clips{start_from}, validating on {len(val_bank)}")
    loss_fn = noisy_loss(config.noisy) if noisy_mask is not None else torch.nn.functional.binary_cross_entropy_with_logits
    start = time.perf_counter()
    trainer = _fit(folder, model=model, sampler=sampler, val_bank=val_bank, config=config, epochs=t.epochs, lr=lr,
                   loss_fn=loss_fn, meta=meta, run=run, prefix=f"fold {k}  ", stream=k, device=device,
                   precision=precision, mixmatch=config.noisy.strategy == "mixmatch")
    train_s = time.perf_counter() - start  # this session's share (a resumed fold trained before too)

    distributed.barrier()  # rank 0 wrote the checkpoint that every process loads
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
           test_clips: list[Clip], device: torch.device, precision: str,
           folds_to_train: list[int] | None = None) -> dict | None:
    """Train the configured folds and write OOF/test predictions and scores; returns the scores.

    ``folds_to_train`` (a fold-parallel job's fold) trains only those; the run is assembled (and
    its scores returned) only once every configured fold is done, else None."""
    wanted = list(config.train.only_folds if config.train.only_folds is not None else range(folds.n_folds))
    todo = wanted if folds_to_train is None else folds_to_train
    plan = pretrained = None
    if config.noisy.strategy != "none" or config.noisy.test_predictions:
        plan = NoisyPlan(run=run, config=config, ds=ds, features=features, folds=folds, device=device)
    if config.noisy.strategy == "pretrain":
        pretrained = pretrain_on_noisy(run=run, config=config, ds=ds, features=features, plan=plan,
                                       train_clips=train_clips, device=device, precision=precision)
    results = [run_fold(k, run=run, config=config, ds=ds, features=features, folds=folds, train_clips=train_clips,
                        test_clips=test_clips, device=device, precision=precision, plan=plan, pretrained=pretrained)
               for k in todo]
    if folds_to_train is not None:
        done = [load_fold_result(run, k, folds=folds, train_clips=train_clips) for k in wanted]
        if any(r is None for r in done):
            return None
        results = done
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
