"""Optimisers and learning-rate schedules.

The schedule is a pure function of the global step, so its only state is the step count:
linear warm-up from ``warmup_start·lr`` to ``lr``, then cosine to ``min_lr``
(lr_t = min_lr + (lr − min_lr)·(1 + cos(π t/T))/2), step decay by ``gamma`` at milestones, or constant.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from mixbench.methods.base import ParamGroup


def torch_param_groups(groups: list[ParamGroup], weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """The optimiser's groups: one per method group (two with ``no_decay_norm_bias``: 1-D
    parameters, i.e. norms and biases, get weight decay 0), carrying the group's own lr settings."""
    out: list[dict[str, Any]] = []
    for group in groups:
        params = [p for p in group.module.parameters() if p.requires_grad]
        wd = weight_decay if group.weight_decay is None else group.weight_decay
        extra = {"name": group.name, "base_lr": group.lr, "floor_lr": group.min_lr, "fixed_lr": group.fixed_lr}
        if not no_decay_norm_bias:
            out.append({"params": params, "weight_decay": wd, **extra})
            continue
        out.append({"params": [p for p in params if p.ndim > 1], "weight_decay": wd, **extra})
        out.append({"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, **extra})
    return [g for g in out if g["params"]]


def build_optimizer(groups: list[ParamGroup], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW from the ``[train]`` table over a method's groups."""
    torch_groups = torch_param_groups(groups, cfg["weight_decay"], cfg["no_decay_norm_bias"])
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(torch_groups, lr=cfg["lr"], momentum=cfg["momentum"],
                               nesterov=cfg["nesterov"] and cfg["momentum"] > 0)
    return torch.optim.AdamW(torch_groups, lr=cfg["lr"], betas=tuple(cfg["betas"]))


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
        """Write each group's lr for ``step`` (its own peak/final or fixed lr where set); return the main lr."""
        lr = self(step)
        for group in optimizer.param_groups:
            peak, floor = group.get("base_lr"), group.get("floor_lr")
            if group.get("fixed_lr") is not None:
                group["lr"] = group["fixed_lr"]
            elif peak is not None or floor is not None:
                peak = self.lr if peak is None else peak
                floor = self.min_lr if floor is None else floor
                group["lr"] = self.at(step, peak, min(floor, peak))
            else:
                group["lr"] = lr
        return lr
