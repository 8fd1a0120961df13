"""Batched RandAugment as FixMatch uses it (its strong augmentation), on uint8 image batches.

For every sample, ``num_ops`` ops are drawn uniformly, with replacement, from :data:`OPS`, each with
its own magnitude m ~ U[0, 1] (FixMatch's "RandAugmentMC": the magnitude is sampled, not fixed)
and, for the signed ops, a random sign. Ranges (FixMatch paper's RandAugment table, value at m):

=============  ==========================================================================
identity       unchanged
autocontrast   per channel, stretch [min, max] to [0, 255] (unchanged where min = max)
equalize       per channel histogram equalisation (PIL ``ImageOps.equalize`` definition)
solarize       invert pixels ≥ threshold t = 256 (1 − m), so t ∈ [0, 256] (256 = unchanged)
posterize      keep the top b = 8 − ⌊5 m⌋ ∈ {4..8} bits (8 = unchanged)
color          blend with the greyscale image (ITU-R 601 luma), factor f = 0.05 + 0.9 m
contrast       blend with the mean grey level, factor f = 0.05 + 0.9 m
brightness     blend with black, factor f = 0.05 + 0.9 m
sharpness      blend with PIL's SMOOTH (3×3 kernel [1 1 1; 1 5 1; 1 1 1] / 13, border pixels kept),
               factor f = 0.05 + 0.9 m
rotate         ±30 m degrees about the image centre
shear_x/_y     shear factor ±0.3 m about the image centre
translate_x/_y shift by ±0.3 m of the image width/height
=============  ==========================================================================

A blend is ``degenerate + f (x − degenerate)``; f = 1 would leave the image unchanged, so with
FixMatch's [0.05, 0.95] range these four ops always weaken colour/contrast/brightness/sharpness.
Every colour op rounds and clips to [0, 255] like PIL's uint8 output.

Order and batching: the colour ops a sample picked run first, in the order they were picked (a
loop over the ``num_ops`` slots, each slot a full-batch op blended per sample with
``torch.where``); then every geometric op the sample picked, composed in pick order into one 2×3
affine matrix, is applied by ONE nearest-neighbour ``grid_sample`` for the whole batch (identity
matrix where a sample picked no geometric op; grey 128 outside the image). Nearest neighbour is
PIL's default resampling, which FixMatch's implementations use. Shear is about the image centre
(PIL shears about the top-left corner, which only adds a translation). Finally Cutout: a
``round(cutout · min(H, W))``-pixel square (FixMatch: 16 px on 32 px) centred at a uniformly drawn
pixel, clipped at the border, filled with grey 127, on every sample.

Differences from kekmodel's FixMatch-pytorch ``RandAugmentMC`` (as recalled, not re-checked): there
the magnitude is a random integer level out of 10 and each picked op is applied only with
probability 1/2; here m is continuous and ``identity`` (in the pool) is the only way to skip.
All random numbers are drawn up front in fixed shapes from the passed generator, so restoring its
state reproduces the batch; no host syncs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize",
       "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
_I = {name: i for i, name in enumerate(OPS)}
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")

# Op ranges at magnitude m = 1 (FixMatch paper, RandAugment table); the value used is m times this.
MAX_ROTATE_DEG = 30.0  # rotate by ±30 m degrees
MAX_SHEAR = 0.3  # shear factor ±0.3 m
MAX_TRANSLATE = 0.3  # shift by ±0.3 m of the image side
ENHANCE_LOW, ENHANCE_HIGH = 0.05, 0.95  # color/contrast/brightness/sharpness factor 0.05 + 0.9 m
POSTERIZE_MIN_BITS = 4  # keep 8 − floor(5 m) bits, i.e. 8..4 (8 = unchanged)
SOLARIZE_MAX = 256.0  # threshold 256 (1 − m): 256 = unchanged, 0 = everything inverted
AFFINE_FILL = 128.0  # grey outside the image after rotate/shear/translate (FixMatch's fillcolor)
CUTOUT_FILL = 127  # grey of the Cutout square (FixMatch's CutoutAbs)

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, PIL's RGB -> L


def _col(v: torch.Tensor) -> torch.Tensor:
    """A per-sample value [B] as a [B, 1, 1, 1] column."""
    return v.view(-1, 1, 1, 1)


def _quantise(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0.0, 255.0)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Per-channel stretch of [min, max] to [0, 255]; channels with min = max are unchanged."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    ok = hi > lo
    scale = torch.where(ok, 255.0 / (hi - lo).clamp(min=1.0), 1.0)
    return _quantise((x - torch.where(ok, lo, 0.0)) * scale)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation with PIL's lookup table, batched (no loop over samples).

    With h the channel's 256-bin histogram, ``step = (H·W − h[largest value present]) // 255``;
    ``lut[i] = (step // 2 + Σ_{j<i} h[j]) // step`` clipped to 255, identity when step = 0.
    """
    b, c, h, w = x.shape
    v = x.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, v, torch.ones_like(v))
    last = hist.gather(1, v.amax(dim=1, keepdim=True))
    step = (h * w - last) // 255
    before = hist.cumsum(1) - hist
    lut = (before + step // 2) // step.clamp(min=1)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device)).clamp(max=255)
    return lut.gather(1, v).to(x.dtype).view(b, c, h, w)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert (255 − x) the pixels ≥ the per-sample ``threshold`` [B]."""
    return torch.where(x >= _col(threshold), 255.0 - x, x)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` [B] (1..8) bits of each value."""
    q = torch.exp2(8.0 - _col(bits).to(x.dtype))
    return torch.floor(x / q) * q


def grey(x: torch.Tensor) -> torch.Tensor:
    """Rounded luma [B, 1, H, W] (the channel mean when the image is not RGB)."""
    if x.shape[1] == 3:
        g = _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]
    else:
        g = x.mean(dim=1, keepdim=True)
    return g.round()


def smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (rounded), border pixels copied from ``x``: sharpness's degenerate image.

    The kernel [1 1 1; 1 5 1; 1 1 1] / 13 is a 3×3 box sum plus 4 × the centre, computed with
    shifted slices (faster than a grouped conv on the CPU).
    """
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]
    box = rows[:, :, :, :-2] + rows[:, :, :, 1:-1] + rows[:, :, :, 2:]
    inner = ((box + 4.0 * x[:, :, 1:-1, 1:-1]) / 13.0).round()
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = inner
    return out


def blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: ``degenerate + factor (x − degenerate)`` with a per-sample factor [B]."""
    return _quantise(degenerate + _col(factor) * (x - degenerate))


def _colour_slot(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Apply to each sample the colour op ``op`` [B] with magnitude ``m`` [B]; other ops leave it as is."""
    sel = _col(op)
    g = grey(x)
    degenerate = torch.where(sel == _I["color"], g, x)
    degenerate = torch.where(sel == _I["contrast"], torch.floor(g.mean(dim=(1, 2, 3), keepdim=True) + 0.5),
                             degenerate)
    degenerate = torch.where(sel == _I["brightness"], 0.0, degenerate)
    degenerate = torch.where(sel == _I["sharpness"], smooth(x), degenerate)
    out = blend(x, degenerate, ENHANCE_LOW + (ENHANCE_HIGH - ENHANCE_LOW) * m)  # = x for non-blend ops
    out = torch.where(sel == _I["autocontrast"], autocontrast(x), out)
    out = torch.where(sel == _I["equalize"], equalize(x), out)
    out = torch.where(sel == _I["solarize"], solarize(x, SOLARIZE_MAX * (1.0 - m)), out)
    bits = (8.0 - torch.floor(5.0 * m)).clamp(min=POSTERIZE_MIN_BITS)
    return torch.where(sel == _I["posterize"], posterize(x, bits), out)


def _geometric_slot(op: torch.Tensor, m: torch.Tensor, sign: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, 3, 3] output→input maps in centred pixel coordinates (x right, y down); identity for colour ops."""
    b = op.shape[0]
    a = sign * m * math.radians(MAX_ROTATE_DEG)
    s = sign * m * MAX_SHEAR
    t = sign * m * MAX_TRANSLATE
    rot = op == _I["rotate"]
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    mat = torch.zeros(b, 3, 3, dtype=m.dtype, device=m.device)
    mat[:, 0, 0] = torch.where(rot, torch.cos(a), one)
    mat[:, 0, 1] = torch.where(rot, -torch.sin(a), torch.where(op == _I["shear_x"], s, zero))
    mat[:, 0, 2] = torch.where(op == _I["translate_x"], t * w, zero)
    mat[:, 1, 0] = torch.where(rot, torch.sin(a), torch.where(op == _I["shear_y"], s, zero))
    mat[:, 1, 1] = torch.where(rot, torch.cos(a), one)
    mat[:, 1, 2] = torch.where(op == _I["translate_y"], t * h, zero)
    mat[:, 2, 2] = 1.0
    return mat


def warp(x: torch.Tensor, mat: torch.Tensor, fill: float = AFFINE_FILL) -> torch.Tensor:
    """Resample a float batch with per-sample output→input maps ``mat`` [B, 2|3, 3] given in centred
    pixel coordinates (output pixel p reads input pixel ``mat @ p``), nearest neighbour, ``fill``
    outside the image."""
    b, c, h, w = x.shape
    theta = mat[:, :2, :].clone()
    theta[:, 0, 1] *= h / w  # pixel -> normalised [-1, 1] coordinates (align_corners=False)
    theta[:, 1, 0] *= w / h
    theta[:, 0, 2] *= 2.0 / w
    theta[:, 1, 2] *= 2.0 / h
    grid = F.affine_grid(theta.to(x.dtype), [b, c, h, w], align_corners=False)
    out = F.grid_sample(x - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out + fill


def cutout_mask(centre_y: torch.Tensor, centre_x: torch.Tensor, side: int, h: int, w: int) -> torch.Tensor:
    """[B, 1, H, W] mask of a ``side``-pixel square centred at (centre_y, centre_x) [B], clipped."""
    dev = centre_y.device
    y0, x0 = (centre_y - side // 2).view(-1, 1), (centre_x - side // 2).view(-1, 1)
    rows, cols = torch.arange(h, device=dev).view(1, h), torch.arange(w, device=dev).view(1, w)
    in_r = (rows >= y0) & (rows < y0 + side)
    in_c = (cols >= x0) & (cols < x0 + side)
    return (in_r.unsqueeze(2) & in_c.unsqueeze(1)).unsqueeze(1)


def apply_ops(x: torch.Tensor, ops: torch.Tensor, mags: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Apply per-sample op choices ``ops`` [B, K] (indices into :data:`OPS`), magnitudes ``mags``
    [B, K] in [0, 1] and signs [B, K] (±1) to a float batch with values in [0, 255]: colour ops
    in slot order, then all geometric ops as one affine resampling. Deterministic."""
    b, _, h, w = x.shape
    mat = torch.eye(3, dtype=torch.float32, device=x.device).expand(b, 3, 3)
    for k in range(ops.shape[1]):  # a loop over the few op slots, not over samples
        op, m, sign = ops[:, k], mags[:, k].float(), signs[:, k].float()
        x = _colour_slot(x, op, m)
        mat = mat @ _geometric_slot(op, m, sign, h, w)
    return warp(x, mat)


def rand_augment(x: torch.Tensor, gen: torch.Generator, num_ops: int = 2, cutout: float = 0.5) -> torch.Tensor:
    """FixMatch RandAugment + Cutout of a uint8 batch [B, C, H, W] (any memory format).

    Each sample gets ``num_ops`` ops drawn uniformly with replacement from :data:`OPS`, each with a
    magnitude m ~ U[0, 1] (ranges in the module docstring: rotate ±30°, shear ±0.3, translate ±30 %,
    solarize threshold 256 → 0, posterize 8 → 4 bits, colour/contrast/brightness/sharpness factor
    0.05..0.95, autocontrast, equalize, identity), then a Cutout square of side
    ``round(cutout · min(H, W))`` filled with grey 127. ``num_ops = 0`` and ``cutout = 0`` return
    an unchanged copy. Returns uint8 of the same shape on the same device; all randomness comes
    from ``gen`` (drawn up front, in fixed shapes), without host syncs.
    """
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"rand_augment expects a uint8 [B, C, H, W] batch, got {x.dtype} {tuple(x.shape)}")
    b, _, h, w = x.shape
    dev = x.device
    side = int(round(cutout * min(h, w)))
    ops = torch.randint(0, len(OPS), (b, num_ops), device=dev, generator=gen)
    mags = torch.rand(b, num_ops, device=dev, generator=gen)
    signs = torch.where(torch.rand(b, num_ops, device=dev, generator=gen) < 0.5, -1.0, 1.0)
    if side > 0:
        cy = torch.randint(0, h, (b,), device=dev, generator=gen)
        cx = torch.randint(0, w, (b,), device=dev, generator=gen)
    out = apply_ops(x.float(), ops, mags, signs).to(torch.uint8) if num_ops > 0 else x.clone()
    if side > 0:
        out = torch.where(cutout_mask(cy, cx, side, h, w), CUTOUT_FILL, out)
    return out


__all__ = ["OPS", "GEOMETRIC", "rand_augment", "apply_ops", "autocontrast", "equalize", "solarize", "posterize",
           "blend", "grey", "smooth", "warp", "cutout_mask"]
