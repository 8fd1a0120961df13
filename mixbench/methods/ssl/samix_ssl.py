"""SAMix without labels (spec 2.e): a learned Mixer for contrastive frameworks, trained through the target network.

Per step, after the framework's own loss (which also yields keys k^q, k^k of the views x^q = view 1, x^k = view 2
and the target's stage features f^q, f^k): two draws (λ, π) with λ ~ Beta(α, α) and π(i) ≠ i. Cross-view mixing
x̃_i = S₀ ⊙ x^q_i + (1 − S₀) ⊙ x^k_{π(i)}, S₀ = 1 − M(f^q_i, f^k_{π(i)}, λ); the positives of x̃_i are the *other*
views of its sources, k^k_i (share λ) and k^q_{π(i)} (share 1 − λ). With s_a, s_b their similarities to m̂ (/T) and s_n
the negatives': L_local = −λ log σ(s_a − s_b) − (1 − λ) log σ(s_b − s_a), L_global = −log((e^{s_a} + e^{s_b}) /
(e^{s_a} + e^{s_b} + Σ_n e^{s_n})). Mixer: L_η = L_local + η L_global on m = f_m(x̃_mb) (f_m frozen, the gradient
reaches only M) plus w·(max(|λ − mean S₀| − ε, 0) − w_var Var(S₀)). Backbone: λ·NCE(q̃, pos a) + (1 − λ)·NCE(q̃, pos b),
each NCE without the other positive, on q = g(f(x̃_bb)) with the detached, mean-adjusted mask.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mixbench.losses.decoupled import eta_balanced
from mixbench.methods.automix import AUTOMIX_PARAMS, MAX_MIXER_LR, MIXER_FILE_VERSION
from mixbench.methods.base import METHODS, MethodContext, ParamGroup
from mixbench.methods.samix import SAMIX_DEFAULTS
from mixbench.methods.ssl.hooks import MoCoV2Hooks, MoCoV3Hooks
from mixbench.methods.ssl.mixing import derangement
from mixbench.methods.ssl.mocov2 import MOCOV2_PARAMS
from mixbench.methods.ssl.mocov3 import MOCOV3_PARAMS
from mixbench.mixing.base import MixOutput, MixRNG, stage_problems
from mixbench.mixing.features import eval_mode
from mixbench.mixing.learned import MixBlock, adjust_mask_mean, encoder_state, mask_loss, stage_features
from mixbench.params import Param, RunFacts, show_number

SHARED_KEYS = ("alpha", "feature_stage", "lam_margin", "mask_loss_weight", "mask_loss_schedule", "mask_margin",
               "mask_var_weight", "lam_encoding", "lam_mul_k", "value_net", "qk", "upsample", "eta", "mixer_lr",
               "mixer_min_lr")
# SAMix's Mixer; MoCoSAMix's defaults: no λ margin (lam_margin = -1), the mask-loss weight decays by a cosine
SSL_DEFAULTS = {**SAMIX_DEFAULTS, "lam_margin": 0.0, "mask_loss_schedule": "cosine"}


def samix_ssl_params() -> dict[str, Param]:
    """The keys SAMix adds to its framework's (AutoMix's Mixer keys with SAMix's defaults, and the SSL ones)."""
    params = {k: dataclasses.replace(AUTOMIX_PARAMS[k], default=SSL_DEFAULTS[k]) if k in SSL_DEFAULTS
              else AUTOMIX_PARAMS[k] for k in SHARED_KEYS}
    params["eta"] = dataclasses.replace(params["eta"], doc="η of the Mixer's L_local + η·L_global (1: mixup InfoNCE)")
    return {
        **params,
        "mixer_loss": Param("str", "eta_balanced", "the Mixer's loss: L_local + η·L_global, or the reference's "
                            "λ·NCE(pos a) + (1−λ)·NCE(pos b) (η unused)", choices=("eta_balanced", "infonce")),
        "mask_adjust": Param("str", "auto", "rescale a backbone mask whose mean is more than mean_margin from λ",
                             choices=("auto", "off")),
        "mean_margin": Param("float", 0.1, "mask_adjust 'auto': tolerated |mean(S₀) − λ|", low=0, high=1),
        "mix_weight": Param("float", 1.0, "weight of the backbone's mixup loss", low=0),
    }


def two_positive_nce(logits: torch.Tensor, col_a: torch.Tensor, col_b: torch.Tensor,
                     lam: torch.Tensor) -> torch.Tensor:
    """mean_i λ_i·CE(z_i without column b, a) + (1 − λ_i)·CE(z_i without column a, b) (openmixup's "infoNCE")."""
    z = logits.float()
    without_b = z.scatter(1, col_b.view(-1, 1), float("-inf"))
    without_a = z.scatter(1, col_a.view(-1, 1), float("-inf"))
    lam = lam.float()
    return (lam * F.cross_entropy(without_b, col_a, reduction="none")
            + (1 - lam) * F.cross_entropy(without_a, col_b, reduction="none")).mean()


class SAMixSSL:
    """Mixin: SAMix's Mixer and mixup losses on a contrastive framework's hooks; put it first in the bases."""

    mixes = True
    feature_stage: int
    alpha: float

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        image = ctx.model_spec.get("image_size", 32)
        with torch.no_grad(), eval_mode(self.backbone):
            probe = stage_features(self.backbone, torch.zeros(1, 3, image, image, device=ctx.device),
                                   self.feature_stage)
        self.mix_block = MixBlock(probe.shape[1], lam_encoding=self.lam_encoding, lam_mul_k=self.lam_mul_k,
                                  value_net=self.value_net, qk=self.qk, upsample=self.upsample).to(ctx.device)

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        """Also: the Mixer reads a residual stage of a built-in backbone; its lrs are at most 10, min ≤ peak."""
        out = super().check(values, where, origin, facts)
        out += stage_problems("feature_stage", [values["feature_stage"]], where, origin, facts,
                              what="read Mixer features", low=1)
        for key in ("mixer_lr", "mixer_min_lr"):
            if values.get(key) is not None and values[key] > MAX_MIXER_LR:
                out.append(f"{origin.get(key, 'recipe')}: {where}.{key}: expected a number <= {MAX_MIXER_LR:g}, "
                           f"got {show_number(values[key])}")
        lr, min_lr = values.get("mixer_lr"), values.get("mixer_min_lr")
        if lr is not None and min_lr is not None and min_lr > lr:
            out.append(f"{origin.get('mixer_min_lr', 'recipe')}: {where}.mixer_min_lr must not exceed "
                       f"{where}.mixer_lr")
        return out

    # ------------------------------------------------------------ pieces of the step

    def _draw(self, n: int, rng: MixRNG, device: torch.device) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One (λ, π): λ ~ Beta(α, α) on the host (no sync), as an [n] tensor, and a pairing without self-pairs."""
        lam = float(rng.np.beta(self.alpha, self.alpha))
        return lam, torch.full((n,), lam, device=device), derangement(n, rng.torch, device)

    def _mask(self, f_q: torch.Tensor, f_k: torch.Tensor, index: torch.Tensor, lam_t: torch.Tensor,
              size: tuple[int, int]) -> torch.Tensor:
        """S₀ [n, 1, H, W], the weight of x^q_i, from the features of exactly the two views it mixes."""
        return 1.0 - self.mix_block(f_q, f_k[index], lam_t, size)

    def _backbone_mask(self, f_q: torch.Tensor, f_k: torch.Tensor, index: torch.Tensor, lam: float,
                       lam_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The detached mask the encoder trains on: plain Mixup within ``lam_margin`` of 0 or 1, else the Mixer's
        mask, each sample rescaled to mean λ where its mean is more than ``mean_margin`` away (``mask_adjust``)."""
        if min(lam, 1 - lam) <= self.lam_margin:
            return torch.full((x.shape[0], 1, 1, 1), lam, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            s0 = self._mask(f_q, f_k, index, lam_t, x.shape[-2:])
            if self.mask_adjust == "auto":
                far = (s0.float().mean(dim=(1, 2, 3)) - lam_t).abs() > self.mean_margin
                s0 = torch.where(far.view(-1, 1, 1, 1), adjust_mask_mean(s0, lam_t), s0)
        return s0.to(x.dtype)

    def _mask_weight(self) -> float:
        if self.mask_loss_schedule == "cosine":
            t = min(self.global_step / max(1, self.ctx.total_steps), 1.0)
            return self.mask_loss_weight * (math.cos(math.pi * t) + 1) / 2
        return self.mask_loss_weight

    def mixer_objective(self, logits: torch.Tensor, col_a: torch.Tensor, col_b: torch.Tensor,
                        lam_t: torch.Tensor) -> torch.Tensor:
        """L_local + η·L_global (``eta_balanced``) or the reference's two-positive InfoNCE, ×``contrast_scale``."""
        if self.mixer_loss == "eta_balanced":
            return self.contrast_scale * eta_balanced(logits, col_a, col_b, lam_t, self.eta)
        return self.contrast_scale * two_positive_nce(logits, col_a, col_b, lam_t)

    def ssl_loss(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor) -> dict[str, torch.Tensor]:
        xq, xk = views[0], views[1]
        n, size, rng = xq.shape[0], xq.shape[-2:], self.ctx.rng
        out, (k_q, k_k), (f_q, f_k) = self.clean_pass(views, feats0, self.feature_stage)
        lam_mb, lam_mb_t, idx_mb = self._draw(n, rng, xq.device)
        lam_bb, lam_bb_t, idx_bb = self._draw(n, rng, xq.device)
        # Mixer pass: its mask with graph, the mix through the frozen target network (only M gets a gradient)
        s0_mb = self._mask(f_q, f_k, idx_mb, lam_mb_t, size)
        x_mb = torch.lerp(xk[idx_mb], xq, s0_mb.to(xq.dtype))
        logits, col_a, col_b = self.cross_view_logits(self.target_embed(x_mb), k_k, k_q, idx_mb)
        l_mask = mask_loss(s0_mb, lam_mb_t, self.mask_margin, self.mask_var_weight)
        loss_mixer = self.mixer_objective(logits, col_a, col_b, lam_mb_t) + self._mask_weight() * l_mask
        # Encoder pass on the detached mix: positives are the other views of both sources
        x_bb = torch.lerp(xk[idx_bb], xq, self._backbone_mask(f_q, f_k, idx_bb, lam_bb, lam_bb_t, xq))
        logits, col_a, col_b = self.cross_view_logits(self.query(x_bb), k_k, k_q, idx_bb)
        loss_mix = self.contrast_scale * two_positive_nce(logits, col_a, col_b, lam_bb_t)
        out["loss"] = out["loss"] + self.mix_weight * loss_mix + loss_mixer
        out.update(loss_mix=loss_mix, loss_mixer=loss_mixer, loss_mask=l_mask.detach())  # the engine detaches logs
        return out

    # ------------------------------------------------------------ engine hooks

    def param_groups(self) -> list[ParamGroup]:
        return [*super().param_groups(),
                ParamGroup("mixer", self.mix_block, lr=self.mixer_lr, min_lr=self.mixer_min_lr)]

    def mix_preview(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        """The Mixer's mix of a batch with itself as both views (target network and Mixer in eval mode)."""
        n = x.shape[0]
        lam, lam_t, index = self._draw(n, rng, x.device)
        with torch.no_grad(), eval_mode(self.target_backbone), eval_mode(self.mix_block):
            f = stage_features(self.target_backbone, x, self.feature_stage)
            s0 = self._mask(f, f, index, lam_t, x.shape[-2:]).to(x.dtype)
        return MixOutput(torch.lerp(x[index], x, s0), y, y[index], lam_t, index, s0)

    def export(self) -> dict[str, Any]:
        """``mixer.pt`` in supervised SAMix's format: the Mixer and the target backbone up to its stage (SAMix^P)."""
        return {**super().export(), "mixer.pt": {
            "kind": "mixbench-mixer", "version": MIXER_FILE_VERSION, "method": type(self).__name__.lower(),
            "mixer_config": dict(self.mix_block.config), "mixer": self.mix_block.state_dict(),
            "feature_stage": self.feature_stage, "encoder_spec": dict(self.ctx.model_spec),
            "encoder": encoder_state(self.target_backbone, self.feature_stage),
        }}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(),
                "samix_pairing": "cross-view x̃_i = S₀ x^q_i + (1 − S₀) x^k_π(i), π(i) ≠ i (a random n-cycle within "
                                 "each process's batch), positives k^k_i and k^q_π(i)",
                "samix_mixer_loss": ("L_local + η·L_global" if self.mixer_loss == "eta_balanced" else
                                     "λ·NCE(pos a) + (1−λ)·NCE(pos b), each without the other positive")}


SAMIX_SSL_DIFFERS = (
    "no pairing leak: π never pairs an image with itself (openmixup's default randperm does, and then the mix holds "
    "the pixels of both positives' own views) and the Mixer reads the features of exactly the two views it mixes "
    "(MoCoSAMix shuffles the view-k features a second time for the Mixer pass, so they belong to another image); "
    "the Mixer trains on L_local + η·L_global (mixer_loss = 'infonce' is the reference's form); no auxiliary "
    "latent-space loss or clustering mode; pairs within each process's batch (the reference shuffles over all GPUs)")


@METHODS.register("mocov3_samix", doc="MoCo v3 + SAMix: a label-free learned Mixer, cross-view mixup, η-balanced loss")
class MoCoV3SAMix(SAMixSSL, MoCoV3Hooks):
    """MoCo v3 + SAMix (see the module docstring): in-batch negatives, 2T scaling."""

    params: ClassVar[dict[str, Param]] = {**MOCOV3_PARAMS, **samix_ssl_params()}
    differs: ClassVar[str] = (
        "mixbench's port of MoCoSAMix to MoCo v3: the negatives are the batch's other view-k keys, without the keys "
        "of the two views pasted into the mix; " + SAMIX_SSL_DIFFERS)


@METHODS.register("mocov2_samix", doc="MoCo v2+ + SAMix (openmixup's MoCoSAMix setting, without its pairing leak)")
class MoCoV2SAMix(SAMixSSL, MoCoV2Hooks):
    """MoCo v2+ + SAMix (see the module docstring): negatives from view 2's queue, as MoCoSAMix."""

    params: ClassVar[dict[str, Param]] = {**MOCOV2_PARAMS, **samix_ssl_params()}
    differs: ClassVar[str] = ("two queues (one per view; the mix's negatives come from view 2's) where MoCoSAMix has "
                              "one; " + SAMIX_SSL_DIFFERS)


__all__ = ["SAMixSSL", "MoCoV3SAMix", "MoCoV2SAMix", "samix_ssl_params", "two_positive_nce", "SAMIX_SSL_DIFFERS"]
