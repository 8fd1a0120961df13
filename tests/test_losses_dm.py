"""Decoupled Mixup losses (dm, dm_bce), the decoupled softmax and SAMix's η-balanced loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixbench.errors import RecipeError
from mixbench.losses import (
    LOSSES,
    DecoupledBCE,
    DecoupledCE,
    decoupled_log_softmax,
    dm_weights,
    eta_balanced,
    eta_balanced_terms,
    two_hot_targets,
)
from mixbench.recipe import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "dm"


def batch(n: int = 16, k: int = 7, seed: int = 0, distinct: bool = True):
    """Random logits, label pairs (y_a != y_b when ``distinct``) and per-sample λ in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * 2
    ya = torch.randint(0, k, (n,), generator=g)
    yb = torch.randint(0, k, (n,), generator=g)
    if distinct:
        yb = torch.where(yb == ya, (ya + 1) % k, yb)
    lam = torch.rand(n, generator=g)
    return z, ya, yb, lam


def hand_log_phi(z: torch.Tensor, a: int, b: int) -> float:
    """log φ_{a\\b}(z) for one sample, by an explicit loop over the classes."""
    total = sum(math.exp(z[k].item()) for k in range(z.shape[0]) if k != b)
    return z[a].item() - math.log(total)


# ------------------------------------------------------------------ decoupled softmax


def test_decoupled_log_softmax_matches_hand_loop():
    z, ya, yb, _ = batch(n=10, k=5, seed=1)
    got = decoupled_log_softmax(z, ya, yb)
    assert got.dtype == torch.float32 and got.shape == (10,)
    for i in range(10):
        assert got[i].item() == pytest.approx(hand_log_phi(z[i], ya[i].item(), yb[i].item()), abs=1e-5)
    # removing b from the normaliser makes φ_{a\b} larger than p_a
    assert (got > F.log_softmax(z, 1).gather(1, ya.view(-1, 1)).squeeze(1)).all()


def test_decoupled_log_softmax_same_class_is_log_softmax_and_half_precision_is_float32():
    z = torch.randn(4, 6)
    y = torch.tensor([0, 3, 5, 2])
    torch.testing.assert_close(decoupled_log_softmax(z, y, y), F.log_softmax(z, 1).gather(1, y.view(-1, 1)).squeeze(1))
    half = decoupled_log_softmax(z.half(), y, (y + 1) % 6)
    assert half.dtype == torch.float32


def test_decoupled_gradient_identity():
    """∂(−log φ_{a\\b})/∂z_a = −(1 − φ_{a\\b}), ∂/∂z_b = 0 (spec 3.b)."""
    z = torch.tensor([[0.3, -1.2, 2.0, 0.7, -0.4]], requires_grad=True)
    a, b = torch.tensor([3]), torch.tensor([2])
    log_phi = decoupled_log_softmax(z, a, b)
    (-log_phi).sum().backward()
    phi = log_phi.exp().item()
    assert z.grad[0, 3].item() == pytest.approx(-(1 - phi), abs=1e-6)
    assert z.grad[0, 2].item() == 0.0
    # every other class k gets φ_{k\b}-like softmax mass: z_k's gradient is its share of the normaliser
    others = torch.tensor([0, 1, 4])
    share = z[0, others].exp() / (z[0].exp().sum() - z[0, 2].exp())
    torch.testing.assert_close(z.grad[0, others], share.detach())


def test_mixed_ce_gradient_is_p_minus_lambda():
    z = torch.tensor([[0.3, -1.2, 2.0, 0.7]], requires_grad=True)
    a, b, lam = torch.tensor([1]), torch.tensor([3]), torch.tensor([0.35])
    DecoupledCE(eta=0.0)(z, a, b, lam).backward()
    p = F.softmax(z.detach(), 1)[0]
    assert z.grad[0, 1].item() == pytest.approx(p[1].item() - 0.35, abs=1e-6)
    assert z.grad[0, 3].item() == pytest.approx(p[3].item() - 0.65, abs=1e-6)


# ------------------------------------------------------------------ DM(CE)


def test_dm_with_eta_zero_equals_mixed_ce():
    z, ya, yb, lam = batch(n=32, k=10, seed=2, distinct=False)
    ce = LOSSES.get("ce")()
    torch.testing.assert_close(LOSSES.get("dm")(eta=0.0)(z, ya, yb, lam), ce(z, ya, yb, lam))
    for mode in ("both", "less", "more"):
        torch.testing.assert_close(DecoupledCE(eta=0.0, mode=mode, lam_power=0.5)(z, ya, yb, lam), ce(z, ya, yb, lam))
    # with η > 0 it is strictly larger (the regulariser is positive)
    assert DecoupledCE(eta=0.1)(z, ya, yb, lam) > ce(z, ya, yb, lam)


def test_dm_hand_computed_three_classes():
    """z = (1, 0, −1), a = 0, b = 1, λ = 0.7, η = 0.1, mode both, p = 1, lam_thr = 1."""
    z = torch.tensor([[1.0, 0.0, -1.0]])
    log_norm = math.log(math.e + 1 + math.exp(-1))  # log Σ e^{z_k} = 1.4076059...
    mce = 0.7 * (log_norm - 1) + 0.3 * (log_norm - 0)  # = 0.7076059...
    reg_a = math.log(1 + math.exp(-2))  # −log φ_{0\1} = −log(e / (e + e^{−1})) = 0.1269280...
    reg_b = math.log(1 + math.exp(-1))  # −log φ_{1\0} = −log(1 / (1 + e^{−1})) = 0.3132616...
    expected = mce + 0.1 * 0.7 * reg_a + 0.1 * 0.3 * reg_b
    assert expected == pytest.approx(0.7258888, abs=1e-6)
    loss = LOSSES.get("dm")()(z, torch.tensor([0]), torch.tensor([1]), torch.tensor([0.7]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_dm_regulariser_at_lambda_half_is_not_skipped():
    z, ya, yb, _ = batch(n=8, k=5, seed=3)
    half = torch.full((8,), 0.5)
    ce = LOSSES.get("ce")()(z, ya, yb, half)
    for mode in ("both", "less", "more"):
        reg = DecoupledCE(eta=0.1, mode=mode)(z, ya, yb, half) - ce
        assert reg.item() > 1e-3, mode


def test_dm_tie_rule_gives_half_selection_to_each_class():
    lam = torch.tensor([0.5, 0.5])
    for mode in ("less", "more"):
        w_a, w_b = dm_weights(lam, eta=0.2, mode=mode, lam_power=1.0)
        torch.testing.assert_close(w_a, torch.full((2,), 0.2 * 0.5 * 0.5))
        torch.testing.assert_close(w_b, w_a)
    w_a, w_b = dm_weights(lam, eta=0.2, mode="both", lam_power=1.0)
    torch.testing.assert_close(w_a, torch.full((2,), 0.1))


def test_dm_same_class_pairs_get_plain_ce():
    z = torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 3, 4, 4])
    lam = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.5])
    for mode in ("both", "less", "more"):
        torch.testing.assert_close(DecoupledCE(eta=0.5, mode=mode, lam_power=0.0)(z, y, y, lam), F.cross_entropy(z, y))
    # mixed batch: only the distinct pairs carry a regulariser
    yb = torch.tensor([0, 2, 2, 0, 4, 1])
    dm = DecoupledCE(eta=0.5).per_sample(z, y, yb, lam)
    mce = DecoupledCE(eta=0.0).per_sample(z, y, yb, lam)
    same = y == yb
    torch.testing.assert_close(dm[same], mce[same])
    assert (dm[~same] > mce[~same]).all()


def test_dm_unmixed_is_plain_ce_and_weight_is_applied():
    z, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    torch.testing.assert_close(DecoupledCE(eta=0.3)(z, y), F.cross_entropy(z, y))
    za, ya, yb, lam = batch(n=5, k=4, seed=4)
    w = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    loss = DecoupledCE(eta=0.3)
    torch.testing.assert_close(loss(za, ya, yb, lam, weight=w), (loss.per_sample(za, ya, yb, lam) * w).mean())


@pytest.mark.parametrize("mode", ["less", "more"])
def test_dm_mode_attaches_weight_to_the_right_class_when_y_a_has_the_larger_index(mode):
    """openmixup's bug (spec 3.g-2): weights [for λ, for 1 − λ] applied in class-index order."""
    z = torch.tensor([[0.2, 1.5, -0.3, 0.9]])
    a, b, lam, eta, p = 3, 1, 0.3, 0.4, 0.5  # y_a has the larger class index
    reg_a = -hand_log_phi(z[0], a, b)  # regulariser of class a = y_a (share 0.3, the minority)
    reg_b = -hand_log_phi(z[0], b, a)  # regulariser of class b = y_b (share 0.7, the majority)
    logp = F.log_softmax(z[0], 0)
    mce = -(lam * logp[a] + (1 - lam) * logp[b]).item()
    if mode == "less":
        right = mce + eta * lam**p * reg_a
        wrong = mce + eta * lam**p * reg_b  # the weight for λ put on the lower-index class (b)
    else:
        right = mce + eta * (1 - lam) ** p * reg_b
        wrong = mce + eta * (1 - lam) ** p * reg_a
    assert abs(right - wrong) > 1e-3
    loss = DecoupledCE(eta=eta, mode=mode, lam_power=p)
    got = loss(z, torch.tensor([a]), torch.tensor([b]), torch.tensor([lam])).item()
    assert got == pytest.approx(right, abs=1e-6)
    # and the loss is symmetric in (a, λ) <-> (b, 1 − λ)
    swapped = loss(z, torch.tensor([b]), torch.tensor([a]), torch.tensor([1 - lam])).item()
    assert swapped == pytest.approx(got, abs=1e-6)


def test_dm_lam_power_weights_by_hand():
    lam = torch.tensor([0.3, 0.8, 0.0, 1.0])
    w_a, w_b = dm_weights(lam, eta=0.1, mode="both", lam_power=2.0)
    torch.testing.assert_close(w_a, torch.tensor([0.1 * 0.09, 0.1 * 0.64, 0.0, 0.1]))
    torch.testing.assert_close(w_b, torch.tensor([0.1 * 0.49, 0.1 * 0.04, 0.1, 0.0]))
    # p = 0: constant η for a present class, 0 for an absent one (share 0)
    w_a, w_b = dm_weights(lam, eta=0.1, mode="both", lam_power=0.0)
    torch.testing.assert_close(w_a, torch.tensor([0.1, 0.1, 0.0, 0.1]))
    torch.testing.assert_close(w_b, torch.tensor([0.1, 0.1, 0.1, 0.0]))
    # less / more select by share
    w_a, w_b = dm_weights(lam, eta=0.1, mode="less", lam_power=1.0)
    torch.testing.assert_close(w_a, torch.tensor([0.03, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(w_b, torch.tensor([0.0, 0.1 * 0.2, 0.0, 0.0]))
    w_a, w_b = dm_weights(lam, eta=0.1, mode="more", lam_power=1.0)
    torch.testing.assert_close(w_a, torch.tensor([0.0, 0.08, 0.0, 0.1]))
    torch.testing.assert_close(w_b, torch.tensor([0.07, 0.0, 0.1, 0.0]))


def test_dm_lam_thr_clips_weights_and_loss_uses_them():
    lam = torch.tensor([0.3, 0.6])
    w_a, w_b = dm_weights(lam, eta=1.0, mode="both", lam_power=1.0, lam_thr=0.5)
    torch.testing.assert_close(w_a, torch.tensor([0.6, 1.0]))  # min(1, 0.3/0.5), min(1, 0.6/0.5)
    torch.testing.assert_close(w_b, torch.tensor([1.0, 0.8]))  # min(1, 0.7/0.5), min(1, 0.4/0.5)
    z = torch.randn(2, 4)
    ya, yb = torch.tensor([0, 2]), torch.tensor([3, 1])
    got = DecoupledCE(eta=1.0, lam_thr=0.5).per_sample(z, ya, yb, lam)
    mce = DecoupledCE(eta=0.0).per_sample(z, ya, yb, lam)
    for i in range(2):
        reg = -w_a[i] * hand_log_phi(z[i], ya[i].item(), yb[i].item()) - w_b[i] * hand_log_phi(
            z[i], yb[i].item(), ya[i].item())
        assert got[i].item() == pytest.approx((mce[i] + reg).item(), abs=1e-5)


# ------------------------------------------------------------------ DM(BCE)


def test_dm_bce_targets_by_hand():
    ya = torch.tensor([0, 0, 0, 2, 1])
    yb = torch.tensor([1, 1, 1, 2, 2])
    lam = torch.tensor([0.3, 1.0, 0.0, 0.3, 0.5])
    t = two_hot_targets(ya, yb, lam, 3, xi=0.5, lam_power=1.0)
    expected = torch.tensor([
        [0.6, 1.0, 0.0],  # h(0.3) = 0.6, h(0.7) = 1
        [1.0, 0.0, 0.0],  # λ = 1: h(0) = 0 for b
        [0.0, 1.0, 0.0],  # λ = 0
        [0.0, 0.0, 1.0],  # a == b: one-hot
        [0.0, 1.0, 1.0],  # λ = 0.5 = ξ: both classes fully present
    ])
    torch.testing.assert_close(t, expected)
    # p = 0 keeps h(0) = 0; a == b stays one-hot even when h(λ) + h(1 − λ) < 1 (ξ = 1, p = 2)
    t0 = two_hot_targets(ya, yb, lam, 3, xi=1.0, lam_power=0.0)
    torch.testing.assert_close(t0[1], torch.tensor([1.0, 0.0, 0.0]))
    t2 = two_hot_targets(ya, yb, lam, 3, xi=1.0, lam_power=2.0)
    torch.testing.assert_close(t2[3], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(t2[0], torch.tensor([0.09, 0.49, 0.0]))


def test_dm_bce_loss_by_hand_and_unmixed():
    z = torch.tensor([[0.0, 2.0, -1.0]])
    loss = LOSSES.get("dm_bce")()(z, torch.tensor([0]), torch.tensor([1]), torch.tensor([0.25]))
    # targets (0.5, 1, 0); BCE(0, 0.5) = log 2, BCE(2, 1) = log(1 + e^−2), BCE(−1, 0) = log(1 + e^−1)
    expected = math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    z, y = torch.randn(4, 5), torch.tensor([1, 0, 4, 4])
    one_hot = F.binary_cross_entropy_with_logits(z, F.one_hot(y, 5).float(), reduction="none").sum(1).mean()
    torch.testing.assert_close(DecoupledBCE()(z, y), one_hot)


# ------------------------------------------------------------------ η-balanced


def test_eta_balanced_terms_sum_to_mce():
    z, ya, yb, lam = batch(n=64, k=9, seed=5, distinct=False)
    assert (ya == yb).any() and (ya != yb).any()
    local, glob = eta_balanced_terms(z, ya, yb, lam)
    mce = LOSSES.get("ce")()
    torch.testing.assert_close((local + glob).mean(), mce(z, ya, yb, lam))
    torch.testing.assert_close(local + glob, DecoupledCE(eta=0.0).per_sample(z, ya, yb, lam))
    assert (local[ya != yb] > 0).all() and (glob > 0).all()
    same = ya == yb
    assert (local[same] == 0).all()
    torch.testing.assert_close(glob[same], -F.log_softmax(z, 1)[same].gather(1, ya[same].view(-1, 1)).squeeze(1))


def test_eta_balanced_terms_by_hand():
    z = torch.tensor([[1.0, 0.0, -1.0]])
    local, glob = eta_balanced_terms(z, torch.tensor([0]), torch.tensor([1]), torch.tensor([0.7]))
    pair_a = math.e / (math.e + 1)  # e^{z_a} / (e^{z_a} + e^{z_b})
    assert local.item() == pytest.approx(-0.7 * math.log(pair_a) - 0.3 * math.log(1 - pair_a), abs=1e-6)
    assert glob.item() == pytest.approx(-math.log((math.e + 1) / (math.e + 1 + math.exp(-1))), abs=1e-6)


def test_eta_balanced_eta_one_is_mce_and_eta_changes_gradients():
    z0, ya, yb, lam = batch(n=8, k=6, seed=6)

    def grad(fn):
        z = z0.clone().requires_grad_(True)
        value = fn(z)
        value.backward()
        return value.detach(), z.grad

    v1, g1 = grad(lambda z: eta_balanced(z, ya, yb, lam, eta=1.0))
    vm, gm = grad(lambda z: LOSSES.get("ce")()(z, ya, yb, lam))
    torch.testing.assert_close(v1, vm)
    torch.testing.assert_close(g1, gm)
    v5, g5 = grad(lambda z: eta_balanced(z, ya, yb, lam, eta=0.5))
    assert v5 < v1
    assert (g5 - g1).abs().max() > 1e-3
    _, g0 = grad(lambda z: eta_balanced(z, ya, yb, lam, eta=0.0))
    # η = 0: only the two mixed classes get gradient (local term), and their gradients cancel
    other = torch.ones_like(g0, dtype=torch.bool).scatter_(1, ya.view(-1, 1), False).scatter_(1, yb.view(-1, 1), False)
    assert (g0[other] == 0).all()
    torch.testing.assert_close(g0.sum(1), torch.zeros(8), atol=1e-7, rtol=0)


# ------------------------------------------------------------------ recipes and training


def test_recipe_rejects_negative_eta(tiny_recipe):
    path = tiny_recipe(method="mixup", extra='\n[loss]\nname = "dm"\neta = -1\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert "[loss].eta" in str(err.value)
    with pytest.raises(RecipeError) as err:
        load_recipe(tiny_recipe(method="mixup"), ["loss.name=dm", 'loss.mode="fewer"'])
    assert "[loss].mode" in str(err.value)
    recipe = load_recipe(tiny_recipe(method="mixup"), ["loss.name=dm"])
    assert recipe.loss == {"name": "dm", "eta": 0.1, "mode": "both", "lam_power": 1.0, "lam_thr": 1.0,
                           "compat": "mixbench"}
    recipe = load_recipe(tiny_recipe(method="mixup"), ["loss.name=dm_bce"])
    assert recipe.loss == {"name": "dm_bce", "xi": 0.5, "lam_power": 1.0}


@pytest.mark.parametrize("method,loss,extra", [
    ("cutmix", "dm", []),
    ("mixup", "dm_bce", ['method.lam_mode="sample"']),
])
def test_short_training_run_with_dm(method, loss, extra, tiny_recipe, tmp_path):
    from mixbench.engine import fit

    path = tiny_recipe(name=f"dm-{method}", method=method, epochs=1, train_size=100)
    recipe = load_recipe(path, [f"loss.name={loss}", *extra])
    assert recipe.loss["name"] == loss
    result = fit(recipe, out_root=tmp_path / "results", device=torch.device("cpu"))
    assert result.status == "completed"
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method"] == method
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    assert metrics and all(math.isfinite(m["train_loss"]) and m["train_loss"] > 0 for m in metrics)


def test_dm_recipes_have_no_dm_twins():
    paths = sorted(RECIPES.glob("*.toml"))
    assert len(paths) == 15
    recipes = {p.stem: load_recipe(p) for p in paths}
    dm = {k: r for k, r in recipes.items() if k.endswith("_dm")}
    assert len(dm) == 6
    names = {r.name for r in recipes.values()}
    assert len(names) == len(recipes)  # run folders do not collide
    for stem, r in recipes.items():
        assert r.train["epochs"] == 800
        assert r.data["source"] == "cifar100" and r.model["name"] == "resnet18_cifar"
        if stem in dm:
            assert r.loss["name"] == "dm" and r.loss["eta"] > 0
            twin = recipes[stem.removesuffix("_dm")]
            assert twin.loss["name"] == "ce"
            assert twin.method == r.method
        else:
            assert r.loss["name"] == "ce"
    assert recipes["cifar100_r18_cutmix_dm"].loss == {
        "name": "dm", "eta": 0.1, "mode": "less", "lam_power": 0.5, "lam_thr": 1.0, "compat": "mixbench"}
    assert recipes["cifar100_r18_puzzlemix"].method["name"] == "puzzlemix"
    assert {recipes[f"cifar100_r18_{m}"].method["name"] for m in ("automix", "samix")} == {"automix", "samix"}
