"""ResizeMix (Qin et al., arXiv 2012.11101).

Scale τ ~ Beta(α, α), redrawn from U(τ_min, τ_max) when outside that range (openmixup's
``use_alpha``); a box of side τ·(H, W) with a uniform centre, clipped, receives the whole x[π]
resized (nearest) to the box. λ = 1 − box area / image area. One box for the batch (``lam_mode =
"batch"``) is pasted by a copy of the box's pixels instead of a mask blend (same x̃, λ and mask).
"""

from __future__ import annotations

from typing import Any

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
    box_paste,
    draw_pairing,
    masked_mix,
    per_sample,
    to_device,
)
from mixbench.mixing.cutmix import inside_box
from mixbench.params import Param, RunFacts


def paste_resized(source: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, x0: torch.Tensor,
                  x1: torch.Tensor) -> torch.Tensor:
    """``source`` [N, C, H, W] resized (nearest) into each sample's box; outside the box: anything.

    Built as one gather: output pixel (r, c) inside box n reads source pixel
    (⌊(r − y0)·H / (y1 − y0)⌋, ⌊(c − x0)·W / (x1 − x0)⌋).
    """
    n, c, h, w = source.shape
    rows = torch.arange(h, device=source.device).view(1, h)
    cols = torch.arange(w, device=source.device).view(1, w)
    bh, bw = (y1 - y0).clamp_min(1).view(-1, 1), (x1 - x0).clamp_min(1).view(-1, 1)
    src_r = ((rows - y0.view(-1, 1)) * h).div(bh, rounding_mode="floor").clamp(0, h - 1)
    src_c = ((cols - x0.view(-1, 1)) * w).div(bw, rounding_mode="floor").clamp(0, w - 1)
    flat = (src_r.view(n, h, 1) * w + src_c.view(n, 1, w)).view(n, 1, h * w).expand(n, c, h * w)
    return source.flatten(2).gather(2, flat).view(n, c, h, w)


def resized_patch(x: torch.Tensor, index: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """[N, C, bh, bw]: x[index] resized (nearest) to a bh × bw box, the pixels :func:`paste_resized` reads:
    box pixel (r, c) ← source pixel (⌊r·H / bh⌋, ⌊c·W / bw⌋)."""
    h, w = x.shape[-2:]
    rows = torch.arange(bh, device=x.device) * h // bh
    cols = torch.arange(bw, device=x.device) * w // bw
    return x.index_select(2, rows).index_select(3, cols)[index]


@MIXERS.register()
class ResizeMix(Mixer):
    """ResizeMix: paste the whole paired image, shrunk to a random box; λ = kept area."""

    name = "resizemix"
    params = {
        "alpha": alpha_param(1.0),
        "scale_min": Param("float", 0.1, "smallest box side as a fraction of the image", low=0, high=1, low_open=True),
        "scale_max": Param("float", 0.8, "largest box side as a fraction of the image", low=0, high=1, low_open=True),
        "lam_mode": LAM_MODE,
        "pairing": PAIRING,
    }

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        if values.get("scale_min", 0) > values.get("scale_max", 1):
            return [f"{origin.get('scale_min', 'recipe')}: {where}.scale_min must not exceed {where}.scale_max "
                    f"({values.get('scale_max')})"]
        return []

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n, _, h, w = x.shape
        m = 1 if self.lam_mode == "batch" else n
        tau = rng.np.beta(self.alpha, self.alpha, m)
        outside = (tau < self.scale_min) | (tau > self.scale_max)
        tau = np.where(outside, rng.np.uniform(self.scale_min, self.scale_max, m), tau)
        bh, bw = (h * tau).astype(np.int64), (w * tau).astype(np.int64)
        cy, cx = rng.np.integers(0, h, m), rng.np.integers(0, w, m)
        box = (np.clip(cy - bh // 2, 0, h), np.clip(cy + bh // 2, 0, h),
               np.clip(cx - bw // 2, 0, w), np.clip(cx + bw // 2, 0, w))
        index = draw_pairing(rng, n, x.device, self.pairing)
        if self.lam_mode == "batch":  # one box: copy the resized pixels into it
            b = tuple(int(v[0]) for v in box)
            patch = resized_patch(x, index, b[1] - b[0], b[3] - b[2]) if b[1] > b[0] and b[3] > b[2] else None
            return box_paste(x, y, index, b, patch)
        y0, y1, x0, x1 = (to_device(per_sample(b, n, self.lam_mode), x.device, torch.int64) for b in box)
        pasted = paste_resized(x[index], y0, y1, x0, x1)
        return masked_mix(x, y, index, (~inside_box(y0, y1, x0, x1, h, w)).float(), source_b=pasted)
