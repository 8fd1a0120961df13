"""FMix (Harris et al., arXiv 2002.12047).

Sample a random complex spectrum on the rFFT grid with amplitude 1 / max(f, 1/max(H, W))^δ,
take the real inverse FFT as a smooth noise image, and keep the ⌈λHW⌉ or ⌊λHW⌋ (50/50) highest
pixels as the mask M of the first source: x̃ = M ⊙ x + (1 − M) ⊙ x[π], λ = mean(M).
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
    per_sample,
    sample_lambda,
    to_device,
)
from mixbench.params import Param


def fourier_noise(n: int, h: int, w: int, decay: float, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """[n, H, W] low-frequency noise: irfft2 of a complex Gaussian spectrum scaled by 1/f^δ."""
    fy = torch.fft.fftfreq(h, device=device).view(-1, 1)
    fx = torch.fft.rfftfreq(w, device=device).view(1, -1)
    freq = torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / max(h, w))
    scale = freq.pow(-decay)
    spec = torch.randn(n, 2, *freq.shape, device=device, generator=generator) * scale
    return torch.fft.irfft2(torch.complex(spec[:, 0], spec[:, 1]), s=(h, w))


def top_k_mask(score: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per row of ``score`` [N, P], 1.0 at its ``k[n]`` highest entries, 0 elsewhere."""
    order = score.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(score.shape[1], device=score.device)
                                             .expand_as(order).contiguous())
    return (ranks < k.view(-1, 1)).float()


@MIXERS.register()
class FMix(Mixer):
    """FMix: binarised low-frequency Fourier noise as the mask; λ = kept area."""

    name = "fmix"
    params = {
        "alpha": alpha_param(1.0),
        "decay_power": Param("float", 3.0, "decay power δ of the spectrum's amplitude", low=0, low_open=True),
        "lam_mode": LAM_MODE,
        "pairing": PAIRING,
    }
    differs: ClassVar[str] = "no soft mask edges (the reference's max_soft = 0 default)"

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n, _, h, w = x.shape
        lam = sample_lambda(rng, self.alpha, n, self.lam_mode)
        up = rng.np.random(n) < 0.5
        kept = per_sample(np.where(up, np.ceil(lam * h * w), np.floor(lam * h * w)), n, self.lam_mode)
        masks = 1 if self.lam_mode == "batch" else n
        noise = fourier_noise(masks, h, w, self.decay_power, rng.torch, x.device).flatten(1)
        mask = top_k_mask(noise, to_device(kept[:masks], x.device, torch.int64)).view(masks, 1, h, w)
        index = draw_pairing(rng, n, x.device, self.pairing)
        return masked_mix(x, y, index, mask)
