"""``timm:<name>``: any timm model as a mixbench backbone, built without downloading weights.

The timm model is created with ``num_classes=0`` so that it returns pooled features; mixbench's
own linear head sits on top. ``forward_map`` returns timm's ``forward_features`` output (a
feature map for CNNs, a token sequence for ViTs). Hidden-stage hooks are not supported.
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.errors import UserError, did_you_mean
from mixbench.models.base import Backbone, StageHook


class TimmBackbone(Backbone):
    supports_stage_hook = False

    def __init__(self, model: nn.Module, name: str):
        nn.Module.__init__(self)
        self.model = model
        self.timm_name = name
        self.num_features = int(model.num_features)
        self.num_stages = 0

    def forward_map(self, x: torch.Tensor, hook: StageHook | None = None) -> torch.Tensor:
        if hook is not None:
            raise UserError(f"model 'timm:{self.timm_name}' does not support hidden-stage mixing; "
                            "use a built-in CIFAR backbone (mixbench list models)")
        return self.model.forward_features(x)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(fmap, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def timm_backbone(name: str, *, in_chans: int = 3, image_size: int = 32, drop_rate: float = 0.0) -> Backbone:
    import timm

    if not timm.is_model(name):
        suggestion = did_you_mean(name, timm.list_models())
        raise UserError(f"unknown timm model '{name}'{suggestion}; see timm.list_models()")
    kwargs = {"pretrained": False, "num_classes": 0, "in_chans": in_chans, "drop_rate": drop_rate}
    try:  # transformers take the input size; CNNs reject the keyword
        model = timm.create_model(name, **kwargs, img_size=image_size)
    except TypeError:
        model = timm.create_model(name, **kwargs)
    return TimmBackbone(model, name)
