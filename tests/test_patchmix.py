"""The PatchMix mixer and method (mixbench reconstruction): search, patch losses, runs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mixbench.catalog import listing
from mixbench.engine import fit
from mixbench.errors import RecipeError
from mixbench.losses import LOSSES
from mixbench.methods import METHODS, MethodContext, build_method
from mixbench.mixing import build_mixer
from mixbench.mixing.base import MixRNG
from mixbench.mixing.patchmix import patch_loss, patch_targets, pattern_lambda, pattern_mask
from mixbench.models import build_model
from mixbench.recipe import load_recipe

CPU = torch.device("cpu")
EVO = {"search": "evolution", "population": 6, "generations": 3}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet10_cifar", 10, width=0.125)


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_random_mix_carries_its_pattern(model):
    x, y = batch()
    out = build_mixer("patchmix", {}, model=model)(x, y, MixRNG(0, CPU))
    assert out.cells.shape == (8, 4, 4) and out.cells.dtype == torch.bool
    torch.testing.assert_close(out.mask, pattern_mask(out.cells, 32, 32))
    torch.testing.assert_close(out.lam, pattern_lambda(out.cells, 32, 32))
    counts = out.cells.flatten(1).sum(1)
    assert counts.min() >= 1 and counts.max() <= 15
    one = build_mixer("patchmix", {"lam_mode": "batch"}, model=model)(x, y, MixRNG(0, CPU))
    assert torch.all(one.cells == one.cells[0])


def test_evolution_returns_the_fittest_of_its_last_generation(model):
    x, y = batch()
    mixer = build_mixer("patchmix", EVO, model=model)
    out = mixer(x, y, MixRNG(1, CPU))
    refit = mixer.fitness_of(x, y, out.index.unsqueeze(0), out.cells.unsqueeze(0))
    torch.testing.assert_close(refit[0], mixer.last_fitness.max())
    assert sorted(out.index.tolist()) == list(range(8))
    again = build_mixer("patchmix", EVO, model=model)(x, y, MixRNG(1, CPU))
    assert torch.equal(out.index, again.index) and torch.equal(out.cells, again.cells)  # seeded


def test_search_every_reuses_the_best_candidate(model):
    mixer = build_mixer("patchmix", {**EVO, "search_every": 2}, model=model)
    rng = MixRNG(2, CPU)
    a = mixer(*batch(seed=1), rng)
    b = mixer(*batch(seed=2), rng)
    c = mixer(*batch(seed=3), rng)
    assert torch.equal(a.index, b.index) and torch.equal(a.cells, b.cells)
    assert not (torch.equal(a.index, c.index) and torch.equal(a.cells, c.cells))


def test_mixed_loss_fitness_penalises_lopsided_patterns(model):
    x, y = batch(4)
    mixer = build_mixer("patchmix", EVO, model=model)
    pairing = torch.tensor([[1, 2, 3, 0], [1, 2, 3, 0]])
    nearly_all = torch.ones(2, 4, 4, 4, dtype=torch.bool)
    nearly_all[..., 0, 0] = False  # λ = 15/16 > 0.9
    half = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    half[..., :2, :] = True
    patterns = torch.stack([nearly_all[0], half[0]])
    fit_ = mixer.fitness_of(x, y, pairing, patterns)
    with torch.no_grad():
        model.eval()
        logits = model(torch.lerp(x[pairing[0]], x, pattern_mask(half[0], 32, 32)))
        model.train()
    hand = (0.5 * F.cross_entropy(logits, y, reduction="none")
            + 0.5 * F.cross_entropy(logits, y[pairing[0]], reduction="none")).mean()
    torch.testing.assert_close(fit_[1], hand, rtol=1e-4, atol=1e-4)
    assert fit_[0] < fit_[1] - 0.3  # 10 × (15/16 − 0.9) = 0.375 penalty


def test_patch_agreement_fitness_is_a_fraction(model):
    x, y = batch()
    mixer = build_mixer("patchmix", {**EVO, "fitness": "patch_agreement"}, model=model)
    mixer(x, y, MixRNG(3, CPU))
    assert ((mixer.last_fitness >= 0) & (mixer.last_fitness <= 1)).all()


def make_method(**params):
    torch.manual_seed(0)
    m = build_model("resnet10_cifar", 10, width=0.125)
    ctx = MethodContext(model=m, loss=LOSSES.get("ce")(), num_classes=10, device=CPU, rng=MixRNG(0, CPU),
                        epochs=1, steps_per_epoch=1)
    values = {k: p.default for k, p in METHODS.entry("patchmix").params.items()} | params
    return build_method("patchmix", values, ctx)


def test_method_loss_is_image_plus_weighted_patch_loss():
    x, y = batch()
    m0 = make_method(patch_weight=0.0)
    out0 = m0((x, y))
    torch.testing.assert_close(out0["loss"], out0["loss_img"])
    m = make_method(patch_weight=0.5)
    out = m((x, y))
    mix = m.mixer(x, y, MixRNG(0, CPU))  # same generator state as the step's draw
    fmap = m.model.backbone.forward_map(mix.x)
    hand = patch_loss(fmap, m.model.head, patch_targets(mix.y_a, mix.y_b, mix.cells))
    torch.testing.assert_close(out["loss_patch"], hand.detach())
    torch.testing.assert_close(out["loss"], out["loss_img"] + 0.5 * out["loss_patch"])


def test_origin_head_trains_only_when_weighted():
    assert make_method().origin_head is None
    m = make_method(origin_weight=1.0)
    out = m(batch())
    assert any(g.module is m.origin_head for g in m.param_groups()) and out["loss_origin"] > 0
    assert torch.autograd.grad(out["loss"], m.origin_head.weight)[0].abs().sum() > 0


def test_reconstruction_is_named_as_such():
    doc = dict(listing("methods"))["patchmix"]
    assert doc.startswith("PatchMix (mixbench reconstruction)") and "mixbench's design" in doc
    assert make_method().describe()["name"] == "PatchMix (mixbench reconstruction)"


def test_bad_search_settings_are_recipe_errors(tiny_recipe):
    path = tiny_recipe(name="bad", method="patchmix")
    with pytest.raises(RecipeError, match="elite"):
        load_recipe(path, ["method.search=evolution", "method.population=2", "method.elite=2"])
    with pytest.raises(RecipeError, match="lam_mode"):
        load_recipe(path, ["method.search=evolution", "method.lam_mode=batch"])


@pytest.mark.parametrize("search", ["random", "evolution"])
def test_short_run_on_shapes(search, tiny_recipe, tmp_path):
    path = tiny_recipe(name=f"pm-{search}", method="patchmix", epochs=1, train_size=100)
    recipe = load_recipe(path, [f"method.search={search}", "method.population=4", "method.generations=2"])
    result = fit(recipe, out_root=tmp_path, device=CPU)
    s = json.loads((result.run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["method_settings"]["name"] == "PatchMix (mixbench reconstruction)"
    assert s["method_settings"]["search"] == search and s["mixer_ms_per_step"] > 0
    terms = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])["terms"]
    assert terms["loss_patch"] > 0


def test_visualize_labels_every_cell():
    import numpy as np

    from mixbench.mixing.base import MixOutput
    from mixbench.visualize import TILE_GAP, render_mixes

    x, y = batch(1)
    cells = torch.ones(1, 2, 2, dtype=torch.bool)
    cells[0, 1, 1] = False
    mask = pattern_mask(cells, 32, 32)
    index = torch.zeros(1, dtype=torch.long)
    plain = MixOutput(x, y, y, pattern_lambda(cells, 32, 32), index, mask)
    labelled = MixOutput(x, y, y, pattern_lambda(cells, 32, 32), index, mask, cells=cells)
    a = np.asarray(render_mixes(x, plain, (0, 0, 0), (1, 1, 1), ["c"] * 10, scale=3))
    b = np.asarray(render_mixes(x, labelled, (0, 0, 0), (1, 1, 1), ["c"] * 10, scale=3))
    x0 = 2 * (96 + TILE_GAP)
    tile_a, tile_b = a[:, x0:x0 + 96], b[:, x0:x0 + 96]
    assert (tile_a != tile_b).any()  # letters drawn on the mask tile
    top_left_b = b[-96:, x0:x0 + 48]  # a white cell ('a' from the first image) now holds dark text
    assert (top_left_b < 128).any() and (a[-96:, x0:x0 + 48] > 250).all()


def test_grid_zero_follows_the_final_feature_map(model):
    mixer = build_mixer("patchmix", {"grid": 0}, model=model)
    x, y = batch()
    assert mixer(x, y, MixRNG(0, CPU)).cells.shape[-1] == 4  # ResNet-10 CIFAR: stride 8 at 32 px
    small = torch.nn.functional.interpolate(x, size=16)
    assert mixer(small, y, MixRNG(0, CPU)).cells.shape[-1] == 2
    assert mixer.describe()["grid_used"] == 2


def test_evolution_best_fitness_never_falls_across_generations(model):
    mixer = build_mixer("patchmix", {**EVO, "generations": 6}, model=model)
    mixer(*batch(), MixRNG(4, CPU))
    best = [float(b) for b in mixer.history]
    assert len(best) == 6 and all(b2 >= b1 - 1e-6 for b1, b2 in zip(best, best[1:], strict=False))


def test_virtual_step_fitness_matches_one_real_sgd_step(model):
    import copy

    x, y = batch(4)
    mixer = build_mixer("patchmix", {**EVO, "fitness": "virtual_step", "virtual_lr": 0.05}, model=model)
    pairing = torch.tensor([[1, 2, 3, 0], [3, 2, 1, 0]])
    patterns = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    patterns[0, :, :2] = True
    patterns[1, :, :, :1] = True
    fit_ = mixer.fitness_of(x, y, pairing, patterns)
    for c in range(2):
        twin = copy.deepcopy(model).eval()
        lam = pattern_lambda(patterns[c], 32, 32)
        xm = torch.lerp(x[pairing[c]], x, pattern_mask(patterns[c], 32, 32))
        logits = twin(xm)
        loss = (lam * F.cross_entropy(logits, y, reduction="none")
                + (1 - lam) * F.cross_entropy(logits, y[pairing[c]], reduction="none")).mean()
        loss.backward()
        with torch.no_grad():
            before = F.cross_entropy(twin(x), y)
            for prm in twin.parameters():
                prm -= 0.05 * prm.grad
            after = F.cross_entropy(twin(x), y)
        torch.testing.assert_close(fit_[c], before - after, rtol=1e-3, atol=1e-5)
