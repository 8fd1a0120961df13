"""Exponential moving average of model weights: θ_ema ← d·θ_ema + (1 − d)·θ, buffers copied."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An EMA copy of ``model`` updated with fused foreach ops (no host sync)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        src_p = [p for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
