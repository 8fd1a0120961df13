"""Mixup (Zhang et al., ICLR 2018).

λ ~ Beta(α, α); x̃ = λ x + (1 − λ) x[π]; the label weight of y is λ.
"""

from __future__ import annotations

import torch

from mixbench.mixing.base import LAM_MODE, Mixer, MixOutput, MixRNG, sample_lambda
from mixbench.params import Param


class Mixup(Mixer):
    """Mixup: convex combination of image pairs, λ ~ Beta(α, α)."""

    name = "mixup"
    params = {
        "alpha": Param("float", 1.0, "Beta(alpha, alpha) concentration", low=0, low_open=True),
        "lam_mode": LAM_MODE,
    }

    def __init__(self, alpha: float = 1.0, lam_mode: str = "batch"):
        self.alpha, self.lam_mode = alpha, lam_mode

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n = x.shape[0]
        lam_np = sample_lambda(rng, self.alpha, n, self.lam_mode)
        index = rng.permutation(n, x.device)
        if self.lam_mode == "batch":
            lam_f = float(lam_np[0])
            mixed = x.mul(lam_f).add_(x[index], alpha=1.0 - lam_f)
            lam = torch.full((n,), lam_f, device=x.device)
        else:
            lam = torch.from_numpy(lam_np).float().to(x.device, non_blocking=True)
            w = lam.view(-1, 1, 1, 1).to(x.dtype)
            mixed = torch.lerp(x[index], x, w)
        return MixOutput(mixed, y, y[index], lam, index)
