"""Every mixer against the shared contract: shapes, label weights, masks, invariants, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixbench.mixing import MIXERS, MixRNG, build_mixer
from mixbench.mixing.base import masked_mix
from mixbench.models import build_model

ALL = [e.name for e in MIXERS]
# mixers whose output is exactly M ⊙ x + (1 − M) ⊙ x[index] (resizemix shrinks x[index]; puzzlemix
# moves blocks when transport is on: both are tested with their own sources below)
PLAIN_MASK = ["cutmix", "fmix", "saliencymix", "smoothmix", "gridmix", "attentivemix"]
PUZZLE_STILL = {"transport": False}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet18_cifar", 10, width=0.125)


def batch(n=8, seed=0, h=32, w=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g), torch.randint(0, 10, (n,), generator=g)


def make(name, model, **params):
    return build_mixer(name, params, model=model)


def mode_params(name, mode):
    return {} if name == "switch" else {"lam_mode": mode}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_contract(name, mode, model):
    x, y = batch()
    out = make(name, model, **mode_params(name, mode))(x, y, MixRNG(0, x.device))
    assert out.x.shape == x.shape and out.x.dtype == x.dtype and out.x.device == x.device
    assert out.lam.shape == (8,) and out.lam.dtype == torch.float32
    assert ((out.lam >= 0) & (out.lam <= 1)).all()
    assert sorted(out.index.tolist()) == list(range(8))
    assert torch.equal(out.y_a, y) and torch.equal(out.y_b, y[out.index])
    if out.mask is not None:
        assert out.mask.shape == (8, 1, 32, 32)
        torch.testing.assert_close(out.lam, out.mask.float().mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("name", ["mixup", "cutmix", "fmix", "gridmix", "attentivemix", "manifoldmix"])
def test_batch_mode_shares_one_lambda(name, model):
    x, y = batch()
    out = make(name, model, lam_mode="batch")(x, y, MixRNG(2, x.device))
    assert torch.all(out.lam == out.lam[0])


@pytest.mark.parametrize("name", ["mixup", "cutmix", "fmix", "smoothmix", "gridmix", "resizemix"])
def test_sample_mode_draws_one_lambda_per_sample(name, model):
    x, y = batch(16)
    out = make(name, model, lam_mode="sample")(x, y, MixRNG(2, x.device))
    assert len(set(out.lam.tolist())) > 4


@pytest.mark.parametrize("name", PLAIN_MASK + ["puzzlemix"])
@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_mask_mixers_are_masked_combinations(name, mode, model):
    x, y = batch(8, seed=3)
    params = {"lam_mode": mode, **(PUZZLE_STILL if name == "puzzlemix" else {})}
    out = make(name, model, **params)(x, y, MixRNG(4, x.device))
    m = out.mask
    torch.testing.assert_close(out.x, m * x + (1 - m) * x[out.index])
    torch.testing.assert_close(out.lam, m.mean(dim=(1, 2, 3)))


def test_mask_of_ones_returns_the_input():
    x, y = batch()
    out = masked_mix(x, y, torch.randperm(8), torch.ones(8, 1, 32, 32))
    torch.testing.assert_close(out.x, x)
    assert torch.all(out.lam == 1)


# gridmix keeps 1-pixel holes (hole side clamped to >= 1), smoothmix and resizemix draw no λ, and
# puzzlemix's prior -log(π + 1e-8) is finite: a very salient block of x[π] can still win at λ = 1
LAMBDA_ONE = ["mixup", "cutmix", "manifoldmix", "fmix", "saliencymix", "attentivemix"]


@pytest.mark.parametrize("name", LAMBDA_ONE)
def test_lambda_one_returns_the_input(name, model, monkeypatch):
    import importlib

    module = importlib.import_module(f"mixbench.mixing.{name}")
    monkeypatch.setattr(module, "sample_lambda", lambda rng, alpha, n, mode: np.ones(n))
    x, y = batch()
    extra = {"layers": [0]} if name == "manifoldmix" else {}
    out = make(name, model, **extra)(x, y, MixRNG(0, x.device))
    torch.testing.assert_close(out.x, x)
    assert torch.all(out.lam == 1)


@pytest.mark.parametrize("name", [n for n in ALL if n != "resizemix"])
def test_identical_images_are_unchanged(name, model):
    x = torch.randn(1, 3, 32, 32).expand(6, 3, 32, 32).contiguous()
    y = torch.zeros(6, dtype=torch.int64)
    params = {**mode_params(name, "sample"), **(PUZZLE_STILL if name == "puzzlemix" else {})}
    out = make(name, model, **params)(x, y, MixRNG(0, x.device))
    torch.testing.assert_close(out.x, x)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_under_seed_and_seed_sensitive(name, model):
    x, y = batch(16)
    params = mode_params(name, "sample")
    a = make(name, model, **params)(x, y, MixRNG(7, x.device))
    b = make(name, model, **params)(x, y, MixRNG(7, x.device))
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam) and torch.equal(a.index, b.index)
    outs = [make(name, model, **params)(x, y, MixRNG(s, x.device)) for s in (8, 9, 10)]
    assert any(not torch.equal(a.x, o.x) or not torch.equal(a.lam, o.lam) for o in outs)


def test_rng_state_round_trip():
    rng = MixRNG(1, torch.device("cpu"))
    state = rng.state_dict()
    first = (rng.np.random(), rng.permutation(10, torch.device("cpu")))
    rng.load_state_dict(state)
    again = (rng.np.random(), rng.permutation(10, torch.device("cpu")))
    assert first[0] == again[0] and torch.equal(first[1], again[1])


def test_mixup_lambda_comes_from_beta():
    rng = MixRNG(11, torch.device("cpu"))
    expected = np.random.Generator(np.random.PCG64(11)).beta(0.2, 0.2)
    out = build_mixer("mixup", {"alpha": 0.2})(*batch(), rng)
    assert out.lam[0].item() == pytest.approx(expected, rel=1e-6)
    lam = out.lam.view(-1, 1, 1, 1)
    x, _ = batch()
    torch.testing.assert_close(out.x, lam * x + (1 - lam) * x[out.index])
