"""GridMix, the "holes" variant of openmixup / the community GridMixup (Baek et al., PR 2021).

λ ~ Beta(α, α); a region of area ratio r ~ U(0.5, 1) and aspect a ~ U(0.5, 2) is tiled with n ~ U{2..6}
square cells per row of side s; a hole of side clamp(⌊s √(1 − λ)⌋, 1, s − 1) in each cell is filled
from x[π]; λ = 1 − holes' area / image area (the realised area). ``grid = "openmixup"`` is the reference's
``rand_grid``: region w_r = ⌊√(⌊HWr⌋ / a)⌋, h_r = ⌊w_r a⌋ at a uniform corner that may overhang the image,
s = ⌈w_r / n⌉, holes in the cells' top-left corners. ``grid = "centred"`` is mixbench's earlier grid:
w_r = round(W √(r a)), h_r = round(H √(r / a)), s = w_r // n, whole cells inside the image, hole side
rounded, holes centred in their cells.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

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
    to_device,
)
from mixbench.params import Param


def grid_holes(geometry: dict[str, np.ndarray], h: int, w: int, device: torch.device) -> torch.Tensor:
    """[M, 1, H, W] bool, True on the holes described by per-mask arrays of ``geometry``.

    Pixel (Y, X) is in a hole when (dy, dx) = (Y − top, X − left) lies in the region
    [0, height) × [0, width) and offset ≤ dy mod cell, dx mod cell < offset + hole; the region may
    overhang the image, whose pixels alone are evaluated (overhanging holes are clipped).
    """
    g = {k: to_device(v, device, torch.int64).view(-1, 1, 1) for k, v in geometry.items()}
    dy = torch.arange(h, device=device).view(1, h, 1) - g["top"]
    dx = torch.arange(w, device=device).view(1, 1, w) - g["left"]
    s, hs, off = g["cell"], g["hole"], g["offset"]
    in_grid = (dy >= 0) & (dy < g["height"]) & (dx >= 0) & (dx < g["width"])
    ry, rx = torch.remainder(dy, s), torch.remainder(dx, s)
    hole = (ry >= off) & (ry < off + hs) & (rx >= off) & (rx < off + hs)
    return (in_grid & hole).unsqueeze(1)


def draw_openmixup(rng: MixRNG, lam: np.ndarray, h: int, w: int) -> dict[str, np.ndarray]:
    """Host draw of one grid per λ as openmixup's ``rand_grid`` (n_holes (2, 6), hole aspect 1,
    cut_area_ratio (0.5, 1), cut_aspect_ratio (0.5, 2)), in its order of draws."""
    m = lam.shape[0]
    n = rng.np.integers(2, 7, m)
    area, aspect = rng.np.uniform(0.5, 1.0, m), rng.np.uniform(0.5, 2.0, m)
    cx, cy = rng.np.random(m), rng.np.random(m)
    return openmixup_geometry(lam, h, w, n, area, aspect, cx, cy)


def openmixup_geometry(lam: np.ndarray, h: int, w: int, n: np.ndarray, area: np.ndarray, aspect: np.ndarray,
                       cx: np.ndarray, cy: np.ndarray) -> dict[str, np.ndarray]:
    """The ``rand_grid`` grid of given draws, with its integer truncations.

    w_r = ⌊√(⌊HWr⌋ / a)⌋, h_r = ⌊w_r a⌋ (either may exceed the image), corner (⌊(H − h_r) c_y⌋,
    ⌊(W − w_r) c_x⌋) truncated towards 0 (negative when the region is larger), cell ⌈w_r / n⌉,
    hole clamp(⌊cell √(1 − λ)⌋, 1, cell − 1) at the cell's top-left corner. n is capped at
    w_r // 2, where the reference asserts instead.
    """
    cut_w = np.floor(np.sqrt(np.floor(h * w * area) / aspect)).astype(np.int64)
    cut_h = np.floor(cut_w * aspect).astype(np.int64)
    n = np.minimum(n, np.maximum(cut_w // 2, 1))
    cell = np.maximum(np.ceil(cut_w / n), 1).astype(np.int64)  # ≥ 1: no division by 0 on a 1-pixel image
    hole = np.clip(np.floor(cell * np.sqrt(1.0 - lam)), 1, cell - 1).astype(np.int64)
    return {"top": np.trunc((h - cut_h) * cy).astype(np.int64), "left": np.trunc((w - cut_w) * cx).astype(np.int64),
            "height": cut_h, "width": cut_w, "cell": cell, "hole": hole, "offset": np.zeros_like(cell)}


def draw_centred(rng: MixRNG, lam: np.ndarray, h: int, w: int) -> dict[str, np.ndarray]:
    """Host draw of one grid per λ, mixbench's earlier grid: whole cells inside the image, centred holes."""
    m = lam.shape[0]
    area, aspect = rng.np.uniform(0.5, 1.0, m), rng.np.uniform(0.5, 2.0, m)
    rw = np.clip(np.round(w * np.sqrt(area * aspect)), 2, w).astype(np.int64)
    rh = np.clip(np.round(h * np.sqrt(area / aspect)), 2, h).astype(np.int64)
    cols = rng.np.integers(2, 7, m)
    cell = np.maximum(rw // cols, 2)
    cols = np.minimum(cols, rw // cell)
    rows = np.maximum(rh // cell, 1)
    hole = np.clip(np.round(cell * np.sqrt(1.0 - lam)), 1, cell - 1).astype(np.int64)
    top = rng.np.integers(0, h - rows * cell + 1)
    left = rng.np.integers(0, w - cols * cell + 1)
    return {"top": top, "left": left, "height": rows * cell, "width": cols * cell, "cell": cell, "hole": hole,
            "offset": (cell - hole) // 2}


GRIDS = {"openmixup": draw_openmixup, "centred": draw_centred}


@MIXERS.register()
class GridMix(Mixer):
    """GridMix (holes variant): a grid of square holes filled from the paired image."""

    name = "gridmix"
    params = {
        "alpha": alpha_param(1.0),
        "grid": Param("str", "openmixup", "grid draw: 'openmixup' (its rand_grid: corner holes, truncated sides, "
                      "region may overhang the image) or 'centred' (mixbench's earlier grid: centred holes, rounded "
                      "sides, region inside the image)", choices=tuple(GRIDS)),
        "lam_mode": LAM_MODE,
        "pairing": PAIRING,
    }
    differs: ClassVar[str] = ("the openmixup 'holes' variant: one global mixed label; the paper's "
                              "per-cell local classification loss is not used; holes of a region overhanging the "
                              "top or left edge are clipped (openmixup's negative slice indices move them to the "
                              "opposite edge or drop them); cells per row capped at half the region's width "
                              "(openmixup asserts); the true H and W of non-square images (openmixup swaps them)")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n, _, h, w = x.shape
        lam = sample_lambda(rng, self.alpha, n, self.lam_mode)
        holes = grid_holes(GRIDS[self.grid](rng, lam[:1] if self.lam_mode == "batch" else lam, h, w),
                           h, w, x.device)
        index = draw_pairing(rng, n, x.device, self.pairing)
        return masked_mix(x, y, index, (~holes).float())
