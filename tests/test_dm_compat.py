"""DM(CE) ``compat``: "mixbench" (the intended loss, the default) and "openmixup" (the reference's numbers).

The reference (openmixup ``ClsMixupHead.loss`` + ``soft_mix_cross_entropy``, ported below from its
behaviour) finds the mixed classes of the soft target t = λ e_a + (1 − λ) e_b by value: it skips the
regulariser for a batch whose λ is 0.5 (two equal values) and attaches the weights, listed for (λ, 1 − λ),
in the class-index order of the first mixed row (swapped when that row's y_a > y_b).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixbench.errors import RecipeError
from mixbench.losses import LOSSES, DecoupledCE, decoupled_log_softmax, dm_weights
from mixbench.recipe import load_recipe
from tests.test_semisup_data import SyncRecorder

K = 10
REF_EPS = 1e-3


# ---------------------------------------------------------------- a port of the reference's behaviour


def ref_eta_weights(lam: float, eta: float, mode: str, lam_thr: float, lam_idx: float) -> list[float]:
    """The head's weights [for λ, for 1 − λ]: selection at 0.5, then η·(v/thr)^|p| (1 from v >= thr)."""
    below = lam < 0.5
    if mode == "both":
        picked = [lam, 1 - lam]
    elif (mode == "less") == below:
        picked = [lam, 0.0]
    else:
        picked = [0.0, 1 - lam]

    def scale(v: float) -> float:
        return 1.0 if v >= lam_thr else lam_thr ** (-abs(lam_idx)) * v ** abs(lam_idx)

    return [eta * scale(v) if v > 0 else v for v in picked]


def ref_dm_loss(
    logits: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: float,
    eta: float,
    mode: str,
    lam_thr: float = 1.0,
    lam_idx: float = 1.0,
) -> torch.Tensor:
    """The reference's DM(CE) loss of a batch mixed with one λ (no smoothing, no class weights)."""
    n, k = logits.shape
    label = lam * F.one_hot(y_a, k) + (1 - lam) * F.one_hot(y_b, k)  # float32, as the head builds it
    weights = ref_eta_weights(lam, eta, mode, lam_thr, lam_idx)
    hot = (label > REF_EPS).sum(1)
    mixed = hot >= hot.max()  # rows with fewer classes than the most (same-class pairs) get plain soft CE
    plain = (-label[~mixed] * F.log_softmax(logits[~mixed], -1)).sum()
    z, t = logits[mixed], label[mixed]
    loss = (-t * F.log_softmax(z, -1)).sum(1)
    shares = t[0][t[0] > REF_EPS]  # the first mixed row's shares, in class-index order
    if len(set(shares.tolist())) == len(shares) > 1:
        present = t > REF_EPS
        for i, share in enumerate(shares):
            kept = (t == share) | ~present  # this share's class and every class not mixed in
            zi = z[kept].view(len(z), k + 1 - len(shares))
            ti = (t[kept].view(len(z), k + 1 - len(shares)) > 0).float()
            loss = loss + weights[i] * (-ti * F.log_softmax(zi, -1)).sum(1)
    return (loss.sum() + plain) / n


def intended_dm_loss(logits, y_a, y_b, lam, eta, mode, lam_thr=1.0, lam_power=1.0):
    """mixbench's DM(CE): MCE + w_a·(−log φ_{a\\b}) + w_b·(−log φ_{b\\a}), the weight of y_a from λ."""
    lam_t = torch.full((len(y_a),), lam)
    mce = -(
        lam_t * F.log_softmax(logits, 1).gather(1, y_a[:, None])[:, 0]
        + (1 - lam_t) * F.log_softmax(logits, 1).gather(1, y_b[:, None])[:, 0]
    )
    w_a, w_b = dm_weights(lam_t, eta, mode, lam_power, lam_thr, same=y_a == y_b)
    reg = -(w_a * decoupled_log_softmax(logits, y_a, y_b) + w_b * decoupled_log_softmax(logits, y_b, y_a))
    return (mce + reg).mean()


def fixed_batch(first_a_above_b: bool, same_first: bool = False, n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, K, generator=g) * 2
    y_a = torch.randint(0, K, (n,), generator=g)
    y_b = (y_a + torch.randint(1, K, (n,), generator=g)) % K  # distinct classes ...
    y_b[3] = y_a[3]  # ... but one same-class pair
    lo, hi = (7, 2) if first_a_above_b else (2, 7)
    row = 1 if same_first else 0
    y_a[row], y_b[row] = lo, hi
    if same_first:
        y_b[0] = y_a[0]  # the first row is a same-class pair: the second row decides
    return logits, y_a, y_b


LAMS = [0.5, 0.3, 0.8125, 0.0625, 0.0005, 1.0]
CASES = [("both", 1.0, 1.0), ("less", 0.5, 1.0), ("more", 0.5, 1.0), ("less", 0.0, 1.0), ("both", 1.0, 0.5)]


@pytest.mark.parametrize("mode,p,thr", CASES)
@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("first_a_above_b", [False, True])
@pytest.mark.parametrize("same_first", [False, True])
def test_openmixup_compat_matches_the_reference(mode, p, thr, lam, first_a_above_b, same_first):
    logits, y_a, y_b = fixed_batch(first_a_above_b, same_first)
    loss = DecoupledCE(eta=0.1, mode=mode, lam_power=p, lam_thr=thr, compat="openmixup")
    got = loss(logits, y_a, y_b, torch.full((len(y_a),), lam))
    want = ref_dm_loss(logits, y_a, y_b, lam, 0.1, mode, thr, p)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("mode,p,thr", CASES)
@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("first_a_above_b", [False, True])
def test_the_default_is_the_intended_loss_and_unchanged(mode, p, thr, lam, first_a_above_b):
    logits, y_a, y_b = fixed_batch(first_a_above_b)
    lam_t = torch.full((len(y_a),), lam)
    default = DecoupledCE(eta=0.1, mode=mode, lam_power=p, lam_thr=thr)
    assert default.compat == "mixbench"
    got = default(logits, y_a, y_b, lam_t)
    explicit = DecoupledCE(eta=0.1, mode=mode, lam_power=p, lam_thr=thr, compat="mixbench")(logits, y_a, y_b, lam_t)
    assert torch.equal(got, explicit)
    torch.testing.assert_close(got, intended_dm_loss(logits, y_a, y_b, lam, 0.1, mode, thr, p))


def test_the_two_differ_exactly_where_the_reference_errs():
    """λ = 0.5 (the reference drops the regulariser) and a first row with y_a > y_b under an asymmetric weight."""
    ours, ref = DecoupledCE(eta=0.5, mode="both"), DecoupledCE(eta=0.5, mode="both", compat="openmixup")
    logits, y_a, y_b = fixed_batch(first_a_above_b=False)
    half = torch.full((len(y_a),), 0.5)
    mce = DecoupledCE(eta=0.0)(logits, y_a, y_b, half)
    assert ours(logits, y_a, y_b, half) > mce
    torch.testing.assert_close(ref(logits, y_a, y_b, half), mce)
    lam = torch.full((len(y_a),), 0.3)
    torch.testing.assert_close(ref(logits, y_a, y_b, lam), ours(logits, y_a, y_b, lam))  # y_a < y_b: no swap
    logits, y_a, y_b = fixed_batch(first_a_above_b=True)
    assert not torch.allclose(ref(logits, y_a, y_b, lam), ours(logits, y_a, y_b, lam))
    # the swap is the whole difference: the reference gives class y_a the weight of share 1 − λ and vice versa
    w_a, w_b = dm_weights(lam, 0.5, "both", 1.0, 1.0, same=y_a == y_b)
    swapped = -(w_b * decoupled_log_softmax(logits, y_a, y_b) + w_a * decoupled_log_softmax(logits, y_b, y_a))
    torch.testing.assert_close(ref(logits, y_a, y_b, lam), DecoupledCE(eta=0.0)(logits, y_a, y_b, lam) + swapped.mean())


def test_openmixup_compat_needs_no_host_sync():
    logits, y_a, y_b = fixed_batch(first_a_above_b=True)
    loss = DecoupledCE(eta=0.1, mode="less", lam_power=0.5, compat="openmixup")
    lam = torch.full((len(y_a),), 0.3)
    with SyncRecorder() as rec:
        loss(logits, y_a, y_b, lam)
    assert rec.found == []


def test_compat_in_recipes_runs_ids_and_the_listing(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[method]\nname = "mixup"\n[loss]\nname = "dm"\n')
    base = load_recipe(path)
    assert base.loss["compat"] == "mixbench"
    assert load_recipe(path, ['loss.compat="mixbench"']).run_id() == base.run_id()  # hashed only when set
    ref = load_recipe(path, ['loss.compat="openmixup"'])
    assert ref.run_id() != base.run_id() and 'compat = "openmixup"' in ref.to_toml()  # RUN/recipe.toml
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ['loss.compat="timm"'])
    (p,) = err.value.problems
    assert p.startswith("--set: [loss].compat: expected one of 'mixbench', 'openmixup'") and "got 'timm'" in p
    differs = LOSSES.entry("dm").differs
    assert "λ = 0.5" in differs and "compat = 'openmixup'" in differs
