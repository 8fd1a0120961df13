"""SDMP (Ren et al., CVPR 2022): mixed images as extra positives of their sources and of each other.

Per step: swap the two views with probability ½ (one host coin, the same on every process), draw
λ'_i ~ 0.1 + 0.8·Beta(1, 1) per image and one op per batch from ``mixers``; mix both views with their mirrors
(j = b−1−i) at the same λ' but independently placed boxes: ṽ_1, ṽ_2.
q_1 = g(f(v_1)), q̃_2 = g(f(ṽ_2)); without grad k_1, k_2, k̃_1 = f_m(v_1), f_m(v_2), f_m(ṽ_1). With P^{q,k}_i the
softmax over keys and λ, λc realised (see ``mixing``): L = L_src + ½ L_ms + ½ L_mm, each ×2T, where
L_src = NCE(q_1, k_2), L_ms on (q̃_2, k_1) with t_i = λ_i e_i + (1 − λ_i) e_j, L_mm on (q̃_2, k̃_1) with
t_i = (e_i + λc_i e_j)/(1 + λc_i); ``mix_loss = "weighted_ce"``: −Σ_j t_ij log P_i(j) (the founding pseudo-code),
``"mixture_likelihood"``: −log Σ_j t_ij P_i(j) (the latest official code).
BYOL + SDMP (mixbench's formulation): the same terms with BYOL's regression, ℓ(p, t) = Σ_j t_ij (2 − 2 cos(p_i, z_j)).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mixbench.data.gpu_loader import Views
from mixbench.methods.base import METHODS, MethodContext
from mixbench.methods.ssl.byol import BYOL_PARAMS
from mixbench.methods.ssl.hooks import BYOLHooks, MoCoV3Hooks
from mixbench.methods.ssl.mixing import (
    SDMP_MIXERS,
    FlipMixing,
    flip_index,
    mixer_list_problems,
    mixture_targets,
    sdmp_lambda,
    shared_ratio,
    source_targets,
)
from mixbench.methods.ssl.mocov3 import MOCOV3_PARAMS
from mixbench.mixing.base import MixOutput, MixRNG
from mixbench.params import Param, RunFacts

MIX_LOSSES = ("weighted_ce", "mixture_likelihood")


def sdmp_params(mix_losses: tuple[str, ...] = MIX_LOSSES) -> dict[str, Param]:
    """The keys SDMP adds to its framework's: the mixing ops and the loss form."""
    return {
        "mixers": Param("str_list", SDMP_MIXERS, "mixing ops, one drawn uniformly per batch (mixup, cutmix, "
                                                 "resizemix or another image-space mixer)"),
        "mix_loss": Param("str", "weighted_ce", "weights on the per-positive losses (founding pseudo-code) or on "
                                                "probabilities (latest official code)", choices=mix_losses),
    }


SWAP_PROB = 0.5  # SDMP's per-iteration coin: which view is mixed for the query

PAIRING = ("i <-> b-1-i within each process's batch of b images (the reference pairs over the all-process batch); "
           "keys are gathered from every process where the framework gathers them")


class SDMP:
    """Mixin: SDMP's step on a framework's hooks (``mixbench.methods.ssl.hooks``); put it first in the bases."""

    mixes = True
    mixers: list[str]
    mix_loss: str

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        self.flip_mixing = FlipMixing(self.mixers)

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        names = values.get("mixers", cls.params["mixers"].default)
        return super().check(values, where, origin, facts) + mixer_list_problems(names, "mixers", where, origin)

    def forward(self, batch: Views) -> dict[str, torch.Tensor]:
        """Swap the two views with probability ½, then the SSL step; the online classifier reads the first view.

        The coin is a host draw of the mixing generator: no device sync, no copy, and the same on every process
        (the reference's one coin per iteration for all GPUs)."""
        views, y = batch
        if self.ctx.rng.np.random() < SWAP_PROB:
            views = (views[1], views[0], *views[2:])
        return super().forward(Views(tuple(views), y))

    def mix_term(self, q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The framework's loss of ``q`` against keys ``k`` on soft targets, in the ``mix_loss`` form."""
        if self.mix_loss == "weighted_ce":
            return self.pair_loss(q, k, targets)
        return self.mixture_pair_loss(q, k, targets)

    def ssl_loss(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor) -> dict[str, torch.Tensor]:
        v1, v2 = views[0], views[1]
        b, rng = v1.shape[0], self.ctx.rng
        index, lam = flip_index(b, v1.device), sdmp_lambda(rng, b)
        op = self.flip_mixing.pick(rng)
        mix2 = self.flip_mixing(op, v2, lam, index, rng)  # the query side
        mix1 = self.flip_mixing(op, v1, lam, index, rng)  # same λ', boxes placed independently
        q1, z1 = self.query_features(feats0)
        q2m = self.query(mix2.x)
        k1, k2, k1m = (self.targets(v)[0] for v in (v1, v2, mix1.x))
        n_keys, offset = self.pair_layout(b)
        t_ms = source_targets(mix2.lam, index, n_keys, offset)
        t_mm = mixture_targets(shared_ratio(mix2.lam, mix1.lam, index), index, n_keys, offset)
        loss_src = self.pair_loss(q1, k2)
        loss_ms, loss_mm = self.mix_term(q2m, k1, t_ms), self.mix_term(q2m, k1m, t_mm)
        return {"loss": loss_src + 0.5 * loss_ms + 0.5 * loss_mm, "embedding": z1,
                "loss_source": loss_src.detach(), "loss_mix_source": loss_ms.detach(),
                "loss_mix_mix": loss_mm.detach()}

    def mix_preview(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n = x.shape[0]
        index, lam = flip_index(n, x.device), sdmp_lambda(rng, n)
        with torch.no_grad():
            return self.flip_mixing(self.flip_mixing.pick(rng), x, lam, index, rng, y)

    def describe(self) -> dict[str, Any]:
        form = ("weighted_ce: λ·ℓ(pos i) + (1−λ)·ℓ(pos j) and (ℓ(i) + λc·ℓ(j))/(1 + λc)"
                if self.mix_loss == "weighted_ce" else
                "mixture_likelihood: −log(λ P(i) + (1−λ) P(j)) and −log((P(i) + λc P(j))/(1 + λc))")
        return {**super().describe(), "sdmp_loss": f"L_src + ½ L_ms + ½ L_mm; {form}", "sdmp_pairing": PAIRING,
                "sdmp_lambda": "per sample, 0.1 + 0.8·Beta(1, 1), the share of x_i actually kept"}


SDMP_DIFFERS = ("every image is mixed (the released code's never-true paste condition is not ported), with an op "
                "drawn per batch from `mixers` (the released code only pastes ResizeMix-style) and λ the share "
                "actually kept; pairs i <-> b-1-i within each process's batch instead of the all-GPU batch; two views "
                "(the README's plug-in uses four)")


@METHODS.register("mocov3_sdmp", doc="MoCo v3 + SDMP: mixed images as positives of their sources and of each other")
class MoCoV3SDMP(SDMP, MoCoV3Hooks):
    """MoCo v3 + SDMP (see the module docstring)."""

    params: ClassVar[dict[str, Param]] = {**MOCOV3_PARAMS, **sdmp_params()}
    differs: ClassVar[str] = SDMP_DIFFERS


@METHODS.register("byol_sdmp", doc="BYOL + SDMP (mixbench's formulation: SDMP's terms with BYOL's regression)")
class BYOLSDMP(SDMP, BYOLHooks):
    """BYOL + SDMP: MoCo v3's SDMP terms with weights on BYOL's regressions (see the module docstring)."""

    params: ClassVar[dict[str, Param]] = {**BYOL_PARAMS, **sdmp_params(("weighted_ce",))}
    differs: ClassVar[str] = ("mixbench's formulation (SDMP publishes MoCo v3 and DINO only): the MoCo v3 terms with "
                              "BYOL's regression weighted by the same targets, no mixture-likelihood form; "
                              + SDMP_DIFFERS)


__all__ = ["SDMP", "MoCoV3SDMP", "BYOLSDMP", "sdmp_params", "MIX_LOSSES"]
