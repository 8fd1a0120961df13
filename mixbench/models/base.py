"""Backbone / classifier split shared by every model.

A ``Backbone`` maps images to a final feature map (``forward_map``) and pooled features
(``forward``); a ``Classifier`` is a backbone plus a linear head, so linear evaluation and other
scenarios can reuse the backbone alone. ``forward_map(x, hook)`` calls ``hook(k, h)`` after the
stem (k = 0) and after each residual stage k = 1..S and continues with its return value: the
place where ManifoldMix mixes hidden states.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

StageHook = Callable[[int, torch.Tensor], torch.Tensor]


class Backbone(nn.Module):
    """Stem + residual stages (+ optional final norm) + global average pooling."""

    num_features: int
    num_stages: int
    supports_stage_hook: bool = True

    def __init__(self, stem: nn.Module, stages: list[nn.Module], num_features: int,
                 final: nn.Module | None = None):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.final = final if final is not None else nn.Identity()
        self.num_features = num_features
        self.num_stages = len(stages)

    def forward_map(self, x: torch.Tensor, hook: StageHook | None = None) -> torch.Tensor:
        h = self.stem(x)
        if hook is not None:
            h = hook(0, h)
        for k, stage in enumerate(self.stages, start=1):
            h = stage(h)
            if hook is not None:
                h = hook(k, h)
        return self.final(h)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_map(x))


class Classifier(nn.Module):
    """A backbone and a linear head ``D -> num_classes``."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)

    def forward_features(self, x: torch.Tensor, hook: StageHook | None = None) -> torch.Tensor:
        return self.backbone.pool(self.backbone.forward_map(x, hook))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def scaled(channels: int, width: float) -> int:
    """Channel count scaled by the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (fan_out, ReLU), unit BN, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
