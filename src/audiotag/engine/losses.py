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

Every row's BCE may be made asymmetric (``focusing``, ``margin``; Ridnik et al., 2021), for the
many easy negatives of a multi-label clip: see :func:`asymmetric_bce`.

The batch's targets carry one extra last column: how much of the row came from the noisy set (0
for curated, 1 for noisy). Mixup mixes it like any label, so a mixed row is weighted by its share.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

KINDS = ("bce", "smooth", "bootstrap", "lq", "drop")


def asymmetric_bce(logits: torch.Tensor, targets: torch.Tensor, *, focusing: float = 0.0,
                   margin: float = 0.0) -> torch.Tensor:
    """Element-wise BCE whose negative part is the asymmetric loss's: a negative's probability is
    lowered by ``margin`` (to no less than 0) and its term weighted by that probability **
    ``focusing``, so that the dozens of labels a clip plainly lacks weigh little next to the faint
    ones it holds. Soft targets weigh both parts. ``focusing = margin = 0`` is plain BCE."""
    if not focusing and not margin:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if margin:
        p = (torch.sigmoid(logits) - margin).clamp_min(0)
        log_not_p = torch.log1p(-p)  # p <= 1 - margin: finite
    else:
        p, log_not_p = torch.sigmoid(logits), F.logsigmoid(-logits)
    return -(targets * F.logsigmoid(logits) + (1 - targets) * p.pow(focusing) * log_not_p)


def multilabel_loss(*, focusing: float = 0.0, margin: float = 0.0):
    """The loss of batches without noisy rows: the mean BCE, asymmetric when asked."""
    if not focusing and not margin:
        return F.binary_cross_entropy_with_logits
    return partial(_mean_asymmetric_bce, focusing=focusing, margin=margin)


def _mean_asymmetric_bce(logits: torch.Tensor, targets: torch.Tensor, **asymmetry) -> torch.Tensor:
    return asymmetric_bce(logits, targets, **asymmetry).mean()


def robust_loss_per_row(logits: torch.Tensor, targets: torch.Tensor, kind: str, *, smoothing: float = 0.1,
                        beta: float = 0.8, q: float = 0.7, focusing: float = 0.0,
                        margin: float = 0.0) -> torch.Tensor:
    """``(B,)`` loss of each row, averaged over classes (``drop`` is per-row BCE; dropping is
    batch-level); ``bce`` and ``drop`` take the asymmetric loss's ``focusing`` and ``margin``."""
    if kind in ("bce", "drop"):
        loss = asymmetric_bce(logits, targets, focusing=focusing, margin=margin)
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
    """BCE (asymmetric when asked) on curated rows, ``kind`` on noisy rows weighted by ``noisy_weight``; the mean over the batch.

    Call it as ``loss(logits (B, K), targets (B, K + 1))``, the last target column being the noisy share.
    """

    def __init__(self, kind: str = "bce", *, noisy_weight: float = 1.0, smoothing: float = 0.1, beta: float = 0.8,
                 q: float = 0.7, drop: float = 0.1, focusing: float = 0.0, margin: float = 0.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown noisy loss {kind!r}; choose from {', '.join(KINDS)}")
        self.kind, self.noisy_weight = kind, noisy_weight
        self.smoothing, self.beta, self.q, self.drop = smoothing, beta, q, drop
        self.asymmetry = {"focusing": focusing, "margin": margin}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        labels, noisy = targets[:, :-1], targets[:, -1]
        clean = asymmetric_bce(logits, labels, **self.asymmetry).mean(dim=1)
        robust = robust_loss_per_row(logits, labels, self.kind, smoothing=self.smoothing, beta=self.beta, q=self.q,
                                     **self.asymmetry)
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
