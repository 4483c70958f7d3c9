import math

import pytest
import torch
from torch.nn import functional as F

from audiotag.config import NoisyConfig, TrainConfig
from audiotag.engine.losses import SourceAwareLoss, asymmetric_bce, multilabel_loss, robust_loss_per_row
from audiotag.training import cv
from audiotag.training.noisy import noisy_loss

from test_train import train_tiny


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


def test_asymmetric_loss_is_bce_at_zero_and_spares_easy_negatives():
    logits, labels = batch()
    assert multilabel_loss() is F.binary_cross_entropy_with_logits  # the default stays plain BCE
    assert torch.equal(asymmetric_bce(logits, labels), F.binary_cross_entropy_with_logits(logits, labels, reduction="none"))
    # hand-computed: a positive keeps -log p; a negative at p = 0.5 with margin 0.1 counts
    # -(0.4 ** 2) * log(0.6); one below the margin costs nothing
    z = torch.tensor([[0.0, 0.0, -4.0]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    got = asymmetric_bce(z, y, focusing=2.0, margin=0.1)
    want = torch.tensor([[math.log(2), -(0.4**2) * math.log(0.6), 0.0]])
    torch.testing.assert_close(got, want)
    # soft targets weigh both parts; the batch loss is the mean over every element
    soft = torch.tensor([[0.25]])
    p = 1 / (1 + math.exp(-1.0))
    expected = -(0.25 * math.log(p) + 0.75 * (p - 0.1) ** 2 * math.log(1 - (p - 0.1)))
    torch.testing.assert_close(asymmetric_bce(torch.tensor([[1.0]]), soft, focusing=2.0, margin=0.1),
                               torch.tensor([[expected]]))
    torch.testing.assert_close(multilabel_loss(focusing=2.0, margin=0.1)(z, y), want.mean())
    # confident mistakes stay finite, with a gradient
    big = torch.tensor([[8.0, -40.0]], requires_grad=True)
    asymmetric_bce(big, torch.tensor([[0.0, 1.0]]), focusing=4.0, margin=0.05).sum().backward()
    assert torch.isfinite(big.grad).all() and (big.grad != 0).all()


def test_asymmetry_reaches_curated_and_bce_noisy_rows():
    logits, labels = batch()
    noisy = [0, 0, 0, 1, 1, 1]
    rows = asymmetric_bce(logits, labels, focusing=3.0, margin=0.05).mean(1)
    assert not torch.allclose(rows, bce_rows(logits, labels))
    loss = SourceAwareLoss("bce", noisy_weight=0.5, focusing=3.0, margin=0.05)(logits, with_source(labels, noisy))
    torch.testing.assert_close(loss, (rows[:3].sum() + 0.5 * rows[3:].sum()) / 4.5)
    lq = SourceAwareLoss("lq", noisy_weight=0.0, focusing=3.0, margin=0.05)(logits, with_source(labels, noisy))
    torch.testing.assert_close(lq, rows[:3].mean())


def test_a_run_trains_with_the_loss_its_config_names(demo_data, tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    losses = []

    def first_fold(job, ctx):
        losses.append(job.loss_fn)
        raise Stop

    monkeypatch.setattr(cv, "fit", first_fold)
    with pytest.raises(Stop):
        train_tiny(demo_data, tmp_path / "asl", tmp_path / "cache", "train.negative_focusing=4",
                   "train.negative_margin=0.05")
    logits, labels = batch()
    torch.testing.assert_close(losses[0](logits, labels), asymmetric_bce(logits, labels, focusing=4, margin=0.05).mean())
    assert "asymmetric" in (tmp_path / "asl" / "log.txt").read_text()
    with_noisy = noisy_loss(NoisyConfig(), TrainConfig(negative_focusing=4, negative_margin=0.05))
    assert with_noisy.asymmetry == {"focusing": 4, "margin": 0.05}
