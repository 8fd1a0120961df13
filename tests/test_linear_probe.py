"""Linear probe: all lrs at once equals one lr at a time, the lr is chosen on held-out data, determinism."""

from __future__ import annotations

import torch

from mixbench.evaluate.base import EVALUATORS, EvalContext
from mixbench.evaluate.linear import LinearProbe, heldout_split, linear_probe


def blobs(n: int, d: int, c: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs: class means ``spread`` apart (roughly), unit noise; balanced labels."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(c, d, generator=torch.Generator().manual_seed(123))
    y = torch.arange(n) % c
    return means[y] + torch.randn(n, d, generator=g), y


def test_batched_lrs_equal_separate_runs():
    trf, try_ = blobs(600, 16, 5, 0.5, 0)
    tef, tey = blobs(300, 16, 5, 0.5, 1)
    kw = dict(num_classes=5, epochs=5, batch=64, seed=3, return_weights=True)
    lrs = [0.05, 0.5, 2.0]
    together = linear_probe(trf, try_, tef, tey, lrs=lrs, **kw)
    assert together.lrs == lrs and len(set(together.val_top1.values())) > 1  # a non-trivial case
    W, b = together.weights
    assert W.shape == (3, 16, 5) and b.shape == (3, 5)
    for i, lr in enumerate(lrs):
        alone = linear_probe(trf, try_, tef, tey, lrs=[lr], **kw)
        assert alone.val_top1[lr] == together.val_top1[lr]
        assert alone.test_top1[lr] == together.test_top1[lr]
        torch.testing.assert_close(alone.weights[0][0], W[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(alone.weights[1][0], b[i], rtol=1e-4, atol=1e-5)


def test_separable_features_are_classified_perfectly():
    trf, try_ = blobs(400, 8, 4, 20.0, 0)
    tef, tey = blobs(200, 8, 4, 20.0, 1)
    r = linear_probe(trf, try_, tef, tey, num_classes=4, lrs=[0.1, 1.0], epochs=10, batch=64)
    assert r.test_top1 == {0.1: 100.0, 1.0: 100.0} and r.test_top1_chosen == 100.0
    assert r.chosen_lr == 0.1  # a tie on the held-out split goes to the smaller lr
    assert (r.epochs, r.batch, r.val_fraction, r.standardize) == (10, 64, 0.1, True)


def test_lr_is_chosen_on_heldout_data_not_test():
    trf, try_ = blobs(400, 8, 4, 20.0, 0)
    tef, tey = blobs(200, 8, 4, 20.0, 1)
    wrong = torch.zeros_like(tey)  # lr 0 keeps W = b = 0: all logits tie, argmax predicts class 0 -> 100 % here
    r = linear_probe(trf, try_, tef[tey != 0], wrong[tey != 0], num_classes=4, lrs=[0.0, 1.0], epochs=5, batch=64)
    assert r.test_top1[0.0] == 100.0 and r.test_top1[1.0] == 0.0  # the test set would pick lr 0
    assert r.val_top1[1.0] == 100.0 and r.val_top1[0.0] < 50.0
    assert r.chosen_lr == 1.0 and r.test_top1_chosen == 0.0


def test_heldout_split_is_class_balanced_and_disjoint():
    y = torch.arange(1000) % 10
    fit, val = heldout_split(y, 0.1, seed=0)
    assert len(fit) + len(val) == 1000 and len(set(fit.tolist()) & set(val.tolist())) == 0
    assert torch.bincount(y[val], minlength=10).tolist() == [10] * 10


def test_deterministic_and_inputs_untouched():
    trf, try_ = blobs(300, 12, 3, 0.7, 0)
    tef, tey = blobs(150, 12, 3, 0.7, 1)
    copies = [t.clone() for t in (trf, try_, tef, tey)]
    kw = dict(num_classes=3, lrs=[0.1, 1.0], epochs=3, batch=32, seed=7, return_weights=True)
    a, b = linear_probe(trf, try_, tef, tey, **kw), linear_probe(trf, try_, tef, tey, **kw)
    assert a == b  # every recorded field (weights excluded from ==)
    assert torch.equal(a.weights[0], b.weights[0]) and torch.equal(a.weights[1], b.weights[1])
    for t, t0 in zip((trf, try_, tef, tey), copies, strict=True):
        assert torch.equal(t, t0)
    c = linear_probe(trf, try_, tef, tey, **{**kw, "seed": 8})
    assert not torch.equal(a.weights[0], c.weights[0])


def test_linear_evaluator_registered_and_reports_metrics():
    assert EVALUATORS.get("linear") is LinearProbe
    ev = LinearProbe(lrs=[0.1, 1.0], epochs=3, batch=64)
    for word in ("eval mode", "BN running statistics", "SGD momentum 0.9", "cosine", "[0.1, 1.0]", "3 epochs",
                 "batch 64", "held-out 0.1", "standardised"):
        assert word in ev.protocol
    trf, try_ = blobs(200, 8, 4, 20.0, 0)
    tef, tey = blobs(100, 8, 4, 20.0, 1)
    data = dict(train_f=trf, train_y=try_, test_f=tef, test_y=tey, num_classes=4)
    out = ev(None, data, EvalContext(device=torch.device("cpu")))
    assert out["linear_top1"] == 100.0 and out["linear_lr"] == 0.1 and out["linear_val_top1"] == 100.0
    assert out["linear_top1@lr=0.1"] == 100.0 and out["linear_top1@lr=1"] == 100.0
