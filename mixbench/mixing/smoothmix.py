"""SmoothMix (Lee et al., CVPRW 2020).

A Gaussian G(p) = exp(−‖p − c‖² / 2σ²) with a uniform centre c and σ ~ U(σ_min, σ_max)·H gives
the weight of the second image: x̃ = (1 − G) ⊙ x + G ⊙ x[π]. The mask of the first source is
M = 1 − G and its label weight λ = mean(M) (openmixup returns mean(G), inverted). No α: λ is
never sampled.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from mixbench.mixing.base import (
    LAM_MODE,
    MIXERS,
    PAIRING,
    Mixer,
    MixOutput,
    MixRNG,
    draw_pairing,
    masked_mix,
    to_device,
)
from mixbench.params import Param, RunFacts


def gaussian_masks(cy: torch.Tensor, cx: torch.Tensor, sigma: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[N, 1, H, W] unnormalised Gaussians with peak 1 at (cy, cx) and width ``sigma`` (pixels)."""
    ys = torch.arange(h, device=cy.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=cy.device, dtype=torch.float32).view(1, 1, w)
    d2 = (ys - cy.view(-1, 1, 1)) ** 2 + (xs - cx.view(-1, 1, 1)) ** 2
    return torch.exp(-d2 / (2 * sigma.view(-1, 1, 1) ** 2)).unsqueeze(1)


@MIXERS.register()
class SmoothMix(Mixer):
    """SmoothMix: a soft Gaussian blob of the paired image; λ = 1 − mean(blob)."""

    name = "smoothmix"
    params = {
        "sigma_min": Param("float", 0.25, "smallest σ as a fraction of the image height", low=0, low_open=True),
        "sigma_max": Param("float", 0.5, "largest σ as a fraction of the image height", low=0, low_open=True),
        "lam_mode": LAM_MODE,
        "pairing": PAIRING,
    }
    differs: ClassVar[str] = "label weight of the first image is 1 − mean(G) (openmixup inverts it)"

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        if values.get("sigma_min", 0) > values.get("sigma_max", np.inf):
            return [f"{origin.get('sigma_min', 'recipe')}: {where}.sigma_min must not exceed {where}.sigma_max "
                    f"({values.get('sigma_max')})"]
        return []

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n, _, h, w = x.shape
        m = 1 if self.lam_mode == "batch" else n
        cy, cx = rng.np.uniform(0, h, m), rng.np.uniform(0, w, m)
        sigma = rng.np.uniform(self.sigma_min, self.sigma_max, m) * h
        g = gaussian_masks(*(to_device(v, x.device) for v in (cy, cx, sigma)), h, w)
        index = draw_pairing(rng, n, x.device, self.pairing)
        return masked_mix(x, y, index, 1.0 - g)
