"""Top-k accuracy of a method's image classifiers on the test set.

top-k = 100 · #{i : y_i among the k largest logits of x_i} / N, counted on the device (one host
sync per classifier), summed over processes under torchrun.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mixbench.engine.distributed import all_reduce_sum
from mixbench.evaluate.base import EVALUATORS, EvalContext, Evaluator
from mixbench.mixing.features import eval_mode


@torch.no_grad()
def topk_accuracy(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], ctx: EvalContext
                  ) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) of ``model`` over ``loader`` (this process's shard)."""
    counts = torch.zeros(3, device=ctx.device, dtype=torch.int64)  # top-1 hits, top-5 hits, images
    with eval_mode(model):
        for x, y in loader:
            with ctx.autocast():
                logits = model(x)
            hit = logits.topk(min(5, logits.shape[1]), dim=1).indices == y.unsqueeze(1)
            counts += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), counts.new_tensor(y.shape[0])])
    c1, c5, seen = all_reduce_sum(counts, ctx.dist).cpu().tolist()
    return 100.0 * c1 / max(seen, 1), 100.0 * c5 / max(seen, 1)


@EVALUATORS.register("topk")
class TopKAccuracy(Evaluator):
    """Top-1/top-5 accuracy of every classifier the method reports (``top1``, ``<name>_top1``)."""

    name = "topk"
    protocol = "top-1 and top-5 accuracy on the whole test set, centre (unaugmented) images"

    def __call__(self, method: Any, data: Any, ctx: EvalContext) -> dict[str, float]:
        out: dict[str, float] = {}
        for head, model in method.classifiers().items():
            prefix = f"{head}_" if head else ""
            out[f"{prefix}top1"], out[f"{prefix}top5"] = topk_accuracy(model, data, ctx)
        return out
