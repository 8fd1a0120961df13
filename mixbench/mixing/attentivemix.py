"""AttentiveMix (Walawalkar et al., ICASSP 2020), openmixup's "AttentiveMix+" form.

λ ~ Beta(α, α). The channel-mean activation of a network's final feature map, pooled to a
G×G grid, ranks the cells of x; its top k = ⌊G² λ⌋ cells stay (M = 1) and the rest come from
x[π]: x̃ = M ⊙ x + (1 − M) ⊙ x[π], λ = mean(M).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

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
    side_problem,
    to_device,
)
from mixbench.mixing.features import FEATURES_FROM, activation_map, resolve_source
from mixbench.mixing.fmix import top_k_mask
from mixbench.params import Param, RunFacts


@MIXERS.register()
class AttentiveMix(Mixer):
    """AttentiveMix: keep the most activated grid cells of each image, fill the rest from its pair."""

    name = "attentivemix"
    params = {
        "alpha": alpha_param(2.0),
        "grid": Param("int", 4, "cells per side of the attention grid (the reference: 7 at 224 px)", low=1),
        "features_from": FEATURES_FROM,
        "lam_mode": LAM_MODE,
        "pairing": PAIRING,
    }
    needs_model = True
    differs: ClassVar[str] = ("features from the model being trained (or a run named by features_from) "
                              "at the input resolution, not a frozen ImageNet ResNet on 224 px images")

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        """``grid`` at most the image side (a cell is at least one pixel; the mask costs N·grid² either way)."""
        return side_problem("grid", values["grid"], where, origin, facts, "a cell must hold at least one pixel")

    def bind(self, model: nn.Module, device: torch.device) -> None:
        self.source = resolve_source(self.features_from, model, device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n, _, h, w = x.shape
        lam = sample_lambda(rng, self.alpha, n, self.lam_mode)
        k = to_device((self.grid * self.grid * lam).astype("int64"), x.device, torch.int64)
        act = F.adaptive_avg_pool2d(activation_map(self.source, x).unsqueeze(1), self.grid).flatten(1)
        cells = top_k_mask(act, k).view(n, 1, self.grid, self.grid)
        index = draw_pairing(rng, n, x.device, self.pairing)
        return masked_mix(x, y, index, F.interpolate(cells, size=(h, w), mode="nearest"))
