"""A small, explicit training loop with named hooks.

The :class:`Trainer` runs epochs of (augment -> forward -> BCE-with-logits -> backward -> clip ->
step) and calls its callbacks' hooks; checkpointing, early stopping and logging are callbacks that
keep their own state. ``state_dict()`` holds everything needed to continue exactly where it
stopped: model, optimizer, scheduler, counters, history, the augmentations' generators and the
global torch generator. Batches come from a function of the epoch number, so the data order
needs no state of its own.

Under torchrun every process draws the same whole batch and augments it identically, then trains on
its own share (:mod:`.distributed`): the global batch and its augmentation do not depend on the
number of processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from . import distributed
from .averaging import WeightAverage
from .checkpoint import rng_state, set_rng_state
from .precision import autocast


class Callback:
    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_epoch_end(self, trainer: "Trainer", result: dict) -> None: ...

    def on_fit_end(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def lr_lambda(schedule: str, *, total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """Learning-rate factor per step: one-cycle (warm up from lr/25, cosine down to ~0), cosine
    with linear warm-up, or constant."""
    warmup = int(total_steps * warmup_fraction) if schedule != "constant" else 0

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if step < warmup:
            start = 1 / 25 if schedule == "onecycle" else 0.0
            return start + (1 - start) * (0.5 - 0.5 * math.cos(math.pi * step / warmup) if schedule == "onecycle"
                                          else step / warmup)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class Trainer:
    def __init__(self, model: nn.Module, *, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, transforms: list, device: torch.device,
                 precision: str = "fp32", grad_clip: float | None = None, callbacks: list[Callback] = (),
                 loss_fn: Callable = nn.functional.binary_cross_entropy_with_logits, ema_decay: float = 0.0):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.transforms, self.device, self.precision = transforms, device, precision
        self.grad_clip, self.callbacks, self.loss_fn = grad_clip, list(callbacks), loss_fn
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.epoch = 0  # epochs completed
        self.step = 0
        self.history: list[dict] = []
        self.should_stop = False
        self.average = WeightAverage(model, decay=ema_decay) if ema_decay > 0 else None
        # What batches go through: the model itself, or its DistributedDataParallel wrapper, which
        # averages gradients over processes (state dicts always come from the bare model).
        self.net = model
        if distributed.world_size() > 1:
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)

    def train_epoch(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
        self.model.train()
        total, count = 0.0, 0
        for x, y in batches:
            loss = self.batch_loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.average is not None:
                self.average.update(self.model)
            self.step += 1
            total += float(loss.detach()) * len(x)
            count += len(x)
        return distributed.mean(total / max(count, 1))

    @property
    def kept_model(self) -> nn.Module:
        """The weights that are validated and kept: the moving average when there is one."""
        return self.average.model if self.average is not None else self.model

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one batch (augmented here, on the device); subclasses change how a batch is
        learnt from. Under torchrun, this process's share of the batch, weighted by its size so that
        the gradients averaged over processes are those of the whole batch's mean loss."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with torch.no_grad():
            for transform in self.transforms:
                x, y = transform(x, y)
        whole = len(x)
        if distributed.world_size() > 1:
            share = distributed.shard(whole)
            x, y = x[share], y[share]
        with autocast(self.device, self.precision):
            logits = self.net(x)["logits"]
        loss = self.loss_fn(logits.float(), y)
        if distributed.world_size() > 1:
            loss = loss * (len(x) * distributed.world_size() / whole)
        return loss

    def fit(self, *, epochs: int, batches_for: Callable[[int], Iterable], evaluate: Callable[[], dict],
            validate_every: int = 1) -> list[dict]:
        """Train until ``epochs`` are completed (counting those done before a resume) or a
        callback sets ``should_stop``; ``evaluate()`` returns the validation metrics, every
        ``validate_every`` epochs and after the last (other epochs' rows have none)."""
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while self.epoch < epochs and not self.should_stop:
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            loss = self.train_epoch(batches_for(self.epoch))
            distributed.sync_buffers(self.model)  # one set of batch-norm statistics for evaluation and checkpoints
            train_s = time.perf_counter() - start
            due = (self.epoch + 1) % validate_every == 0 or self.epoch + 1 == epochs
            metrics = evaluate() if due else {}
            self.epoch += 1
            result = {"epoch": self.epoch, "train_loss": loss, "lr": lr, **metrics, "train_seconds": train_s,
                      "seconds": time.perf_counter() - start}
            self.history.append(result)
            for cb in self.callbacks:
                cb.on_epoch_end(self, result)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.history

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "history": self.history, "should_stop": self.should_stop,
            "transforms": [t.state_dict() for t in self.transforms], "rng": rng_state(),
            "rng_ranks": distributed.gather(rng_state()) if distributed.world_size() > 1 else None,
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "average": self.average.state_dict() if self.average is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.should_stop = list(state["history"]), state["should_stop"]
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        for t, s in zip(self.transforms, state["transforms"]):
            t.load_state_dict(s)
        for cb, s in zip(self.callbacks, state["callbacks"]):
            cb.load_state_dict(s)
        ranks = state.get("rng_ranks")
        if distributed.world_size() > 1 and ranks and len(ranks) == distributed.world_size():
            set_rng_state(ranks[distributed.rank()])  # each process's own dropout stream
        else:
            set_rng_state(state["rng"])
