"""Optimisers and learning-rate schedules.

The schedule is a pure function of the global step, so its only state is the step count:
linear warm-up from ``warmup_start·lr`` to ``lr``, then cosine to ``min_lr``
(lr_t = min_lr + (lr − min_lr)·(1 + cos(π t/T))/2), step decay by ``gamma`` at milestones, or constant.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def param_groups(modules: list[nn.Module], weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """One group per module; with ``no_decay_norm_bias`` 1-D parameters (norms, biases) get wd 0.

    A module's ``group_lr`` / ``group_min_lr`` attributes (e.g. a learned Mixer's own lr) give its
    groups their own peak and final learning rate on the shared schedule.
    """
    groups: list[dict[str, Any]] = []
    for module in modules:
        params = [p for p in module.parameters() if p.requires_grad]
        extra = {"lr_scale": getattr(module, "lr_scale", 1.0), "base_lr": getattr(module, "group_lr", None),
                 "floor_lr": getattr(module, "group_min_lr", None)}
        if not no_decay_norm_bias:
            groups.append({"params": params, "weight_decay": weight_decay, **extra})
            continue
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups.append({"params": decay, "weight_decay": weight_decay, **extra})
        groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return [g for g in groups if g["params"]]


def build_optimizer(modules: list[nn.Module], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW from the ``[train]`` table."""
    groups = param_groups(modules, cfg["weight_decay"], cfg["no_decay_norm_bias"])
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"],
                               nesterov=cfg["nesterov"] and cfg["momentum"] > 0)
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]))


class LRSchedule:
    """lr as a function of the global step; ``apply`` writes it into the optimiser's groups."""

    def __init__(self, cfg: dict[str, Any], steps_per_epoch: int):
        self.lr, self.min_lr = cfg["lr"], cfg["min_lr"]
        self.kind = cfg["schedule"]
        self.total = cfg["epochs"] * steps_per_epoch
        self.warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch))
        self.warmup_start = cfg["warmup_start"]
        self.milestones = [m * steps_per_epoch for m in cfg["milestones"]]
        self.gamma = cfg["gamma"]

    def __call__(self, step: int) -> float:
        return self.at(step, self.lr, self.min_lr)

    def at(self, step: int, lr: float, min_lr: float) -> float:
        """The schedule's shape between peak ``lr`` and final ``min_lr``."""
        if step < self.warmup:
            frac = step / self.warmup
            return lr * (self.warmup_start + (1.0 - self.warmup_start) * frac)
        if self.kind == "cosine":
            t = (step - self.warmup) / max(1, self.total - self.warmup)
            return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
        if self.kind == "step":
            return lr * self.gamma ** sum(step >= m for m in self.milestones)
        return lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            if group.get("base_lr") is not None or group.get("floor_lr") is not None:
                peak = group["base_lr"] if group.get("base_lr") is not None else self.lr
                floor = group["floor_lr"] if group.get("floor_lr") is not None else self.min_lr
                group["lr"] = self.at(step, peak, min(floor, peak))
            else:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr
