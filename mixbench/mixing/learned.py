"""The learned Mixer of AutoMix and SAMix: feature maps of two images and λ in, a pixel mask out.

With stage features ``z_i, z_j`` (``[N, C, h, w]``) and the first source's weight λ:
``P = softmax_row(q kᵀ / √d)`` (``hw × hw``), ``s_j = P v`` with the value ``v`` read from
``z_j`` only, and the mask of the *second* image ``S₁ = σ(Up(s_j))``; the first image's weight is
``S₀ = 1 − S₁``. AutoMix: shared 1×1 query/key conv on each image, linear value, nearest
upsampling, optional λ channels. SAMix: λ-adaptive scaling ``z_i ← (1 + λ′) z_i``,
``z_j ← (2 − λ′) z_j``, query and key from the concatenation ``[z_i; z_j]``, a ConvNeck value
branch, bilinear upsampling. Everything runs batched; the attention is computed in fp32.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LAM_ENCODINGS = ("none", "concat", "mul")
VALUE_NETS = ("linear", "convneck")
QK_MODES = ("shared", "concat")


def rescale_lambda(lam: torch.Tensor, k: float) -> torch.Tensor:
    """SAMix's λ′ = ((4/3)λ³ − 2λ² + (k+1)λ) / ((k+1) − 2/3); ``k < 0`` means λ′ = λ.

    A cubic through (0, 0), (½, ½), (1, 1) that pulls λ toward ½ for k ≥ 0 (a Mixer input only,
    never a label weight).
    """
    if k < 0:
        return lam
    return ((4.0 / 3.0) * lam**3 - 2.0 * lam**2 + (k + 1.0) * lam) / ((k + 1.0) - 2.0 / 3.0)


class MixBlock(nn.Module):
    """Pixel-wise mask generator (openmixup's ``PixelMixBlock``) with the AutoMix or SAMix settings."""

    def __init__(self, in_channels: int, *, reduction: int = 2, lam_encoding: str = "none",
                 lam_mul_k: float = -1.0, value_net: str = "linear", qk: str = "shared",
                 upsample: str = "nearest", dropout: float = 0.0):
        super().__init__()
        if lam_encoding not in LAM_ENCODINGS or value_net not in VALUE_NETS or qk not in QK_MODES:
            raise ValueError(f"bad MixBlock settings: {lam_encoding}, {value_net}, {qk}")
        self.config: dict[str, Any] = {
            "in_channels": in_channels, "reduction": reduction, "lam_encoding": lam_encoding,
            "lam_mul_k": lam_mul_k, "value_net": value_net, "qk": qk, "upsample": upsample,
            "dropout": dropout}
        self.lam_encoding, self.lam_mul_k, self.qk, self.upsample = lam_encoding, lam_mul_k, qk, upsample
        c = in_channels + (1 if lam_encoding == "concat" else 0)
        self.inner = max(1, in_channels // reduction)
        if value_net == "linear":
            self.value = nn.Conv2d(c, 1, 1, bias=True)
        else:
            self.value = nn.Sequential(nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ELU(),
                                       nn.Conv2d(128, 1, 1, bias=False), nn.Dropout(dropout))
        qk_in = 2 * c if qk == "concat" else c
        self.query = nn.Conv2d(qk_in, self.inner, 1, bias=True)
        self.key = nn.Conv2d(qk_in, self.inner, 1, bias=True) if qk == "concat" else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _encode(self, z_i: torch.Tensor, z_j: torch.Tensor, lam: torch.Tensor):
        lam = lam.view(-1, 1, 1, 1).to(z_i.dtype)
        if self.lam_encoding == "concat":
            n, _, h, w = z_i.shape
            z_i = torch.cat([z_i, lam.expand(n, 1, h, w)], 1)
            z_j = torch.cat([z_j, (1.0 - lam).expand(n, 1, h, w)], 1)
        elif self.lam_encoding == "mul":
            lam_p = rescale_lambda(lam, self.lam_mul_k)
            z_i, z_j = (1.0 + lam_p) * z_i, (2.0 - lam_p) * z_j
        return z_i, z_j

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor, lam: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
        """The mask of the second image, ``S₁ ∈ (0, 1)^{N×1×H×W}`` at image ``size``."""
        z_i, z_j = self._encode(z_i, z_j, lam)
        n, _, h, w = z_i.shape
        v = self.value(z_j).flatten(2).transpose(1, 2)  # [N, hw, 1]
        if self.qk == "concat":
            u = torch.cat([z_i, z_j], 1)
            q, k = self.query(u), self.key(u)
        else:
            q, k = self.query(z_i), self.query(z_j)
        with torch.autocast(device_type=z_i.device.type, enabled=False):
            q = q.float().flatten(2).transpose(1, 2)  # [N, hw, d]
            k = k.float().flatten(2)  # [N, d, hw]
            attn = torch.softmax(torch.bmm(q, k) / math.sqrt(self.inner), dim=-1)  # rows: positions of x_i
            s = torch.bmm(attn, v.float()).transpose(1, 2).reshape(n, 1, h, w)
            align = {"align_corners": False} if self.upsample == "bilinear" else {}
            s = F.interpolate(s, size=size, mode=self.upsample, **align)
            return torch.sigmoid(s)


def mask_loss(s0: torch.Tensor, lam: torch.Tensor, margin: float, var_weight: float = 0.0) -> torch.Tensor:
    """``max(|mean(λ) − mean(S₀)| − ε, 0) − w_var·Var(S₀)``, means over the whole batch.

    The L1 term keeps the mask's batch mean within ε of λ; the variance term (SAMix, w_var = 2)
    rewards high-contrast masks (Var(S₀) = Var(S₁)).
    """
    s0 = s0.float()
    loss = F.relu((lam.float().mean() - s0.mean()).abs() - margin)
    if var_weight:
        loss = loss - var_weight * s0.var(unbiased=False)
    return loss


def adjust_mask_mean(s0: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Rescale each sample's mask so its mean equals λ exactly while staying in [0, 1].

    Too much of x_i (mean > λ): ``S₀ ← S₀·λ/mean``; too little: ``S₁ ← S₁·(1−λ)/mean(S₁)``.
    """
    m = s0.float().mean(dim=(1, 2, 3), keepdim=True).clamp(1e-6, 1 - 1e-6)
    lam = lam.float().view(-1, 1, 1, 1)
    down = s0 * (lam / m)
    up = 1.0 - (1.0 - s0) * ((1.0 - lam) / (1.0 - m))
    return torch.where(m > lam, down, up).to(s0.dtype)




def stage_features(model: nn.Module, x: torch.Tensor, stage: int) -> torch.Tensor:
    """Output of residual stage ``stage`` (1-based) of a Classifier's backbone; later stages never run."""
    from mixbench.errors import UserError

    backbone = getattr(model, "backbone", model)  # a Classifier or a bare Backbone
    if not getattr(backbone, "supports_stage_hook", False) or not 1 <= stage <= backbone.num_stages:
        raise UserError(f"[method].feature_stage = {stage}: the backbone has no residual stage {stage}; "
                        "the learned Mixer needs a built-in CIFAR backbone (mixbench list models) and a "
                        f"stage in 1..{getattr(backbone, 'num_stages', 0)}")
    h = backbone.stem(x)
    for block in backbone.stages[:stage]:
        h = block(h)
    return h


def truncate_backbone(backbone: nn.Module, stage: int) -> nn.Module:
    """The backbone cut after residual stage ``stage`` (all a Mixer reads): stem + stages 1..stage."""
    backbone.stages = nn.ModuleList(list(backbone.stages)[:stage])
    backbone.final = nn.Identity()
    backbone.num_stages = stage
    return backbone


def encoder_state(backbone: nn.Module, stage: int) -> dict[str, torch.Tensor]:
    """The state of the stem and stages 1..stage: what ``mixer.pt`` keeps of the momentum backbone."""
    keep = ("stem.", *(f"stages.{i}." for i in range(stage)))
    return {k: v for k, v in backbone.state_dict().items() if k.startswith(keep)}


__all__ = ["MixBlock", "truncate_backbone", "encoder_state", "rescale_lambda", "mask_loss", "adjust_mask_mean",
           "stage_features", "LAM_ENCODINGS", "VALUE_NETS", "QK_MODES"]
