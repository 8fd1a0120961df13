"""Losses for a pair of label sets mixed with per-sample weight λ.

``ce``:      L = λ·CE(z, y_a) + (1 − λ)·CE(z, y_b), label smoothing applied to each term.
``soft_ce``: L = −Σ_k t_k log softmax(z)_k with t = λ e_a + (1 − λ) e_b smoothed (same value as
             ``ce``; the form that takes arbitrary soft targets).
``bce``:     L = Σ_k BCE(σ(z_k), t_k), summed over classes and averaged over the batch.
Label smoothing ε folds into the targets: e ← (1 − ε) e + ε / K. Every loss takes an optional
per-sample ``weight`` w and then returns mean_i(w_i ℓ_i) (masked samples still count in the mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbench.params import Param
from mixbench.registry import Registry

LOSSES = Registry("loss")

SMOOTHING = Param("float", 0.0, "label smoothing epsilon", low=0, high=1, high_open=True)


def reduce(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """mean_i(w_i ℓ_i), or the plain mean without weights."""
    return (per_sample if weight is None else per_sample * weight.float()).mean()


def mixed_targets(
    y_a: torch.Tensor, y_b: torch.Tensor | None, lam: torch.Tensor | None, num_classes: int,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Soft targets t = λ e_a + (1 − λ) e_b with smoothing folded in; [N, K] float32."""
    t = F.one_hot(y_a, num_classes).float()
    if y_b is not None:
        lam = lam.float().view(-1, 1)
        t = t * lam + F.one_hot(y_b, num_classes).float() * (1.0 - lam)
    if smoothing:
        t = t * (1.0 - smoothing) + smoothing / num_classes
    return t


@LOSSES.register("ce", doc="mixed cross-entropy, hard pair form λ·CE(y_a) + (1−λ)·CE(y_b)")
class MixedCE:
    """Mixed cross-entropy in the hard pair form: λ·CE(z, y_a) + (1 − λ)·CE(z, y_b)."""

    params = {"label_smoothing": SMOOTHING}

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor | None = None,
                 lam: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        ce_a = F.cross_entropy(logits, y_a, reduction="none", label_smoothing=self.label_smoothing)
        if y_b is None:
            return reduce(ce_a, weight)
        ce_b = F.cross_entropy(logits, y_b, reduction="none", label_smoothing=self.label_smoothing)
        return reduce(lam * ce_a + (1.0 - lam) * ce_b, weight)


@LOSSES.register("soft_ce", doc="soft-target cross-entropy with mixed, smoothed targets")
class SoftCE(MixedCE):
    """Soft-target cross-entropy: −Σ_k t_k log softmax(z)_k with mixed, smoothed targets."""

    def __call__(self, logits, y_a, y_b=None, lam=None, weight=None):
        t = mixed_targets(y_a, y_b, lam, logits.shape[1], self.label_smoothing)
        return reduce(-(t * F.log_softmax(logits.float(), dim=1)).sum(1), weight)


@LOSSES.register("bce", doc="binary cross-entropy with mixed targets (sum over classes)")
class BCE(MixedCE):
    """Binary cross-entropy with mixed, smoothed targets; summed over classes, mean over batch."""

    def __call__(self, logits, y_a, y_b=None, lam=None, weight=None):
        t = mixed_targets(y_a, y_b, lam, logits.shape[1], self.label_smoothing)
        bce = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
        return reduce(bce.sum(1), weight)
