"""What every method provides to the engine.

A method owns one training step, ``step(*batch) -> {"loss": ..., other named terms}``, and says
which parameters it trains; the engine owns the loop, optimiser, schedule, precision,
logging, checkpoints and evaluation. Optional hooks let a method keep its own modules (a learned
Mixer, a momentum encoder), update them after each optimiser step, have extra models evaluated
(reported as ``<name>_top1``), write files beside the checkpoint, and show its mixes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from mixbench.mixing.base import MixOutput, MixRNG
from mixbench.params import Param
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
    model_spec: dict[str, Any] = field(default_factory=dict)  # how to rebuild the backbone (name, width, ...)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class Method:
    """Base class: subclasses implement ``step``; override the rest only when needed."""

    def __init__(self, ctx: MethodContext, **values: Any):
        self.ctx = ctx
        self.model = ctx.model
        unknown = set(values) - set(self.params)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown parameters {sorted(unknown)}")
        for key, param in self.params.items():  # each declared [method] key becomes an attribute
            setattr(self, key, values.get(key, param.default))

    scenario: ClassVar[str] = "supervised"  # which loader feeds ``step``: supervised (x, y) or semisup (SemiBatch)
    params: ClassVar[dict[str, Param]] = {}  # the [method] keys besides name
    differs: ClassVar[str] = ""  # one sentence: how it differs from the reference implementation

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str]) -> list[str]:
        """Problems that involve more than one parameter (each a sentence naming the key)."""
        return []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # abstract: every registered method overrides it

    def trainable(self) -> list[nn.Module]:
        """Modules whose parameters the engine's optimiser updates.

        A module may carry ``group_lr`` / ``group_min_lr`` attributes: its parameter group then
        follows the same schedule shape between those values instead of ``[train].lr/min_lr``.
        """
        return [self.model]

    def begin(self, step: int) -> None:
        """Called once before training starts or resumes, with the global step it starts from."""

    def after_step(self, step: int) -> None:
        """Called after every optimiser step with the new global step (momentum updates)."""

    def eval_model(self) -> nn.Module:
        """The model whose accuracy is the run's ``top1`` (the trained model; FixMatch: its EMA teacher)."""
        return self.model

    def eval_models(self) -> dict[str, nn.Module]:
        """Extra models to evaluate each time the model is, reported as ``<name>_top1``/``_top5``."""
        return {}

    @property
    def mixes(self) -> bool:
        """Whether this method trains on mixed batches (then ``mix_preview`` returns them)."""
        return False

    def mix_preview(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput | None:
        """The mixed batch this method trains on, without gradients (cost probe, saved grids);
        ``None`` for a method that does not mix."""
        return None

    def export(self) -> dict[str, Any]:
        """Files to write beside the checkpoint: ``{file name: object for torch.save}``."""
        return {}

    def extra_modules(self) -> dict[str, nn.Module]:
        """Modules besides the model that belong in the checkpoint (e.g. a learned mixer)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the run's summary (by default every declared parameter)."""
        return {k: getattr(self, k) for k in self.params}
