"""PuzzleMix and GridMix against small ports of OpenMixup's formulas, on fixed inputs (issue 14).

The ports below restate ``openmixup/models/augments/{puzzlemix,gridmix}.py`` (Westlake-AI/openmixup)
as plain, readable loops: the seam (data smoothness) weights of PuzzleMix on de-normalised pixels,
its transport cost matrix and plan, and GridMix's ``rand_grid``. Each test that pins a fixed bug also
shows that the earlier formula disagrees with the reference on the same input.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixbench.methods import METHODS, MethodContext
from mixbench.mixing import MixRNG, build_mixer
from mixbench.mixing import puzzlemix as pz
from mixbench.mixing.gridmix import draw_centred, grid_holes, openmixup_geometry
from mixbench.models import build_model

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def _chan(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values).view(1, 3, 1, 1)


# ---------------------------------------------------------------- ports of the reference


def ref_neigh_penalty(input1: torch.Tensor, input2: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """openmixup ``neigh_penalty``: mean |input1 − input2| across every k-th row / column boundary."""
    pw_x = (input1[:, :, :-1, :] - input2[:, :, 1:, :])[:, :, k - 1 :: k, :]
    pw_y = (input1[:, :, :, :-1] - input2[:, :, :, 1:])[:, :, :, k - 1 :: k]
    return (F.avg_pool2d(pw_x.abs().mean(1), kernel_size=(1, k)), F.avg_pool2d(pw_y.abs().mean(1), kernel_size=(k, 1)))


def ref_pairwise(x, index, block_num, neigh_size, beta, gamma, mean, std):
    """The pairwise weights openmixup hands to the graph cut (before its integer scaling):
    β' + β'γ·(c₁₂ + c₂₁ − c₁₁ − c₂₂)/2 with β' = β / block_num / 16, on ``avg_pool2d(x·std + mean)``."""
    block_size = x.shape[-1] // block_num
    neigh_size = min(neigh_size, block_size)
    beta = beta / block_num / 16
    input1_pool = F.avg_pool2d(x * std + mean, neigh_size)
    input2_pool = input1_pool[index]
    k = block_size // neigh_size
    pools = (input2_pool, input1_pool)  # label 0 = the second image, 1 = the first (as the reference)
    pw = {(i, j): ref_neigh_penalty(pools[i], pools[j], k) for i in (0, 1) for j in (0, 1)}
    out = []
    for axis in (0, 1):
        cut = (pw[1, 0][axis] + pw[0, 1][axis] - pw[1, 1][axis] - pw[0, 0][axis]) / 2
        out.append(beta * gamma * cut + beta)
    return out[0], out[1]


def ref_cost_matrix(width: int) -> torch.Tensor:
    """openmixup ``cost_matrix``: squared grid distance over (width − 1)²."""
    c = torch.zeros(width**2, width**2)
    for m_i in range(width**2):
        for m_j in range(width**2):
            c[m_i, m_j] = abs(m_i // width - m_j // width) ** 2 + abs(m_i % width - m_j % width) ** 2
    return c / (width - 1) ** 2


def ref_mask_transport(keep: torch.Tensor, grad_pool: torch.Tensor, eps: float) -> torch.Tensor:
    """openmixup ``mask_transport``: the winning plan [N, P, P] (row: block, column: place)."""
    t = int(round(keep.shape[-1] ** 0.5))
    cost = eps * ref_cost_matrix(t) - grad_pool.reshape(-1, t * t, 1) * keep.float().reshape(-1, 1, t * t)
    for _ in range(t):
        row_best = cost.min(-1)[1]
        plan = torch.zeros_like(cost).scatter_(-1, row_best.unsqueeze(-1), 1)
        col_best = (plan * cost).min(-2)[1]
        plan_win = torch.zeros_like(cost).scatter_(-2, col_best.unsqueeze(-2), 1) * plan
        cost += (1 - plan_win) * plan
    return plan_win


def ref_rand_grid(lam, size, n_holes, cut_area_ratio, cut_aspect_ratio, cx, cy, wrap=True) -> torch.Tensor:
    """openmixup ``rand_grid`` (hole_aspect_ratio = 1, square images) with the draws given: [H, W],
    1 on the holes. ``wrap=False`` clips slices at 0 instead of Python's negative-index wrap-around."""
    w = h = size
    cut_area = int(h * w * cut_area_ratio)
    cut_w = int(np.sqrt(cut_area / cut_aspect_ratio))
    cut_h = int(cut_w * cut_aspect_ratio)
    xc1, yc1 = int((w - cut_w) * cx), int((h - cut_h) * cy)
    assert 1 <= n_holes <= cut_w // 2
    patch_width = math.ceil(cut_w / n_holes)
    patch_height = int(patch_width * 1.0)
    ny = math.ceil(cut_h / patch_height)
    ratio = np.sqrt(1 - lam)
    hole_width = min(max(int(patch_width * ratio), 1), patch_width - 1)
    hole_height = min(max(int(patch_height * ratio), 1), patch_height - 1)
    mask = torch.zeros(h, w)
    for i in range(n_holes + 1):
        for j in range(ny + 1):
            x1, y1 = min(patch_width * i, cut_w), min(patch_height * j, cut_h)
            x2, y2 = min(x1 + hole_width, cut_w), min(y1 + hole_height, cut_h)
            r0, r1, c0, c1 = yc1 + y1, yc1 + y2, xc1 + x1, xc1 + x2
            if not wrap:
                r0, r1, c0, c1 = max(r0, 0), max(r1, 0), max(c0, 0), max(c1, 0)
            mask[r0:r1, c0:c1] = 1.0
    return mask


# ---------------------------------------------------------------- PuzzleMix: seam cost on pixels


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet18_cifar", 10, width=0.125)


def _cifar_like_batch(n: int = 8, side: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random pixel images in [0, 1], normalised with CIFAR's mean/std."""
    g = torch.Generator().manual_seed(seed)
    pix = F.interpolate(torch.rand(n, 3, side // 4, side // 4, generator=g), size=side, mode="bilinear")
    pix = (pix + 0.1 * torch.rand(n, 3, side, side, generator=g)).clamp(0, 1)
    return (pix - _chan(CIFAR_MEAN)) / _chan(CIFAR_STD), torch.randint(0, 10, (n,), generator=g)


def test_puzzlemix_seam_weights_match_the_reference_on_denormalised_pixels(model, monkeypatch):
    x, y = _cifar_like_batch()
    seen = {}

    def spy(unary, w_v, w_h):
        seen.update(w_v=w_v, w_h=w_h)
        return solve(unary, w_v, w_h)

    solve = pz.solve_mask
    monkeypatch.setattr(pz, "solve_mask", spy)
    mixer = build_mixer("puzzlemix", {"transport": False, "lam_mode": "sample"}, model=model)
    mixer.set_normalization(CIFAR_MEAN, CIFAR_STD)
    for seed in range(4):  # several block grids b
        out = mixer(x, y, MixRNG(seed, x.device))
        b = seen["w_v"].shape[-1]
        ref_v, ref_h = ref_pairwise(x, out.index, b, 4, 1.2, 0.5, _chan(CIFAR_MEAN), _chan(CIFAR_STD))
        base = 1.2 / b / 16
        # mixbench keeps the cut-dependent seam term non-negative (documented in `differs`)
        torch.testing.assert_close(seen["w_v"], base + (ref_v - base).clamp_min(0), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(seen["w_h"], base + (ref_h - base).clamp_min(0), rtol=1e-5, atol=1e-7)
        # the earlier formula, the seam cost on normalised images, was about 1/σ ≈ 5x too strong
        d_old = pz.seam_weights(x, x[out.index], b, min(4, 32 // b))[0]
        d_new = (seen["w_v"] - base) / (base * 0.5)
        ratio = (d_old.sum() / d_new.sum()).item()
        assert 4.7 < ratio < 5.2, ratio


def test_puzzlemix_pixels_default_to_openmixups_constants():
    mixer = build_mixer("puzzlemix", {}, model=build_model("resnet18_cifar", 10, width=0.125))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(mixer.pixels(x), x * _chan(CIFAR_STD) + _chan(CIFAR_MEAN))
    x = torch.randn(2, 3, 64, 64)
    imagenet = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    torch.testing.assert_close(mixer.pixels(x), x * _chan(imagenet[1]) + _chan(imagenet[0]))
    mixer.set_normalization([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    torch.testing.assert_close(mixer.pixels(x), x * 0.25 + 0.5)


@pytest.mark.parametrize("name", ["puzzlemix", "switch"])
def test_supervised_method_hands_the_data_normalisation_to_puzzlemix(name, model):
    spec = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    ctx = MethodContext(
        model=model,
        loss=F.cross_entropy,
        num_classes=10,
        device=torch.device("cpu"),
        rng=MixRNG(0, torch.device("cpu")),
        epochs=1,
        steps_per_epoch=1,
        model_spec=spec,
    )
    params = {"mixers": ["mixup", "puzzlemix"]} if name == "switch" else {}
    method = METHODS.get(name)(ctx, **params)
    puzzle = method.mixer.children[1] if name == "switch" else method.mixer
    assert puzzle.norm == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))


# ---------------------------------------------------------------- PuzzleMix: transport cost


@pytest.mark.parametrize("t", [2, 4, 8, 16])
def test_puzzlemix_transport_distance_is_the_references_cost_matrix(t):
    # the earlier scaling divided by the maximum 2 (t − 1)²: t_eps acted half as strong
    torch.testing.assert_close(pz._grid_distance(t, torch.device("cpu")), ref_cost_matrix(t))


def _filled_places(dest: torch.Tensor, moves: torch.Tensor) -> torch.Tensor:
    """[N, P] which block ends in each place, read off ``transport_blocks`` on a 1-pixel-block index image."""
    n, p = dest.shape
    t = int(round(p**0.5))
    ids = torch.arange(p, dtype=torch.float32).view(1, 1, t, t).expand(n, 1, t, t)
    return pz.transport_blocks(ids, dest, moves, t).flatten(1).long()


def _reference_places(keep: torch.Tensor, sal: torch.Tensor, eps: float) -> torch.Tensor:
    plan = ref_mask_transport(keep, sal, eps)
    return torch.where(plan.sum(1) > 0, plan.argmax(1), -1)  # -1: no block won the place


def test_puzzlemix_transport_pinned_case_follows_the_reference():
    # 2x2 grid, only place 1 kept; block 0 is salient but its move costs t_eps·C(0, 1) = 0.8·1 > 0.7:
    # the reference leaves place 1 to block 1; the earlier scaling (C = 1/2 there) moved block 0 in
    keep, sal = torch.tensor([[False, True, False, False]]), torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    assert _reference_places(keep, sal, 0.8)[0, 1].item() == 1
    assert _filled_places(*pz.transport_plan(keep, sal, 0.8))[0, 1].item() == 1
    assert _filled_places(*pz.transport_plan(keep, sal, 0.4))[0, 1].item() == 0  # the earlier cost


@pytest.mark.parametrize("t", [2, 4, 8])
def test_puzzlemix_transport_fills_kept_places_as_the_reference(t):
    # the auctions differ in detail (documented), so compare the blocks that land in kept places
    g = torch.Generator().manual_seed(t)
    keep = torch.rand(300, t * t, generator=g) < 0.5
    sal = torch.rand(300, t * t, generator=g) ** 3
    sal = sal / sal.sum(1, keepdim=True)
    ref = _reference_places(keep, sal, 0.8)[keep]
    agree_new = (_filled_places(*pz.transport_plan(keep, sal, 0.8))[keep] == ref).float().mean().item()
    agree_old = (_filled_places(*pz.transport_plan(keep, sal, 0.4))[keep] == ref).float().mean().item()
    assert agree_new > 0.97 and agree_new > agree_old + 0.05, (agree_new, agree_old)


# ---------------------------------------------------------------- GridMix: rand_grid


def _draws(count: int, seed: int = 0):
    r = np.random.default_rng(seed)
    lams = np.concatenate([[0.0, 1e-3, 0.5, 0.999, 1.0], r.beta(1.0, 1.0, count - 5)])
    return [
        (lam, int(r.integers(2, 7)), r.uniform(0.5, 1.0), r.uniform(0.5, 2.0), r.random(), r.random()) for lam in lams
    ]


def _ours(lam, size, n, area, aspect, cx, cy) -> torch.Tensor:
    geo = openmixup_geometry(np.array([lam]), size, size, *(np.array([v]) for v in (n, area, aspect, cx, cy)))
    return grid_holes(geo, size, size, torch.device("cpu"))[0, 0].float()


@pytest.mark.parametrize("size", [32, 24])
def test_gridmix_openmixup_grid_is_rand_grid_without_the_wrap_around(size):
    overhang = wrapped_differs = 0
    for lam, n, area, aspect, cx, cy in _draws(300, seed=size):
        ours = _ours(lam, size, n, area, aspect, cx, cy)
        assert torch.equal(ours, ref_rand_grid(lam, size, n, area, aspect, cx, cy, wrap=False))
        geo = openmixup_geometry(np.array([lam]), size, size, *(np.array([v]) for v in (n, area, aspect, cx, cy)))
        if geo["top"][0] < 0 or geo["left"][0] < 0:  # the region overhangs the top or left edge
            overhang += 1
            wrapped_differs += not torch.equal(ours, ref_rand_grid(lam, size, n, area, aspect, cx, cy))
        else:
            assert torch.equal(ours, ref_rand_grid(lam, size, n, area, aspect, cx, cy))
    assert overhang > 30 and wrapped_differs > 0  # the reference's bug is real, and mixbench clips instead


def test_gridmix_mixer_draws_the_reference_grid():
    x = torch.randn(4, 3, 32, 32)
    y = torch.arange(4)
    for seed in range(20):
        out = build_mixer("gridmix", {})(x, y, MixRNG(seed, x.device))
        r = MixRNG(seed, x.device).np  # the same draws, in the order GridMix makes them
        lam = r.beta(1.0, 1.0)
        n, area, aspect = int(r.integers(2, 7, 1)[0]), r.uniform(0.5, 1.0, 1)[0], r.uniform(0.5, 2.0, 1)[0]
        cx, cy = r.random(1)[0], r.random(1)[0]
        holes = ref_rand_grid(lam, 32, n, area, aspect, cx, cy, wrap=False)
        assert torch.equal(out.mask[0, 0], 1 - holes)
        assert out.lam[0].item() == pytest.approx(1 - holes.mean().item())


def test_gridmix_grid_option_keeps_the_centred_grid_and_is_recorded():
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    mixer = build_mixer("gridmix", {"grid": "centred"})
    assert mixer.describe()["grid"] == "centred" and build_mixer("gridmix", {}).describe()["grid"] == "openmixup"
    assert mixer(x, y, MixRNG(3, x.device)).lam[0] < 1
    # the earlier grid: whole cells inside the image, each hole (side rounded) centred in its cell
    lam = np.random.default_rng(0).beta(1.0, 1.0, 500)
    geo = draw_centred(MixRNG(0, x.device), lam, 32, 32)
    assert (geo["top"] >= 0).all() and (geo["top"] + geo["height"] <= 32).all()
    assert (geo["left"] >= 0).all() and (geo["left"] + geo["width"] <= 32).all()
    assert (geo["height"] % geo["cell"] == 0).all() and (geo["width"] % geo["cell"] == 0).all()
    assert np.array_equal(geo["hole"], np.clip(np.round(geo["cell"] * np.sqrt(1 - lam)), 1, geo["cell"] - 1))
    assert np.array_equal(geo["offset"], (geo["cell"] - geo["hole"]) // 2)


def test_puzzlemix_runs_get_a_new_run_id_for_the_new_costs(monkeypatch):
    """Same keys, new computation: the revision joins the hash, so no new run resumes or replaces an old one."""
    import mixbench.recipe as recipe_module
    from mixbench.recipe import load_recipe

    root = Path(__file__).resolve().parents[1] / "recipes"
    puzzle, mixup = load_recipe(root / "cifar100_r18_puzzlemix.toml"), load_recipe(root / "cifar100_r18_mixup.toml")
    new_puzzle, new_mixup = puzzle.run_id(), mixup.run_id()
    monkeypatch.setattr(recipe_module, "_REVISIONS", {})
    assert puzzle.run_id() != new_puzzle and mixup.run_id() == new_mixup
