"""An exponential moving average of a model's weights (Polyak averaging, as timm's ModelEmaV2).

The average follows the trained model step by step and is what gets validated and kept: it sits in
a wide, flat part of the loss surface, which carries over better to recordings never heard than
the noisy last step does. Its decay ramps up from 0 over the first steps, ``min(decay, (1 + n) /
(10 + n))``, so the average does not start out anchored to the random initial weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used for the ``updates``-th update (1-based)."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightAverage:
    """``model``'s weights and floating buffers (batch-norm statistics) averaged over steps."""

    def __init__(self, model: nn.Module, *, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        keep = ema_decay_at(self.decay, self.updates)
        averaged, current = [], []
        for mine, theirs in zip(self.model.state_dict().values(), model.state_dict().values()):
            if mine.dtype.is_floating_point:
                averaged.append(mine)
                current.append(theirs.detach())
            else:  # counters such as num_batches_tracked follow the model
                mine.copy_(theirs)
        torch._foreach_lerp_(averaged, current, 1.0 - keep)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]
