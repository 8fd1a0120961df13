"""PatchMix (mixbench reconstruction): grid compositions of image pairs, and the search operators.

A binary pattern ``B ∈ {0,1}^{g×g}`` per pair (1 = the cell comes from ``x_i``) becomes a pixel mask
by nearest upsampling, ``x̃ = Up(B) ⊙ x_i + (1 − Up(B)) ⊙ x_{π(i)}``; λ is the realised *area* of the
cells from ``x_i`` (cells are unequal when g does not divide the side: pixel row r lies in cell
⌊r·g/H⌋). Only "grid composition of a pair, labels ∝ patches, patch losses, random or evolved
patterns and pairings" are the paper's; samplers, operators and fitness are mixbench's design
(spec 5.b). Everything is batched over a population ``[P, N, g, g]``; nothing loops per sample.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mixbench.mixing.base import MIXERS, PAIRING, Mixer, MixOutput, MixRNG, draw_pairing, side_problem
from mixbench.mixing.features import eval_mode
from mixbench.params import Param, RunFacts, show_number

SAMPLERS = ("uniform_count", "bernoulli")


def cell_rows(size: int, g: int, device: torch.device | None = None) -> torch.Tensor:
    """[size] cell index of each pixel row (or column): ⌊r·g/size⌋."""
    return torch.div(torch.arange(size, device=device) * g, size, rounding_mode="floor")


def cell_areas(h: int, w: int, g: int, device: torch.device | None = None) -> torch.Tensor:
    """[g, g] share of the image area in each cell (sums to 1)."""
    rows = torch.bincount(cell_rows(h, g, device), minlength=g).float() / h
    cols = torch.bincount(cell_rows(w, g, device), minlength=g).float() / w
    return rows[:, None] * cols[None, :]


def pattern_mask(patterns: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[..., g, g]`` binary patterns -> ``[..., 1, h, w]`` float masks (nearest upsampling by cell)."""
    g = patterns.shape[-1]
    r, c = cell_rows(h, g, patterns.device), cell_rows(w, g, patterns.device)
    return patterns[..., r[:, None], c[None, :]].unsqueeze(-3).float()


def pattern_lambda(patterns: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Realised weight of the first image: the area of its cells, ``[...]``."""
    areas = cell_areas(h, w, patterns.shape[-1], patterns.device)
    return (patterns.float() * areas).sum(dim=(-2, -1))


def sample_patterns(shape: tuple[int, ...], g: int, sampler: str, gen: torch.Generator,
                    device: torch.device) -> torch.Tensor:
    """Random bool patterns ``[*shape, g, g]``.

    ``uniform_count``: n ~ U{1..g²−1} cells from x_i, placed uniformly (rank of random keys < n);
    ``bernoulli``: each cell from x_i with probability ½.
    """
    cells = g * g
    if sampler == "bernoulli":
        return (torch.rand(*shape, cells, device=device, generator=gen) < 0.5).view(*shape, g, g)
    if sampler != "uniform_count":
        raise ValueError(f"unknown pattern sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    n = torch.randint(1, cells, (*shape, 1), device=device, generator=gen)
    keys = torch.rand(*shape, cells, device=device, generator=gen)
    rank = keys.argsort(dim=-1).argsort(dim=-1)  # a uniform random rank of each cell
    return (rank < n).view(*shape, g, g)


def compose(x: torch.Tensor, index: torch.Tensor, patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̃, λ) for one candidate: ``x [N,C,H,W]``, pairing ``index [N]``, ``patterns [N,g,g]``."""
    h, w = x.shape[-2:]
    mask = pattern_mask(patterns, h, w).to(x.dtype)
    return torch.lerp(x[index], x, mask), pattern_lambda(patterns, h, w)


def patch_targets(y_a: torch.Tensor, y_b: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """[N, g, g] label of the image each cell came from."""
    return torch.where(patterns, y_a.view(-1, 1, 1), y_b.view(-1, 1, 1))


def patch_loss(fmap: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    """The image classifier applied to every grid cell of the final feature map, CE against the
    label of the cell's source image: ``mean_c CE(h(pool_c(F)), y_src(c))``."""
    g = targets.shape[-1]
    cells = F.adaptive_avg_pool2d(fmap, g)  # [N, D, g, g]
    logits = head(cells.permute(0, 2, 3, 1).reshape(-1, cells.shape[1]))
    return F.cross_entropy(logits.float(), targets.reshape(-1))


# ---------------------------------------------------------------- evolution operators


def mutate(pairings: torch.Tensor, patterns: torch.Tensor, gen: torch.Generator, *, flips: int = 2,
           swap_prob: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip 1..``flips`` random cells of every pattern; with ``swap_prob`` per candidate, swap the
    partners of two random positions of its pairing (a permutation stays a permutation).

    ``pairings [P, N]`` (each row a permutation), ``patterns [P, N, g, g]`` bool.
    """
    p, n, g, _ = patterns.shape
    dev = patterns.device
    cells = g * g
    k = torch.randint(1, flips + 1, (p, n, 1), device=dev, generator=gen)
    rank = torch.rand(p, n, cells, device=dev, generator=gen).argsort(-1).argsort(-1)
    flip = (rank < k).view(p, n, g, g)
    patterns = patterns ^ flip
    a = torch.randint(0, n, (p,), device=dev, generator=gen)
    b = torch.randint(0, n, (p,), device=dev, generator=gen)
    do = torch.rand(p, device=dev, generator=gen) < swap_prob
    rows = torch.arange(p, device=dev)
    va, vb = pairings[rows, a], pairings[rows, b]
    pairings = pairings.clone()
    pairings[rows, a] = torch.where(do, vb, va)
    pairings[rows, b] = torch.where(do, va, vb)
    return pairings, keep_mixed(patterns)


def crossover(patterns_a: torch.Tensor, patterns_b: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Uniform crossover of two pattern sets of the same pairing: each cell from either parent."""
    pick = torch.rand(patterns_a.shape, device=patterns_a.device, generator=gen) < 0.5
    return keep_mixed(torch.where(pick, patterns_a, patterns_b))


def keep_mixed(patterns: torch.Tensor) -> torch.Tensor:
    """Repair patterns that take every cell (or none) from one image: flip cell (0, 0)."""
    count = patterns.flatten(-2).sum(-1)
    bad = (count == 0) | (count == patterns.shape[-1] ** 2)
    fixed = patterns.clone()
    fixed[..., 0, 0] = torch.where(bad, ~patterns[..., 0, 0], patterns[..., 0, 0])
    return fixed


def next_generation(pairings: torch.Tensor, patterns: torch.Tensor, fitness: torch.Tensor, gen: torch.Generator,
                    *, elite: int = 2, flips: int = 2, swap_prob: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Elitism + tournament selection + crossover + mutation, all batched over the population.

    The ``elite`` fittest candidates are kept unchanged (so the best fitness never falls); the rest
    are children of two binary-tournament parents: the first parent's pairing, a uniform crossover
    of the parents' patterns where the pairings agree (else the first parent's), then mutation.
    """
    p = fitness.shape[0]
    dev = fitness.device
    order = fitness.argsort(descending=True)
    elite_idx = order[:elite]
    m = p - elite
    duel = torch.randint(0, p, (2, m, 2), device=dev, generator=gen)
    win = torch.where(fitness[duel[..., 0]] >= fitness[duel[..., 1]], duel[..., 0], duel[..., 1])  # [2, m]
    pa, pb = win[0], win[1]
    same = (pairings[pa] == pairings[pb]).view(m, -1, 1, 1)
    child_patterns = torch.where(same, crossover(patterns[pa], patterns[pb], gen), patterns[pa])
    child_pairings, child_patterns = mutate(pairings[pa], child_patterns, gen, flips=flips, swap_prob=swap_prob)
    return (torch.cat([pairings[elite_idx], child_pairings]), torch.cat([patterns[elite_idx], child_patterns]))




# ---------------------------------------------------------------- the mixer


def random_pairings(p: int, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """[P, N]: P independent uniform permutations (argsort of random keys)."""
    return torch.rand(p, n, device=device, generator=gen).argsort(dim=1)


# Upper limits of PatchMix's keys (checked in ``PatchMix.check``): the grid at most 1024 cells per side (and
# see ``grid_problems``); all ``population`` candidates are scored in one forward pass of population x batch
# images; ``virtual_lr`` at most [train].lr's limit.
LIMITS = {"grid": 1024, "population": 256, "generations": 100, "virtual_lr": 10.0}


def limit_problems(values: dict[str, Any], where: str, origin: dict[str, str]) -> list[str]:
    """Each key of ``LIMITS`` above its limit, as a sentence."""
    return [f"{origin.get(k, 'recipe')}: {where}.{k}: expected at most {limit:g}, got {show_number(values[k])}"
            for k, limit in LIMITS.items() if k in values and values[k] > limit]


def grid_problems(values: dict[str, Any], where: str, origin: dict[str, str], facts: RunFacts | None) -> list[str]:
    """``grid`` against the run's images and backbone: at least 2 cells per side (two images to compose), a
    cell covers at least one pixel, and while a patch loss reads the final feature map (``patch_weight`` /
    ``origin_weight`` > 0), at least one position of it (a finer grid only copies features, at N·D·g² memory)."""
    grid = values.get("grid", 0)
    src = origin.get("grid", origin.get("name", "recipe"))
    if grid == 1:
        return [f"{src}: {where}.grid = 1: a 1x1 grid cannot compose two images; valid: 0 (the side of the final "
                "feature map) or 2 and more"]
    fside = None if facts is None else facts.feature_side
    if grid == 0 and facts is not None and not facts.stage_hooks:
        return [f"{src}: {where}.grid = 0 sizes the grid from the final feature map, which for {facts.stages_text()} "
                "is known only once the model is built (a timm ResNet's is 1x1 at 32 px); give grid >= 2 explicitly"]
    if grid == 0 and fside is not None and fside < 2:
        return [f"{src}: {where}.grid = 0 takes the side of the {fside}x{fside} final feature map of "
                f"{facts.stages_text()} at {facts.image_side} px, and a 1x1 grid cannot compose two images; "
                "use a larger [data].image_size, or grid >= 2 with patch_weight = 0 and origin_weight = 0"]
    if not grid or grid > LIMITS["grid"] or facts is None:
        return []
    if fside is not None and (values.get("patch_weight", 0) > 0 or values.get("origin_weight", 0) > 0) \
            and grid > fside:
        return [f"{src}: {where}.grid = {grid} exceeds the {fside}x{fside} final feature "
                f"map of {facts.stages_text()} at {facts.image_side} px, which the patch losses read per cell; "
                + (f"valid: 0 (= {fside}) or 2..{fside}" if fside >= 2 else "it needs at least 2x2: use a larger "
                   "[data].image_size") + ", or set patch_weight = 0 and origin_weight = 0"]
    return side_problem("grid", grid, where, origin, facts, "a cell must hold at least one pixel")


@MIXERS.register()
class PatchMix(Mixer):
    """PatchMix (mixbench reconstruction): g x g grid compositions of image pairs, random or evolved."""

    name: ClassVar[str] = "patchmix"
    needs_model: ClassVar[bool] = True  # evolution scores candidates with the current model
    params: ClassVar[dict[str, Param]] = {
        "grid": Param("int", 0, "g: cells per side; 0 = the side of the backbone's final feature map "
                      "(4 for a CIFAR ResNet at 32 px)", low=0),
        "sampler": Param("str", "uniform_count", "random patterns: n ~ U{1..g²-1} cells, or Bernoulli(½) cells",
                         choices=SAMPLERS),
        "lam_mode": Param("str", "sample", "one random pattern per pair (sample) or one for the batch (batch)",
                          choices=("batch", "sample")),
        "search": Param("str", "random", "random patterns and pairing, or an evolutionary search",
                        choices=("random", "evolution")),
        "pairing": PAIRING,
        "population": Param("int", 16, "evolution: candidates (pairing + patterns) per generation", low=2),
        "generations": Param("int", 5, "evolution: generations per search", low=1),
        "elite": Param("int", 2, "evolution: fittest candidates kept unchanged", low=1),
        "flips": Param("int", 2, "evolution: a mutation flips 1..flips cells of each pattern", low=1),
        "swap_prob": Param("float", 0.1, "evolution: chance a mutation swaps two partners", low=0, high=1),
        "fitness": Param("str", "mixed_loss", "evolution: mixed_loss (harder preferred, λ kept in [0.1, 0.9]), "
                         "patch_agreement (cells whose prediction matches their source) or virtual_step (drop of "
                         "the clean batch's loss after one virtual SGD step on the candidate)",
                         choices=("mixed_loss", "patch_agreement", "virtual_step")),
        "virtual_lr": Param("float", 0.1, "fitness virtual_step: lr of the virtual SGD step", low=0, low_open=True),
        "search_every": Param("int", 1, "evolution: search every N batches; reuse the best in between", low=1),
    }
    differs: ClassVar[str] = ("mixbench reconstruction (no public code): samplers, patch losses, operators and "
                              "fitness are mixbench's design (spec 5.b)")

    def __init__(self, **values: Any):
        super().__init__(**values)
        self._calls = 0
        self._best: tuple[torch.Tensor, torch.Tensor] | None = None
        self.history: list[torch.Tensor] = []  # best fitness of each generation of the last search

    def cells_per_side(self, x: torch.Tensor) -> int:
        """``grid``, or (grid = 0) the side of the final feature map of the bound model for this input."""
        if self.grid:
            return self.grid
        if getattr(self, "_auto", None) is None or self._auto[0] != tuple(x.shape[-2:]):
            from mixbench.errors import UserError

            if getattr(self, "model", None) is None:
                raise UserError("[method].grid = 0 needs a model to size the grid; give grid explicitly")
            with torch.no_grad(), eval_mode(self.model):
                fmap = self.model.backbone.forward_map(x[:1])
            if fmap.dim() != 4:
                raise UserError("[method].grid = 0: the backbone has no spatial feature map; give grid explicitly")
            self._auto = (tuple(x.shape[-2:]), int(fmap.shape[-1]))
        return self._auto[1]

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        out = limit_problems(values, where, origin) + grid_problems(values, where, origin, facts)
        if values["elite"] >= values["population"]:
            out.append(f"{origin.get('elite', 'recipe')}: {where}.elite must be smaller than {where}.population "
                       f"({values['population']})")
        if values["search"] == "evolution" and values["lam_mode"] == "batch":
            out.append(f"{origin.get('lam_mode', 'recipe')}: {where}.lam_mode = 'batch' works only with "
                       "search = 'random' (evolution evolves one pattern per pair)")
        if values["search"] == "evolution" and values.get("pairing", PAIRING.default) != PAIRING.default:
            out.append(f"{origin.get('pairing', 'recipe')}: {where}.pairing = '{values['pairing']}' works only with "
                       "search = 'random' (evolution searches over uniform permutations and swaps partners)")
        return out

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n = x.shape[0]
        if self.search == "random":
            index = draw_pairing(rng, n, x.device, self.pairing)
            k, g = (1 if self.lam_mode == "batch" else n), self.cells_per_side(x)
            patterns = keep_mixed(sample_patterns((k,), g, self.sampler, rng.torch, x.device)).expand(n, -1, -1)
        else:
            if self._best is None or self._best[0].shape[0] != n or self._calls % self.search_every == 0:
                self._best = self.evolve(x, y, rng)
            index, patterns = self._best
            self._calls += 1
        mixed, lam = compose(x, index, patterns)
        mask = pattern_mask(patterns, *x.shape[-2:]).to(x.dtype)
        return MixOutput(mixed, y, y[index], lam, index, mask, cells=patterns)

    @torch.no_grad()
    def fitness_of(self, x: torch.Tensor, y: torch.Tensor, pairings: torch.Tensor,
                   patterns: torch.Tensor) -> torch.Tensor:
        """[P] fitness of every candidate, all candidates in one forward pass (eval mode, no update)."""
        p, n = pairings.shape
        h, w = x.shape[-2:]
        g = patterns.shape[-1]
        mask = pattern_mask(patterns, h, w).to(x.dtype)  # [P, N, 1, H, W]
        mixed = torch.lerp(x[pairings], x.unsqueeze(0), mask).flatten(0, 1)
        y_b = y[pairings]
        if self.fitness == "virtual_step":
            return self._virtual_step_fitness(x, y, mixed.view(p, n, *x.shape[1:]), y_b,
                                              pattern_lambda(patterns, h, w))
        with eval_mode(self.model):
            fmap = self.model.backbone.forward_map(mixed)
            head = self.model.head
            if self.fitness == "patch_agreement":
                cells = F.adaptive_avg_pool2d(fmap, g)
                pred = head(cells.permute(0, 2, 3, 1)).argmax(-1).view(p, n, g, g)
                target = torch.where(patterns, y.view(1, n, 1, 1), y_b.view(p, n, 1, 1))
                return (pred == target).float().mean(dim=(1, 2, 3))
            logits = head(self.model.backbone.pool(fmap)).float()
        lam = pattern_lambda(patterns, h, w)  # [P, N]
        ce_a = F.cross_entropy(logits, y.repeat(p), reduction="none").view(p, n)
        ce_b = F.cross_entropy(logits, y_b.flatten(), reduction="none").view(p, n)
        penalty = F.relu(0.1 - lam) + F.relu(lam - 0.9)
        return (lam * ce_a + (1 - lam) * ce_b - 10.0 * penalty).mean(1)

    def evolve(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> tuple[torch.Tensor, torch.Tensor]:
        """The best (pairing, patterns) after ``generations`` rounds of selection and variation."""
        n, gen, side = x.shape[0], rng.torch, self.cells_per_side(x)
        pairings = random_pairings(self.population, n, gen, x.device)
        patterns = keep_mixed(sample_patterns((self.population, n), side, self.sampler, gen, x.device))
        self.history = []
        for g in range(self.generations):
            fit = self.fitness_of(x, y, pairings, patterns)
            self.history.append(fit.max())
            if g < self.generations - 1:
                pairings, patterns = next_generation(pairings, patterns, fit, gen, elite=self.elite,
                                                     flips=self.flips, swap_prob=self.swap_prob)
        best = fit.argmax()
        self.last_fitness = fit
        return pairings[best], patterns[best]

    def _virtual_step_fitness(self, x: torch.Tensor, y: torch.Tensor, mixed: torch.Tensor, y_b: torch.Tensor,
                              lam: torch.Tensor) -> torch.Tensor:
        """[P] drop of the clean batch's CE after one virtual SGD step (lr ``virtual_lr``) on each
        candidate's mixed batch; per-candidate gradients by ``torch.func`` (vmap over candidates)."""
        from torch.func import functional_call, grad, vmap

        model = self.model
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = dict(model.named_buffers())

        def mixed_loss(prm, xm, yb, lm):
            logits = functional_call(model, (prm, buffers), (xm,)).float()
            ce_a = F.cross_entropy(logits, y, reduction="none")
            ce_b = F.cross_entropy(logits, yb, reduction="none")
            return (lm * ce_a + (1 - lm) * ce_b).mean()

        def clean_loss(prm):
            return F.cross_entropy(functional_call(model, (prm, buffers), (x,)).float(), y)

        with eval_mode(self.model), torch.enable_grad():
            grads = vmap(grad(mixed_loss), in_dims=(None, 0, 0, 0))(params, mixed, y_b, lam)
        with torch.no_grad(), eval_mode(self.model):
            stepped = {k: params[k] - self.virtual_lr * grads[k] for k in params}
            before = clean_loss(params)
            after = vmap(clean_loss)(stepped)
        return before - after

    def describe(self) -> dict[str, Any]:
        auto = getattr(self, "_auto", None)
        resolved = {"grid_used": auto[1]} if not self.grid and auto is not None else {}
        return {"name": "PatchMix (mixbench reconstruction)", **super().describe(), **resolved}


__all__ = ["SAMPLERS", "cell_rows", "cell_areas", "pattern_mask", "pattern_lambda", "sample_patterns", "compose",
           "patch_targets", "patch_loss", "mutate", "crossover", "keep_mixed", "next_generation", "random_pairings",
           "PatchMix"]
