"""Mixup and CutMix against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixbench.mixing import CutMix, MixRNG, Mixup
from mixbench.mixing.cutmix import rand_boxes

MIXERS = [Mixup, CutMix]


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 12, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("cls", MIXERS)
@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_contract(cls, mode):
    x, y = batch()
    out = cls(alpha=1.0, lam_mode=mode)(x, y, MixRNG(0, x.device))
    assert out.x.shape == x.shape and out.x.dtype == x.dtype and out.x.device == x.device
    assert out.lam.shape == (8,) and out.lam.dtype == torch.float32
    assert ((out.lam >= 0) & (out.lam <= 1)).all()
    assert sorted(out.index.tolist()) == list(range(8))
    assert torch.equal(out.y_a, y) and torch.equal(out.y_b, y[out.index])
    if mode == "batch":
        assert torch.all(out.lam == out.lam[0])


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_mixup_is_convex_combination(mode):
    x, y = batch()
    out = Mixup(alpha=0.5, lam_mode=mode)(x, y, MixRNG(3, x.device))
    lam = out.lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(out.x, lam * x + (1 - lam) * x[out.index])
    assert out.mask is None


def test_mixup_lambda_comes_from_beta():
    rng = MixRNG(11, torch.device("cpu"))
    expected = np.random.Generator(np.random.PCG64(11)).beta(0.2, 0.2)
    out = Mixup(alpha=0.2)(*batch(), rng)
    assert out.lam[0].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_cutmix_mask_contract_and_area_corrected_lambda(mode):
    x, y = batch(16)
    out = CutMix(alpha=1.0, lam_mode=mode)(x, y, MixRNG(5, x.device))
    m = out.mask
    assert m.shape == (16, 1, 16, 12)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(out.x, m * x + (1 - m) * x[out.index])
    torch.testing.assert_close(out.lam, m.mean(dim=(1, 2, 3)))


def test_cutmix_box_by_hand():
    # λ = 0.75 on an 8x8 image: cut ratio 0.5 -> 4x4 box; centre (1, 6): rows clip to [0, 3), cols [4, 8)
    class FixedRNG:
        def __init__(self):
            self.np = self
            self._ints = iter([np.array([1]), np.array([6])])

        def integers(self, low, high, size):
            return next(self._ints)

    y0, y1, x0, x1 = rand_boxes(FixedRNG(), np.array([0.75]), 8, 8)
    assert (y0[0], y1[0], x0[0], x1[0]) == (0, 3, 4, 8)
    # realised λ = 1 - 3*4/64 = 0.8125, not the sampled 0.75
    assert 1 - (y1[0] - y0[0]) * (x1[0] - x0[0]) / 64 == pytest.approx(0.8125)


@pytest.mark.parametrize("cls", MIXERS)
def test_identical_images_are_unchanged(cls):
    x = torch.rand(1, 3, 8, 8).expand(6, 3, 8, 8).contiguous()
    out = cls(alpha=1.0, lam_mode="sample")(x, torch.arange(6), MixRNG(0, x.device))
    torch.testing.assert_close(out.x, x)


def test_lambda_one_returns_input(monkeypatch):
    import mixbench.mixing.cutmix as cutmix_mod
    import mixbench.mixing.mixup as mixup_mod

    ones = lambda rng, alpha, n, mode: np.ones(n)  # noqa: E731
    monkeypatch.setattr(mixup_mod, "sample_lambda", ones)
    monkeypatch.setattr(cutmix_mod, "sample_lambda", ones)
    x, y = batch()
    for cls in MIXERS:
        out = cls(alpha=1.0)(x, y, MixRNG(0, x.device))
        torch.testing.assert_close(out.x, x)
        assert torch.all(out.lam == 1)


@pytest.mark.parametrize("cls", MIXERS)
def test_deterministic_under_seed_and_seed_sensitive(cls):
    x, y = batch()
    a = cls(alpha=1.0, lam_mode="sample")(x, y, MixRNG(7, x.device))
    b = cls(alpha=1.0, lam_mode="sample")(x, y, MixRNG(7, x.device))
    c = cls(alpha=1.0, lam_mode="sample")(x, y, MixRNG(8, x.device))
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam)
    assert not torch.equal(a.lam, c.lam)


def test_rng_state_round_trip():
    rng = MixRNG(1, torch.device("cpu"))
    state = rng.state_dict()
    first = (rng.np.random(), rng.permutation(10, torch.device("cpu")))
    rng.load_state_dict(state)
    again = (rng.np.random(), rng.permutation(10, torch.device("cpu")))
    assert first[0] == again[0] and torch.equal(first[1], again[1])
