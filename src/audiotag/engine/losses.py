"""Losses for batches that mix curated and noisily-labelled clips.

Curated rows keep plain BCE-with-logits. Rows from the noisy set get one of the noise-robust
variants FAT2019 teams and the DCASE 2019 baseline used:

- ``smooth``: label smoothing, targets pulled towards 0.5 by ``smoothing``;
- ``bootstrap``: soft bootstrapping (Reed et al., 2015): the target becomes
  ``beta * label + (1 - beta) * prediction``, so the model may partly trust itself over the label;
- ``lq``: the generalised cross-entropy Lq (Zhang & Sabuncu, 2018), ``(1 - p_t^q) / q`` per
  label, between BCE (q -> 0) and the bounded, noise-tolerant MAE (q = 1);
- ``drop``: loss-based outlier dropping: the ``drop`` share of noisy rows with the highest loss
  in each batch are left out, as labels the model disagrees with most are the likeliest wrong.

The batch's targets carry one extra last column: how much of the row came from the noisy set (0
for curated, 1 for noisy). Mixup mixes it like any label, so a mixed row is weighted by its share.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

KINDS = ("bce", "smooth", "bootstrap", "lq", "drop")


def robust_loss_per_row(logits: torch.Tensor, targets: torch.Tensor, kind: str, *, smoothing: float = 0.1,
                        beta: float = 0.8, q: float = 0.7) -> torch.Tensor:
    """``(B,)`` loss of each row, averaged over classes (``drop`` is per-row BCE; dropping is batch-level)."""
    if kind in ("bce", "drop"):
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    elif kind == "smooth":
        loss = F.binary_cross_entropy_with_logits(logits, targets * (1 - smoothing) + 0.5 * smoothing,
                                                  reduction="none")
    elif kind == "bootstrap":
        loss = F.binary_cross_entropy_with_logits(logits, beta * targets + (1 - beta) * torch.sigmoid(logits),
                                                  reduction="none")
    elif kind == "lq":
        # p_t^q = exp(q * log p_t), with log p_t = -BCE: stable for confident logits
        log_pt = -F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        loss = (1 - torch.exp(q * log_pt)) / q
    else:
        raise ValueError(f"unknown noisy loss {kind!r}; choose from {', '.join(KINDS)}")
    return loss.mean(dim=1)


class SourceAwareLoss(nn.Module):
    """BCE on curated rows, ``kind`` on noisy rows weighted by ``noisy_weight``; the mean over the batch.

    Call it as ``loss(logits (B, K), targets (B, K + 1))``, the last target column being the noisy share.
    """

    def __init__(self, kind: str = "bce", *, noisy_weight: float = 1.0, smoothing: float = 0.1, beta: float = 0.8,
                 q: float = 0.7, drop: float = 0.1):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown noisy loss {kind!r}; choose from {', '.join(KINDS)}")
        self.kind, self.noisy_weight = kind, noisy_weight
        self.smoothing, self.beta, self.q, self.drop = smoothing, beta, q, drop

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        labels, noisy = targets[:, :-1], targets[:, -1]
        clean = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=1)
        robust = robust_loss_per_row(logits, labels, self.kind, smoothing=self.smoothing, beta=self.beta, q=self.q)
        weight = (1 - noisy) + self.noisy_weight * noisy
        if self.kind == "drop" and self.drop > 0:
            is_noisy = noisy > 0.5
            n_drop = int(self.drop * int(is_noisy.sum()))
            if n_drop:
                ranked = torch.where(is_noisy, robust.detach(), torch.full_like(robust, -float("inf")))
                weight = weight.clone()
                weight[torch.topk(ranked, n_drop).indices] = 0.0
        per_row = (1 - noisy) * clean + noisy * robust
        return (weight * per_row).sum() / weight.sum().clamp_min(1e-12)
