"""ManifoldMix (Verma et al., ICML 2019).

Draw a stage k uniformly from ``layers`` (0 = input, s = after residual stage s) per batch and
λ ~ Beta(α, α); run the clean batch to stage k, mix h̃_k = λ h_k + (1 − λ) h_k[π], continue the
forward pass. BatchNorm statistics of the prefix are those of the clean batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixbench.errors import UserError
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
    stage_problems,
    to_device,
)
from mixbench.params import Param, RunFacts, show


@MIXERS.register()
class ManifoldMix(Mixer):
    """ManifoldMix: Mixup of hidden states at a backbone stage drawn per batch."""

    name = "manifoldmix"
    params = {
        "alpha": alpha_param(2.0),
        "layers": Param("int_list", [0, 1, 2], "stages to mix at: 0 = input, s = after residual stage s"),
        "lam_mode": LAM_MODE,
        "pairing": PAIRING,
    }
    needs_model = True

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        layers = values.get("layers", [])
        src = origin.get("layers", origin.get("name", "recipe"))
        if not layers or any(k < 0 for k in layers):
            return [f"{src}: {where}.layers: expected a non-empty list of stage numbers >= 0, got {show(layers)}"]
        if facts is not None and not facts.stage_hooks:  # bind() refuses a timm backbone whatever the layers
            return [f"{src}: {where}: manifoldmix mixes hidden states, and {facts.stages_text()} is a timm model, "
                    "which has no hidden-stage hooks; use a built-in backbone (mixbench list models)"]
        return stage_problems("layers", layers, where, origin, facts, what="mix")

    def bind(self, model: nn.Module, device: torch.device) -> None:
        backbone = model.backbone
        if not backbone.supports_stage_hook:
            raise UserError("[method] manifoldmix needs a backbone that can mix at a hidden stage; "
                            f"{type(backbone).__name__} cannot (timm models do not); use a built-in "
                            "backbone (mixbench list models)")
        too_deep = [k for k in self.layers if k > backbone.num_stages]
        if too_deep:
            raise UserError(f"[method].layers: {too_deep} exceed this backbone's "
                            f"{backbone.num_stages} stages; valid: 0..{backbone.num_stages}")
        self.model = model

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n = x.shape[0]
        lam = to_device(sample_lambda(rng, self.alpha, n, self.lam_mode), x.device)
        layer = int(self.layers[rng.np.integers(len(self.layers))])
        index = draw_pairing(rng, n, x.device, self.pairing)
        mixed = blend(x, index, lam) if layer == 0 else x
        return MixOutput(mixed, y, y[index], lam, index, layer=layer)
