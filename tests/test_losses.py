import pytest
import torch
from torch.nn import functional as F

from audiotag.engine.losses import SourceAwareLoss, robust_loss_per_row


def batch(b=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=g) * 3
    labels = (torch.rand(b, k, generator=g) < 0.3).float()
    return logits, labels


def with_source(labels, noisy):
    return torch.cat([labels, torch.as_tensor(noisy, dtype=torch.float32)[:, None]], dim=1)


def bce_rows(logits, labels):
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)


def test_variants_reduce_to_bce_at_their_limits():
    logits, labels = batch()
    bce = bce_rows(logits, labels)
    torch.testing.assert_close(robust_loss_per_row(logits, labels, "smooth", smoothing=0.0), bce)
    torch.testing.assert_close(robust_loss_per_row(logits, labels, "bootstrap", beta=1.0), bce)
    torch.testing.assert_close(robust_loss_per_row(logits, labels, "lq", q=1e-4), bce, rtol=2e-3, atol=2e-3)
    p = torch.sigmoid(logits)
    mae = torch.where(labels > 0, 1 - p, p).mean(1)  # Lq at q = 1 is the mean absolute error
    torch.testing.assert_close(robust_loss_per_row(logits, labels, "lq", q=1.0), mae)
    smoothed = bce_rows(logits, labels * 0.8 + 0.1)
    torch.testing.assert_close(robust_loss_per_row(logits, labels, "smooth", smoothing=0.2), smoothed)
    with pytest.raises(ValueError, match="unknown noisy loss"):
        SourceAwareLoss("focal")


def test_lq_is_bounded_where_bce_is_not():
    labels = torch.ones(1, 1)
    for z in (-10.0, -100.0):  # a confidently contradicted (possibly wrong) label
        logits = torch.full((1, 1), z)
        assert robust_loss_per_row(logits, labels, "lq", q=0.7) <= 1 / 0.7
    assert bce_rows(torch.full((1, 1), -100.0), labels) > 50


def test_curated_rows_keep_bce_and_noisy_rows_are_weighted():
    logits, labels = batch()
    noisy = [0, 0, 0, 1, 1, 1]
    bce = bce_rows(logits, labels)
    plain = SourceAwareLoss("smooth", noisy_weight=1.0, smoothing=0.0)(logits, with_source(labels, noisy))
    torch.testing.assert_close(plain, bce.mean())
    curated_only = SourceAwareLoss("lq", noisy_weight=0.0)(logits, with_source(labels, noisy))
    torch.testing.assert_close(curated_only, bce[:3].mean())
    half = SourceAwareLoss("bce", noisy_weight=0.5)(logits, with_source(labels, noisy))
    torch.testing.assert_close(half, (bce[:3].sum() + 0.5 * bce[3:].sum()) / 4.5)
    # a row mixed from a curated and a noisy clip is weighted by its noisy share
    mixed = SourceAwareLoss("bce", noisy_weight=0.0)(logits, with_source(labels, [0, 0, 0, 0, 0, 0.5]))
    torch.testing.assert_close(mixed, (bce[:5].sum() + 0.5 * bce[5]) / 5.5)


def test_drop_ignores_the_worst_noisy_rows_only():
    logits, labels = batch(b=8)
    labels[0] = 1 - (logits[0] > 0).float()  # curated row 0: every label contradicted, the worst loss
    labels[5] = 1 - (logits[5] > 0).float()  # noisy row 5: the same
    logits.requires_grad_(True)
    noisy = [0, 0, 0, 0, 1, 1, 1, 1]
    SourceAwareLoss("drop", drop=0.25)(logits, with_source(labels, noisy)).backward()
    grad_rows = logits.grad.abs().sum(1)
    assert grad_rows[5] == 0  # 0.25 of 4 noisy rows: the worst one is dropped
    assert (grad_rows[[0, 1, 2, 3, 4, 6, 7]] > 0).all()  # curated row 0 is never dropped
