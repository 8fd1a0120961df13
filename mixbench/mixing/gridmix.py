"""GridMix, the "holes" variant of openmixup / the community GridMixup (Baek et al., PR 2021).

λ ~ Beta(α, α). A region of area ratio ~U(0.5, 1) and aspect ~U(0.5, 2) is tiled with n ~ U{2..6}
square cells per row of side s; a centred hole of side clamp(round(s √(1 − λ)), 1, s − 1) in each
cell is filled from x[π]. λ = 1 − holes' area / image area (the realised area).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from mixbench.mixing.base import (
    LAM_MODE,
    MIXERS,
    Mixer,
    MixOutput,
    MixRNG,
    alpha_param,
    masked_mix,
    sample_lambda,
    to_device,
)


def grid_holes(geometry: dict[str, np.ndarray], h: int, w: int, device: torch.device) -> torch.Tensor:
    """[M, 1, H, W] bool, True on the holes described by per-mask arrays of ``geometry``."""
    g = {k: to_device(v, device, torch.int64).view(-1, 1, 1) for k, v in geometry.items()}
    dy = torch.arange(h, device=device).view(1, h, 1) - g["top"]
    dx = torch.arange(w, device=device).view(1, 1, w) - g["left"]
    s, hs, off = g["cell"], g["hole"], g["offset"]
    in_grid = (dy >= 0) & (dy < g["rows"] * s) & (dx >= 0) & (dx < g["cols"] * s)
    ry, rx = torch.remainder(dy, s), torch.remainder(dx, s)
    hole = (ry >= off) & (ry < off + hs) & (rx >= off) & (rx < off + hs)
    return (in_grid & hole).unsqueeze(1)


def draw_geometry(rng: MixRNG, lam: np.ndarray, h: int, w: int) -> dict[str, np.ndarray]:
    """Host draw of one grid per λ: region, cells per row, cell and hole sides."""
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
    return {"top": top, "left": left, "rows": rows, "cols": cols, "cell": cell, "hole": hole,
            "offset": (cell - hole) // 2}


@MIXERS.register()
class GridMix(Mixer):
    """GridMix (holes variant): a grid of square holes filled from the paired image."""

    name = "gridmix"
    params = {"alpha": alpha_param(1.0), "lam_mode": LAM_MODE}
    differs: ClassVar[str] = ("the openmixup 'holes' variant: one global mixed label; the paper's "
                              "per-cell local classification loss is not used")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n, _, h, w = x.shape
        lam = sample_lambda(rng, self.alpha, n, self.lam_mode)
        holes = grid_holes(draw_geometry(rng, lam[:1] if self.lam_mode == "batch" else lam, h, w),
                           h, w, x.device)
        index = rng.permutation(n, x.device)
        return masked_mix(x, y, index, (~holes).float())
