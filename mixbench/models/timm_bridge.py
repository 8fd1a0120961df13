"""``timm:<name>``: any timm model as a mixbench backbone, built without downloading weights.

The timm model is created with ``pretrained=False`` and ``num_classes=0`` so that it returns pooled
features; mixbench's own linear head sits on top. ``forward_map`` returns timm's ``forward_features``
output (a feature map for CNNs, a token sequence for ViTs). Hidden-stage hooks are not supported.

Vision transformers take the data's image side as ``img_size`` and, with ``[model].patch_size = p``,
p x p patches (timm re-creates the patch embedding and a learned position table of (S/p)² + 1 tokens
for S-pixel images), e.g. ``timm:vit_tiny_patch16_224`` with p = 4 at 32 px is 64 tokens, as the
CIFAR ViT literature uses. Such a model is built with timm's ``dynamic_img_size``, so smaller crops
(DINO's local crops) resample the position table bicubically; at the training side the table is used
as it is and the output is that of the static model.
"""

from __future__ import annotations

from typing import Any

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


def patch_size_problem(patch_size: int | None, image_side: int | None, name: str) -> str | None:
    """Why ``[model].patch_size`` does not fit model ``name`` at ``image_side`` pixels (one sentence), or None."""
    if patch_size is None:
        return None
    if not name.startswith("timm:"):
        return (f"[model].patch_size = {patch_size} applies only to timm vision transformers (timm:vit_*), "
                f"not to '{name[:100]}'; remove it or use e.g. model.name = \"timm:vit_tiny_patch16_224\"")
    if image_side is not None and image_side % patch_size:
        valid = [p for p in range(1, image_side + 1) if image_side % p == 0]
        return (f"[model].patch_size = {patch_size} does not divide the {image_side}-pixel image side; "
                f"valid: {', '.join(map(str, valid))}")
    return None


def timm_backbone(name: str, *, in_chans: int = 3, image_size: int = 32, drop_rate: float = 0.0,
                  patch_size: int | None = None, **timm_kwargs: Any) -> Backbone:
    """``timm.create_model(name, pretrained=False, num_classes=0, ...)`` wrapped as a :class:`Backbone`.

    ``patch_size`` (vision transformers only) also turns on ``dynamic_img_size``; ``timm_kwargs`` go to
    ``create_model`` as they are (e.g. ``depth=2, embed_dim=48, num_heads=3`` for a test-sized ViT).
    """
    import timm

    if not timm.is_model(name):
        suggestion = did_you_mean(name, timm.list_models())
        raise UserError(f"unknown timm model '{name}'{suggestion}; see timm.list_models()")
    problem = patch_size_problem(patch_size, image_size, f"timm:{name}")
    if problem:
        raise UserError(problem)
    kwargs = {**timm_kwargs, "pretrained": False, "num_classes": 0, "in_chans": in_chans, "drop_rate": drop_rate}
    if patch_size is not None:
        try:
            model = timm.create_model(name, **kwargs, img_size=image_size, patch_size=patch_size,
                                      dynamic_img_size=True)
        except TypeError:
            raise UserError(f"[model].patch_size = {patch_size}: timm model '{name}' takes no patch_size and "
                            "dynamic image size; use a plain vision transformer such as timm:vit_tiny_patch16_224 "
                            "or timm:vit_small_patch16_224, or remove [model].patch_size") from None
        return TimmBackbone(model, name)
    try:  # transformers take the input size; CNNs reject the keyword
        model = timm.create_model(name, **kwargs, img_size=image_size)
    except TypeError:
        model = timm.create_model(name, **kwargs)
    return TimmBackbone(model, name)
