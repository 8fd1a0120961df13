"""Supervised training with an optional sample mixer: one forward pass on the mixed batch.

L = λ·ℓ(f(x̃), y_a) + (1 − λ)·ℓ(f(x̃), y_b) with x̃ from the mixer; without a mixer, ℓ(f(x), y).
With ``prob`` < 1 a batch is mixed with probability ``prob`` and left clean otherwise.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mixbench.methods.base import METHODS, Method, MethodContext
from mixbench.mixing import FILE_MIXERS, MIXERS
from mixbench.mixing.base import Mixer, MixOutput, MixRNG, forward_mixed, identity_mix
from mixbench.params import Param

PROB = Param("float", 1.0, "chance that a batch is mixed at all", low=0, high=1)


@METHODS.register("vanilla", doc="plain supervised training, no mixing")
class Supervised(Method):
    """Plain supervised training; with ``mixer_cls`` set, batches are mixed first."""

    mixer_cls: ClassVar[type[Mixer] | None] = None

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        self.prob = values.pop("prob", 1.0)
        self.mixer = self.mixer_cls(**values) if self.mixer_cls is not None else None
        if self.mixer is not None and self.mixer.needs_model:
            self.mixer.bind(self.model, ctx.device)
        if self.mixer is not None and "mean" in ctx.model_spec:  # PuzzleMix's seam cost reads de-normalised pixels
            for m in [self.mixer, *getattr(self.mixer, "children", [])]:  # a switch's children too
                if hasattr(m, "set_normalization"):
                    m.set_normalization(ctx.model_spec["mean"], ctx.model_spec["std"])

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> MixOutput:
        """The mixer's output, or the clean batch (λ = 1) when the ``prob`` draw says no."""
        if self.prob < 1.0 and self.ctx.rng.np.random() >= self.prob:
            return identity_mix(x, y)
        return self.mixer(x, y, self.ctx.rng)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        if self.mixer is None:
            return {"loss": self.ctx.loss(self.model(x), y)}
        mix = self.mix(x, y)
        logits = forward_mixed(self.model, mix)
        loss = self.ctx.loss(logits, mix.y_a, mix.y_b, mix.lam)
        if getattr(self.mixer, "clean_loss", False):  # a mixer may ask for CE on the clean batch too
            loss = loss + self.ctx.loss(self.model(x), y)
        return {"loss": loss}

    def mix_preview(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput | None:
        if self.mixer is None:
            return None
        with torch.no_grad():
            return self.mixer(x, y, rng)

    def describe(self) -> dict[str, Any]:
        if self.mixer is None:
            return {}
        return {**self.mixer.describe(), "prob": self.prob}


def supervised_method(name: str, mixer_cls: type[Mixer]) -> type[Supervised]:
    """The supervised method that trains on ``mixer_cls``'s mixes, registered as ``name``.

    Its ``[method]`` keys are the mixer's plus ``prob``; its doc and ``differs`` are the mixer's.
    """
    doc = (mixer_cls.__doc__ or name).strip().splitlines()[0]
    attrs = {"mixer_cls": mixer_cls, "mixes": True, "params": {**mixer_cls.params, "prob": PROB},
             "check": mixer_cls.check, "differs": mixer_cls.differs, "__doc__": doc}
    return METHODS.register(name, mixer=mixer_cls)(type(f"Supervised_{name}", (Supervised,), attrs))


for _entry in MIXERS:  # every mixer is a supervised method of the same name (patchmix has its own file)
    if _entry.name != "patchmix":
        supervised_method(_entry.name, _entry.factory)
for _name, _cls in FILE_MIXERS.items():  # samixp: a frozen pre-trained Mixer loaded from a file
    supervised_method(_name, _cls)
