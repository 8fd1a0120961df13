"""Mixup (Zhang et al., ICLR 2018).

λ ~ Beta(α, α); x̃ = λ x + (1 − λ) x[π]; the label weight of y is λ.
"""

from __future__ import annotations

import torch

from mixbench.mixing.base import (
    LAM_MODE,
    MIXERS,
    PAIRING,
    Mixer,
    MixOutput,
    MixRNG,
    alpha_param,
    blend,
    draw_pairing,
    sample_lambda,
    to_device,
)


@MIXERS.register()
class Mixup(Mixer):
    """Mixup: convex combination of image pairs, λ ~ Beta(α, α)."""

    name = "mixup"
    params = {"alpha": alpha_param(1.0), "lam_mode": LAM_MODE, "pairing": PAIRING}

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n = x.shape[0]
        lam = to_device(sample_lambda(rng, self.alpha, n, self.lam_mode), x.device)
        index = draw_pairing(rng, n, x.device, self.pairing)
        return MixOutput(blend(x, index, lam), y, y[index], lam, index)
