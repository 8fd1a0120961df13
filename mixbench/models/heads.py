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
