"""AutoMix: a learned Mix Block trained against a momentum encoder, the classifier on its mixes.

Per step, two independent draws (λ_mb, π_mb) and (λ_bb, π_bb). Stage features ``z`` of the clean
batch come from the momentum encoder f_k (no grad). The Mix Block makes ``S_mb = M(z, z[π_mb], λ_mb)``
(with graph) and ``S_bb`` (detached; plain Mixup when λ_bb is within ``lam_margin`` of 0 or 1).
``L_φ = ℓ_gen(f_k(x̃_mb); y, y[π_mb], λ_mb) + w·L_mask`` reaches φ only through x̃_mb (f_k frozen);
``L_θ = CE(h_one(f_q(x)), y) + ℓ(h_mix(f_q(x̃_bb)); y, y[π_bb], λ_bb)``; one backward of L_θ + L_φ;
then ``θ_k ← m θ_k + (1 − m) θ_q`` with m on a cosine schedule. Labels use the sampled λ.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.engine.momentum import MomentumTeacher
from mixbench.losses.decoupled import eta_balanced
from mixbench.methods.base import METHODS, Method, MethodContext, ParamGroup
from mixbench.mixing.base import PAIRING, MixOutput, MixRNG, draw_pairing, stage_problems
from mixbench.mixing.features import eval_mode
from mixbench.mixing.learned import (
    LAM_ENCODINGS,
    QK_MODES,
    VALUE_NETS,
    MixBlock,
    adjust_mask_mean,
    encoder_state,
    mask_loss,
    stage_features,
)
from mixbench.params import Param, RunFacts, show_number

MIXER_FILE_VERSION = 1


def neg_weight_soft_ce(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor,
                       eta: float) -> torch.Tensor:
    """OpenMixup's Mixer loss: −Σ_c w_c t_c log p_c with w = 1 on the mixed classes, η elsewhere.

    Since the mixed target t_c is 0 on every other class, η multiplies zeros: this equals the
    mixup CE for every η (spec 2.g-1). Kept to reproduce the published SAMix numbers.
    """
    k = logits.shape[1]
    t = F.one_hot(y_a, k).float() * lam.view(-1, 1) + F.one_hot(y_b, k).float() * (1 - lam.view(-1, 1))
    w = torch.full_like(t, eta)
    w.scatter_(1, y_a.view(-1, 1), 1.0).scatter_(1, y_b.view(-1, 1), 1.0)
    return -(w * t * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


AUTOMIX_PARAMS: dict[str, Param] = {
    "alpha": Param("float", 2.0, "Beta(alpha, alpha) concentration of both λ draws", low=0, low_open=True),
    "pairing": PAIRING,
    "feature_stage": Param("int", 3, "residual stage whose output feeds the Mixer (3 = openmixup mask_layer 2)",
                        low=1),
    "lam_margin": Param("float", 0.08, "λ_bb this close to 0 or 1 falls back to plain Mixup", low=0, high=0.5,
                     high_open=True),
    "mask_loss_weight": Param("float", 0.1, "weight of the mask loss", low=0),
    "mask_loss_schedule": Param("str", "constant", "mask loss weight over training", choices=("constant", "cosine")),
    "mask_margin": Param("float", 0.1, "ε of max(|λ − mean(S₀)| − ε, 0)", low=0, high=1),
    "mask_var_weight": Param("float", 0.0, "weight of the −Var(S) term of the mask loss (SAMix: 2)", low=0),
    "mask_adjust": Param("float", 0.0, "chance that the backbone mask is rescaled to mean λ_bb", low=0, high=1),
    "lam_encoding": Param("str", "none", "how λ enters the Mixer", choices=LAM_ENCODINGS),
    "lam_mul_k": Param("float", -1.0, "lam_encoding 'mul': λ′ rescaling k (< 0: λ′ = λ)"),
    "value_net": Param("str", "linear", "Mixer value branch", choices=VALUE_NETS),
    "qk": Param("str", "shared", "query/key: one shared conv per image, or two convs on [z_i; z_j]",
             choices=QK_MODES),
    "upsample": Param("str", "nearest", "mask upsampling before the sigmoid", choices=("nearest", "bilinear")),
    "mixer_loss": Param("str", "eta_balanced", "Mixer's classification loss: L_local + η·L_global, or the "
                     "reference's soft CE with class weight η on other classes (η has no effect)",
                     choices=("eta_balanced", "neg_weight_ce")),
    "eta": Param("float", 1.0, "η of the Mixer's loss (1 = mixup CE)", low=0),
    "momentum": Param("float", 0.999, "EMA momentum of f_k at the start", low=0, high=1),
    "momentum_end": Param("float", 0.999999, "EMA momentum at the end (cosine)", low=0, high=1),
    "momentum_warmup": Param("float", 0.1, "fraction of training with constant momentum", low=0, high=1),
    "mixer_lr": Param("float", None, "Mixer's peak lr (default [train].lr)", low=0, low_open=True, optional=True),
    "mixer_min_lr": Param("float", None, "Mixer's final lr (default [train].min_lr)", low=0, optional=True),
}


MAX_MIXER_LR = 10.0  # as [train].lr: a larger step overflows float32 parameters


@METHODS.register("automix")
class AutoMix(Method):
    """AutoMix: a Mix Block learned against a momentum encoder (two-pass step, mask loss)."""

    params: ClassVar[dict[str, Param]] = AUTOMIX_PARAMS
    mixes = True  # the backbone-side learned mix
    differs: ClassVar[str] = ("one λ per batch as the reference; the mask-adjust rescales to λ_bb "
                              "(the reference uses λ_mb); the upsampling factor is input size / feature size")

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        online = self.model
        self.head_one = nn.Linear(online.backbone.num_features, ctx.num_classes).to(ctx.device)
        # f_k: EMA of the parameters only; its BatchNorm runs in train mode on its own batches
        self.momentum_teacher = MomentumTeacher(online, self.momentum, self.momentum_end, self.momentum_warmup,
                                                ctx.total_steps, copy_buffers=False, train_mode=True)
        image = ctx.model_spec.get("image_size", 32)
        with torch.no_grad(), eval_mode(online):
            probe = stage_features(online, torch.zeros(1, 3, image, image, device=ctx.device), self.feature_stage)
        self.mix_block = MixBlock(probe.shape[1], lam_encoding=self.lam_encoding, lam_mul_k=self.lam_mul_k,
                                  value_net=self.value_net, qk=self.qk, upsample=self.upsample).to(ctx.device)

    @property
    def momentum_encoder(self) -> nn.Module:
        """f_k: the momentum copy of the classifier."""
        return self.momentum_teacher.module

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        """Also: the Mixer reads a residual stage of a built-in backbone; its lrs are at most 10 (as [train].lr)."""
        out = stage_problems("feature_stage", [values["feature_stage"]], where, origin, facts,
                             what="read Mixer features", low=1)
        for key in ("mixer_lr", "mixer_min_lr"):
            if values.get(key) is not None and values[key] > MAX_MIXER_LR:
                out.append(f"{origin.get(key, 'recipe')}: {where}.{key}: expected a number <= {MAX_MIXER_LR:g}, "
                           f"got {show_number(values[key])}")
        if values["momentum_end"] < values["momentum"]:
            out.append(f"{origin.get('momentum_end', 'recipe')}: {where}.momentum_end must be >= "
                       f"{where}.momentum ({values['momentum']})")
        lr, min_lr = values.get("mixer_lr"), values.get("mixer_min_lr")
        if lr is not None and min_lr is not None and min_lr > lr:
            out.append(f"{origin.get('mixer_min_lr', 'recipe')}: {where}.mixer_min_lr must not exceed "
                       f"{where}.mixer_lr")
        return out

    # ------------------------------------------------------------ pieces of the step

    def _draw(self, n: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One (λ, π) draw: λ on the host (no sync), λ as an [N] tensor, π on the device."""
        lam = float(self.ctx.rng.np.beta(self.alpha, self.alpha))
        lam_t = torch.full((n,), lam, device=self.ctx.device)
        return lam, lam_t, draw_pairing(self.ctx.rng, n, self.ctx.device, self.pairing)

    def _mask(self, z: torch.Tensor, index: torch.Tensor, lam_t: torch.Tensor, size) -> torch.Tensor:
        """S₀ (weight of x_i), [N, 1, H, W]."""
        return 1.0 - self.mix_block(z, z[index], lam_t, size)

    def _backbone_mask(self, z, index, lam: float, lam_t, size, x) -> torch.Tensor:
        """The detached mask the classifier trains on, with the λ-margin fallback and mask adjust."""
        if lam <= self.lam_margin or 1 - lam <= self.lam_margin:
            return torch.full((x.shape[0], 1, 1, 1), lam, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            s0 = self._mask(z, index, lam_t, size)
            if self.mask_adjust and self.ctx.rng.np.random() < self.mask_adjust:
                s0 = adjust_mask_mean(s0, lam_t)
        return s0.to(x.dtype)

    def _generator_loss(self, logits, y_a, y_b, lam_t) -> torch.Tensor:
        if self.mixer_loss == "neg_weight_ce":
            return neg_weight_soft_ce(logits, y_a, y_b, lam_t, self.eta)
        return eta_balanced(logits, y_a, y_b, lam_t, self.eta)

    def _mask_weight(self) -> float:
        if self.mask_loss_schedule == "cosine":
            t = min(self.global_step / max(1, self.ctx.total_steps), 1.0)
            return self.mask_loss_weight * (math.cos(math.pi * t) + 1) / 2
        return self.mask_loss_weight

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        n, size = x.shape[0], x.shape[-2:]
        lam_mb, lam_mb_t, idx_mb = self._draw(n)
        lam_bb, lam_bb_t, idx_bb = self._draw(n)
        with torch.no_grad():
            z = stage_features(self.momentum_encoder, x, self.feature_stage)
        # Mixer update: gradients flow through the frozen momentum encoder into the mask only.
        s0_mb = self._mask(z, idx_mb, lam_mb_t, size)
        x_mb = torch.lerp(x[idx_mb], x, s0_mb.to(x.dtype))
        gen = self._generator_loss(self.momentum_encoder(x_mb), y, y[idx_mb], lam_mb_t)
        l_mask = mask_loss(s0_mb, lam_mb_t, self.mask_margin, self.mask_var_weight)
        loss_mixer = gen + self._mask_weight() * l_mask
        # Classifier update on the clean batch and on the detached mix.
        s0_bb = self._backbone_mask(z, idx_bb, lam_bb, lam_bb_t, size, x)
        x_bb = torch.lerp(x[idx_bb], x, s0_bb)
        loss_one = self.ctx.loss(self.head_one(self.model.forward_features(x)), y)
        loss_mix = self.ctx.loss(self.model(x_bb), y, y[idx_bb], lam_bb_t)
        loss_encoder = loss_one + loss_mix
        return {"loss": loss_encoder + loss_mixer, "loss_encoder": loss_encoder, "loss_mixer": loss_mixer,
                "loss_mask": l_mask.detach()}

    # ------------------------------------------------------------ engine hooks

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup("model", self.model), ParamGroup("head_one", self.head_one),
                ParamGroup("mixer", self.mix_block, lr=self.mixer_lr, min_lr=self.mixer_min_lr)]

    def on_step_end(self, step: int) -> None:
        """θ_k ← m θ_k + (1 − m) θ_q for the backbone and the mixup head (BN statistics stay f_k's own)."""
        self.momentum_teacher.update(self.model, step)

    def classifiers(self) -> dict[str, nn.Module]:
        return {"": self.model, "momentum": self.momentum_encoder}

    def mix_preview(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n = x.shape[0]
        lam = float(rng.np.beta(self.alpha, self.alpha))
        lam_t = torch.full((n,), lam, device=x.device)
        index = draw_pairing(rng, n, x.device, self.pairing)
        with torch.no_grad(), eval_mode(self.momentum_encoder), eval_mode(self.mix_block):
            z = stage_features(self.momentum_encoder, x, self.feature_stage)
            s0 = self._mask(z, index, lam_t, x.shape[-2:]).to(x.dtype)
        return MixOutput(torch.lerp(x[index], x, s0), y, y[index], lam_t, index, s0)

    def export(self) -> dict[str, Any]:
        """``mixer.pt``: the Mixer and the part of the momentum backbone it reads (up to its stage), for SAMix^P."""
        return {"mixer.pt": {
            "kind": "mixbench-mixer", "version": MIXER_FILE_VERSION, "method": type(self).__name__.lower(),
            "mixer_config": dict(self.mix_block.config), "mixer": self.mix_block.state_dict(),
            "feature_stage": self.feature_stage, "encoder_spec": dict(self.ctx.model_spec),
            "encoder": encoder_state(self.momentum_encoder.backbone, self.feature_stage),
        }}


