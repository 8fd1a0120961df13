"""Each mixer against its own definition: known cases by hand, timm agreement, solver optima."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from mixbench.errors import RecipeError, UserError
from mixbench.losses.mixed import mixed_targets
from mixbench.mixing import MixRNG, build_mixer, forward_mixed
from mixbench.mixing import puzzlemix as pz
from mixbench.mixing.fmix import top_k_mask
from mixbench.mixing.gridmix import grid_holes
from mixbench.mixing.resizemix import paste_resized
from mixbench.mixing.saliencymix import box_mean, fine_grained_saliency
from mixbench.models import build_model


class FixedRNG:
    """A MixRNG stand-in whose draws are given: λ, integer draws, and the pairing."""

    def __init__(self, lam, ints=(), index=None):
        self.np, self._lam, self._ints, self._index = self, lam, iter(ints), index

    def beta(self, a, b, size=None):
        return self._lam if size is None else np.full(size, self._lam)

    def integers(self, low, high=None, size=None):
        return np.array([next(self._ints)]) if size is not None else next(self._ints)

    def permutation(self, n, device):
        return self._index.to(device)


# ---------------------------------------------------------------- timm agreement


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_batch_mode_agrees_with_timm(kind, monkeypatch):
    from timm.data import Mixup as TimmMixup

    x = torch.randn(8, 3, 16, 16)
    y = torch.randint(0, 10, (8,))
    lam, cy, cx = 0.6, 5, 12
    draws = iter([cy, cx])
    monkeypatch.setattr(np.random, "rand", lambda *a: 0.0)
    monkeypatch.setattr(np.random, "beta", lambda a, b, size=None: lam)
    monkeypatch.setattr(np.random, "randint", lambda lo, hi, size=None: next(draws))
    timm_mix = TimmMixup(mixup_alpha=1.0 if kind == "mixup" else 0.0,
                         cutmix_alpha=1.0 if kind == "cutmix" else 0.0,
                         mode="batch", label_smoothing=0.1, num_classes=10)
    x_timm, t_timm = timm_mix(x.clone(), y)

    ours = build_mixer(kind, {"alpha": 1.0})(x, y, FixedRNG(lam, [cy, cx], torch.arange(7, -1, -1)))
    torch.testing.assert_close(ours.x, x_timm)
    torch.testing.assert_close(mixed_targets(ours.y_a, ours.y_b, ours.lam, 10, smoothing=0.1), t_timm)


# ---------------------------------------------------------------- hand-computed cases


def test_cutmix_box_by_hand():
    # λ = 0.75 on 8x8: cut ratio 0.5 -> 4x4 box; centre (1, 6) clips to rows [0, 3), cols [4, 8)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    out = build_mixer("cutmix")(x, y, FixedRNG(0.75, [1, 6], torch.tensor([1, 0])))
    expect = torch.ones(8, 8)
    expect[0:3, 4:8] = 0
    torch.testing.assert_close(out.mask[0, 0], expect)
    assert out.lam[0].item() == pytest.approx(1 - 12 / 64)  # the realised 0.8125, not 0.75


def test_fmix_keeps_the_top_lambda_fraction():
    out = build_mixer("fmix", {"alpha": 1.0, "lam_mode": "sample"})(*_batch(16), MixRNG(3, torch.device("cpu")))
    kept = out.mask.sum(dim=(1, 2, 3))
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(out.lam, kept / (32 * 32))
    score = torch.tensor([[0.1, 0.9, 0.5, 0.7], [4.0, 3.0, 2.0, 1.0]])
    assert top_k_mask(score, torch.tensor([2, 3])).tolist() == [[0, 1, 0, 1], [1, 1, 1, 0]]


def test_saliency_box_is_centred_on_the_pasted_images_peak():
    x = torch.zeros(2, 3, 16, 16)
    x[1, :, 3, 12] = 10.0  # the one salient spot of image 1, which is pasted into image 0
    out = build_mixer("saliencymix")(x, torch.tensor([0, 1]), FixedRNG(0.75, [], torch.tensor([1, 0])))
    hole = out.mask[0, 0] == 0  # where image 1 shows in mixed image 0
    rows, cols = hole.nonzero(as_tuple=True)
    assert hole[3, 12] and (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 6, 8, 15)
    assert fine_grained_saliency(x)[1].flatten().argmax().item() == 3 * 16 + 12


def test_box_mean_matches_average_pooling():
    g = torch.rand(2, 1, 12, 10, dtype=torch.float64)
    for r in (1, 2, 4):
        ref = torch.nn.functional.avg_pool2d(g, 2 * r + 1, stride=1, padding=r, count_include_pad=False)
        torch.testing.assert_close(box_mean(g, r), ref)


def test_smoothmix_label_weight_is_one_minus_gaussian_mass():
    x, y = _batch(8)
    out = build_mixer("smoothmix", {"lam_mode": "sample"})(x, y, MixRNG(0, x.device))
    g = 1 - out.mask
    assert g.amax(dim=(1, 2, 3)).min() > 0.9  # a peak near 1 at the centre
    torch.testing.assert_close(out.lam, 1 - g.mean(dim=(1, 2, 3)))


def test_gridmix_holes_by_hand():
    geo = {k: np.array([v]) for k, v in
           {"top": 1, "left": 2, "height": 8, "width": 12, "cell": 4, "hole": 2, "offset": 1}.items()}
    holes = grid_holes(geo, 12, 16, torch.device("cpu"))[0, 0]
    assert holes.sum().item() == 2 * 3 * 2 * 2
    assert holes[2, 3] and holes[3, 4] and not holes[1, 2] and not holes[4, 5] and holes[6, 7]
    # a region overhanging the top-left corner: only the holes' parts on the image count
    geo = {k: np.array([v]) for k, v in
           {"top": -3, "left": -1, "height": 9, "width": 9, "cell": 3, "hole": 2, "offset": 0}.items()}
    holes = grid_holes(geo, 6, 6, torch.device("cpu"))[0, 0]
    assert holes.nonzero().tolist() == [[r, c] for r in (0, 1, 3, 4) for c in (0, 2, 3, 5)]


def test_resizemix_pastes_the_whole_source_shrunk():
    src = torch.arange(16.0).view(1, 1, 4, 4)
    box = [torch.tensor([v]) for v in (0, 2, 0, 2)]
    pasted = paste_resized(src, *box)
    assert pasted[0, 0, :2, :2].tolist() == [[0.0, 2.0], [8.0, 10.0]]
    x, y = _batch(8)
    out = build_mixer("resizemix", {"lam_mode": "sample"})(x, y, MixRNG(1, x.device))
    keep = out.mask.bool()
    assert torch.equal(out.x[keep.expand_as(x)], x[keep.expand_as(x)])
    torch.testing.assert_close(out.lam, out.mask.mean(dim=(1, 2, 3)))


class _PixelBackbone(nn.Module):
    """A 'backbone' whose feature map is the image itself: activations = channel-mean intensity."""

    def forward_map(self, x):
        return x


class _PixelModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _PixelBackbone()


def test_attentivemix_keeps_the_most_activated_cells():
    x = torch.zeros(2, 3, 8, 8)
    x[0, :, 0:4, 4:8] = 1.0  # image 0: its top-right cell of a 2x2 grid is the most active
    x[0, :, 4:8, 0:4] = 0.5  # and its bottom-left the second
    mixer = build_mixer("attentivemix", {"grid": 2}, model=_PixelModel(), device=torch.device("cpu"))
    out = mixer(x, torch.tensor([0, 1]), FixedRNG(0.5, [], torch.tensor([1, 0])))  # k = ⌊4·0.5⌋ = 2
    cells = out.mask[0, 0, ::4, ::4]
    assert cells.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert out.lam[0].item() == 0.5


def test_manifoldmix_mixes_hidden_states_at_the_drawn_stage():
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", 10, width=0.125).eval()
    x, y = _batch(4)
    mixer = build_mixer("manifoldmix", {"layers": [2], "alpha": 2.0}, model=model)
    out = mixer(x, y, MixRNG(0, x.device))
    assert out.layer == 2 and torch.equal(out.x, x)
    lam = out.lam.view(-1, 1, 1, 1)
    bb = model.backbone
    h = bb.stages[1](bb.stages[0](bb.stem(x)))
    h = lam * h + (1 - lam) * h[out.index]
    expect = model.head(bb.pool(bb.final(bb.stages[3](bb.stages[2](h)))))
    torch.testing.assert_close(forward_mixed(model, out), expect)


def test_manifoldmix_rejects_timm_models_and_too_deep_stages():
    with pytest.raises(UserError, match="hidden stage"):
        build_mixer("manifoldmix", {}, model=build_model("timm:resnet10t", 10))
    with pytest.raises(UserError, match="exceed"):
        build_mixer("manifoldmix", {"layers": [0, 9]}, model=build_model("resnet18_cifar", 10, width=0.125))


# ---------------------------------------------------------------- puzzlemix


def _brute_force(unary, w_v, w_h):
    b, n_labels = unary.shape[1], unary.shape[-1]
    allc = torch.tensor(list(itertools.product(range(n_labels), repeat=b * b))).view(-1, b, b)
    k = len(allc)
    return torch.stack([pz.mask_energy(allc, unary[i:i + 1].expand(k, -1, -1, -1), w_v[i:i + 1].expand(k, -1, -1),
                                       w_h[i:i + 1].expand(k, -1, -1)).min() for i in range(unary.shape[0])])


def test_puzzlemix_mask_optimum_by_hand():
    # 2x2 blocks; image a is salient in its left column, image b in its right column; λ = 0.5
    sal_a = torch.tensor([[[0.5, 0.0], [0.5, 0.0]]])
    sal_b = torch.tensor([[[0.0, 0.5], [0.0, 0.5]]])
    unary = pz.unary_costs(sal_a, sal_b, torch.tensor([0.5]), eta=0.2, n_labels=3)
    w_v, w_h = torch.full((1, 1, 2), 0.01), torch.full((1, 2, 1), 0.01)
    labels = pz.solve_mask(unary, w_v, w_h)
    # keep a on the left (level 2 = weight 1), b on the right (level 0): all saliency (2 × 1.0) kept,
    # two horizontal seams cost 2·0.01·1² = 0.02; the prior is symmetric in a and b at λ = 0.5
    assert labels.tolist() == [[[2, 0], [2, 0]]]
    prior = -0.2 / 4 * np.log(np.array([0.25, 0.5, 0.25]) + 1e-8)
    expected = -2.0 + 2 * prior[2] + 2 * prior[0] + 0.02
    assert pz.mask_energy(labels, unary, w_v, w_h).item() == pytest.approx(expected, rel=1e-5)
    # strong smoothness makes a uniform mask optimal; at λ = 0.5 the prior picks the middle level
    labels = pz.solve_mask(unary, torch.full((1, 1, 2), 5.0), torch.full((1, 2, 1), 5.0))
    assert labels.unique().tolist() == [1]


@pytest.mark.parametrize("b,share", [(2, 1.0), (3, 0.9)])
def test_puzzlemix_solver_finds_brute_force_optima(b, share):
    g = torch.Generator().manual_seed(0)
    n = 40
    sal = torch.rand(2, n, b, b, generator=g) ** 3
    sal = sal / sal.sum(dim=(2, 3), keepdim=True)
    unary = pz.unary_costs(sal[0], sal[1], torch.rand(n, generator=g), 0.2, 3)
    w_v, w_h = torch.rand(n, b - 1, b, generator=g) * 0.1, torch.rand(n, b, b - 1, generator=g) * 0.1
    found = pz.mask_energy(pz.solve_mask(unary, w_v, w_h), unary, w_v, w_h)
    best = _brute_force(unary, w_v, w_h)
    assert torch.all(found >= best - 1e-6)
    assert (found <= best + 1e-6).float().mean().item() >= share
    assert (found - best).max().item() < 0.05


def test_puzzlemix_transport_moves_salient_blocks_to_kept_places():
    keep = torch.tensor([[True, True, True, True]])  # 2x2 grid, everything kept: nothing moves
    dest, moves = pz.transport_plan(keep, torch.tensor([[0.4, 0.3, 0.2, 0.1]]), t_eps=0.8)
    assert dest.tolist() == [[0, 1, 2, 3]] and moves.all()
    # only place 1 is kept; block 0 is very salient and next to it: it moves there
    keep = torch.tensor([[False, True, False, False]])
    dest, moves = pz.transport_plan(keep, torch.tensor([[0.97, 0.01, 0.01, 0.01]]), t_eps=0.8)
    assert dest[0, 0].item() == 1 and moves[0, 0]
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = pz.transport_blocks(x, dest, moves, 2)
    assert out[0, 0, 0:2, 2:4].tolist() == [[0.0, 1.0], [4.0, 5.0]]  # block 0 now in place 1


def test_puzzlemix_with_transport_is_built_from_blocks_of_both_sources():
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", 10, width=0.125)
    x, y = _batch(6)
    out = build_mixer("puzzlemix", {"lam_mode": "sample"}, model=model)(x, y, MixRNG(5, x.device))
    assert set(out.mask.unique().tolist()) <= {0.0, 0.5, 1.0}
    torch.testing.assert_close(out.lam, out.mask.mean(dim=(1, 2, 3)))
    # transport moves blocks of >= 2x2 pixels: every 2x2 block where the mask keeps the first
    # source is some 2x2 block of it, and where it keeps the second, some block of x[index]
    def cells(t):
        return t.unfold(2, 2, 2).unfold(3, 2, 2).reshape(t.shape[0], t.shape[1], 256, 4)

    src_a, src_b, mixed = cells(x), cells(x[out.index]), cells(out.x)
    m = cells(out.mask)[:, 0].amin(-1), cells(out.mask)[:, 0].amax(-1)
    for source, where in ((src_a, m[0] == 1), (src_b, m[1] == 0)):
        assert where.any()
        for i, q in where.nonzero().tolist():
            assert (mixed[i, :, q].unsqueeze(1) == source[i]).all(-1).all(0).any()


# ---------------------------------------------------------------- switch, prob, validation


def test_switch_picks_mixers_with_their_probabilities_and_settings():
    mixer = build_mixer("switch", {"mixers": ["mixup", "cutmix"], "probs": [3, 1],
                                   "mixup": {"alpha": 0.5}, "cutmix": {"alpha": 2.0}})
    assert mixer.children[0].alpha == 0.5 and mixer.children[1].alpha == 2.0
    rng = MixRNG(0, torch.device("cpu"))
    x, y = _batch(4)
    spatial = sum(mixer(x, y, rng).mask is not None for _ in range(400))
    assert 70 <= spatial <= 130  # cutmix drawn with probability 1/4
    only = build_mixer("switch", {"mixers": ["mixup", "cutmix"], "probs": [0, 1]})
    assert all(only(x, y, rng).mask is not None for _ in range(20))


def test_prob_leaves_some_batches_clean(tiny_recipe):
    from mixbench.methods import MethodContext, build_method

    model = build_model("resnet18_cifar", 10, width=0.125)
    ctx = MethodContext(model, lambda *a: 0, 10, torch.device("cpu"), MixRNG(0, torch.device("cpu")), 1, 1)
    x, y = _batch(4)
    never = build_method("cutmix", {"prob": 0.0}, ctx)
    assert all(torch.equal(never.mix(x, y).x, x) for _ in range(10))
    half = build_method("mixup", {"prob": 0.5}, ctx)
    clean = sum(bool(torch.all(half.mix(x, y).lam == 1)) for _ in range(200))
    assert 70 <= clean <= 130


@pytest.mark.parametrize("table,needle", [
    ('name = "smoothmix"\nalpha = 0.2', "unknown key [method].alpha"),
    ('name = "mixup"\nalpha = -1.0', "[method].alpha: expected a number > 0"),
    ('name = "puzzlemix"\nn_labels = 4', "[method].n_labels: expected one of 2, 3"),
    ('name = "resizemix"\nscale_min = 0.9\nscale_max = 0.5', "scale_min must not exceed"),
    ('name = "manifoldmix"\nlayers = []', "[method].layers: expected a non-empty list"),
    ('name = "switch"\nmixers = ["mixup", "cutmx"]', "did you mean 'cutmix'"),
    ('name = "switch"\nmixers = ["mixup"]\nprobs = [0.5, 0.5]', "[method].probs: expected 1 numbers"),
    ('name = "switch"\nmixers = ["mixup"]\ncutmix = { alpha = 1.0 }', "does not use"),
    ('name = "switch"\nmixers = ["mixup"]\nmixup = { alpa = 1.0 }', "unknown key [method].mixup.alpa"),
    ('name = "cutmix"\nprob = 1.5', "[method].prob: expected a number >= 0 and <= 1"),
])
def test_bad_hyperparameters_are_recipe_errors(tmp_path, table, needle):
    from mixbench.recipe import load_recipe

    path = tmp_path / "r.toml"
    path.write_text(f"[method]\n{table}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert any(needle in p for p in e.value.problems), e.value.problems


def test_switch_recipe_round_trips_through_toml(tmp_path):
    from mixbench.recipe import load_recipe

    path = tmp_path / "s.toml"
    path.write_text('[method]\nname = "switch"\nmixers = ["mixup", "cutmix"]\nprobs = [0.5, 0.5]\n'
                    '[method.cutmix]\nalpha = 1.0\n')
    r = load_recipe(path)
    assert r.method["cutmix"] == {"alpha": 1.0, "lam_mode": "batch", "pairing": "permutation"}
    again = tmp_path / "again.toml"
    again.write_text(r.to_toml())
    assert load_recipe(again).method == r.method


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("stage", [0, 2])
def test_gradient_saliency_touches_no_weights_or_batchnorm(stage):
    from mixbench.mixing.features import input_saliency

    torch.manual_seed(0)
    model = build_model("resnet18_cifar", 10, width=0.125).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch(4)
    sal = input_saliency(model, x, y, stage)
    assert sal.shape == (4, 32, 32) and (sal >= 0).all() and sal.sum() > 0
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    if stage == 0:  # by hand: the gradient of Σ CE with respect to x, RMS over channels
        x_req = x.clone().requires_grad_(True)
        model.eval()
        torch.nn.functional.cross_entropy(model(x_req), y, reduction="sum").backward()
        torch.testing.assert_close(sal, x_req.grad.pow(2).mean(1).sqrt())


def test_saliency_stage_needs_a_staged_backbone():
    with pytest.raises(UserError, match="no residual stage"):
        build_mixer("puzzlemix", {"saliency_stage": 2}, model=build_model("timm:resnet10t", 10))(
            *_batch(2), MixRNG(0, torch.device("cpu")))
