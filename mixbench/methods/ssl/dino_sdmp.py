"""DINO + SDMP: mixed global crops as extra soft positives of DINO's teacher (mixbench's formulation, spec 4.b).

Per step one mixing op (``mixers``, uniformly) and per-sample λ_i = 0.1 + 0.8·Beta(1, 1); partner j = b−1−i.
With probability ½ the two global crops swap roles; then x̃ = mix(a, a_j, λ) feeds the student and
x̃' = mix(b, b_j, λ) (same λ and op, independently placed boxes) the teacher; λ is the realised share of x_i and
λc_i = min(λ_i, 1 − λ_j) + min(1 − λ_i, λ_j). With H(p, q) = −Σ_k p_k log q_k and P_t, P_s DINO's centred and
sharpened teacher and student distributions:

    L_s = mean_i H(λ_i P_t(b_i) + (1 − λ_i) P_t(b_j), P_s(x̃_i))                     (mix–source, clean teacher view)
    L_m = mean_i H((P_t(x̃'_i) + λc_i P_t(x̃'_j)) / (1 + λc_i), P_s(x̃_i))              (mix–mix)
    L = L_DINO + w_s L_s + w_m L_m,

L_DINO being DINO's multi-crop loss on the clean crops; H is linear in its target, so these soft targets are
exactly the weighted cross-entropies of spec 4.b (the weighted-CE and the target-mixture forms coincide here).
The centre is updated from the clean global crops' teacher logits only, as plain DINO.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mixbench.methods.base import METHODS, MethodContext
from mixbench.methods.ssl.dino import DINO_PARAMS, DINOLike, sharpen
from mixbench.methods.ssl.mixing import (
    SDMP_MIXERS,
    FlipMixing,
    flip_index,
    mixer_list_problems,
    sdmp_lambda,
    shared_ratio,
)
from mixbench.mixing.base import MixOutput, MixRNG
from mixbench.params import Param, RunFacts

SWAP_PROB = 0.5  # SDMP's per-iteration coin: which global crop is mixed for the student

DINO_SDMP_PARAMS: dict[str, Param] = {
    **DINO_PARAMS,
    "mixers": Param("str_list", list(SDMP_MIXERS), "mixing ops, one drawn uniformly per step (SDMP: mixup, cutmix, "
                    "resizemix)"),
    "source_weight": Param("float", 1.0, "weight w_s of the mix–source term", low=0),
    "mix_weight": Param("float", 1.0, "weight w_m of the mix–mix term", low=0),
}


def sdmp_dino_targets(teacher_clean: torch.Tensor, teacher_mixed: torch.Tensor, lam: torch.Tensor,
                      lam_c: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The soft teacher targets [b, K] of the two SDMP terms (each row a distribution: weights sum to one).

    source: λ_i T_i + (1 − λ_i) T_{index[i]} of the clean view; mix–mix: (M_i + λc_i M_{index[i]})/(1 + λc_i).
    """
    w = lam.float().view(-1, 1)
    source = w * teacher_clean + (1 - w) * teacher_clean[index]
    c = lam_c.float().view(-1, 1)
    mixture = (teacher_mixed + c * teacher_mixed[index]) / (1 + c)
    return source, mixture


def soft_cross_entropy(target: torch.Tensor, student_logits: torch.Tensor, student_temperature: float) -> torch.Tensor:
    """mean_i H(t_i, softmax(s_i/τ_s)) = mean_i −Σ_k t_ik log softmax(s_i/τ_s)_k, in float32."""
    return -(target.float() * F.log_softmax(student_logits.float() / student_temperature, dim=-1)).sum(-1).mean()


@METHODS.register("dino_sdmp", doc="DINO + SDMP: mixed global crops as soft positives of the teacher "
                                   "(mixbench's formulation; self-supervised)")
class DINOSDMP(DINOLike):
    """DINO with SDMP's mix–source and mix–mix terms (see the module docstring)."""

    params: ClassVar[dict[str, Param]] = DINO_SDMP_PARAMS
    mixes: ClassVar[bool] = True
    differs: ClassVar[str] = ("mixbench's interpretation of SDMP for DINO (spec 4.b): the paper's DINO formulation "
                              "was not retrieved, so the terms are the MoCo v3 ones with DINO's teacher/student "
                              "cross-entropy; unchecked against the paper")

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        self.mixing = FlipMixing(self.mixers)
        self.rng = ctx.rng

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        names = values.get("mixers", cls.params["mixers"].default)
        return super().check(values, where, origin, facts) + mixer_list_problems(list(names), "mixers", where, origin)

    def mix_pair(self, a: torch.Tensor, b: torch.Tensor, rng: MixRNG) -> tuple[MixOutput, MixOutput]:
        """x̃ = mix(a, a[j], λ), x̃' = mix(b, b[j], λ): one op and one per-sample λ, boxes placed independently."""
        n = a.shape[0]
        index = flip_index(n, a.device)
        lam = sdmp_lambda(rng, n)
        op = self.mixing.pick(rng)
        return self.mixing(op, a, lam, index, rng), self.mixing(op, b, lam, index, rng)

    def ssl_loss(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor) -> dict[str, torch.Tensor]:
        out, t_logits, probs = self.dino_terms(views, feats0)
        swap = bool(self.rng.np.random() < SWAP_PROB)  # host draw: no sync
        a, b = (1, 0) if swap else (0, 1)
        mixed, mixed_t = self.mix_pair(views[a], views[b], self.rng)
        student = self.head(self.backbone(mixed.x).flatten(1), self.last_layer_frozen())
        teacher_mixed = sharpen(self.teacher_logits([mixed_t.x])[0], self.center, self.teacher_temp())
        lam_c = shared_ratio(mixed.lam, mixed_t.lam, mixed.index)
        source, mixture = sdmp_dino_targets(probs[b], teacher_mixed, mixed.lam, lam_c, mixed.index)
        loss_s = soft_cross_entropy(source, student, self.student_temperature)
        loss_m = soft_cross_entropy(mixture, student, self.student_temperature)
        self.update_center(t_logits)
        out["loss_dino"] = out["loss"].detach()
        out["loss_mix_source"], out["loss_mix_mix"] = loss_s.detach(), loss_m.detach()
        out["loss"] = out["loss"] + self.source_weight * loss_s + self.mix_weight * loss_m
        return out

    def mix_preview(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        """The student's mixed global crop for a clean batch (no gradients), y_b the partner's label."""
        n = x.shape[0]
        with torch.no_grad():
            return self.mixing(self.mixing.pick(rng), x, sdmp_lambda(rng, n), flip_index(n, x.device), rng, y=y)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["sdmp"] = ("mixbench's formulation for DINO (spec 4.b): L = L_DINO + w_s·H(λ P_t(b_i) + (1−λ) P_t(b_j), "
                       "P_s(x̃_i)) + w_m·H((P_t(x̃'_i) + λc P_t(x̃'_j))/(1+λc), P_s(x̃_i)), j = b−1−i, "
                       f"λ = 0.1 + 0.8·Beta(1,1) per sample, one of {self.mixers} per step, global crops swapped "
                       f"with p = {SWAP_PROB}")
        return out


__all__ = ["DINOSDMP", "DINO_SDMP_PARAMS", "sdmp_dino_targets", "soft_cross_entropy"]
