"""SimCLR (Chen, Kornblith, Norouzi & Hinton 2020): NT-Xent over every process's 2N projected views.

z = h(f(x)) for both views, ẑ = z/‖z‖, Z = [ẑ of view 1; ẑ of view 2] over all processes (2N rows);
for anchor i with positive p(i) (the other view of the same image) and s_ij = ẑ_i·ẑ_j / T,
L = mean_i −log exp(s_{i p(i)}) / Σ_{j≠i} exp(s_ij) (self-similarity masked, every other row a negative).

Defaults are solo-learn's CIFAR settings (``scripts/pretrain/cifar/simclr.yaml``): projector
2048 → 256 (Linear-ReLU-Linear), T = 0.2, symmetric views, online classifier lr 0.1. Under torchrun the rows
are gathered with their gradient (all-gather forward, all-reduce of the gradient backward, each process
keeping its own rows' part: SimCLR's and solo-learn's ``GatherLayer``), so with DDP's gradient mean the
update equals one process training on the whole batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import METHODS, MethodContext
from mixbench.methods.ssl.base import SSL_PARAMS, SelfSupervised
from mixbench.models.heads import MLPHead
from mixbench.params import Param

SIMCLR_PARAMS: dict[str, Param] = {
    **SSL_PARAMS,
    "views": Param("str", "symmetric", "view augmentation preset (solo-learn's CIFAR views)",
                   choices=("asymmetric", "symmetric")),
    "proj_hidden": Param("int", 2048, "projector hidden width", low=1),
    "proj_out": Param("int", 256, "projector output (embedding) width", low=1),
    "proj_norm": Param("bool", False, "BatchNorm in the projector's hidden layer (solo-learn: none; lightly: yes)"),
    "temperature": Param("float", 0.2, "NT-Xent temperature T", low=0, low_open=True),
}


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every process's gradient of the gathered rows and keeps this rank's."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's rows of ``x`` in rank order (differentiable, see :class:`_GatherWithGrad`) and this
    rank's first row; ``x`` itself in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return _GatherWithGrad.apply(x), dist.get_rank() * x.shape[0]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, *, gather: bool = True) -> torch.Tensor:
    """NT-Xent of the pairs (z1_i, z2_i) over every process's 2N rows (see the module docstring), in float32."""
    local = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2b, d]: view 1's rows, then view 2's
    everyone, offset = gather_with_grad(local) if gather else (local, 0)
    with torch.autocast(local.device.type, enabled=False):  # float32 logits also under autocast
        logits = local @ everyone.T / temperature  # [2b, 2N]
    b = z1.shape[0]
    i = torch.arange(2 * b, device=logits.device)
    logits[i, i + offset] = float("-inf")  # no anchor is its own negative
    positive = (i + b) % (2 * b) + offset  # the other view of the same image
    return F.cross_entropy(logits, positive)


@METHODS.register("simclr", doc="SimCLR: NT-Xent between two views over the whole batch (self-supervised)")
class SimCLR(SelfSupervised):
    """SimCLR (see the module docstring)."""

    params: ClassVar[dict[str, Param]] = SIMCLR_PARAMS

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        self.projector = MLPHead(self.feature_dim, self.proj_hidden, self.proj_out, layers=2,
                                 hidden_norm=self.proj_norm)
        self.to(ctx.device)

    def ssl_modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "projector": self.projector}

    def ssl_loss(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor) -> dict[str, torch.Tensor]:
        z1 = self.projector(feats0)
        z2 = self.projector(self.backbone(views[1]).flatten(1))
        return {"loss": nt_xent(z1, z2, self.temperature), "embedding": z1}


__all__ = ["SimCLR", "SIMCLR_PARAMS", "nt_xent", "gather_with_grad"]
