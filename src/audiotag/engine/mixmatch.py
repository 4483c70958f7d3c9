"""MixMatch (Berthelot et al., 2019) for multi-label tags, the noisy set as unlabelled data.

Per batch: each unlabelled crop is augmented ``k`` times; the model's mean sigmoid output over
those views, sharpened per label with temperature ``T`` (``p^(1/T) / (p^(1/T) + (1-p)^(1/T))``),
becomes its guessed target. Labelled and unlabelled rows are then each mixed up with rows drawn
from their shuffled union, ``lam' = max(lam, 1 - lam)`` so every row stays mostly itself. The
loss is BCE on the labelled rows plus ``weight * ramp`` times the mean squared error between the
unlabelled rows' probabilities and their mixed guesses; ``ramp`` grows linearly from 0 to 1 over
``ramp_epochs`` so early, poor guesses count little.

Rows are told apart by the source column that ends the targets (1 = noisy, unlabelled).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..augment.spec import Mixup
from .precision import autocast
from .trainer import Trainer


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p^(1/T) / (p^(1/T) + (1-p)^(1/T))``, computed as ``sigmoid(logit(p) / T)`` so it cannot underflow."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return torch.sigmoid((torch.log(p) - torch.log1p(-p)) / temperature)


class MixMatchTrainer(Trainer):
    def __init__(self, *args, k: int = 2, temperature: float = 0.5, alpha: float = 0.75, weight: float = 1.0,
                 ramp_epochs: int = 10, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.k, self.temperature, self.alpha, self.weight, self.ramp_epochs = k, temperature, alpha, weight, ramp_epochs
        self.generator = torch.Generator().manual_seed(seed)

    def ramp(self) -> float:
        return min(1.0, self.epoch / self.ramp_epochs) if self.ramp_epochs else 1.0

    def _beta(self, n: int) -> torch.Tensor:
        """``max(lam, 1 - lam)``, ``lam ~ Beta(alpha, alpha)``, from this trainer's own generator."""
        if self.alpha <= 0:
            return torch.ones(n)
        g1 = torch._standard_gamma(torch.full((n,), self.alpha), generator=self.generator)
        g2 = torch._standard_gamma(torch.full((n,), self.alpha), generator=self.generator)
        lam = g1 / (g1 + g2)
        return torch.maximum(lam, 1 - lam)

    def _augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for transform in self.transforms:
            if not isinstance(transform, Mixup):  # MixMatch mixes labelled and unlabelled rows itself
                x, y = transform(x, y)
        return x, y

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.net(x.to(self.device))["logits"].float()

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        unlabelled = y[:, -1] > 0.5
        xl, yl = x[~unlabelled], y[~unlabelled, :-1]
        xu = x[unlabelled]
        with torch.no_grad():
            xl, yl = self._augment(xl, yl)
            if len(xu):
                dummy = torch.zeros(len(xu), yl.shape[1])
                views = [self._augment(xu, dummy)[0] for _ in range(self.k)]
                guess = torch.stack([torch.sigmoid(self._logits(v)) for v in views]).mean(0).cpu()
                guess = sharpen(guess, self.temperature)
                xu_all, yu_all = torch.cat(views), guess.repeat(self.k, 1)
            else:
                xu_all, yu_all = xu, torch.zeros(0, yl.shape[1])
            x_all, y_all = torch.cat([xl, xu_all]), torch.cat([yl, yu_all])
            n = len(x_all)
            perm = torch.randperm(n, generator=self.generator)
            lam = self._beta(n)
            w = lam[:, None, None, None].to(x_all.dtype)
            x_mix = w * x_all + (1 - w) * x_all[perm]
            y_mix = lam[:, None] * y_all + (1 - lam[:, None]) * y_all[perm]
        logits = self._logits(x_mix)
        n_l = len(xl)
        y_mix = y_mix.to(self.device)
        loss = F.binary_cross_entropy_with_logits(logits[:n_l], y_mix[:n_l]) if n_l else logits.sum() * 0
        if len(xu_all):
            consistency = F.mse_loss(torch.sigmoid(logits[n_l:]), y_mix[n_l:])
            loss = loss + self.weight * self.ramp() * consistency
        return loss

    def state_dict(self) -> dict:
        return {**super().state_dict(), "mixmatch_generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["mixmatch_generator"])
