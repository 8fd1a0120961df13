"""SAMix: AutoMix's two-pass training with the label-free SAMix Mixer and the η-balanced loss.

The Mixer scales features by λ (``z_i ← (1 + λ′) z_i``, ``z_j ← (2 − λ′) z_j``), reads query and
key from ``[z_i; z_j]`` and the value through a ConvNeck, and upsamples bilinearly. It is trained
on ``L_local + η·L_global`` (smoothness between the two mixed classes plus η times their
discrimination from all others; η = 1 is mixup CE) and ``max(|λ − mean S₀| − 0.1, 0) − 2·Var(S)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from mixbench.methods.automix import AUTOMIX_PARAMS, AutoMix
from mixbench.methods.base import METHODS
from mixbench.params import Param

SAMIX_DEFAULTS = {"lam_encoding": "mul", "lam_mul_k": 0.25, "value_net": "convneck", "qk": "concat",
                  "upsample": "bilinear", "mask_var_weight": 2.0, "eta": 0.5}


@METHODS.register("samix")
class SAMix(AutoMix):
    """SAMix: the label-free Mixer with λ scaling, mixing attention and the η-balanced loss."""

    params: ClassVar[dict[str, Param]] = {
        k: dataclasses.replace(p, default=SAMIX_DEFAULTS[k]) if k in SAMIX_DEFAULTS else p
        for k, p in AUTOMIX_PARAMS.items()}
    differs: ClassVar[str] = ("the Mixer is trained on L_local + η·L_global, where η acts (in the reference "
                              "it multiplies zeros; mixer_loss = 'neg_weight_ce' reproduces that)")
