"""CutMix (Yun et al., ICCV 2019).

λ ~ Beta(α, α); a box of side ratio √(1 − λ) centred uniformly, clipped to the image, is pasted
from x[π] into x; the label weight is corrected to the realised λ = 1 − box area / image area.
One λ per batch means one box: its pixels are copied (timm's form), not blended through a mask.
"""

from __future__ import annotations

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
    sample_lambda,
    to_device,
)


def rand_boxes(rng: MixRNG, lam: np.ndarray, h: int, w: int) -> tuple[np.ndarray, ...]:
    """Boxes (y0, y1, x0, x1) of side ratio √(1−λ), centre uniform, clipped (timm's convention)."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = (h * ratio).astype(np.int64), (w * ratio).astype(np.int64)
    cy = rng.np.integers(0, h, size=lam.shape[0])
    cx = rng.np.integers(0, w, size=lam.shape[0])
    y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
    x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
    return y0, y1, x0, x1


def inside_box(y0: torch.Tensor, y1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor,
               h: int, w: int) -> torch.Tensor:
    """[N, 1, H, W] bool, True inside each sample's box [y0, y1) × [x0, x1) (device tensors [N])."""
    device = y0.device
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    inside = ((ys >= y0.view(-1, 1, 1)) & (ys < y1.view(-1, 1, 1))
              & (xs >= x0.view(-1, 1, 1)) & (xs < x1.view(-1, 1, 1)))
    return inside.unsqueeze(1)


def box_mask(boxes: tuple[np.ndarray, ...], h: int, w: int, device: torch.device) -> torch.Tensor:
    """[N, 1, H, W] float mask of host boxes: 1 outside the box (the first source stays), 0 inside."""
    y0, y1, x0, x1 = (to_device(b, device, torch.int64) for b in boxes)
    return (~inside_box(y0, y1, x0, x1, h, w)).float()


@MIXERS.register()
class CutMix(Mixer):
    """CutMix: paste a random box from the paired image; λ = realised area of the first image."""

    name = "cutmix"
    params = {"alpha": alpha_param(1.0), "lam_mode": LAM_MODE, "pairing": PAIRING}

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n, _, h, w = x.shape
        lam = sample_lambda(rng, self.alpha, n, self.lam_mode)
        boxes = rand_boxes(rng, lam[:1] if self.lam_mode == "batch" else lam, h, w)
        index = draw_pairing(rng, n, x.device, self.pairing)
        if self.lam_mode == "batch":  # one box: copy its pixels (same x̃, λ and M as the mask blend)
            return box_paste(x, y, index, tuple(int(b[0]) for b in boxes))
        return masked_mix(x, y, index, box_mask(boxes, h, w, x.device))
