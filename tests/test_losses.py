"""Mixed-label losses against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixbench.losses import BCE, MixedCE, SoftCE, mixed_targets


def test_mixed_ce_equals_weighted_sum_and_soft_form():
    z = torch.randn(6, 5)
    ya, yb = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 1, 0, 4, 2, 3])
    lam = torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0, 0.25])
    hand = torch.stack([
        -(lam[i] * F.log_softmax(z[i], 0)[ya[i]] + (1 - lam[i]) * F.log_softmax(z[i], 0)[yb[i]])
        for i in range(6)
    ]).mean()
    torch.testing.assert_close(MixedCE()(z, ya, yb, lam), hand)
    torch.testing.assert_close(SoftCE()(z, ya, yb, lam), hand)


def test_unmixed_ce_is_plain_cross_entropy():
    z, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(MixedCE()(z, y), F.cross_entropy(z, y))
    torch.testing.assert_close(SoftCE()(z, y), F.cross_entropy(z, y))


def test_label_smoothing_folds_into_targets():
    z = torch.randn(4, 5)
    ya, yb, lam = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 4, 1, 0]), torch.full((4,), 0.6)
    eps = 0.1
    t = mixed_targets(ya, yb, lam, 5, eps)
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    assert t[0, 0].item() == pytest.approx(0.6 * 0.9 + 0.02)
    assert t[0, 4].item() == pytest.approx(0.4 * 0.9 + 0.02)
    assert t[0, 1].item() == pytest.approx(0.02)
    torch.testing.assert_close(MixedCE(eps)(z, ya, yb, lam), SoftCE(eps)(z, ya, yb, lam))


def test_bce_by_hand():
    z = torch.tensor([[0.0, 2.0]])
    loss = BCE()(z, torch.tensor([1]), torch.tensor([0]), torch.tensor([0.75]))
    # targets t = (0.25, 0.75); BCE(0, 0.25) = log 2; BCE(2, 0.75) = log(1+e^-2) + 0.25*2
    expected = math.log(2) + math.log(1 + math.exp(-2)) + 0.25 * 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
