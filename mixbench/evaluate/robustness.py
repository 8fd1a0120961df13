"""Robustness of the reported classifier on the test set: occlusion (OpenMixup's protocol) and FGSM.

Occlusion: a square of side round(s·H), filled with 0 in normalised space (the data mean), at a seeded
random position per image; top-1(s) for every size s, and AUC = 100·∫_0^{s_max} top1(s)/100 ds / s_max (trapezoid).
FGSM: x' = clamp(x + (ε/σ)·sign(∇_x CE(f(x), y))), ε in pixel units of [0, 1] images, clamped per channel to
[(0 − μ)/σ, (1 − μ)/σ]; the model in eval mode, one gradient step shared by every ε.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.data.gpu_loader import Normalize
from mixbench.evaluate.base import EVALUATORS, EvalContext, Evaluator, reported_classifier
from mixbench.mixing.features import eval_mode

DEFAULT_SIZES = tuple(round(i / 10, 1) for i in range(10))
DEFAULT_EPS = (1 / 255,)
OCCLUSION_SEED = 0


def occlusion_key(size: float) -> str:
    return f"occlusion_top1@{size:g}"


def eps_label(eps: float) -> str:
    """1/255 -> ``"1/255"``: ε written in pixel steps of a uint8 image."""
    return f"{eps * 255:g}/255"


def occlusion_positions(n: int, *, seed: int = OCCLUSION_SEED, device: torch.device) -> torch.Tensor:
    """float32 [n, 2] uniform draws in [0, 1) (top, left) per image from a generator on ``device`` seeded ``seed``.

    The square of side a in an H x W image starts at row ⌊u_top·(H − a + 1)⌋, column ⌊u_left·(W − a + 1)⌋, so
    the same draws place every size and every model's occluders alike.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(n, 2, generator=gen, device=device)


def occlusion_mask(u: torch.Tensor, side: int, height: int, width: int) -> torch.Tensor:
    """bool [B, 1, H, W]: True inside each image's side x side square (built by broadcasting, no loop)."""
    side = max(0, min(side, height, width))
    top = (u[:, 0] * (height - side + 1)).long().clamp_(max=height - side)
    left = (u[:, 1] * (width - side + 1)).long().clamp_(max=width - side)
    rows = torch.arange(height, device=u.device)
    cols = torch.arange(width, device=u.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)  # [B, H]
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)  # [B, W]
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def _sizes(sizes: Sequence[float] | None) -> list[float]:
    values = sorted({round(float(s), 6) for s in (DEFAULT_SIZES if sizes is None else sizes)} | {0.0})
    if any(not 0 <= s < 1 for s in values):
        raise ValueError(f"occlusion sizes must lie in [0, 1), got {values}")
    return values


def _batches(data: Any, batch: int, device: torch.device):
    normalize = Normalize(data.mean, data.std, device)
    for start in range(0, data.test_x.shape[0], batch):
        x = data.test_x[start:start + batch].to(device, non_blocking=True)
        yield start, normalize(x), data.test_y[start:start + batch].to(device, non_blocking=True)


@torch.no_grad()
def occlusion_accuracy(model: nn.Module, data: Any, ctx: EvalContext, *, sizes: Sequence[float] | None = None,
                       batch: int = 500, seed: int = OCCLUSION_SEED) -> dict[str, float]:
    """Top-1 (%) with a randomly placed square occluder of each size (``occlusion_top1@s``), plus ``occlusion_auc``."""
    values = _sizes(sizes)
    n, _, height, width = data.test_x.shape
    u = occlusion_positions(n, seed=seed, device=ctx.device)
    hits = torch.zeros(len(values), device=ctx.device, dtype=torch.int64)
    with eval_mode(model):
        for start, x, y in _batches(data, batch, ctx.device):
            for i, s in enumerate(values):
                mask = occlusion_mask(u[start:start + x.shape[0]], round(s * height), height, width)
                with ctx.autocast():
                    logits = model(x.masked_fill(mask, 0.0))
                hits[i] += (logits.argmax(1) == y).sum()
    acc = [100.0 * h / max(n, 1) for h in hits.cpu().tolist()]
    out = {occlusion_key(s): a for s, a in zip(values, acc, strict=True)}
    area = sum((values[i + 1] - values[i]) * (acc[i] + acc[i + 1]) / 2 for i in range(len(values) - 1))
    out["occlusion_auc"] = area / values[-1] if values[-1] > 0 else acc[0]
    return out


def fgsm_perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float],
                 mean: Sequence[float], std: Sequence[float], *, ctx: EvalContext | None = None,
                 clamp: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(clean logits, [x'_ε for each ε]) for a normalised batch ``x``; ε in pixel units of [0, 1] images.

    The model must already be in eval mode; only the gradient w.r.t. ``x`` is computed (parameters untouched).
    """
    autocast = ctx.autocast() if ctx is not None else contextlib.nullcontext()
    sigma = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    mu = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    with torch.enable_grad():
        x0 = x.detach().float().requires_grad_(True)
        with autocast:
            logits = model(x0)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x0)
    step = grad.sign()
    lo, hi = (0 - mu) / sigma, (1 - mu) / sigma
    out = []
    for e in eps:
        adv = x0.detach() + (e / sigma) * step
        out.append(torch.maximum(torch.minimum(adv, hi), lo) if clamp else adv)
    return logits.detach(), out


def fgsm_accuracy(model: nn.Module, data: Any, ctx: EvalContext, *, eps: Sequence[float] = DEFAULT_EPS,
                  batch: int = 500) -> dict[str, float]:
    """Top-1 (%) under FGSM for each ε (``fgsm_top1@eps=k/255``), ``fgsm_top1`` (first ε) and the clean top-1."""
    eps = list(eps)
    if not eps or any(e < 0 for e in eps):
        raise ValueError(f"FGSM eps must be non-negative and not empty, got {eps}")
    hits = torch.zeros(len(eps) + 1, device=ctx.device, dtype=torch.int64)  # clean, then one per ε
    n = data.test_x.shape[0]
    with eval_mode(model):
        for _, x, y in _batches(data, batch, ctx.device):
            logits, advs = fgsm_perturb(model, x, y, eps, data.mean, data.std, ctx=ctx)
            hits[0] += (logits.argmax(1) == y).sum()
            with torch.no_grad():
                for i, adv in enumerate(advs):
                    with ctx.autocast():
                        hits[i + 1] += (model(adv).argmax(1) == y).sum()
    acc = [100.0 * h / max(n, 1) for h in hits.cpu().tolist()]
    out = {f"fgsm_top1@eps={eps_label(e)}": a for e, a in zip(eps, acc[1:], strict=True)}
    return out | {"fgsm_top1": acc[1], "fgsm_clean_top1": acc[0]}


@EVALUATORS.register("occlusion")
class Occlusion(Evaluator):
    """Top-1 (%) of the first classifier as a square occluder grows (``occlusion_top1@s``) and its AUC."""

    name = "occlusion"
    protocol = ("square occluder of side round(s·H), s in {0, 0.1, ..., 0.9}, filled with 0 in normalised space "
                "(the data mean), at a uniform random position per image (torch.Generator on the device, seed 0, "
                "the same positions for every model and size); AUC = trapezoid over [0, max s] / max s, in %")

    def __init__(self, sizes: Sequence[float] | None = None, batch: int = 500, seed: int = OCCLUSION_SEED):
        self.sizes, self.batch, self.seed = _sizes(sizes), batch, seed

    def settings(self, device: torch.device) -> dict[str, Any]:
        return {"sizes": self.sizes, "fill": "0 in normalised space (data mean)", "side": "round(s*H)",
                "placement": "uniform random per image", "seed": self.seed, "generator": torch.device(device).type}

    def __call__(self, method: Any, data: Any, ctx: EvalContext) -> dict[str, float]:
        return occlusion_accuracy(reported_classifier(method), data, ctx, sizes=self.sizes, batch=self.batch,
                                  seed=self.seed)


@EVALUATORS.register("fgsm")
class FGSM(Evaluator):
    """Top-1 (%) of the first classifier under a one-step FGSM attack, ε in pixel units (default 1/255)."""

    name = "fgsm"
    protocol = ("FGSM x' = x + ε·sign(∇x CE(f(x), y)), ε = 1/255 in [0, 1] pixel units (ε/σ per channel in "
                "normalised space), clamped to the valid pixel range; model in eval mode, whole test set")

    def __init__(self, eps: Sequence[float] = DEFAULT_EPS, batch: int = 500):
        self.eps, self.batch = [float(e) for e in eps], batch

    def settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "eps_units": "pixels of [0, 1] images", "loss": "cross-entropy",
                "clamp": "valid pixel range", "mode": "eval", "steps": 1}

    def __call__(self, method: Any, data: Any, ctx: EvalContext) -> dict[str, float]:
        return fgsm_accuracy(reported_classifier(method), data, ctx, eps=self.eps, batch=self.batch)


__all__ = ["Occlusion", "FGSM", "occlusion_accuracy", "occlusion_mask", "occlusion_positions", "fgsm_accuracy",
           "fgsm_perturb"]
