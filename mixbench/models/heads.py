"""MLP heads: the projectors and predictors of self-supervised methods, and extra classifier heads.

``MLPHead(d_in, d_hidden, d_out, layers=L)``: L − 1 blocks of Linear → BatchNorm1d → ReLU, then a
Linear (optionally followed by a BatchNorm1d without affine, as SimSiam/MoCo v3 projectors).
``layers = 1`` is a plain linear layer.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPHead(nn.Module):
    """Linear → BN → ReLU blocks and a final Linear (see the module docstring)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, layers: int = 2, *,
                 hidden_norm: bool = True, last_norm: bool = False, bias: bool = True):
        super().__init__()
        if layers < 1:
            raise ValueError(f"an MLP head needs at least one layer, got {layers}")
        blocks: list[nn.Module] = []
        d = in_features
        for _ in range(layers - 1):
            blocks += [nn.Linear(d, hidden_features, bias=bias and not hidden_norm)]
            if hidden_norm:
                blocks.append(nn.BatchNorm1d(hidden_features))
            blocks.append(nn.ReLU(inplace=True))
            d = hidden_features
        blocks.append(nn.Linear(d, out_features, bias=bias and not last_norm))
        if last_norm:
            blocks.append(nn.BatchNorm1d(out_features, affine=False))
        self.net = nn.Sequential(*blocks)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DINOHead(nn.Module):
    """DINO's projection head: an MLP to a bottleneck, L2 normalisation, weight-normalised prototypes.

    u = MLP(h) (Linear → [BN] → GELU blocks, then Linear to ``bottleneck``), û = u / ‖u‖, and logits
    s_k = g_k (v_k · û) / ‖v_k‖ over K prototypes v_k; with ``norm_last_layer`` g ≡ 1 is fixed, so every
    prototype is a unit vector and s_k = cos(v_k, u). MLP weights ~ trunc-normal(0.02), biases 0.
    """

    def __init__(self, in_features: int, hidden_features: int = 2048, bottleneck: int = 256,
                 prototypes: int = 4096, layers: int = 3, *, use_bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        if layers < 1:
            raise ValueError(f"a DINO head needs at least one layer, got {layers}")
        blocks: list[nn.Module] = []
        d = in_features
        for _ in range(layers - 1):
            blocks.append(nn.Linear(d, hidden_features))
            if use_bn:
                blocks.append(nn.BatchNorm1d(hidden_features))
            blocks.append(nn.GELU())
            d = hidden_features
        blocks.append(nn.Linear(d, bottleneck))
        self.mlp = nn.Sequential(*blocks)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        v = torch.empty(prototypes, bottleneck)
        nn.init.kaiming_uniform_(v, a=5 ** 0.5)  # nn.Linear's default init of the prototypes' direction
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(prototypes, 1), requires_grad=not norm_last_layer)
        self.norm_last_layer = norm_last_layer
        self.in_features, self.out_features = in_features, prototypes

    def prototypes(self) -> torch.Tensor:
        """W = g · v / ‖v‖ row-wise: the effective last-layer weight [K, bottleneck]."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """û = MLP(x) / ‖MLP(x)‖, the normalised bottleneck [N, bottleneck]."""
        return nn.functional.normalize(self.mlp(x), dim=-1)

    def logits(self, u: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        """û Wᵀ [N, K]; ``freeze_last_layer`` detaches W, so v and g get no gradient at all (grad stays None)."""
        w = self.prototypes()
        return u @ (w.detach() if freeze_last_layer else w).T

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        """Prototype logits [N, K] of features ``x``."""
        return self.logits(self.embed(x), freeze_last_layer)
