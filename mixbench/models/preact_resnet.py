"""Pre-activation ResNet-18 (He et al., ECCV 2016), CIFAR stem.

Block: y = x' + conv(ReLU(BN(conv(ReLU(BN(x)))))) with x' the (projected) input; a final
BN + ReLU precedes pooling. Zero-init does not apply (the block ends in a convolution).
"""

from __future__ import annotations

from torch import nn

from mixbench.models.base import Backbone, init_weights, scaled


class PreActBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(planes)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.shortcut = (nn.Conv2d(cin, planes, 1, stride, bias=False)
                         if stride != 1 or cin != planes else None)

    def forward(self, x):
        out = self.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.drop(self.relu(self.bn2(out))))
        return out + short


def preact_backbone(stem_channels: int, depths: list[int], widths: list[int], strides: list[int], *,
                    width: float, in_chans: int, drop_rate: float = 0.0) -> Backbone:
    """Pre-activation residual stages of ``depths`` blocks and ``widths`` channels (x ``width``)."""
    c0 = scaled(stem_channels, width)
    stem = nn.Conv2d(in_chans, c0, 3, 1, 1, bias=False)
    stages, cin = [], c0
    for depth, w, stride in zip(depths, widths, strides, strict=True):
        planes = scaled(w, width)
        blocks = []
        for j in range(depth):
            blocks.append(PreActBlock(cin, planes, stride if j == 0 else 1, drop_rate))
            cin = planes
        stages.append(nn.Sequential(*blocks))
    final = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
    backbone = Backbone(stem, stages, cin, final)
    init_weights(backbone)
    return backbone


def preactresnet18(width: float, in_chans: int, drop_rate: float = 0.0) -> Backbone:
    return preact_backbone(64, [2, 2, 2, 2], [64, 128, 256, 512], [1, 2, 2, 2], width=width,
                           in_chans=in_chans, drop_rate=drop_rate)


def wrn28_8(width: float, in_chans: int, drop_rate: float = 0.0) -> Backbone:
    """WRN-28-8 (Zagoruyko & Komodakis, 2016): 16-channel stem, 3 stages of 4 wide blocks
    (128, 256, 512 channels), strides 1, 2, 2, dropout between the convolutions."""
    return preact_backbone(16, [4, 4, 4], [16 * 8, 32 * 8, 64 * 8], [1, 2, 2], width=width,
                           in_chans=in_chans, drop_rate=drop_rate)
