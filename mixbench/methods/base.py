"""What every method provides to the engine.

A method is an ``nn.Module`` that owns every module it trains or keeps (the classifier, extra
heads, a learned Mixer, a momentum encoder, a teacher), so that ``state_dict()`` is the whole
trained state and DistributedDataParallel, wrapping the method, averages every gradient. Its
``forward(batch)`` is one training step's loss, ``{"loss": ..., other 0-d terms}``, on the batch it
declares (``batch``: labelled; labelled + unlabelled; N views). The engine owns the loop,
optimiser, schedule, precision, DDP, logging, checkpoints and evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from mixbench.data.batches import BatchSpec, LabelledBatch
from mixbench.mixing.base import MixOutput, MixRNG
from mixbench.params import Param, RunFacts
from mixbench.registry import Registry

METHODS = Registry("method")


@dataclass
class MethodContext:
    """What a method may need to know about the run it belongs to."""

    model: nn.Module  # the Classifier to train (backbone + linear head); the method owns it
    loss: Callable[..., torch.Tensor]  # (logits, y_a, y_b=None, lam=None, weight=None) -> scalar
    num_classes: int
    device: torch.device
    rng: MixRNG
    epochs: int
    steps_per_epoch: int
    model_spec: dict[str, Any] = field(default_factory=dict)  # how to rebuild the backbone (name, width, ...)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class ParamGroup:
    """Parameters the optimiser updates, with their own settings (``None``: the ``[train]`` value).

    ``lr`` / ``min_lr``: this group's peak and final learning rate on the shared schedule;
    ``fixed_lr``: a constant learning rate outside the schedule; ``weight_decay``: its own decay.
    """

    name: str
    module: nn.Module
    lr: float | None = None
    min_lr: float | None = None
    weight_decay: float | None = None
    fixed_lr: float | None = None


class Method(nn.Module):
    """Base class: subclasses implement ``forward``; override the rest only when needed."""

    params: ClassVar[dict[str, Param]] = {}  # the [method] keys besides name
    differs: ClassVar[str] = ""  # one sentence: how it differs from the reference implementation
    batch: ClassVar[BatchSpec] = LabelledBatch()  # what the loader feeds ``forward``
    mixes: ClassVar[bool] = False  # trains on mixed batches: ``mix_preview`` returns them
    may_skip_params: ClassVar[bool] = False  # some steps leave a trained module unused (DDP must look for them)

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__()
        self.ctx = ctx
        self.model = ctx.model
        self.global_step = 0  # optimiser steps taken before the current one; the engine sets it
        unknown = set(values) - set(self.params)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown parameters {sorted(unknown)}")
        for key, param in self.params.items():  # each declared [method] key becomes an attribute
            setattr(self, key, values.get(key, param.default))

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        """Problems that involve more than one parameter, or the run's model and images (``facts``,
        when known): each a sentence naming the file, the key and what is valid."""
        return []

    @classmethod
    def batch_spec(cls, values: dict[str, Any]) -> BatchSpec:
        """The batch this method's ``forward`` consumes, given its ``[method]`` values (by default ``batch``)."""
        return cls.batch

    def param_groups(self) -> list[ParamGroup]:
        """What the optimiser trains, one named group per module (by default the classifier)."""
        return [ParamGroup("model", self.model)]

    def on_step_end(self, step: int) -> None:
        """After every optimiser step, with the new global step (momentum updates)."""

    def encoder(self) -> nn.Module:
        """The backbone that representation evaluation (linear probe, kNN, transfer) uses."""
        return self.model.backbone

    def classifiers(self) -> dict[str, nn.Module]:
        """Image classifiers whose accuracy is reported: the first is the run's ``top1``, the
        others ``<name>_top1`` (e.g. FixMatch's teacher first, then ``student``)."""
        return {"": self.model}

    def reported_classifier(self) -> nn.Module:
        """The classifier whose accuracy is the run's ``top1``: the first of :meth:`classifiers`."""
        return next(iter(self.classifiers().values()))

    def monitor(self, epoch: int, last: bool, data: Any) -> dict[str, float]:
        """Extra metrics at an evaluation after ``epoch`` (``last``: the run's final one), e.g. a kNN monitor;
        ``data``: :class:`~mixbench.evaluate.features.EvalData` of this process's unaugmented images."""
        return {}

    def mix_preview(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput | None:
        """The mixed batch this method trains on, without gradients (cost probe, saved grids);
        ``None`` for a method that does not mix."""
        return None

    def export(self) -> dict[str, Any]:
        """Files to write beside the checkpoint: ``{file name: object for torch.save}``."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the run's summary (by default every declared parameter)."""
        return {k: getattr(self, k) for k in self.params}
