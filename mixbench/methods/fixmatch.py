"""FixMatch and DMixMatch (FixMatch + a decoupled-mixup head): semi-supervised classification.

Each step takes B labelled images and μB unlabelled ones in a weak (u_w) and a strong (u_s,
RandAugment) view. Pseudo-labels ``ŷ = argmax p``, ``p = softmax(f_t(u_w))`` from the EMA teacher
(or the student), kept where ``max p ≥ τ``: ``L = CE(f(x_l), y_l) + λ_u·mean([max p ≥ τ]·CE(f(u_s), ŷ))``.
DMixMatch adds a second head h_mix trained with the ``[loss]`` (DM in the paper) on Mixup of
labelled pairs (λ ← max(λ, 1 − λ)) and of labelled with unlabelled images (labels (y_l, ŷ, λ),
per-sample weight [max p ≥ τ_mix]), weights ``w_ll`` and ``w_lu`` (cosine ramp 0 → w_lu). The
EMA teacher (momentum 0.999 → 0.99999, cosine after 10 %) is the evaluated model.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.data.batches import SemiSupervisedBatch
from mixbench.data.semisup import SemiBatch
from mixbench.engine.momentum import MomentumTeacher
from mixbench.methods.base import METHODS, Method, MethodContext, ParamGroup
from mixbench.mixing.base import blend
from mixbench.mixing.features import eval_mode
from mixbench.params import Param

FIXMATCH_PARAMS: dict[str, Param] = {
    "threshold": Param("float", 0.95, "confidence τ a pseudo-label needs", low=0, high=1),
    "unlabeled_weight": Param("float", 1.0, "λ_u, weight of the unlabelled loss", low=0),
    "pseudo_from": Param("str", "teacher", "who pseudo-labels the weak view", choices=("teacher", "student")),
    "teacher_momentum": Param("float", 0.999, "EMA teacher momentum at the start", low=0, high=1),
    "teacher_momentum_end": Param("float", 0.99999, "EMA teacher momentum at the end (cosine)", low=0, high=1),
    "teacher_warmup": Param("float", 0.1, "fraction of training with constant teacher momentum", low=0, high=1),
}
DMIX_PARAMS: dict[str, Param] = {
    **FIXMATCH_PARAMS,
    "mix_alpha": Param("float", 1.0, "Beta(α, α) of the Mixup λ (then λ ← max(λ, 1 − λ))", low=0, low_open=True),
    "mix_ll_weight": Param("float", 1.0, "w_ll, weight of the labelled-labelled mixup loss", low=0),
    "mix_lu_weight": Param("float", 1.0, "final w_lu, weight of the labelled-unlabelled mixup loss", low=0),
    "mix_lu_ramp": Param("str", "cosine", "w_lu over training", choices=("cosine", "constant")),
    "mix_threshold": Param("float", 0.95, "confidence a pseudo-label needs in a labelled-unlabelled mix",
                           low=0, high=1),
}


def pseudo_labels(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ŷ = argmax p, mask = [max p ≥ τ] as float, max p) from the weak view's logits."""
    probs = torch.softmax(logits.detach().float(), dim=1)
    conf, label = probs.max(dim=1)
    return label, (conf >= threshold).float(), conf


@METHODS.register("fixmatch")
class FixMatch(Method):
    """FixMatch: thresholded pseudo-labels from the weak view train the strong view (EMA teacher)."""

    batch = SemiSupervisedBatch()
    params: ClassVar[dict[str, Param]] = FIXMATCH_PARAMS
    differs: ClassVar[str] = ("pseudo-labels from the EMA teacher by default (DMixMatch's setting); "
                              "pseudo_from = 'student' for TorchSSL's")

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        self.teacher_ema = MomentumTeacher(self.model, self.teacher_momentum, self.teacher_momentum_end,
                                           self.teacher_warmup, ctx.total_steps)

    @property
    def teacher(self) -> nn.Module:
        """θ_t: the EMA copy of the classifier (backbone and head, BN statistics copied)."""
        return self.teacher_ema.module

    def _pseudo(self, u_w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.pseudo_from == "teacher":
                with eval_mode(self.teacher):
                    return self.teacher(u_w)
            return self.model(u_w)

    def fixmatch_terms(self, x_l, y_l, u_w, u_s, u_y) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The FixMatch losses and the weak-view logits (for the mixup terms)."""
        b = x_l.shape[0]
        weak = self._pseudo(u_w)
        y_hat, mask, _ = pseudo_labels(weak, self.threshold)
        logits = self.model(torch.cat([x_l, u_s]))
        sup = F.cross_entropy(logits[:b].float(), y_l)
        unsup = (F.cross_entropy(logits[b:].float(), y_hat, reduction="none") * mask).mean()
        terms = {"loss_sup": sup, "loss_unsup": unsup, "mask_rate": mask.mean().detach(),
                 "pseudo_acc": ((y_hat == u_y).float() * mask).sum().detach() / mask.sum().clamp(min=1)}
        return terms, weak

    def forward(self, batch: SemiBatch) -> dict[str, torch.Tensor]:
        terms, _ = self.fixmatch_terms(*batch)
        return {"loss": terms["loss_sup"] + self.unlabeled_weight * terms["loss_unsup"], **terms}

    def on_step_end(self, step: int) -> None:
        """θ_t ← m θ_t + (1 − m) θ for the backbone and the head; BN statistics copied."""
        self.teacher_ema.update(self.model, step)

    def encoder(self) -> nn.Module:
        return self.teacher.backbone

    def classifiers(self) -> dict[str, nn.Module]:
        return {"": self.teacher, "student": self.model}

@METHODS.register("dmixmatch")
class DMixMatch(FixMatch):
    """DMixMatch: FixMatch plus a mixup head trained with the [loss] (DM) on labelled/unlabelled mixes."""

    params: ClassVar[dict[str, Param]] = DMIX_PARAMS
    differs: ClassVar[str] = "Mixup only for the mixed pairs (the reference allows any static mixer)"

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        self.head_mix = nn.Linear(self.model.backbone.num_features, ctx.num_classes).to(ctx.device)

    def _lam(self) -> float:
        lam = float(self.ctx.rng.np.beta(self.mix_alpha, self.mix_alpha))
        return max(lam, 1.0 - lam)  # the labelled image dominates

    def lu_weight(self) -> float:
        if self.mix_lu_ramp == "constant":
            return self.mix_lu_weight
        t = min(self.global_step / max(1, self.ctx.total_steps), 1.0)
        return self.mix_lu_weight * (1 - math.cos(math.pi * t)) / 2

    def _mix_loss(self, x_mix, y_a, y_b, lam, weight: float, sample_weight=None) -> torch.Tensor:
        feats = self.model.forward_features(x_mix)
        if weight < 1e-3:  # a negligible term must not move the backbone
            feats = feats.detach()
        return weight * self.ctx.loss(self.head_mix(feats), y_a, y_b, lam, weight=sample_weight)

    def forward(self, batch: SemiBatch) -> dict[str, torch.Tensor]:
        x_l, y_l, u_w, _, _ = batch
        terms, weak = self.fixmatch_terms(*batch)
        b, dev = x_l.shape[0], x_l.device
        lam_ll = torch.full((b,), self._lam(), device=dev)
        index = self.ctx.rng.permutation(b, dev)
        loss_ll = self._mix_loss(blend(x_l, index, lam_ll), y_l, y_l[index], lam_ll, self.mix_ll_weight)
        lam_lu = torch.full((b,), self._lam(), device=dev)
        y_hat, keep, _ = pseudo_labels(weak[:b], self.mix_threshold)
        x_lu = torch.lerp(u_w[:b], x_l, lam_lu.view(-1, 1, 1, 1).to(x_l.dtype))
        loss_lu = self._mix_loss(x_lu, y_l, y_hat, lam_lu, self.lu_weight(), sample_weight=keep)
        loss = terms["loss_sup"] + self.unlabeled_weight * terms["loss_unsup"] + loss_ll + loss_lu
        return {"loss": loss, **terms, "loss_ll": loss_ll.detach(), "loss_lu": loss_lu.detach()}

    def param_groups(self) -> list[ParamGroup]:
        return [*super().param_groups(), ParamGroup("head_mix", self.head_mix)]
