"""MoCo v3 (Chen, Xie & He 2021): a predictor on the online branch against a momentum encoder, symmetric InfoNCE.

q_v = g(h(f(x_v))) online, k_v = h_m(f_m(x_v)) momentum (no grad);
L = 2T·[NCE(q_1, k_2) + NCE(q_2, k_1)], NCE over every process's keys at temperature T;
then θ_m ← τ θ_m + (1 − τ) θ with τ from ``momentum`` to ``momentum_end`` on a cosine (solo-learn's CIFAR settings).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from mixbench.engine.momentum import MomentumTeacher
from mixbench.losses.ssl import info_nce
from mixbench.methods.base import METHODS, MethodContext
from mixbench.methods.ssl.base import SSL_PARAMS, SelfSupervised
from mixbench.models.heads import MLPHead
from mixbench.params import Param


class Projected(nn.Module):
    """A backbone and its projector: z = h(f(x)) (what the momentum encoder copies)."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x).flatten(1))


MOCOV3_PARAMS: dict[str, Param] = {
    **SSL_PARAMS,
    "proj_hidden": Param("int", 4096, "projector hidden width", low=1),
    "proj_out": Param("int", 256, "projector output (embedding) width", low=1),
    "pred_hidden": Param("int", 4096, "predictor hidden width", low=1),
    "temperature": Param("float", 0.2, "InfoNCE temperature T", low=0, low_open=True),
    "momentum": Param("float", 0.99, "momentum-encoder τ at the start", low=0, high=1),
    "momentum_end": Param("float", 1.0, "τ at the end (cosine schedule)", low=0, high=1),
}


@METHODS.register("mocov3", doc="MoCo v3: predictor + momentum encoder, symmetric InfoNCE (self-supervised)")
class MoCoV3(SelfSupervised):
    """MoCo v3 (see the module docstring)."""

    params: ClassVar[dict[str, Param]] = MOCOV3_PARAMS

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        projector = MLPHead(self.feature_dim, self.proj_hidden, self.proj_out, layers=2, last_norm=True)
        self.online = Projected(self.backbone, projector)
        self.predictor = MLPHead(self.proj_out, self.pred_hidden, self.proj_out, layers=2)
        self.momentum_encoder = MomentumTeacher(self.online, self.momentum, self.momentum_end,
                                                total_steps=ctx.total_steps, copy_buffers=False, train_mode=True)
        self.to(ctx.device)

    def ssl_modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "projector": self.online.projector, "predictor": self.predictor}

    def nce(self, q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """2T · InfoNCE(q, k) (MoCo v3's scaling)."""
        return 2 * self.temperature * info_nce(q, k, self.temperature, targets=targets)

    def ssl_loss(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor) -> dict[str, torch.Tensor]:
        z1 = self.online.projector(feats0)
        z2 = self.online(views[1])
        q1, q2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            k1, k2 = self.momentum_encoder(views[0]), self.momentum_encoder(views[1])
        loss = self.nce(q1, k2) + self.nce(q2, k1)
        return {"loss": loss, "embedding": z1}

    def on_step_end(self, step: int) -> None:
        self.momentum_encoder.update(self.online, step)


__all__ = ["MoCoV3", "Projected", "MOCOV3_PARAMS"]
