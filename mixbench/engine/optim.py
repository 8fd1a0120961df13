"""Optimisers and learning-rate schedules.

The schedule is a pure function of the global step, so its only state is the step count:
linear warm-up from ``warmup_start·lr`` to ``lr``, then cosine to ``min_lr``
(lr_t = min_lr + (lr − min_lr)·(1 + cos(π t/T))/2), step decay by ``gamma`` at milestones, or constant.

LARS (``[train].optimizer = "lars"``) is ``timm.optim.Lars`` as solo-learn configures it for CIFAR: the
update of an adapted tensor w is SGD with momentum on g' = r·(g + λw), trust ratio
r = η‖w‖ / (‖g‖ + λ‖w‖ + ε), clipped to min(r/lr, 1) with ``lars_clip`` (LARC). Biases and norm weights
(1-D tensors, the ``no_decay_norm_bias`` group, weight decay 0) and fixed-lr groups (the online classifier)
are neither adapted nor decayed: plain SGD with momentum (solo-learn's ``exclude_bias_n_norm``).
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


def lars_adapts(group: dict[str, Any]) -> bool:
    """Whether ``timm.optim.Lars`` scales this torch group by its trust ratio (timm's rule: weight decay ≠ 0
    or ``always_adapt``)."""
    return group.get("weight_decay", 0.0) != 0 or bool(group.get("always_adapt", False))


def lars_groups(torch_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark which groups LARS adapts: every scheduled group of matrices and kernels (``always_adapt``, so a
    weight decay of 0 still adapts them, as solo-learn does); 1-D groups and fixed-lr groups are left to timm's
    rule, which with their weight decay of 0 leaves them unadapted."""
    out = []
    for g in torch_groups:
        matrices = all(p.ndim > 1 for p in g["params"])
        out.append({**g, "always_adapt": matrices and g.get("fixed_lr") is None})
    return out


def build_optimizer(groups: list[ParamGroup], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), AdamW or LARS (see the module docstring) from the ``[train]`` table
    over a method's groups."""
    lars = cfg["optimizer"] == "lars"
    torch_groups = torch_param_groups(groups, cfg["weight_decay"], cfg["no_decay_norm_bias"] or lars)
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(torch_groups, lr=cfg["lr"], momentum=cfg["momentum"],
                               nesterov=cfg["nesterov"] and cfg["momentum"] > 0)
    if lars:
        from timm.optim import Lars

        return Lars(lars_groups(torch_groups), lr=cfg["lr"], momentum=cfg["momentum"],
                    nesterov=cfg["nesterov"] and cfg["momentum"] > 0, trust_coeff=cfg.get("lars_eta", 0.02),
                    trust_clip=cfg.get("lars_clip", True))
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
