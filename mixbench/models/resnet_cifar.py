"""CIFAR-style ResNets (He et al., 2016) and ResNeXt (Xie et al., 2017).

3x3 stride-1 stem, no max-pool, four stages with strides (1, 2, 2, 2); a 32x32 input gives a
4x4 final map. Basic block: y = ReLU(x + BN(conv(ReLU(BN(conv(x)))))); bottleneck: 1x1 → 3x3
(grouped for ResNeXt) → 1x1 with expansion 4. Zero-init sets the last BN's γ of each block to 0,
so every block starts as its shortcut.
"""

from __future__ import annotations

from torch import nn

from mixbench.models.base import Backbone, init_weights, scaled


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class _Residual(nn.Module):
    """y = ReLU(body(x) + shortcut(x)); the shortcut projects when shape changes."""

    expansion = 1

    def __init__(self, body: list[nn.Module], cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*body)
        self.shortcut = (nn.Sequential(*conv_bn(cin, cout, 1, stride))
                         if stride != 1 or cin != cout else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.body[-1]

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class BasicBlock(_Residual):
    """Two 3x3 convolutions."""

    def __init__(self, cin: int, planes: int, stride: int, groups: int = 1, base_width: int = 64):
        super().__init__([*conv_bn(cin, planes, 3, stride), nn.ReLU(inplace=True), *conv_bn(planes, planes, 3)],
                         cin, planes, stride)


class Bottleneck(_Residual):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, groups: int = 1, base_width: int = 64):
        mid = max(groups, int(planes * base_width / 64) * groups)
        mid -= mid % groups
        out = planes * self.expansion
        super().__init__([*conv_bn(cin, mid, 1), nn.ReLU(inplace=True),
                          *conv_bn(mid, mid, 3, stride, groups), nn.ReLU(inplace=True),
                          *conv_bn(mid, out, 1)], cin, out, stride)


def resnet_backbone(block: type, depths: list[int], *, width: float = 1.0, in_chans: int = 3,
                    groups: int = 1, base_width: int = 64, zero_init_residual: bool = True) -> Backbone:
    """A CIFAR ResNet/ResNeXt backbone; ``width`` scales every channel count."""
    c0 = scaled(64, width)
    stem = nn.Sequential(*conv_bn(in_chans, c0, 3), nn.ReLU(inplace=True))
    stages, cin = [], c0
    for i, (depth, stride) in enumerate(zip(depths, (1, 2, 2, 2), strict=True)):
        planes = scaled(64 * 2**i, width)
        blocks = []
        for j in range(depth):
            blocks.append(block(cin, planes, stride if j == 0 else 1, groups, base_width))
            cin = planes * block.expansion
        stages.append(nn.Sequential(*blocks))
    backbone = Backbone(stem, stages, cin)
    init_weights(backbone)
    if zero_init_residual:
        for m in backbone.modules():
            if isinstance(m, _Residual):
                nn.init.zeros_(m.last_bn().weight)
    return backbone


def resnext_groups(width: float, groups: int) -> int:
    """``groups`` at full width; fewer for tiny widths so every group keeps at least one channel."""
    return max(1, min(groups, scaled(groups, width)))
