"""A momentum teacher: an exponential moving average of a module, on a schedule.

θ_t ← m θ_t + (1 − m) θ after each optimiser step, with m = ``momentum_at(step)``: constant
``start`` for the first ``warmup`` fraction of training, then the cosine
m = end − (end − start)(cos(π t/T) + 1)/2. Buffers (BatchNorm statistics) are copied from the
source, or kept as the teacher's own. Used by ``[train].ema``, AutoMix/SAMix's momentum encoder,
FixMatch's teacher, and the self-supervised methods' target networks.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_at(step: int, total: int, start: float, end: float, warmup: float) -> float:
    """m = start for the first ``warmup`` fraction of ``total`` steps, then end − (end − start)(cos(πt/T) + 1)/2."""
    if total <= 0 or step < warmup * total:
        return start
    return end - (end - start) * (math.cos(math.pi * min(step, total) / total) + 1) / 2


class MomentumTeacher(nn.Module):
    """An EMA copy of ``source`` (no gradients) whose momentum follows :func:`momentum_at`.

    ``train_mode`` fixes the copy's mode whatever the owner's ``train()``/``eval()`` says: False for
    a teacher read in eval mode (FixMatch, ``[train].ema``), True for AutoMix's momentum encoder,
    whose BatchNorm runs on its own batches. The update is fused foreach ops with no host sync.
    """

    def __init__(self, source: nn.Module, start: float, end: float | None = None, warmup: float = 0.0,
                 total_steps: int = 0, copy_buffers: bool = True, train_mode: bool = False):
        super().__init__()
        self.start, self.end = start, start if end is None else end
        self.warmup, self.total_steps = warmup, total_steps
        self.copy_buffers, self.train_mode = copy_buffers, train_mode
        self.module = copy.deepcopy(source)
        self.module.requires_grad_(False)
        self.module.train(train_mode)

    def train(self, mode: bool = True) -> MomentumTeacher:
        """The copy keeps its own mode (see the class docstring)."""
        self.training = mode
        self.module.train(self.train_mode)
        return self

    def momentum(self, step: int) -> float:
        return momentum_at(step, self.total_steps, self.start, self.end, self.warmup)

    @torch.no_grad()
    def update(self, source: nn.Module, step: int) -> None:
        """θ_t ← m θ_t + (1 − m) θ with m = ``momentum(step)``; buffers copied when ``copy_buffers``."""
        ema_p = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        src_p = [p for p in source.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - self.momentum(step))
        if self.copy_buffers:
            for b_ema, b in zip(self.module.buffers(), source.buffers(), strict=True):
                b_ema.copy_(b)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
