"""CutMix (Yun et al., ICCV 2019).

λ ~ Beta(α, α); a box of side ratio √(1 − λ) centred uniformly, clipped to the image, is pasted
from x[π] into x; the label weight is corrected to the realised λ = 1 − box area / image area.
"""

from __future__ import annotations

import numpy as np
import torch

from mixbench.mixing.base import LAM_MODE, Mixer, MixOutput, MixRNG, sample_lambda
from mixbench.params import Param


def rand_boxes(rng: MixRNG, lam: np.ndarray, h: int, w: int) -> tuple[np.ndarray, ...]:
    """Boxes (y0, y1, x0, x1) of side ratio √(1−λ), centre uniform, clipped (timm's convention)."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = (h * ratio).astype(np.int64), (w * ratio).astype(np.int64)
    cy = rng.np.integers(0, h, size=lam.shape[0])
    cx = rng.np.integers(0, w, size=lam.shape[0])
    y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
    x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
    return y0, y1, x0, x1


def box_mask(boxes: tuple[np.ndarray, ...], h: int, w: int, device: torch.device) -> torch.Tensor:
    """[N, 1, H, W] bool mask, True outside each sample's box (where the first source stays)."""
    y0, y1, x0, x1 = (torch.from_numpy(b).to(device, non_blocking=True) for b in boxes)
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    inside = ((ys >= y0.view(-1, 1, 1)) & (ys < y1.view(-1, 1, 1))
              & (xs >= x0.view(-1, 1, 1)) & (xs < x1.view(-1, 1, 1)))
    return (~inside).unsqueeze(1)


class CutMix(Mixer):
    """CutMix: paste a random box from the paired image; λ = realised area of the first image."""

    name = "cutmix"
    params = {
        "alpha": Param("float", 1.0, "Beta(alpha, alpha) concentration", low=0, low_open=True),
        "lam_mode": LAM_MODE,
    }

    def __init__(self, alpha: float = 1.0, lam_mode: str = "batch"):
        self.alpha, self.lam_mode = alpha, lam_mode

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n, _, h, w = x.shape
        lam_np = sample_lambda(rng, self.alpha, n, self.lam_mode)
        if self.lam_mode == "batch":
            boxes = rand_boxes(rng, lam_np[:1], h, w)
            boxes = tuple(np.repeat(b, n) for b in boxes)
        else:
            boxes = rand_boxes(rng, lam_np, h, w)
        index = rng.permutation(n, x.device)
        y0, y1, x0, x1 = boxes
        realised = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        lam = torch.from_numpy(realised).float().to(x.device, non_blocking=True)
        if self.lam_mode == "batch":
            a, b, c, d = int(y0[0]), int(y1[0]), int(x0[0]), int(x1[0])
            mixed = x.clone()
            mixed[:, :, a:b, c:d] = x[index, :, a:b, c:d]
            keep = torch.ones(1, 1, h, w, dtype=torch.bool, device=x.device)
            keep[:, :, a:b, c:d] = False
            mask = keep.expand(n, 1, h, w)
        else:
            mask = box_mask(boxes, h, w, x.device)
            mixed = torch.where(mask, x, x[index])
        return MixOutput(mixed, y, y[index], lam, index, mask.to(x.dtype))
