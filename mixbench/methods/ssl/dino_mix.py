"""DINO + naive mixing (mixbench's formulation): a mixed global crop distilled to the λ-mixed teacher distributions.

x̃_i = M ⊙ x¹_i + (1 − M) ⊙ x¹_{π(i)} by a registered mixer (its own λ and pairing π within this process's batch);
with P_t, P_s DINO's centred, sharpened teacher and student distributions and H(p, q) = −Σ_k p_k log q_k,

    L = L_DINO + w · mean_i H(λ_i P_t(x²_i) + (1 − λ_i) P_t(x²_{π(i)}), P_s(x̃_i)),

P_t(x²) being the teacher's probabilities of the other (clean) global crop that DINO already computed; the teacher
never sees x̃ and the centre is updated from the clean global crops' teacher logits only, as plain DINO.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from mixbench.methods.base import METHODS
from mixbench.methods.ssl.dino import DINO_PARAMS, DINOLike
from mixbench.methods.ssl.dino_sdmp import soft_cross_entropy
from mixbench.methods.ssl.naive_mix import NAIVE_DIFFERS, NaiveMix, naive_params
from mixbench.params import Param


def mixed_teacher_targets(teacher_probs: torch.Tensor, lam: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[b, K] float32 targets λ_i P_i + (1 − λ_i) P_{index[i]}: ``mixing.source_targets``'s t_i = λ_i e_i +
    (1 − λ_i) e_{index[i]} applied to the rows of ``teacher_probs`` (rows are distributions, so targets are);
    elementwise, so autocast leaves it in float32."""
    p = teacher_probs.float()
    return torch.lerp(p[index], p, lam.float().view(-1, 1))


@METHODS.register(
    "dino_mix",
    doc="DINO + naive mixing: a mixed global crop distilled to the λ-mixed teacher "
    "distributions (mixbench's formulation; self-supervised)",
)
class DINOMix(NaiveMix, DINOLike):
    """DINO + naive mixing (see the module docstring); the mixer keys are :func:`naive_params`'s."""

    params: ClassVar[dict[str, Param]] = {**DINO_PARAMS, **naive_params()}
    differs: ClassVar[str] = (
        "mixbench's formulation (no reference mixes DINO this way): the student's mixed global "
        "crop against λ P_t(x²_i) + (1 − λ) P_t(x²_π(i)) of the clean other crop, added to "
        "DINO's loss; " + NAIVE_DIFFERS
    )
    naive_loss: ClassVar[str] = (
        "L_DINO + mix_weight × mean_i H(λ_i P_t(x²_i) + (1 − λ_i) P_t(x²_π(i)), P_s(x̃_i)), "
        "x̃ = mix(x¹, x¹_π) through the student only, P_t of the clean second global crop, "
        "centre from clean teacher logits (pairs within each process)"
    )

    def ssl_loss(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor) -> dict[str, torch.Tensor]:
        out, t_logits, probs = self.dino_terms(views, feats0)
        mix = self.mix_query_view(views[0])
        student = self.head(self.backbone(mix.x).flatten(1), self.last_layer_frozen())
        target = mixed_teacher_targets(probs[1], mix.lam, mix.index)
        loss_mix = soft_cross_entropy(target, student, self.student_temperature)
        self.update_center(t_logits)
        out["loss_dino"] = out["loss"].detach()
        out["loss_mix"] = loss_mix.detach()
        out["loss"] = out["loss"] + self.mix_weight * loss_mix
        return out


__all__ = ["DINOMix", "mixed_teacher_targets"]
