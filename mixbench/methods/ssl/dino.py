"""DINO (Caron et al. 2021): self-distillation with no labels, solo-learn's CIFAR settings.

Student g_s = head ∘ f and teacher g_t (an EMA of the student) give K prototype logits per crop;
P_s(x) = softmax(g_s(x)/τ_s) and P_t(x) = softmax((g_t(x) − c)/τ_t) (centred by c, sharpened by τ_t < τ_s).
L = mean over pairs (teacher crop i of the 2 global crops, student crop j of all 2 + K crops, i ≠ j) of
mean_b H(P_t(x_i), P_s(x_j)), H(p, q) = −Σ_k p_k log q_k; then c ← m c + (1 − m)·mean of every teacher
logit row of the step (all processes), and θ_t ← τ θ_t + (1 − τ) θ_s, τ from 0.9995 to 1 on a cosine.

The prototype layer is frozen during the first ``freeze_last_layer`` epochs, decided from ``global_step``
and ``steps_per_epoch`` (Python ints: no host sync): its weight W enters the student's logits detached,
so it gets no gradient at all (``grad is None``), exactly as solo-learn's ``p.grad = None`` after backward,
and the optimiser skips it (no weight decay, no momentum or Adam state). The teacher temperature is
solo-learn's per-epoch linear warm-up from ``warmup_teacher_temperature`` over
``warmup_teacher_temperature_epochs`` epochs (default: 5 % of the run; solo-learn's ImageNet-100 config
warms up over 50 of 400 epochs, its CIFAR config over none: τ_t = 0.07 from epoch 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mixbench.engine.momentum import MomentumTeacher
from mixbench.methods.base import METHODS, MethodContext
from mixbench.methods.ssl.base import SSL_PARAMS, SelfSupervised
from mixbench.methods.ssl.mocov3 import Projected
from mixbench.models.heads import DINOHead
from mixbench.params import Param, RunFacts, show

N_GLOBAL = 2  # global crops: the teacher's inputs

DINO_PARAMS: dict[str, Param] = {
    **SSL_PARAMS,
    "proj_hidden": Param("int", 2048, "DINO head MLP hidden width (solo-learn proj_hidden_dim)", low=1),
    "proj_out": Param("int", 256, "DINO head bottleneck width (solo-learn proj_output_dim)", low=1),
    "num_prototypes": Param("int", 4096, "prototypes K: the width of the distributions P_s, P_t", low=2),
    "use_bn_in_head": Param("bool", False, "BatchNorm in the head's hidden layers"),
    "norm_last_layer": Param("bool", True, "prototypes' weight-norm g fixed at 1 (unit prototypes); false trains g "
                             "(solo-learn's ViT setting)"),
    "freeze_last_layer": Param("int", 1, "epochs at the start in which the prototype layer gets no gradient", low=0),
    "student_temperature": Param("float", 0.1, "student temperature τ_s", low=0, low_open=True),
    "teacher_temperature": Param("float", 0.07, "teacher temperature τ_t after the warm-up", low=0, low_open=True),
    "warmup_teacher_temperature": Param("float", 0.04, "teacher temperature in epoch 1 of the warm-up",
                                        low=0, low_open=True),
    "warmup_teacher_temperature_epochs": Param("int", None, "epochs of the linear teacher-temperature warm-up "
                                               "(per epoch, as solo-learn); unset: 5 % of [train].epochs, "
                                               "rounded (solo-learn: 50 of 400 on ImageNet-100, 0 on CIFAR)",
                                               low=0, optional=True),
    "center_momentum": Param("float", 0.9, "momentum m of the centre c", low=0, high=1, high_open=True),
    "momentum": Param("float", 0.9995, "teacher EMA τ at the start", low=0, high=1),
    "momentum_end": Param("float", 1.0, "teacher EMA τ at the end (cosine schedule)", low=0, high=1),
    "num_local_crops": Param("int", 0, "multi-crop: local crops per image besides the 2 global ones (student only); "
                             "solo-learn's CIFAR config uses 0", low=0, high=64),
    "local_crop_size": Param("int", 0, "local crops' side in pixels; 0: half the image side (16 at 32 px)",
                             low=0, high=4096),
    "local_crop_scale": Param("float_list", [0.05, 0.14], "local crops' RandomResizedCrop area range [lo, hi] "
                              "(the global crops then take [0.14, 1])"),
}


def teacher_temperature(epoch: int, warmup_epochs: int, start: float, end: float) -> float:
    """solo-learn's schedule: linspace(start, end, W)[e] for epoch e < W, then ``end``:
    τ_t(e) = start + (end − start)·e/(W − 1) (W = 1: ``start`` in epoch 0)."""
    if epoch < warmup_epochs:
        return start + (end - start) * epoch / max(warmup_epochs - 1, 1)
    return end


def default_warmup_epochs(epochs: int) -> int:
    """5 % of the run, rounded half up (solo-learn: 50 warm-up epochs of 400 on ImageNet-100, 0 on CIFAR)."""
    return math.floor(epochs / 20 + 0.5)


def dino_cross_entropy(student_logits: Sequence[torch.Tensor], teacher_probs: torch.Tensor,
                       student_temperature: float) -> torch.Tensor:
    """mean over (i < n_t, j < V, i ≠ j) of mean_b H(T_i, softmax(S_j/τ_s)), H(p, q) = −Σ_k p_k log q_k.

    ``student_logits``: V tensors [b, K] (global crops first); ``teacher_probs``: [n_t, b, K] (rows sum to 1).
    One einsum gives every (i, j) cross-entropy; the i = j pairs are masked by a constant weight (no sync).
    """
    logp = torch.stack([F.log_softmax(s.float() / student_temperature, dim=-1) for s in student_logits])
    n_t, b = teacher_probs.shape[0], teacher_probs.shape[1]
    ce = -torch.einsum("ibk,jbk->ij", teacher_probs.float(), logp) / b  # [n_t, V]
    off_diagonal = 1.0 - torch.eye(n_t, logp.shape[0], device=ce.device)
    return (ce * off_diagonal).sum() / (n_t * logp.shape[0] - min(n_t, logp.shape[0]))


def sharpen(teacher_logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """P_t = softmax((t − c)/τ_t) in float32 (centring and sharpening)."""
    return F.softmax((teacher_logits.float() - center) / temperature, dim=-1)


def batch_center(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean teacher logit row [1, K] over every row of every process (one all_reduce under torchrun)."""
    flat = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1])
    total, count = flat.sum(dim=0, keepdim=True), flat.shape[0]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
        count *= dist.get_world_size()
    return total / count


def _valid_scale(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and 0 < v[0] <= v[1] <= 1


class DINOLike(SelfSupervised):
    """What DINO and DINO + SDMP share: heads, teacher, centre, temperatures, multi-crop views."""

    params: ClassVar[dict[str, Param]] = DINO_PARAMS

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        self.head = DINOHead(self.feature_dim, self.proj_hidden, self.proj_out, self.num_prototypes,
                             use_bn=self.use_bn_in_head, norm_last_layer=self.norm_last_layer)
        self.student = Projected(self.backbone, self.head)
        self.teacher = MomentumTeacher(self.student, self.momentum, self.momentum_end, total_steps=ctx.total_steps,
                                       copy_buffers=False, train_mode=True)
        self.register_buffer("center", torch.zeros(1, self.num_prototypes))
        self.temperature_warmup_epochs = (default_warmup_epochs(ctx.epochs)
                                          if self.warmup_teacher_temperature_epochs is None
                                          else self.warmup_teacher_temperature_epochs)
        # DDP must look for the prototypes' missing gradient while they are frozen
        self.may_skip_params = self.freeze_last_layer > 0
        self.to(ctx.device)

    # ----------------------------------------------------------------- the views

    @classmethod
    def num_views(cls, values: dict[str, Any]) -> int:
        return N_GLOBAL + values.get("num_local_crops", cls.params["num_local_crops"].default)

    @classmethod
    def _overrides(cls, values: dict[str, Any]) -> Any:
        """``view_overrides`` with the local-crop keys put under ``local`` (the user's own ``local`` wins)."""
        overrides = values.get("view_overrides", cls.params["view_overrides"].default)
        if cls.num_views(values) <= N_GLOBAL or not isinstance(overrides, dict):
            return overrides
        local: dict[str, Any] = {}
        scale = values.get("local_crop_scale", cls.params["local_crop_scale"].default)
        if _valid_scale(scale):  # else ``check`` says so once
            local["scale"] = list(scale)
        size = values.get("local_crop_size", cls.params["local_crop_size"].default)
        if size:
            local["size"] = size
        user_local = overrides.get("local", {})
        return {**overrides, "local": {**local, **user_local} if isinstance(user_local, dict) else user_local}

    @classmethod
    def view_specs(cls, values: dict[str, Any]) -> tuple:
        """2 global views of ``[method].views`` and ``num_local_crops`` local crops (``resolve_views``)."""
        from mixbench.data.views import resolve_views

        preset = values.get("views", cls.params["views"].default)
        return tuple(resolve_views(preset, cls._overrides(values), n_views=cls.num_views(values)))

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        from mixbench.data.views import view_problems

        preset = values.get("views", cls.params["views"].default)
        side = None if facts is None else facts.image_side
        src = origin.get("view_overrides", origin.get("views", "recipe"))
        out = [f"{src}: {where}.view_overrides: {p}"
               for p in view_problems(preset, cls._overrides(values), side, n_views=cls.num_views(values))]
        lo_hi = values.get("local_crop_scale", cls.params["local_crop_scale"].default)
        if not _valid_scale(lo_hi):
            out.append(f"{origin.get('local_crop_scale', 'recipe')}: {where}.local_crop_scale = {show(lo_hi)}: "
                       "expected two numbers [lo, hi] with 0 < lo <= hi <= 1")
        crops, size = cls.num_views(values) - N_GLOBAL, values.get("local_crop_size", 0)
        if crops and side is not None:
            local_side = size or max(1, round(0.5 * side))
            if local_side > side:
                out.append(f"{origin.get('local_crop_size', 'recipe')}: {where}.local_crop_size = {size} exceeds "
                           f"the {side}-pixel image side; valid: 0..{side}")
            elif facts is not None and facts.patch_size and local_side % facts.patch_size:
                out.append(f"{origin.get('local_crop_size', 'recipe')}: {where}.local_crop_size: local crops of "
                           f"{local_side} px are not a whole number of [model].patch_size = {facts.patch_size} "
                           f"patches; valid: multiples of {facts.patch_size} up to {side}")
        return out

    # ----------------------------------------------------------------- per-step values (no host sync)

    def last_layer_frozen(self) -> bool:
        """True during the first ``freeze_last_layer`` epochs (from the engine's global_step)."""
        return self.global_step < self.freeze_last_layer * self.ctx.steps_per_epoch

    def teacher_temp(self) -> float:
        """τ_t of the current epoch, e = global_step // steps_per_epoch (see :func:`teacher_temperature`)."""
        epoch = self.global_step // max(self.ctx.steps_per_epoch, 1)
        return teacher_temperature(epoch, self.temperature_warmup_epochs, self.warmup_teacher_temperature,
                                   self.teacher_temperature)

    # ----------------------------------------------------------------- the pieces of a step

    def student_logits(self, views: Sequence[torch.Tensor], feats0: torch.Tensor
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Student logits of every crop (global crops one by one, the local crops in one forward) and the
        normalised bottleneck û of crop 0 (the collapse signal's embedding)."""
        freeze = self.last_layer_frozen()
        u0 = self.head.embed(feats0)
        logits = [self.head.logits(u0, freeze)]
        logits += [self.head(self.backbone(v).flatten(1), freeze) for v in views[1:N_GLOBAL]]
        n_local = len(views) - N_GLOBAL
        if n_local > 0:
            local = self.head(self.backbone(torch.cat(list(views[N_GLOBAL:]))).flatten(1), freeze)
            logits += list(local.chunk(n_local))
        return logits, u0

    @torch.no_grad()
    def teacher_logits(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher logits of each given crop, forwarded one by one: [n, b, K] in float32."""
        return torch.stack([self.teacher(v).float() for v in views])

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """c ← m c + (1 − m)·mean of the teacher's logit rows (every process's)."""
        self.center.mul_(self.center_momentum).add_(batch_center(teacher_logits), alpha=1 - self.center_momentum)

    def dino_terms(self, views: Sequence[torch.Tensor], feats0: torch.Tensor
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """DINO's loss and logs on clean crops; also the teacher's global-crop logits and P_t ([2, b, K])."""
        student, u0 = self.student_logits(views, feats0)
        t_logits = self.teacher_logits(views[:N_GLOBAL])
        temp = self.teacher_temp()
        probs = sharpen(t_logits, self.center, temp)
        loss = dino_cross_entropy(student, probs, self.student_temperature)
        entropy = torch.special.entr(probs).sum(-1).mean()  # −Σ p log p: log K when uniform, 0 when one-hot
        out = {"loss": loss, "embedding": u0, "teacher_entropy": entropy.detach(),
               "teacher_temp": torch.full((), temp, device=loss.device)}
        return out, t_logits, probs

    def ssl_modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "head": self.head}

    def on_step_end(self, step: int) -> None:
        self.teacher.update(self.student, step)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["warmup_teacher_temperature_epochs"] = self.temperature_warmup_epochs
        out["view_specs"] = [v.describe() for v in self.view_specs({k: getattr(self, k) for k in self.params})]
        return out


@METHODS.register("dino", doc="DINO: self-distillation to an EMA teacher over K prototypes, centring, multi-crop "
                              "(self-supervised)")
class DINO(DINOLike):
    """DINO (see the module docstring)."""

    differs: ClassVar[str] = ("local crops go through the student in one batch (DINO's MultiCropWrapper; solo-learn "
                              "forwards each crop alone, which matters only for BatchNorm statistics)")

    def ssl_loss(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor) -> dict[str, torch.Tensor]:
        out, t_logits, _ = self.dino_terms(views, feats0)
        self.update_center(t_logits)
        return out


__all__ = ["DINO", "DINOLike", "DINO_PARAMS", "N_GLOBAL", "teacher_temperature", "default_warmup_epochs",
           "dino_cross_entropy", "sharpen", "batch_center"]
