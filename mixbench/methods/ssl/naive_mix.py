"""Naive mixing for any self-supervised framework (i-Mix / MoCoMix style): the baseline SDMP improves on.

The query view is mixed by a registered mixer with its own (λ, π): x̃_i = M ⊙ x¹_i + (1 − M) ⊙ x¹_{π(i)}; its
online output q̃ is pulled to the keys of the other view of both sources with the framework's own loss on soft
targets t_i = λ_i e_i + (1 − λ_i) e_{π(i)}: L = L_framework + w·ℓ(q̃, k², t). For MoCo v3 ℓ is 2T·Σ_j −t_ij log P_i(j)
(λ-weighted InfoNCE); for BYOL-type regression it is Σ_j t_ij (2 − 2 cos(q̃_i, z²_j)) (``mixing.soft_regression``).
For MoCo v2 the batch's keys join the logits ahead of the queue (i-Mix's MoCo form); for SimCLR ℓ is
−Σ_j t_ij log softmax_j(cos(q̃_i, z²_j)/T) over every process's view-2 projections, which keep their gradient (i-Mix's
N-pair form). A framework plugs in with one line, ``class XMix(NaiveMix, XHooks)``, ``XHooks`` giving the hooks of
``mixbench.methods.ssl.hooks``; DINO's variant (``dino_mix``) reuses the mixin with its own loss.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mixbench.methods.base import METHODS, MethodContext
from mixbench.methods.ssl.byol import BYOL_PARAMS
from mixbench.methods.ssl.hooks import BYOLHooks, MoCoV2Hooks, MoCoV3Hooks, SimCLRHooks
from mixbench.methods.ssl.mixing import mixer_list_problems, source_targets, usable_mixers
from mixbench.methods.ssl.mocov2 import MOCOV2_PARAMS
from mixbench.methods.ssl.mocov3 import MOCOV3_PARAMS
from mixbench.methods.ssl.simclr import SIMCLR_PARAMS
from mixbench.mixing.base import MixOutput, MixRNG
from mixbench.mixing.switch import Switch
from mixbench.params import Param, RunFacts


def naive_params() -> dict[str, Param]:
    """The keys naive mixing adds: the mixer list, their probabilities, the loss weight, one table per mixer."""
    return {
        "mixers": Param("str_list", ["mixup"], "mixers for the query view, one drawn per batch"),
        "probs": Param("float_list", [], "their probabilities (normalised; default: equal)"),
        "mix_weight": Param("float", 1.0, "weight w of the mixed-query term", low=0),
        **{name: Param("table", {}, f"settings of {name} (as its [method] keys)") for name in usable_mixers()},
    }


class NaiveMix:
    """Mixin: the framework's loss plus w × its loss of a mixed query view against both sources' keys.

    Put it before the framework's hooks class in the bases; it reads ``mixers``, ``probs``, ``mix_weight`` and
    the per-mixer tables of :func:`naive_params`.
    """

    mixes = True
    naive_loss: ClassVar[str] = ("L_framework + mix_weight × its loss of the mixed query view against the other view's "
                                 "keys with targets λ on the image, 1 − λ on its partner (pairs within each process)")
    mixers: list[str]
    probs: list[float]
    mix_weight: float

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        tables = {m: getattr(self, m) for m in dict.fromkeys(self.mixers)}
        self.naive_mixer = Switch(mixers=list(self.mixers), probs=list(self.probs), **tables)

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        out = super().check(values, where, origin, facts)
        names = values.get("mixers", cls.params["mixers"].default)
        bad = mixer_list_problems(names, "mixers", where, origin)
        if bad:
            return out + bad
        sub = {"mixers": names, "probs": values.get("probs", []),
               **{m: values.get(m) or {} for m in usable_mixers()}}
        out += Switch.check(sub, where, origin, facts)
        values.update({m: sub[m] for m in usable_mixers()})  # settings filled with each mixer's defaults
        return out

    def mix_query_view(self, x: torch.Tensor) -> MixOutput:
        """x̃ = mix(x, x[π]) by this batch's mixer, with its own λ and pairing π within this process's rows."""
        return self.naive_mixer(x, torch.arange(x.shape[0], device=x.device), self.ctx.rng)

    def ssl_loss(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor) -> dict[str, torch.Tensor]:
        out, keys, _ = self.clean_pass(views, feats0)
        mix = self.mix_query_view(views[0])
        n_keys, offset = self.pair_layout(views[0].shape[0])
        loss_mix = self.pair_loss(self.query(mix.x), keys[1], source_targets(mix.lam, mix.index, n_keys, offset))
        out["loss_mix"] = loss_mix.detach()
        out["loss"] = out["loss"] + self.mix_weight * loss_mix
        return out

    def mix_preview(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        with torch.no_grad():
            return self.naive_mixer(x, y, rng)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "naive_mixing": self.naive_mixer.describe(), "naive_loss": self.naive_loss}


NAIVE_DIFFERS = ("keeps the framework's own loss and adds the mixed-query term (i-Mix replaces it; MoCoMix adds it "
                 "as here); any registered image-space mixer, one per batch, with its own λ and pairing within each "
                 "process's batch")


@METHODS.register("mocov3_mix", doc="MoCo v3 + naive mixing (i-Mix style λ-weighted InfoNCE on a mixed query view)")
class MoCoV3Mix(NaiveMix, MoCoV3Hooks):
    """MoCo v3 + naive mixing (see the module docstring)."""

    params: ClassVar[dict[str, Param]] = {**MOCOV3_PARAMS, **naive_params()}
    differs: ClassVar[str] = NAIVE_DIFFERS


@METHODS.register("mocov2_mix", doc="MoCo v2+ + naive mixing (i-Mix style: soft targets over batch keys + queue)")
class MoCoV2Mix(NaiveMix, MoCoV2Hooks):
    """MoCo v2+ + naive mixing (see the module docstring)."""

    params: ClassVar[dict[str, Param]] = {**MOCOV2_PARAMS, **naive_params()}
    differs: ClassVar[str] = NAIVE_DIFFERS


@METHODS.register("byol_mix", doc="BYOL + naive mixing (λ-weighted regression of a mixed view to both targets)")
class BYOLMix(NaiveMix, BYOLHooks):
    """BYOL + naive mixing: the mixed query regresses to both sources' targets, weights λ and 1 − λ."""

    params: ClassVar[dict[str, Param]] = {**BYOL_PARAMS, **naive_params()}
    differs: ClassVar[str] = ("mixbench's formulation (no reference mixes BYOL this way): λ-weighted regression "
                              "Σ_j t_ij (2 − 2 cos(p̃_i, z_j)) to this process's targets; " + NAIVE_DIFFERS)


@METHODS.register("simclr_mix", doc="SimCLR + naive mixing (i-Mix N-pair form: λ-weighted InfoNCE of a mixed view "
                                    "against view 2's projections)")
class SimCLRMix(NaiveMix, SimCLRHooks):
    """SimCLR + naive mixing: L = NT-Xent + w·mean_i −Σ_j t_ij log softmax_j(cos(q̃_i, z²_j)/T), keys with gradient."""

    params: ClassVar[dict[str, Param]] = {**SIMCLR_PARAMS, **naive_params()}
    differs: ClassVar[str] = ("the mixed view's keys are view 2's N projections (not NT-Xent's 2N rows), keeping "
                              "their gradient as in i-Mix's N-pair form, gathered from every process with it; "
                              + NAIVE_DIFFERS)


__all__ = ["NaiveMix", "MoCoV3Mix", "MoCoV2Mix", "BYOLMix", "SimCLRMix", "naive_params", "NAIVE_DIFFERS"]
