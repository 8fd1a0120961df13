"""BYOL (Grill et al. 2020): an online network with a predictor regresses a momentum target, no negatives.

p_v = g(h(f(x_v))) online, z_v = h_m(f_m(x_v)) target (no grad);
L = ℓ(p_1, z_2) + ℓ(p_2, z_1), ℓ(p, z) = mean_i 2 − 2 p̂_i·ẑ_i (``byol_loss``), summed over the two pairs
as solo-learn does; then θ_m ← τ θ_m + (1 − τ) θ with τ from ``momentum`` to ``momentum_end`` on the cosine
τ_t = 1 − (1 − τ_0)(cos(π t/T) + 1)/2 for ``momentum_end`` = 1.

Defaults are solo-learn's CIFAR settings (``scripts/pretrain/cifar/byol.yaml``): projector
4096 → 256 (Linear-BN-ReLU-Linear), predictor 256 → 4096 → 256 (the same shape), τ 0.99 → 1, asymmetric
views, online classifier lr 0.1.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from mixbench.engine.momentum import MomentumTeacher
from mixbench.losses.ssl import byol_loss
from mixbench.methods.base import METHODS, MethodContext
from mixbench.methods.ssl.base import SSL_PARAMS, SelfSupervised
from mixbench.methods.ssl.mocov3 import Projected
from mixbench.models.heads import MLPHead
from mixbench.params import Param

BYOL_PARAMS: dict[str, Param] = {
    **SSL_PARAMS,
    "proj_hidden": Param("int", 4096, "projector hidden width", low=1),
    "proj_out": Param("int", 256, "projector output (embedding) width", low=1),
    "pred_hidden": Param("int", 4096, "predictor hidden width", low=1),
    "momentum": Param("float", 0.99, "target-network τ at the start", low=0, high=1),
    "momentum_end": Param("float", 1.0, "τ at the end (cosine schedule)", low=0, high=1),
}


@METHODS.register("byol", doc="BYOL: predictor regresses a momentum target network, no negatives (self-supervised)")
class BYOL(SelfSupervised):
    """BYOL (see the module docstring)."""

    params: ClassVar[dict[str, Param]] = BYOL_PARAMS

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        projector = MLPHead(self.feature_dim, self.proj_hidden, self.proj_out, layers=2)
        self.online = Projected(self.backbone, projector)
        self.predictor = MLPHead(self.proj_out, self.pred_hidden, self.proj_out, layers=2)
        self.target = MomentumTeacher(self.online, self.momentum, self.momentum_end, total_steps=ctx.total_steps,
                                      copy_buffers=False, train_mode=True)
        self.to(ctx.device)


    def ssl_modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "projector": self.online.projector, "predictor": self.predictor}

    def ssl_loss(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor) -> dict[str, torch.Tensor]:
        z1 = self.online.projector(feats0)
        z2 = self.online(views[1])
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1, t2 = self.target(views[0]), self.target(views[1])
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return {"loss": loss, "embedding": z1}

    def on_step_end(self, step: int) -> None:
        self.target.update(self.online, step)


__all__ = ["BYOL", "BYOL_PARAMS"]
