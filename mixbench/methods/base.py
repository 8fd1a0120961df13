"""What every method provides to the engine.

A method owns one training step, ``step(x, y) -> {"loss": ..., other named terms}``, and says
which parameters it trains; the engine owns the loop, optimiser, schedule, precision,
logging, checkpoints and evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mixbench.mixing.base import MixRNG
from mixbench.registry import Registry

METHODS = Registry("method")


@dataclass
class MethodContext:
    """What a method may need to know about the run it belongs to."""

    model: nn.Module  # the Classifier being trained
    loss: Callable[..., torch.Tensor]  # (logits, y_a, y_b=None, lam=None) -> scalar
    num_classes: int
    device: torch.device
    rng: MixRNG
    epochs: int
    steps_per_epoch: int


class Method:
    """Base class: subclasses implement ``step``; override the rest only when needed."""

    def __init__(self, ctx: MethodContext):
        self.ctx = ctx
        self.model = ctx.model

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # abstract: every registered method overrides it

    def trainable(self) -> list[nn.Module]:
        """Modules whose parameters the engine's optimiser updates."""
        return [self.model]

    def extra_modules(self) -> dict[str, nn.Module]:
        """Modules besides the model that belong in the checkpoint (e.g. a learned mixer)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the run's summary (e.g. the mixer's hyperparameters)."""
        return {}
