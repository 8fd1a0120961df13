"""Shared pieces of mixing in self-supervised learning: SDMP's pairing, λ, mixing ops and soft targets.

SDMP (spec 4): image i is mixed with its mirror j = b−1−i of the same batch (an odd batch's middle image
with itself), λ'_i = 0.1 + 0.8·λ_i with λ_i ~ Beta(1, 1) per sample, one mixing op per batch drawn uniformly
from a list; x̃_i = M_i ⊙ x_i + (1 − M_i) ⊙ x_j and λ_i = mean(M_i), the share of x_i actually kept.
Two mixed images sharing their sources share content λc_i = min(λ_i, 1 − λ_j) + min(1 − λ_i, λ_j).
Soft targets over the keys: mix–source t_i = λ_i e_i + (1 − λ_i) e_j, mix–mix t_i = (e_i + λc_i e_j)/(1 + λc_i).
Losses on them: weighted CE −Σ_j t_ij log P_i(j) (:func:`~mixbench.losses.ssl.info_nce` with ``targets``), the
mixture likelihood −log Σ_j t_ij P_i(j) (:func:`mixture_nce`), and BYOL's regression Σ_j t_ij (2 − 2 cos(p_i, z_j))
(:func:`soft_regression`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mixbench.errors import did_you_mean
from mixbench.losses.ssl import gather_rows, similarity_logits
from mixbench.mixing import MIXERS, build_mixer
from mixbench.mixing.base import Mixer, MixOutput, MixRNG, derangement, flip_index, to_device
from mixbench.params import show

SDMP_MIXERS = ["mixup", "cutmix", "resizemix"]  # the paper's default: one drawn uniformly per batch
NATIVE_OPS = ("mixup", "cutmix", "resizemix")  # mixed here with a given λ and partner (SDMP's own operators)
LAM_LOW, LAM_HIGH = 0.1, 0.9  # SDMP maps λ ~ Beta(1, 1) to [0.1, 0.9]


# ---------------------------------------------------------------- pairing, λ and the key layout


def sdmp_lambda(rng: MixRNG, n: int, low: float = LAM_LOW, high: float = LAM_HIGH) -> np.ndarray:
    """Per-sample λ' = low + (high − low)·λ with λ ~ Beta(1, 1), drawn on the host (no device sync)."""
    return low + (high - low) * rng.np.beta(1.0, 1.0, size=n)


def shared_ratio(lam_q: torch.Tensor, lam_k: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """λc_i = min(λq_i, 1 − λk_j) + min(1 − λq_i, λk_j), j = index[i]: the content x̃_i shares with x̃'_j.

    ``lam_q`` is the query's realised λ, ``lam_k`` the key view's (equal for SDMP's own ops); a self-paired
    row shares everything with itself: λc = 1.
    """
    other = lam_k[index]
    shared = torch.minimum(lam_q, 1 - other) + torch.minimum(1 - lam_q, other)
    own = index == torch.arange(index.shape[0], device=index.device)
    return torch.where(own, torch.ones_like(shared), shared)


def key_layout(b: int) -> tuple[int, int]:
    """(number of keys, this process's first key row) once every process's ``b`` keys are gathered."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return b * dist.get_world_size(), b * dist.get_rank()
    return b, 0


def pair_targets(w_self: torch.Tensor, w_partner: torch.Tensor, index: torch.Tensor, n_keys: int,
                 offset: int = 0) -> torch.Tensor:
    """[b, n_keys] soft targets: ``w_self[i]`` on key offset+i plus ``w_partner[i]`` on key offset+index[i]."""
    b = index.shape[0]
    rows = torch.arange(b, device=index.device) + offset
    t = torch.zeros(b, n_keys, device=index.device, dtype=torch.float32)
    t.scatter_add_(1, rows.view(-1, 1), w_self.float().view(-1, 1))
    t.scatter_add_(1, (index + offset).view(-1, 1), w_partner.float().view(-1, 1))
    return t


def source_targets(lam: torch.Tensor, index: torch.Tensor, n_keys: int, offset: int = 0) -> torch.Tensor:
    """Mix–source (and naive-mixing) targets t_i = λ_i e_i + (1 − λ_i) e_{index[i]}."""
    return pair_targets(lam, 1 - lam, index, n_keys, offset)


def mixture_targets(lam_c: torch.Tensor, index: torch.Tensor, n_keys: int, offset: int = 0) -> torch.Tensor:
    """Mix–mix targets t_i = e_i/(1 + λc_i) + λc_i e_{index[i]}/(1 + λc_i)."""
    return pair_targets(1 / (1 + lam_c), lam_c / (1 + lam_c), index, n_keys, offset)


# ---------------------------------------------------------------- losses on soft targets


def mixture_nce(q: torch.Tensor, k: torch.Tensor, temperature: float, targets: torch.Tensor,
                gather: bool = True) -> torch.Tensor:
    """Mixture likelihood −log Σ_j t_ij P_i(j), P_i = softmax_j(q̂_i·k̂_j/T) over every process's keys.

    SDMP's latest form (weights on probabilities); :func:`~mixbench.losses.ssl.info_nce` with ``targets`` is the
    weighted-CE form −Σ_j t_ij log P_i(j). Computed as −logsumexp_j(log P_ij + log t_ij) in float32.
    """
    keys = gather_rows(k)[0] if gather else k
    logp = F.log_softmax(similarity_logits(q, keys, temperature), dim=1)
    return -torch.logsumexp(logp + targets.float().log(), dim=1).mean()


def soft_regression(p: torch.Tensor, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BYOL's regression to several targets: mean_i Σ_j t_ij (2 − 2 cos(p_i, sg(z_j))) over this process's z."""
    cos = F.normalize(p.float(), dim=1) @ F.normalize(z.detach().float(), dim=1).T
    return (targets.float() * (2 - 2 * cos)).sum(1).mean()


# ---------------------------------------------------------------- SDMP's mixing ops with a given λ and partner


def inside_boxes(rng: MixRNG, lam: np.ndarray, h: int, w: int) -> tuple[np.ndarray, ...]:
    """Per-sample boxes (y0, y1, x0, x1) of sides ⌊H√(1−λ)⌋ × ⌊W√(1−λ)⌋ placed uniformly fully inside the image.

    SDMP's placement (no clipping): the pasted area is exactly the box, so λ = 1 − bh·bw/(H·W) (spec 4.g-7).
    """
    ratio = np.sqrt(1.0 - lam)
    bh, bw = (h * ratio).astype(np.int64), (w * ratio).astype(np.int64)
    y0 = np.floor(rng.np.random(lam.shape[0]) * (h - bh + 1)).astype(np.int64)
    x0 = np.floor(rng.np.random(lam.shape[0]) * (w - bw + 1)).astype(np.int64)
    return y0, y0 + bh, x0, x0 + bw


def box_inside(y0: torch.Tensor, y1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, h: int,
               w: int) -> torch.Tensor:
    """[N, 1, H, W] bool: True inside each sample's box [y0, y1) × [x0, x1)."""
    ys = torch.arange(h, device=y0.device).view(1, h, 1)
    xs = torch.arange(w, device=y0.device).view(1, 1, w)
    inside = ((ys >= y0.view(-1, 1, 1)) & (ys < y1.view(-1, 1, 1))
              & (xs >= x0.view(-1, 1, 1)) & (xs < x1.view(-1, 1, 1)))
    return inside.unsqueeze(1)


def paste_bilinear(source: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, x0: torch.Tensor,
                   x1: torch.Tensor) -> torch.Tensor:
    """``source`` [N, C, H, W] resized (bilinear, align_corners=False) to each sample's box, at the box.

    Output pixel (r, c) inside box n samples source row (r − y0 + ½)·H/bh − ½ and column (c − x0 + ½)·W/bw − ½,
    clamped to the image, as ``F.interpolate(size=(bh, bw), mode="bilinear")`` does; outside the box: anything.
    """
    n, _, h, w = source.shape
    bh, bw = (y1 - y0).clamp_min(1).float(), (x1 - x0).clamp_min(1).float()
    rows = torch.arange(h, device=source.device, dtype=torch.float32).view(1, h)
    cols = torch.arange(w, device=source.device, dtype=torch.float32).view(1, w)
    sy = (rows - y0.view(-1, 1) + 0.5) * (h / bh.view(-1, 1)) - 0.5  # [N, H] source row
    sx = (cols - x0.view(-1, 1) + 0.5) * (w / bw.view(-1, 1)) - 0.5  # [N, W] source column
    gy, gx = (2 * sy + 1) / h - 1, (2 * sx + 1) / w - 1  # grid_sample's normalised coordinates
    grid = torch.stack([gx.view(n, 1, w).expand(n, h, w), gy.view(n, h, 1).expand(n, h, w)], dim=-1)
    out = F.grid_sample(source.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(source.dtype)


class PinnedRNG(MixRNG):
    """A mixing generator whose Beta draws return given λ and whose permutation is a given partner order.

    Lets a registered mixer (in ``lam_mode = "sample"``) mix with SDMP's λ and flip pairing; every other draw
    (box centres, noise) comes from the wrapped generator, so two calls with the same λ place boxes independently.
    """

    def __init__(self, rng: MixRNG, index: torch.Tensor, lam: np.ndarray):  # noqa: D107 (no super(): shares rng)
        self.np = _PinnedBeta(rng.np, lam)
        self.torch = rng.torch
        self.index = index

    def permutation(self, n: int, device: torch.device) -> torch.Tensor:
        return self.index


class _PinnedBeta:
    """``MixRNG.np`` stand-in: ``beta(a, b, size)`` returns the pinned λ; other draws are the real generator's."""

    def __init__(self, real: np.random.Generator, lam: np.ndarray):
        self._real, self._lam = real, lam

    def beta(self, a: float, b: float, size: int | None = None) -> np.ndarray:
        if size != self._lam.shape[0]:
            raise ValueError(f"a pinned mixer draws one λ per sample ({self._lam.shape[0]}), asked for {size}")
        return self._lam.copy()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def usable_mixers() -> list[str]:
    """Registered sample mixers SSL mixing can use: image-space, no trained classifier needed (not switch)."""
    return [e.name for e in MIXERS if e.name != "switch" and not getattr(e.factory, "needs_model", False)]


def mixer_list_problems(names: list[str], key: str, where: str, origin: dict[str, str]) -> list[str]:
    """One sentence per problem of a list of mixer names (unknown, unusable without labels, or empty)."""
    src = origin.get(key, "recipe")
    valid = usable_mixers()
    if not names:
        return [f"{src}: {where}.{key} is empty; name at least one of: {', '.join(valid)}"]
    out = []
    for name in dict.fromkeys(names):
        if name in valid:
            continue
        if name in MIXERS.names():
            why = ("is a list of mixers itself; list the mixers directly" if name == "switch" else
                   "needs the trained classifier (labels, saliency or hidden states), which self-supervised "
                   "mixing does not have")
            out.append(f"{src}: {where}.{key}: '{name}' {why}; valid: {', '.join(valid)}")
        else:
            hint = did_you_mean(name, valid) if len(name) < 100 else ""
            out.append(f"{src}: {where}.{key}: unknown mixer {show(name)}{hint}; valid: {', '.join(valid)}")
    return out


class FlipMixing:
    """SDMP's mixing: x̃_i = M_i ⊙ x_i + (1 − M_i) ⊙ x_{index[i]} with a given per-sample λ and partner order.

    ``mixup``: M = λ; ``cutmix``: the partner's co-located box; ``resizemix``: the whole partner resized
    (bilinear) into the box; boxes from :func:`inside_boxes`. Any other usable registered mixer runs in its
    ``sample`` mode through :class:`PinnedRNG` (its own box or noise, λ pinned where it draws one). The
    realised λ is the kept share (mask mean; exactly 1 − box area for the boxes); a self-paired row keeps λ = 1.
    """

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.generic: dict[str, Mixer] = {
            name: build_mixer(name, {"lam_mode": "sample"} if "lam_mode" in MIXERS.get(name).params else {})
            for name in self.names if name not in NATIVE_OPS}

    def pick(self, rng: MixRNG) -> str:
        """One op per batch, uniformly from the list (host draw)."""
        return self.names[int(rng.np.integers(len(self.names)))]

    def __call__(self, op: str, x: torch.Tensor, lam: np.ndarray, index: torch.Tensor, rng: MixRNG,
                 y: torch.Tensor | None = None) -> MixOutput:
        """Mix ``x`` with ``x[index]`` by ``op`` at the host-drawn per-sample ``lam``; λ in the output is realised.

        ``y`` (labels, for previews) defaults to the row numbers, so ``y_b`` is the partner's row."""
        n, _, h, w = x.shape
        y = torch.arange(n, device=x.device) if y is None else y
        own = index == torch.arange(n, device=x.device)
        if op == "mixup":
            lam_t = to_device(lam, x.device)
            out = MixOutput(torch.lerp(x[index], x, lam_t.view(-1, 1, 1, 1).to(x.dtype)), y, y[index], lam_t, index)
        elif op in NATIVE_OPS:
            boxes = inside_boxes(rng, lam, h, w)
            kept = 1.0 - (boxes[1] - boxes[0]) * (boxes[3] - boxes[2]) / (h * w)
            y0, y1, x0, x1 = (to_device(b, x.device, torch.int64) for b in boxes)
            inside = box_inside(y0, y1, x0, x1, h, w)
            pasted = x[index] if op == "cutmix" else paste_bilinear(x[index], y0, y1, x0, x1)
            out = MixOutput(torch.where(inside, pasted, x), y, y[index], to_device(kept, x.device), index,
                            (~inside).to(x.dtype))
        else:
            out = self.generic[op](x, y, PinnedRNG(rng, index, lam))
        out.lam = torch.where(own, torch.ones_like(out.lam), out.lam.float())
        return out


__all__ = ["SDMP_MIXERS", "NATIVE_OPS", "flip_index", "derangement", "sdmp_lambda", "shared_ratio", "key_layout",
           "pair_targets", "source_targets", "mixture_targets", "mixture_nce", "soft_regression", "inside_boxes",
           "box_inside", "paste_bilinear", "PinnedRNG", "usable_mixers", "mixer_list_problems", "FlipMixing"]
