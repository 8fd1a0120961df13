"""PatchMix composition and search operators (issue 5, first part) against their definitions."""

from __future__ import annotations

import pytest
import torch

from mixbench.mixing.patchmix import (
    cell_areas,
    compose,
    crossover,
    keep_mixed,
    mutate,
    next_generation,
    patch_loss,
    patch_targets,
    pattern_lambda,
    pattern_mask,
    sample_patterns,
)

CPU = torch.device("cpu")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mask_reproduces_the_pattern_at_the_patch_size():
    patterns = sample_patterns((5,), 4, "uniform_count", gen(), CPU)
    mask = pattern_mask(patterns, 32, 32)
    assert mask.shape == (5, 1, 32, 32)
    blocks = mask[:, 0].reshape(5, 4, 8, 4, 8)
    assert torch.equal(blocks.amin(dim=(2, 4)), blocks.amax(dim=(2, 4)))  # each 8x8 block is constant
    assert torch.equal(blocks[:, :, 0, :, 0], patterns.float())


def test_unequal_cells_when_the_grid_does_not_divide_the_image():
    areas = cell_areas(32, 32, 3)
    sizes = torch.tensor([11, 11, 10]) / 32  # rows 0-10, 11-21, 22-31
    torch.testing.assert_close(areas, sizes[:, None] * sizes[None, :])
    torch.testing.assert_close(areas.sum(), torch.tensor(1.0))
    patterns = sample_patterns((6,), 3, "bernoulli", gen(1), CPU)
    patterns = keep_mixed(patterns)
    x = torch.randn(6, 3, 32, 32)
    index = torch.randperm(6, generator=gen(2))
    mixed, lam = compose(x, index, patterns)
    mask = pattern_mask(patterns, 32, 32)
    torch.testing.assert_close(lam, mask.mean(dim=(1, 2, 3)))  # label weight = realised area, not count
    torch.testing.assert_close(mixed, mask * x + (1 - mask) * x[index])
    counts = patterns.flatten(1).sum(1).float() / 9
    assert not torch.allclose(lam, counts)


def test_samplers_by_definition_and_seeded():
    up = sample_patterns((2000,), 4, "uniform_count", gen(3), CPU)
    n = up.flatten(1).sum(1)
    assert n.min() >= 1 and n.max() <= 15
    assert abs(n.float().mean().item() - 8.0) < 0.3  # n ~ U{1..15}
    assert set(n.tolist()) == set(range(1, 16))
    bern = sample_patterns((2000,), 4, "bernoulli", gen(3), CPU)
    assert abs(bern.float().mean().item() - 0.5) < 0.02
    assert torch.equal(sample_patterns((7,), 4, "uniform_count", gen(9), CPU),
                       sample_patterns((7,), 4, "uniform_count", gen(9), CPU))
    with pytest.raises(ValueError, match="sampler"):
        sample_patterns((1,), 4, "nope", gen(), CPU)


def test_patch_targets_and_patch_loss_follow_the_pattern():
    patterns = torch.tensor([[[True, False], [False, True]]])
    y_a, y_b = torch.tensor([3]), torch.tensor([1])
    targets = patch_targets(y_a, y_b, patterns)
    assert targets.tolist() == [[[3, 1], [1, 3]]]
    fmap = torch.randn(1, 4, 4, 4)
    head = torch.nn.Linear(4, 5)
    cells = torch.stack([fmap[0, :, r * 2:(r + 1) * 2, c * 2:(c + 1) * 2].mean(dim=(1, 2))
                         for r in range(2) for c in range(2)])
    expected = torch.nn.functional.cross_entropy(head(cells), torch.tensor([3, 1, 1, 3]))
    torch.testing.assert_close(patch_loss(fmap, head, targets), expected)


def test_mutation_and_crossover_keep_permutations_and_mixed_patterns():
    p, n, g = 8, 6, 4
    pairings = torch.stack([torch.randperm(n, generator=gen(i)) for i in range(p)])
    patterns = sample_patterns((p, n), g, "uniform_count", gen(1), CPU)
    for step in range(30):
        pairings, patterns = mutate(pairings, patterns, gen(step), swap_prob=0.5)
        patterns = crossover(patterns, patterns.roll(1, 0), gen(step + 100))
        assert torch.equal(pairings.sort(1).values, torch.arange(n).expand(p, n))
        counts = patterns.flatten(2).sum(-1)
        assert counts.min() >= 1 and counts.max() <= g * g - 1
    assert not torch.equal(pairings, torch.stack([torch.randperm(n, generator=gen(i)) for i in range(p)]))


def test_elitism_never_loses_the_best_and_search_improves():
    p, n, g = 12, 5, 4
    target = sample_patterns((n,), g, "bernoulli", gen(5), CPU)

    def fitness(patterns):
        return (patterns == target).flatten(1).float().sum(1)  # per candidate: cells agreeing with target

    pairings = torch.stack([torch.randperm(n, generator=gen(i)) for i in range(p)])
    patterns = sample_patterns((p, n), g, "uniform_count", gen(6), CPU)
    best = []
    g_ = gen(7)
    for _ in range(40):
        fit = fitness(patterns)
        best.append(fit.max().item())
        pairings, patterns = next_generation(pairings, patterns, fit, g_, elite=2)
        assert torch.equal(pairings.sort(1).values, torch.arange(n).expand(p, n))
    assert all(b2 >= b1 for b1, b2 in zip(best, best[1:], strict=False))
    assert best[-1] > best[0]


def test_search_is_deterministic_under_a_seed():
    def run(seed):
        g_ = gen(seed)
        pairings = torch.stack([torch.randperm(6, generator=g_) for _ in range(4)])
        patterns = sample_patterns((4, 6), 4, "uniform_count", g_, CPU)
        for _ in range(3):
            pairings, patterns = next_generation(pairings, patterns, pattern_lambda(patterns, 32, 32).sum(1), g_)
        return pairings, patterns

    a, b = run(11), run(11)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
