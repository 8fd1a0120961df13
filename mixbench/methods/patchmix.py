"""PatchMix (mixbench reconstruction): the grid mix plus patch-level losses on the final feature map.

``L = ℓ(h(GAP(F)); y_i, y_j, λ) + w_patch · mean_c CE(h(pool_c(F)), y_src(c))
      + w_origin · mean_c BCE(o(pool_c(F)), [c from x_i])``
with F the final feature map of the mixed batch, h the image classifier applied per grid cell,
λ the realised area of x_i's cells, and o an optional linear patch-origin head (off by default).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import METHODS, MethodContext, ParamGroup
from mixbench.methods.supervised import PROB, Supervised
from mixbench.mixing.patchmix import PatchMix, patch_loss, patch_targets
from mixbench.params import Param

LOSS_PARAMS: dict[str, Param] = {
    "patch_weight": Param("float", 1.0, "w_patch: weight of the per-cell classification loss", low=0),
    "origin_weight": Param("float", 0.0, "w_origin: weight of the per-cell 'which image' loss (0 = off)", low=0),
}


@METHODS.register("patchmix", mixer=PatchMix)
class PatchMixMethod(Supervised):
    """PatchMix (mixbench reconstruction): grid compositions of pairs, patch-level losses, random or evolved."""

    mixer_cls = PatchMix
    mixes = True
    may_skip_params = True  # the origin head sits out the steps that the prob draw leaves unmixed
    params: ClassVar[dict[str, Param]] = {**PatchMix.params, "prob": PROB, **LOSS_PARAMS}
    differs: ClassVar[str] = PatchMix.differs
    check = PatchMix.check

    def __init__(self, ctx: MethodContext, patch_weight: float = 1.0, origin_weight: float = 0.0, **params: Any):
        super().__init__(ctx, **params)
        self.patch_weight, self.origin_weight = patch_weight, origin_weight
        features = self.model.backbone.num_features
        self.origin_head = nn.Linear(features, 1).to(ctx.device) if origin_weight > 0 else None

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        mix = self.mix(*batch)
        model = self.model
        fmap = model.backbone.forward_map(mix.x)
        loss_img = self.ctx.loss(model.head(model.backbone.pool(fmap)), mix.y_a, mix.y_b, mix.lam)
        out = {"loss_img": loss_img.detach()}
        loss = loss_img
        if mix.cells is not None and self.patch_weight > 0:
            loss_patch = patch_loss(fmap, model.head, patch_targets(mix.y_a, mix.y_b, mix.cells))
            loss = loss + self.patch_weight * loss_patch
            out["loss_patch"] = loss_patch.detach()
        if mix.cells is not None and self.origin_head is not None:
            cells = F.adaptive_avg_pool2d(fmap, mix.cells.shape[-1]).permute(0, 2, 3, 1)
            loss_origin = F.binary_cross_entropy_with_logits(self.origin_head(cells)[..., 0].float(),
                                                             mix.cells.float())
            loss = loss + self.origin_weight * loss_origin
            out["loss_origin"] = loss_origin.detach()
        return {"loss": loss, **out}

    def param_groups(self) -> list[ParamGroup]:
        heads = [ParamGroup("origin_head", self.origin_head)] if self.origin_head is not None else []
        return [*super().param_groups(), *heads]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "patch_weight": self.patch_weight, "origin_weight": self.origin_weight}
