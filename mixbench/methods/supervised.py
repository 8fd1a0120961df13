"""Supervised training with an optional sample mixer: one forward pass on the mixed batch.

L = λ·ℓ(f(x̃), y_a) + (1 − λ)·ℓ(f(x̃), y_b) with x̃ from the mixer; without a mixer, ℓ(f(x), y).
"""

from __future__ import annotations

from typing import Any

import torch

from mixbench.methods.base import METHODS, Method, MethodContext
from mixbench.mixing.base import Mixer


class Supervised(Method):
    """Plain supervised training; with ``mixer`` set, every batch is mixed first."""

    mixer_cls: type[Mixer] | None = None

    def __init__(self, ctx: MethodContext, **params: Any):
        super().__init__(ctx)
        self.mixer = self.mixer_cls(**params) if self.mixer_cls is not None else None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.mixer is None:
            return {"loss": self.ctx.loss(self.model(x), y)}
        mix = self.mixer(x, y, self.ctx.rng)
        logits = self.model(mix.x)
        return {"loss": self.ctx.loss(logits, mix.y_a, mix.y_b, mix.lam)}

    def describe(self) -> dict[str, Any]:
        return self.mixer.describe() if self.mixer is not None else {}


def register_mixer(name: str, mixer_cls: type[Mixer]) -> None:
    """Register ``mixer_cls`` as the supervised method ``name`` (its doc's first line is the doc)."""
    method_cls = type(f"Supervised_{name}", (Supervised,), {"mixer_cls": mixer_cls})
    doc = (mixer_cls.__doc__ or name).strip().splitlines()[0]
    METHODS.register(name, doc=doc, params=dict(mixer_cls.params))(method_cls)
