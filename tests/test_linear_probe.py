"""Linear probe: all lrs at once equals one lr at a time, the lr is chosen on held-out data, determinism."""

from __future__ import annotations

import pytest
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


# ------------------------------------------------------------------ --augment crop-flip


def tiny_backbone_and_images(n: int = 120):
    from mixbench.data.shapes import generate
    from mixbench.models import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("resnet10_cifar", width=0.125, image_size=16)
    backbone.train()  # as a caller may hand it over: the probe must switch to eval mode and back
    x, y = generate(n, 16, 0)
    return backbone, x, y


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_crop_flip_features_are_augmented_and_fresh_every_call():
    from mixbench.evaluate.features import extract_features
    from mixbench.evaluate.linear import CropFlipFeatures

    backbone, x, _ = tiny_backbone_and_images(40)
    plain = extract_features(backbone, x, MEAN, STD, batch=64, device=torch.device("cpu"))
    aug = CropFlipFeatures(backbone, x, MEAN, STD, padding=4, seed=0)
    idx = torch.arange(40)
    first, second = aug(idx), aug(idx)
    assert first.shape == plain.shape and first.dtype == torch.float32
    assert not torch.allclose(first, plain) and not torch.allclose(first, second)  # applied, new draws per call
    assert torch.equal(CropFlipFeatures(backbone, x, MEAN, STD, seed=0)(idx), first)  # seeded
    assert backbone.training  # its mode is given back
    flips_only = CropFlipFeatures(backbone, x, MEAN, STD, padding=0, seed=0)(idx)  # no crop: only flips remain
    flipped = extract_features(backbone, x.flip(3), MEAN, STD, batch=64, device=torch.device("cpu"))
    same = torch.isclose(flips_only, plain, atol=1e-5).all(1)
    mirrored = torch.isclose(flips_only, flipped, atol=1e-5).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 40
    with pytest.raises(ValueError):
        CropFlipFeatures(backbone, x, MEAN, STD, padding=16)
    with pytest.raises(ValueError):
        CropFlipFeatures(backbone, x.float(), MEAN, STD)
    with pytest.raises(ValueError):
        CropFlipFeatures(backbone, x, MEAN, STD, padding_mode="edge")


def test_crop_flip_zero_padding_fills_zeros():
    from mixbench.evaluate.linear import CropFlipFeatures

    grey = torch.full((8, 3, 16, 16), 200, dtype=torch.uint8)

    def pixels(mode: str) -> torch.Tensor:  # Identity "backbone": the normalised images, back in pixel units
        f = CropFlipFeatures(torch.nn.Identity(), grey, MEAN, STD, padding=4, padding_mode=mode, seed=0)
        return f(torch.arange(8)).view(8, 3, 16, 16) * 0.25 * 255 + 0.5 * 255

    zeros = pixels("zeros")
    assert torch.isclose(zeros, torch.tensor(0.0), atol=1e-3).any() and torch.isclose(zeros, torch.tensor(200.0)).any()
    assert torch.allclose(pixels("reflect"), torch.tensor(200.0))  # reflecting a flat image keeps it flat


def test_crop_flip_probe_keeps_the_backbone_bit_identical_and_batches_lrs_exactly():
    from mixbench.evaluate.features import extract_features
    from mixbench.evaluate.linear import CropFlipFeatures

    backbone, x, y = tiny_backbone_and_images(120)
    te_x, te_y = x[:40].flip(3), y[:40]
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    f = extract_features(backbone, x, MEAN, STD, batch=64, device=torch.device("cpu"))
    tf = extract_features(backbone, te_x, MEAN, STD, batch=64, device=torch.device("cpu"))
    kw = dict(num_classes=int(y.max()) + 1, epochs=3, batch=32, seed=2, return_weights=True)
    lrs = [0.01, 0.3, 3.0]

    def aug() -> CropFlipFeatures:
        return CropFlipFeatures(backbone, x, MEAN, STD, padding=4, seed=5)

    together = linear_probe(f, y, tf, te_y, lrs=lrs, train_features=aug(), **kw)
    for k, v in backbone.state_dict().items():  # weights and BatchNorm buffers untouched, bit for bit
        assert torch.equal(v, before[k]), k
    W, b = together.weights
    for i, lr in enumerate(lrs):  # the same augmentation draws (seed 5): each lr alone gives the same head
        alone = linear_probe(f, y, tf, te_y, lrs=[lr], train_features=aug(), **kw)
        assert alone.val_top1[lr] == together.val_top1[lr] and alone.test_top1[lr] == together.test_top1[lr]
        torch.testing.assert_close(alone.weights[0][0], W[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(alone.weights[1][0], b[i], rtol=1e-4, atol=1e-5)
    plain = linear_probe(f, y, tf, te_y, lrs=lrs, **kw)
    assert not torch.allclose(plain.weights[0], W)  # the augmentation changed what the heads saw


def test_crop_flip_reads_only_fit_rows_and_standardises_with_unaugmented_stats():
    trf, try_ = blobs(300, 6, 3, 2.0, 0)
    tef, tey = blobs(90, 6, 3, 2.0, 1)
    asked: list[torch.Tensor] = []

    def same_features(idx: torch.Tensor) -> torch.Tensor:  # "augmentation" that changes nothing
        asked.append(idx)
        return trf[idx]

    kw = dict(num_classes=3, lrs=[0.1, 1.0], epochs=2, batch=50, seed=4, return_weights=True)
    via_callable = linear_probe(trf, try_, tef, tey, train_features=same_features, **kw)
    plain = linear_probe(trf, try_, tef, tey, **kw)
    fit_idx, val_idx = heldout_split(try_, 0.1, 4)
    requested = torch.cat(asked)
    assert set(requested.tolist()) == set(fit_idx.tolist())  # every fit row, each epoch; never a held-out row
    assert requested.numel() == 2 * fit_idx.numel() and not set(requested.tolist()) & set(val_idx.tolist())
    assert via_callable == plain and torch.equal(via_callable.weights[0], plain.weights[0])


def test_linear_probe_settings_keep_the_hash_of_unaugmented_results():
    from mixbench.evaluate.store import protocol_hash

    earlier = {"lrs": [0.1, 1.0], "epochs": 3, "batch": 256, "val_fraction": 0.1, "momentum": 0.9,
               "weight_decay": 0.0, "schedule": "cosine", "standardize": True,
               "bn": "frozen (eval mode, running statistics)", "augment": "none"}  # what linear-eval stored
    probe = LinearProbe([0.1, 1.0], epochs=3)
    assert probe.settings() == earlier and protocol_hash(probe.settings()) == protocol_hash(earlier)
    aug = LinearProbe([0.1, 1.0], epochs=3, augment="crop-flip", crop_padding=2, padding_mode="zeros")
    s = aug.settings()
    assert s["augment"] == "crop-flip" and (s["crop_padding"], s["padding_mode"]) == (2, "zeros")
    assert protocol_hash(s) != protocol_hash(earlier)
    assert "randomly cropped (pad 2, zeros) and flipped" in aug.protocol and "unaugmented images" in probe.protocol
    assert LinearProbe(seed=3).settings()["seed"] == 3
    with pytest.raises(ValueError):
        LinearProbe(augment="rrc")


def test_linear_evaluator_with_crop_flip_uses_the_encoder():
    from types import SimpleNamespace

    from mixbench.evaluate.features import extract_features

    backbone, x, y = tiny_backbone_and_images(60)
    f = extract_features(backbone, x, MEAN, STD, batch=64, device=torch.device("cpu"))
    data = dict(train_f=f, train_y=y, test_f=f[:20], test_y=y[:20], num_classes=int(y.max()) + 1,
                train_x=x, mean=MEAN, std=STD)
    ev = LinearProbe(lrs=[0.1], epochs=2, batch=30, augment="crop-flip")
    method = SimpleNamespace(encoder=lambda: backbone)
    out = ev(method, data, EvalContext(device=torch.device("cpu")))
    assert out == ev(backbone, data, EvalContext(device=torch.device("cpu")))  # a method or its encoder
    assert 0 <= out["linear_top1"] <= 100 and out["linear_lr"] == 0.1
