"""PuzzleMix (Kim et al., ICML 2020), batched on the device.

Per sample: (1) gradient saliency s = √(mean_c (∂CE/∂h)²) with h the input x (the reference) or
a hidden stage's output (default, cheaper), pooled to a b×b block grid (b = 2^U{1..B−1})
and normalised to sum 1; (2) a block mask m ∈ {0, 1/(L−1), .., 1} (weight of x) minimising
E(m) = Σ_p [−m_p ŝ_x(p) − (1 − m_p) ŝ_x[π](p) − (η/b²) log π_λ(m_p)] + Σ_{p~q} w_pq (m_p − m_q)²,
with π_λ the Binomial(L−1, λ) prior of λ ~ Beta(α, α), and w_pq = β/(16 b)·(1 + γ d_pq) where d_pq
is the seam cost of the two images across the block boundary, on de-normalised pixels x·σ + μ as in
the reference; (3) optimal transport moving each image's salient blocks to the places its mask keeps,
at cost t_eps·‖p − q‖²/(t − 1)² − ŝ(p)·keep(q) on the t×t grid; (4) x̃ = M ⊙ T(x) + (1 − M) ⊙ T(x[π]),
λ = mean(M).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from math import comb
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixbench.mixing.base import (
    LAM_MODE,
    MIXERS,
    PAIRING,
    Mixer,
    MixOutput,
    MixRNG,
    alpha_param,
    draw_pairing,
    masked_mix,
    sample_lambda,
    side_problem,
    stage_problems,
    to_device,
)
from mixbench.mixing.features import FEATURES_FROM, input_saliency, resolve_source
from mixbench.params import Param, RunFacts

EPS = 1e-8
# openmixup's puzzlemix() defaults when it is given no mean/std: CIFAR's under 64 px, ImageNet's from 64 px
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- the block-mask energy


def unary_costs(sal_a: torch.Tensor, sal_b: torch.Tensor, lam: torch.Tensor, eta: float,
                n_labels: int) -> torch.Tensor:
    """[N, b, b, L] cost of each level m_l = l/(L−1): −(m ŝ_a + (1 − m) ŝ_b) − (η/b²) log π_λ(m)."""
    b = sal_a.shape[-1]
    levels = torch.linspace(0, 1, n_labels, device=sal_a.device)
    lam = lam.view(-1, 1)
    prior = torch.stack([comb(n_labels - 1, k) * lam ** k * (1 - lam) ** (n_labels - 1 - k)
                         for k in range(n_labels)], dim=-1).view(-1, 1, 1, n_labels)
    keep = levels * sal_a.unsqueeze(-1) + (1 - levels) * sal_b.unsqueeze(-1)
    return -keep - eta / (b * b) * torch.log(prior + EPS)


def mask_energy(labels: torch.Tensor, unary: torch.Tensor, w_v: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
    """[N] energy of integer ``labels`` [N, b, b]: unary terms plus w·(m_p − m_q)² per grid edge."""
    levels = torch.linspace(0, 1, unary.shape[-1], device=unary.device)
    m = levels[labels]
    e = unary.gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(dim=(1, 2))
    e = e + (w_v * (m[:, 1:] - m[:, :-1]) ** 2).sum(dim=(1, 2))
    return e + (w_h * (m[:, :, 1:] - m[:, :, :-1]) ** 2).sum(dim=(1, 2))


def _neighbour_terms(values: torch.Tensor, w_v: torch.Tensor, w_h: torch.Tensor):
    """(weight, neighbour value) pairs for the four neighbours of every node (0 weight off-grid)."""
    pad = F.pad
    return [
        (pad(w_v, (0, 0, 1, 0)), pad(values[:, :-1], (0, 0, 1, 0))),  # from above
        (pad(w_v, (0, 0, 0, 1)), pad(values[:, 1:], (0, 0, 0, 1))),  # from below
        (pad(w_h, (1, 0)), pad(values[:, :, :-1], (1, 0))),  # from the left
        (pad(w_h, (0, 1)), pad(values[:, :, 1:], (0, 1))),  # from the right
    ]


def icm(labels: torch.Tensor, unary: torch.Tensor, w_v: torch.Tensor, w_h: torch.Tensor,
        sweeps: int = 4) -> torch.Tensor:
    """Iterated conditional modes with red-black (checkerboard) parallel updates."""
    n, b, _, n_labels = unary.shape
    levels = torch.linspace(0, 1, n_labels, device=unary.device)
    rr, cc = torch.meshgrid(torch.arange(b, device=unary.device), torch.arange(b, device=unary.device),
                            indexing="ij")
    for _ in range(sweeps):
        for colour in (0, 1):
            cost = unary.clone()
            for w, v in _neighbour_terms(levels[labels], w_v, w_h):
                cost += w.unsqueeze(-1) * (levels - v.unsqueeze(-1)) ** 2
            labels = torch.where((rr + cc) % 2 == colour, cost.argmin(-1), labels)
    return labels


def belief_propagation(unary: torch.Tensor, w_v: torch.Tensor, w_h: torch.Tensor, iters: int,
                       damping: float = 0.5) -> torch.Tensor:
    """Min-sum loopy belief propagation on the 4-connected grid; returns argmin-belief labels."""
    n, b, _, n_labels = unary.shape
    levels = torch.linspace(0, 1, n_labels, device=unary.device)
    pair = (levels.view(-1, 1) - levels.view(1, -1)) ** 2  # [L, L]
    down = unary.new_zeros(n, b - 1, b, n_labels)  # (r, c) -> (r + 1, c)
    up = torch.zeros_like(down)  # (r + 1, c) -> (r, c)
    right = unary.new_zeros(n, b, b - 1, n_labels)  # (r, c) -> (r, c + 1)
    left = torch.zeros_like(right)  # (r, c + 1) -> (r, c)

    def incoming() -> torch.Tensor:
        return (unary + F.pad(down, (0, 0, 0, 0, 1, 0)) + F.pad(up, (0, 0, 0, 0, 0, 1))
                + F.pad(right, (0, 0, 1, 0)) + F.pad(left, (0, 0, 0, 1)))

    def send(h: torch.Tensor, w: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        msg = (h.unsqueeze(-1) + w[..., None, None] * pair).amin(dim=-2)
        msg = msg - msg.amin(dim=-1, keepdim=True)
        return damping * old + (1 - damping) * msg

    for _ in range(iters):
        inc = incoming()
        down, up, right, left = (
            send(inc[:, :-1] - up, w_v, down), send(inc[:, 1:] - down, w_v, up),
            send(inc[:, :, :-1] - left, w_h, right), send(inc[:, :, 1:] - right, w_h, left),
        )
    return incoming().argmin(-1)


def solve_mask(unary: torch.Tensor, w_v: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
    """Integer labels [N, b, b] of low energy: belief propagation then ICM, or ICM from the
    unary optimum when that ends lower (per sample)."""
    b = unary.shape[1]
    bp = icm(belief_propagation(unary, w_v, w_h, iters=min(b + 4, 12)), unary, w_v, w_h)
    greedy = icm(unary.argmin(-1), unary, w_v, w_h)
    better = mask_energy(greedy, unary, w_v, w_h) < mask_energy(bp, unary, w_v, w_h)
    return torch.where(better.view(-1, 1, 1), greedy, bp)


def seam_weights(xa: torch.Tensor, xb: torch.Tensor, b: int, neigh: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Data-smoothness d_pq ≥ 0 of vertical [N, b−1, b] and horizontal [N, b, b−1] block edges.

    ``xa``, ``xb`` are pixel values (de-normalised, x·σ + μ), as the reference's
    ``avg_pool2d(input * std + mean, neigh_size)``: on normalised images d is about 1/σ ≈ 5 times larger.

    c_uv = mean |u − v| across the boundary (u on the top/left side, v below/right) on
    ``neigh``-pooled images; d = max(0, (c_ab + c_ba − c_aa − c_bb) / 2), the part of the seam
    cost that depends on cutting between the two images.
    """
    pa, pb = F.avg_pool2d(xa.float(), neigh), F.avg_pool2d(xb.float(), neigh)
    n, _, hp, wp = pa.shape
    kh, kw = hp // b, wp // b

    def vertical(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d = (u[:, :, kh - 1:-1:kh] - v[:, :, kh::kh]).abs().mean(1)
        return d.view(n, b - 1, b, kw).mean(-1)

    def horizontal(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d = (u[:, :, :, kw - 1:-1:kw] - v[:, :, :, kw::kw]).abs().mean(1)
        return d.view(n, b, kh, b - 1).mean(2)

    out = []
    for f in (vertical, horizontal):
        out.append(((f(pa, pb) + f(pb, pa) - f(pa, pa) - f(pb, pb)) / 2).clamp_min(0))
    return out[0], out[1]


# ---------------------------------------------------------------- transport


@functools.lru_cache(maxsize=8)
def _grid_distance(t: int, device: torch.device) -> torch.Tensor:
    """[t², t²] C(p, q) = ‖p − q‖² / (t − 1)² between the cells of a t×t grid (the reference's
    ``cost_matrix``): 1 between neighbouring corners of one side, 2 between opposite corners."""
    rc = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij"), -1).view(-1, 2)
    dist = ((rc.unsqueeze(1) - rc.unsqueeze(0)) ** 2).sum(-1).float()
    return (dist / max((t - 1) ** 2, 1)).to(device)


def transport_plan(keep: torch.Tensor, sal: torch.Tensor, t_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each block of a t×t grid goes: (destination [N, P], moves [N, P] bool).

    Greedy auction on cost(p, q) = t_eps·C(p, q) − ŝ(p)·keep(q), C = ‖p − q‖²/(t − 1)² the
    reference's grid distance (max 2): each round every block bids for its cheapest place, each place goes to its
    cheapest bidder (lowest index on ties) and a losing bid costs 1 more; t rounds. Only the
    winners of the last round move.
    """
    n, p = keep.shape
    t = int(round(p ** 0.5))
    cost = t_eps * _grid_distance(t, keep.device).unsqueeze(0) - sal.unsqueeze(2) * keep.unsqueeze(1).to(sal.dtype)
    rows = torch.arange(p, device=keep.device).expand(n, p)
    for _ in range(t):
        dest = cost.argmin(-1)  # [N, P]
        bid = cost.gather(-1, dest.unsqueeze(-1)).squeeze(-1)
        best_bid = torch.full_like(bid, torch.inf).scatter_reduce(1, dest, bid, "amin")
        tied = bid <= best_bid.gather(1, dest)
        first = torch.full_like(rows, p).scatter_reduce(1, dest, torch.where(tied, rows, p), "amin")
        moves = first.gather(1, dest) == rows
        cost.scatter_add_(-1, dest.unsqueeze(-1), (~moves).to(cost.dtype).unsqueeze(-1))
    return dest, moves


def transport_blocks(x: torch.Tensor, dest: torch.Tensor, moves: torch.Tensor, t: int) -> torch.Tensor:
    """Move t×t-grid blocks of ``x`` to ``dest`` where ``moves``; other places keep their own."""
    n, c, h, w = x.shape
    bh, bw = h // t, w // t
    blocks = F.unfold(x, (bh, bw), stride=(bh, bw)).transpose(1, 2)  # [N, P, C·bh·bw]
    p = blocks.shape[1]
    source = torch.arange(p + 1, device=x.device).repeat(n, 1)  # column p collects non-movers
    source.scatter_(1, torch.where(moves, dest, p), torch.arange(p, device=x.device).expand(n, p))
    out = blocks.gather(1, source[:, :p].unsqueeze(-1).expand(-1, -1, blocks.shape[-1]))
    return F.fold(out.transpose(1, 2), (h, w), (bh, bw), stride=(bh, bw))


def _pool_norm(sal: torch.Tensor, t: int) -> torch.Tensor:
    pooled = F.adaptive_avg_pool2d(sal.unsqueeze(1), t).squeeze(1)
    return pooled / pooled.sum(dim=(1, 2), keepdim=True).clamp_min(EPS)


@MIXERS.register()
class PuzzleMix(Mixer):
    """PuzzleMix: saliency-guided block masks with a smoothness prior and block transport."""

    name = "puzzlemix"
    params = {
        "alpha": alpha_param(1.0),
        "beta": Param("float", 1.2, "label smoothness β of the block mask", low=0),
        "gamma": Param("float", 0.5, "data smoothness γ (seam cost between the images)", low=0),
        "eta": Param("float", 0.2, "weight η of the prior on the mixing ratio", low=0),
        "neigh_size": Param("int", 4, "pooling of the images for the seam cost (pixels)", low=1),
        "n_labels": Param("int", 3, "discrete mixing levels per block", choices=(2, 3)),
        "block_num": Param("int", 5, "block grids b = 2^k, k in 1..block_num−1", low=2, high=8),
        "transport": Param("bool", True, "move salient blocks to the places the mask keeps"),
        "t_eps": Param("float", 0.8, "transport: weight of the distance cost", low=0),
        "t_size": Param("int", 4, "transport: block side in pixels (finer grids are kept)", low=1),
        "saliency_stage": Param("int", 2, "gradient saliency at the output of residual stage k (default 2: "
                                "backward through half the network) or at the input (0, the reference)", low=0),
        "features_from": FEATURES_FROM,
        "lam_mode": LAM_MODE,
        "pairing": PAIRING,
    }
    needs_model = True
    differs: ClassVar[str] = ("saliency is the gradient at residual stage 2 by default (saliency_stage = 0 "
                              "for the reference's input gradient, about 1.6x the cost); mask by batched "
                              "belief propagation + ICM on the device instead of pyGCO's CPU alpha-beta swap; "
                              "transport by a batched greedy auction; seam cost reduced to its "
                              "cut-dependent part, on pixels de-normalised with the run's own mean/std "
                              "(openmixup assumes CIFAR's below 64 px and ImageNet's above, which mixbench "
                              "falls back to when no run tells it)")
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # the data's (mean, std): set_normalization

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        """``saliency_stage`` must be a residual stage of the model it is read from (the trained one, unless
        ``features_from`` names another run); ``neigh_size`` and ``t_size`` are pixels, at most the image side."""
        out = [] if values.get("features_from") else stage_problems(
            "saliency_stage", [values["saliency_stage"]], where, origin, facts, what="take gradient saliency")
        if out and facts is not None and not facts.stage_hooks:
            out = [out[0] + "; or set saliency_stage = 0 (the input gradient, any model)"]
        for key in ("neigh_size", "t_size"):
            out += side_problem(key, values[key], where, origin, facts, "pixels of a block")
        return out

    def bind(self, model: nn.Module, device: torch.device) -> None:
        self.source = resolve_source(self.features_from, model, device)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The per-channel (μ, σ) the images were normalised with: the seam cost reads x·σ + μ."""
        self.norm = (tuple(float(v) for v in mean), tuple(float(v) for v in std))

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """De-normalised images x·σ + μ (float32); without :meth:`set_normalization`, openmixup's
        defaults: CIFAR's constants for images under 64 px wide, ImageNet's from 64 px."""
        mean, std = self.norm or ((CIFAR_MEAN, CIFAR_STD) if x.shape[-1] < 64 else (IMAGENET_MEAN, IMAGENET_STD))
        shape = (1, -1, 1, 1)
        return torch.addcmul(to_device(np.asarray(mean), x.device).view(shape), x.float(),
                             to_device(np.asarray(std), x.device).view(shape))

    def block_grid(self, rng: MixRNG, h: int, w: int) -> int:
        """b = 2^k with k ~ U{1..block_num−1} among the grids that divide the image (else 1)."""
        fits = [2 ** k for k in range(1, self.block_num) if h % 2 ** k == 0 and w % 2 ** k == 0]
        return int(fits[rng.np.integers(len(fits))]) if fits else 1

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n, _, h, w = x.shape
        lam = to_device(sample_lambda(rng, self.alpha, n, self.lam_mode), x.device)
        b = self.block_grid(rng, h, w)
        index = draw_pairing(rng, n, x.device, self.pairing)
        sal = input_saliency(self.source, x, y, self.saliency_stage)
        sal_a, sal_b = _pool_norm(sal, b), _pool_norm(sal[index], b)
        unary = unary_costs(sal_a, sal_b, lam, self.eta, self.n_labels)
        neigh = max(d for d in range(1, self.neigh_size + 1) if (h // b) % d == 0 and (w // b) % d == 0)
        pix = self.pixels(x)
        d_v, d_h = seam_weights(pix, pix[index], b, neigh)
        scale = self.beta / (16 * b)
        labels = solve_mask(unary, scale * (1 + self.gamma * d_v), scale * (1 + self.gamma * d_h))
        blocks = labels.float().div(self.n_labels - 1).unsqueeze(1)  # [N, 1, b, b]
        mask = F.interpolate(blocks, size=(h, w), mode="nearest")
        if not self.transport:
            return masked_mix(x, y, index, mask)
        t = max(b, min(h, w) // self.t_size)
        t = t if h % t == 0 and w % t == 0 else b
        keep = F.interpolate(blocks, size=(t, t), mode="nearest").flatten(1)
        moved_a = transport_blocks(x, *transport_plan(keep > 0, _pool_norm(sal, t).flatten(1), self.t_eps), t)
        moved_b = transport_blocks(x[index], *transport_plan(keep < 1, _pool_norm(sal[index], t).flatten(1),
                                                             self.t_eps), t)
        return masked_mix(x, y, index, mask, source_a=moved_a, source_b=moved_b)


__all__ = ["PuzzleMix", "solve_mask", "mask_energy", "unary_costs", "transport_plan"]
