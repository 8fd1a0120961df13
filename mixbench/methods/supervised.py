"""Supervised training with an optional sample mixer: one forward pass on the mixed batch.

L = λ·ℓ(f(x̃), y_a) + (1 − λ)·ℓ(f(x̃), y_b) with x̃ from the mixer; without a mixer, ℓ(f(x), y).
With ``prob`` < 1 a batch is mixed with probability ``prob`` and left clean otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from mixbench.methods.base import METHODS, Method, MethodContext
from mixbench.mixing.base import Mixer, MixOutput, MixRNG, forward_mixed, identity_mix
from mixbench.params import Param

PROB = Param("float", 1.0, "chance that a batch is mixed at all", low=0, high=1)


class Supervised(Method):
    """Plain supervised training; with ``mixer`` set, batches are mixed first."""

    mixer_cls: type[Mixer] | None = None

    def __init__(self, ctx: MethodContext, prob: float = 1.0, **params: Any):
        super().__init__(ctx)
        self.prob = prob
        self.mixer = self.mixer_cls(**params) if self.mixer_cls is not None else None
        if self.mixer is not None and self.mixer.needs_model:
            self.mixer.bind(ctx.model, ctx.device)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> MixOutput:
        """The mixer's output, or the clean batch (λ = 1) when the ``prob`` draw says no."""
        if self.prob < 1.0 and self.ctx.rng.np.random() >= self.prob:
            return identity_mix(x, y)
        return self.mixer(x, y, self.ctx.rng)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.mixer is None:
            return {"loss": self.ctx.loss(self.model(x), y)}
        mix = self.mix(x, y)
        logits = forward_mixed(self.model, mix)
        loss = self.ctx.loss(logits, mix.y_a, mix.y_b, mix.lam)
        if getattr(self.mixer, "clean_loss", False):  # a mixer may ask for CE on the clean batch too
            loss = loss + self.ctx.loss(self.model(x), y)
        return {"loss": loss}

    @property
    def mixes(self) -> bool:
        return self.mixer is not None

    def mix_preview(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput | None:
        if self.mixer is None:
            return None
        with torch.no_grad():
            return self.mixer(x, y, rng)

    def describe(self) -> dict[str, Any]:
        if self.mixer is None:
            return {}
        return {**self.mixer.describe(), "prob": self.prob}


def register_mixer(name: str, mixer_cls: type[Mixer]) -> None:
    """Register ``mixer_cls`` as the supervised method ``name`` (its doc's first line is the doc)."""
    method_cls = type(f"Supervised_{name}", (Supervised,), {"mixer_cls": mixer_cls})
    doc = (mixer_cls.__doc__ or name).strip().splitlines()[0]
    METHODS.register(name, doc=doc, params={**mixer_cls.params, "prob": PROB}, check=mixer_cls.check,
                     differs=mixer_cls.differs, mixer=mixer_cls)(method_cls)
