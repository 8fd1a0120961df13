"""The evaluator interface and registry.

An evaluator is called as ``evaluator(method, data, ctx) -> {metric name: value}``: ``method`` is a
trained :class:`mixbench.methods.Method` (or anything with its ``classifiers()`` / ``encoder()``),
``data`` what the evaluator reads (for top-k: this process's shard of the test set), and ``ctx``
the device, precision and process group. Under torchrun each process evaluates its shard and the
evaluator reduces the counts, so every rank returns the same numbers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from mixbench.engine.distributed import DistInfo
from mixbench.registry import Registry

EVALUATORS = Registry("evaluator")


@dataclass
class EvalContext:
    """Where and how to evaluate."""

    device: torch.device
    precision: str = "fp32"
    dist: DistInfo = field(default_factory=DistInfo)

    def autocast(self):
        """Autocast to bf16/fp16 as training does, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)


def reported_classifier(obj: Any) -> nn.Module:
    """A method's reported classifier (:meth:`Method.reported_classifier`), or ``obj`` itself when it is a model."""
    if hasattr(obj, "reported_classifier"):
        return obj.reported_classifier()
    if hasattr(obj, "classifiers"):  # anything shaped like a method
        return next(iter(obj.classifiers().values()))
    if isinstance(obj, nn.Module):
        return obj
    raise TypeError(f"expected a method or an nn.Module, got {type(obj).__name__}")


class Evaluator:
    """Base class: ``name`` (registry key), ``protocol`` (one line: how the metrics are produced)."""

    name: ClassVar[str] = ""
    protocol: ClassVar[str] = ""

    def __call__(self, method: Any, data: Any, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError  # abstract: every registered evaluator overrides it
