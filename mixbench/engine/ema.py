"""Exponential moving average of model weights: θ_ema ← d·θ_ema + (1 − d)·θ, buffers copied.

Used by ``[train].ema``, FixMatch's teacher and (without the buffer copy, so its BatchNorm keeps
its own statistics) AutoMix's momentum encoder; ``decay`` may change between updates.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An EMA copy of ``model`` updated with fused foreach ops (no host sync)."""

    def __init__(self, model: nn.Module, decay: float, copy_buffers: bool = True):
        self.decay = decay
        self.copy_buffers = copy_buffers
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        src_p = [p for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - self.decay)
        if self.copy_buffers:
            for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
                b_ema.copy_(b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
