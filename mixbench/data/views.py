"""Self-supervised view augmentation on the device: batched ops, each image with its own parameters.

One :class:`ViewSpec` describes one view, as the torchvision pipeline of solo-learn's CIFAR views:

    RandomResizedCrop(size, scale, ratio) → RandomApply(ColorJitter(b, c, s, h), jitter_p)
    → RandomGrayscale(gray_p) → RandomApply(GaussianBlur(σ ∈ blur_sigma), blur_p)
    → RandomApply(Solarize(threshold), solarize_p) → RandomHorizontalFlip(flip_p)

:func:`make_views` turns a uint8 batch [b, C, H, W] into a float batch [b, C, s, s] in [0, 255] (what
``Normalize``/``model_input`` take) with no per-sample Python loop and no host sync. All random numbers
come from the given generator in one draw of fixed shape ``[total, 36]`` for the whole global batch,
whatever the spec's values; with a ``Shard`` the rows [lo, hi) of that draw are used, so ranks'
views concatenate to the one-process views and the generator advances identically everywhere.

The ops, on x in [0, 255] (torchvision's float formulas scaled by 255; the maths of each is in its
docstring): crop box by torchvision's sampling (10 tries of area and log-ratio, first valid, else the
centre-crop fallback), resampled separably from the uint8 pixels; brightness, contrast and saturation
as clamped blends with black, the mean grey level and the grey image; hue by a rotation in HSV;
greyscale with ITU-R 601 weights (0.2989, 0.587, 0.114); Gaussian blur with reflect padding and a
per-image σ; solarisation x ≥ t → 255 − x. ColorJitter's four ops run in a random order per image
(torchvision draws one permutation per call, i.e. per image in a per-image pipeline). The flip is
folded into the crop's column indices: every later op commutes with it exactly (the blur kernel is
symmetric, reflect padding is mirror-symmetric, the contrast mean is flip-invariant).

Where this deviates from torchvision (``transforms.v2`` on float images), on purpose:

- Resampling: bilinear matches ``resized_crop(..., antialias=False)`` for every box and
  ``antialias=True`` for boxes no larger than the output (upsampling, where both agree). Bicubic uses
  the antialias filter (Keys a = −0.5, taps clipped to the crop and renormalised: PIL's and
  torchvision's default ``antialias=True``) with the upsampling support of 4 taps; when a crop side is
  larger than the output side (downscaling) no antialias widening is done. On the CIFAR and
  Tiny-ImageNet presets every crop is at most the image side and the output is the image side (or
  smaller, for local crops, whose boxes are smaller still), so all resampling is upsampling and
  antialias is moot. Bicubic output is clamped to [0, 255] (PIL and torchvision's uint8 path clamp;
  its float path does not). The resampling is two batched matmuls with per-image [s, H] and [s, W]
  tap-weight matrices (4× faster than gathers on a CPU).
- Nothing is rounded to uint8 between ops (PIL and torchvision's uint8 path round after every op).
- Blur: torchvision's kernel weights exp(−d²/2σ²) with an explicit odd kernel size; solo-learn blurs
  with PIL's ``GaussianBlur(radius=σ)``, an untruncated Gaussian. With ``blur_kernel = 0`` the kernel
  is K = max(odd ⌊0.1 s⌋, 2⌈3 σ_max⌉ + 1), at most 2s − 1 (reflect padding needs K // 2 < s): 23 at
  224 px (SimCLR's 10 % rule) and 13 at 32 px, where 10 % (3 taps) would truncate σ = 2 to a box.
- Solarisation threshold is in [0, 255] units (PIL's 128 by default).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from mixbench.data.gpu_loader import Shard, _rows
from mixbench.errors import did_you_mean

INTERPOLATIONS = ("bilinear", "bicubic")
LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601 as torchvision's rgb_to_grayscale
RRC_TRIES = 10  # torchvision's RandomResizedCrop tries before its centre-crop fallback
BICUBIC_A = -0.5  # Keys' a of PIL's bicubic and torchvision's antialiased bicubic
LOCAL_SPLIT = 0.14  # multi-crop: global crops take scale (0.14, 1), local crops (0.05, 0.14)
LOCAL_SCALE = (0.05, LOCAL_SPLIT)
LOCAL_SIZE_FRAC = 0.5  # local crops: half the image side (16 px on CIFAR)

# Columns of the one uniform draw [total, N_DRAWS] per view batch.
_AREA, _RATIO = slice(0, RRC_TRIES), slice(RRC_TRIES, 2 * RRC_TRIES)
_TOP, _LEFT, _FLIP, _JITTER = 20, 21, 22, 23
_FACTORS, _ORDER = slice(24, 28), slice(28, 32)
_GRAY, _BLUR, _SIGMA, _SOLARIZE = 32, 33, 34, 35
N_DRAWS = 36

# ColorJitter's ops, in torchvision's fn_idx numbering.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


@dataclass(frozen=True)
class ViewSpec:
    """One view's augmentation (see the module docstring for the pipeline and its order).

    Defaults are torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip`` and nothing else; the
    presets (:data:`PRESETS`) add solo-learn's colour ops. Fields, as recipes name them:
    """

    size: int = 0  # output side in pixels; 0: round(size_frac · min(H, W)) of the input
    size_frac: float = 1.0  # output side as a fraction of the input side when size = 0
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect (w/h) range, sampled in log
    interpolation: str = "bilinear"  # bilinear | bicubic
    flip_p: float = 0.5  # horizontal flip probability
    jitter_p: float = 0.0  # probability of applying ColorJitter
    brightness: float = 0.0  # factor ~ U[max(0, 1 − b), 1 + b]
    contrast: float = 0.0  # factor ~ U[max(0, 1 − c), 1 + c]
    saturation: float = 0.0  # factor ~ U[max(0, 1 − s), 1 + s]
    hue: float = 0.0  # shift ~ U[−h, h] of a turn, h ≤ 0.5
    gray_p: float = 0.0  # RandomGrayscale probability
    blur_p: float = 0.0  # Gaussian blur probability
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # σ ~ U[lo, hi] in output pixels
    blur_kernel: int = 0  # odd kernel side; 0: max(odd ⌊0.1 s⌋, 2⌈3 σ_max⌉ + 1), at most 2s − 1
    solarize_p: float = 0.0  # solarisation probability
    solarize_threshold: float = 128.0  # x ≥ t → 255 − x, t in [0, 256] (PIL's 128)

    def __post_init__(self) -> None:
        for name in ("scale", "ratio", "blur_sigma"):  # TOML arrays arrive as lists
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def problems(self) -> list[str]:
        """One sentence per invalid field (empty when valid); never raises, whatever the field types."""
        return [p for f in fields(self) if (p := _field_problem(f.name, getattr(self, f.name))) is not None]

    def output_side(self, height: int, width: int) -> int:
        """Side s of the square output for an H × W input."""
        return self.size if self.size > 0 else max(1, round(self.size_frac * min(height, width)))

    def kernel_size(self, side: int) -> int:
        """The blur kernel side K at output side s (see ``blur_kernel``)."""
        if self.blur_kernel > 0:
            return self.blur_kernel
        k = max(_odd(int(0.1 * side)), 2 * math.ceil(3 * self.blur_sigma[1]) + 1)
        return max(1, min(k, 2 * side - 1))

    def describe(self) -> str:
        """The fields that differ from the defaults, as ``name=value`` (for run records and logs)."""
        default = ViewSpec()
        diff = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)]
        return "ViewSpec(" + ", ".join(diff) + ")"


VIEW_FIELDS: dict[str, str] = {
    "size": "output side in pixels; 0 (default): size_frac times the input side",
    "size_frac": "output side as a fraction of the input side when size = 0 (default 1)",
    "scale": "RandomResizedCrop area fraction range [lo, hi], 0 < lo <= hi <= 1",
    "ratio": "RandomResizedCrop aspect ratio (w/h) range [lo, hi], sampled uniformly in log",
    "interpolation": "crop resampling: bilinear or bicubic",
    "flip_p": "horizontal flip probability",
    "jitter_p": "probability of colour jitter (brightness, contrast, saturation, hue in random order)",
    "brightness": "brightness factor ~ U[max(0, 1-b), 1+b]",
    "contrast": "contrast factor ~ U[max(0, 1-c), 1+c]",
    "saturation": "saturation factor ~ U[max(0, 1-s), 1+s]",
    "hue": "hue shift ~ U[-h, h] of a turn, 0 <= h <= 0.5",
    "gray_p": "greyscale probability (ITU-R 601 weights, 3 channels)",
    "blur_p": "Gaussian blur probability",
    "blur_sigma": "blur sigma range [lo, hi] in output pixels",
    "blur_kernel": "odd blur kernel side; 0: automatic (23 at 224 px, 13 at 32 px)",
    "solarize_p": "solarisation probability",
    "solarize_threshold": "solarisation threshold t in [0, 256]: x >= t becomes 255 - x",
}


# ------------------------------------------------------------------------------------------ checks


def _odd(k: int) -> int:
    return k if k % 2 else k + 1


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v))


def _is_pair(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_number(e) for e in v)


def _field_problem(name: str, v: Any) -> str | None:
    """The problem with value ``v`` of field ``name`` as one sentence, or None."""
    got = f"got {v!r}"
    if name == "size":
        if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4096):
            return f"size: expected an integer pixel side in [1, 4096], or 0 for the input's side, {got}"
    elif name == "size_frac":
        if not (_is_number(v) and 0 < v <= 4):
            return f"size_frac: expected a number in (0, 4], {got}"
    elif name == "scale":
        if not (_is_pair(v) and 0 < v[0] <= v[1] <= 1):
            return f"scale: expected two numbers [lo, hi] with 0 < lo <= hi <= 1, {got}"
    elif name == "ratio":
        if not (_is_pair(v) and 0 < v[0] <= v[1] <= 1e3):
            return f"ratio: expected two numbers [lo, hi] with 0 < lo <= hi <= 1000, {got}"
    elif name == "interpolation":
        if v not in INTERPOLATIONS:
            return f"interpolation: expected one of {', '.join(INTERPOLATIONS)}, {got}"
    elif name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
        if not (_is_number(v) and 0 <= v <= 1):
            return f"{name}: expected a probability in [0, 1], {got}"
    elif name in ("brightness", "contrast", "saturation"):
        if not (_is_number(v) and 0 <= v <= 100):
            return f"{name}: expected a strength in [0, 100] (factor ~ U[max(0, 1 - v), 1 + v]), {got}"
    elif name == "hue":
        if not (_is_number(v) and 0 <= v <= 0.5):
            return f"hue: expected a strength in [0, 0.5] (shift ~ U[-v, v] of a turn), {got}"
    elif name == "blur_sigma":
        if not (_is_pair(v) and 0 < v[0] <= v[1] <= 100):
            return f"blur_sigma: expected two numbers [lo, hi] with 0 < lo <= hi <= 100, {got}"
    elif name == "blur_kernel":
        if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1023 and (v == 0 or v % 2 == 1)):
            return f"blur_kernel: expected an odd integer in [1, 1023], or 0 for the automatic size, {got}"
    elif name == "solarize_threshold" and not (_is_number(v) and 0 <= v <= 256):
        return f"solarize_threshold: expected a number in [0, 256], {got}"
    return None


# ------------------------------------------------------------------------------------------ params


class ViewParams(NamedTuple):
    """Every random choice of one view batch, per image (rows of the batch).

    The crop box is in input pixels (integers held as float32); ``factors`` are (brightness,
    contrast, saturation, hue) and ``order[i]`` the permutation of (0, 1, 2, 3) = (b, c, s, h)
    image i applies them in; the booleans say which random ops image i applies.
    """

    top: torch.Tensor  # [b] float
    left: torch.Tensor  # [b] float
    height: torch.Tensor  # [b] float
    width: torch.Tensor  # [b] float
    flip: torch.Tensor  # [b] bool
    jitter: torch.Tensor  # [b] bool
    factors: torch.Tensor  # [b, 4] float
    order: torch.Tensor  # [b, 4] int64
    gray: torch.Tensor  # [b] bool
    blur: torch.Tensor  # [b] bool
    sigma: torch.Tensor  # [b] float
    solarize: torch.Tensor  # [b] bool

    def rows(self, lo: int, hi: int) -> ViewParams:
        """Rows [lo, hi) of every parameter."""
        return ViewParams(*(t[lo:hi] for t in self))


def rrc_boxes(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
              u_area: torch.Tensor, u_ratio: torch.Tensor, u_top: torch.Tensor, u_left: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's RandomResizedCrop boxes, vectorised over images and its 10 tries.

    Try t: area A = H·W·U(s0, s1), r = exp(U(log r0, log r1)), w = round(√(A r)), h = round(√(A / r));
    the first try with 0 < w ≤ W and 0 < h ≤ H wins, its corner uniform over the valid positions;
    with none, the centre crop of the largest box whose ratio is clamped to [r0, r1].
    ``u_*`` are uniforms: [n, 10] for area and ratio, [n] for the corner. Returns top, left, h, w, fallback.
    """
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(lr0 + (lr1 - lr0) * u_ratio)
    w, h = torch.sqrt(area * r).round(), torch.sqrt(area / r).round()
    valid = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first valid try
    ok = valid.any(dim=1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(ok, w.gather(1, first).squeeze(1), float(fw))
    h = torch.where(ok, h.gather(1, first).squeeze(1), float(fh))
    top = torch.where(ok, torch.floor(u_top * (height - h + 1)), float((height - fh) // 2))
    left = torch.where(ok, torch.floor(u_left * (width - w + 1)), float((width - fw) // 2))
    return top, left, h, w, ~ok


def draw_view_params(spec: ViewSpec, total: int, height: int, width: int, gen: torch.Generator,
                     device: torch.device | str) -> ViewParams:
    """All random parameters of ``total`` images of H × W, from ONE uniform draw [total, 36] of ``gen``.

    The draw's shape does not depend on the spec's values, so changing a probability to 0 never
    shifts later draws. Probabilities: op applied iff u < p.
    """
    u = torch.rand(total, N_DRAWS, device=device, generator=gen)
    top, left, h, w, _ = rrc_boxes(height, width, spec.scale, spec.ratio, u[:, _AREA], u[:, _RATIO],
                                   u[:, _TOP], u[:, _LEFT])
    ranges = [(max(0.0, 1 - v), 1 + v) for v in (spec.brightness, spec.contrast, spec.saturation)]
    ranges.append((-spec.hue, spec.hue))
    uf = u[:, _FACTORS]
    factors = torch.stack([lo + (hi - lo) * uf[:, k] for k, (lo, hi) in enumerate(ranges)], dim=1)
    order = u[:, _ORDER].argsort(dim=1)  # a uniformly random permutation per image
    s0, s1 = spec.blur_sigma
    return ViewParams(top, left, h, w, u[:, _FLIP] < spec.flip_p, u[:, _JITTER] < spec.jitter_p, factors, order,
                      u[:, _GRAY] < spec.gray_p, u[:, _BLUR] < spec.blur_p, s0 + (s1 - s0) * u[:, _SIGMA],
                      u[:, _SOLARIZE] < spec.solarize_p)


# ------------------------------------------------------------------------------------------ ops


def _cubic(d: torch.Tensor) -> torch.Tensor:
    """Keys' cubic kernel with a = −0.5: (a+2)|d|³ − (a+3)|d|² + 1 on |d| < 1, a|d|³ − 5a|d|² + 8a|d| − 4a on < 2."""
    a, d = BICUBIC_A, d.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d < 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _axis_taps(start: torch.Tensor, length: torch.Tensor, n: int, interpolation: str, size: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices and weights [b, n, T] resampling [start, start + length) of an axis of ``size`` to n.

    Output i has centre c = (i + ½)·L/n in crop coordinates; taps j = ⌊c − T/2 + ½⌋ + k (k < T, T = 2
    bilinear, 4 bicubic) weigh φ(j − c + ½) (φ = triangle or cubic), taps outside [0, L) weigh 0, and
    the weights are renormalised (for bilinear this is clamping the source coordinate to the crop).
    Tap k outside the crop gets index ``size + k`` (a spare column): a row's indices never repeat.
    """
    taps = 2 if interpolation == "bilinear" else 4
    i = torch.arange(n, device=start.device, dtype=torch.float32) + 0.5
    c = i * (length / n).unsqueeze(1)  # [b, n]
    k = torch.arange(taps, device=start.device)
    j = torch.floor(c - taps / 2 + 0.5).unsqueeze(2) + k  # [b, n, T]
    d = j - c.unsqueeze(2) + 0.5
    phi = (1 - d.abs()).clamp(min=0) if taps == 2 else _cubic(d)
    inside = (j >= 0) & (j < length.view(-1, 1, 1))
    w = torch.where(inside, phi, torch.zeros_like(phi))
    w = w / w.sum(dim=2, keepdim=True)
    idx = torch.where(inside, start.view(-1, 1, 1) + j, (size + k).to(j.dtype))
    return idx.long(), w


def _tap_matrix(idx: torch.Tensor, w: torch.Tensor, size: int) -> torch.Tensor:
    """Dense [b, n, size] resampling matrix from taps (a plain scatter: no repeated index in a row)."""
    b, n, taps = idx.shape
    return torch.zeros(b, n, size + taps, device=w.device, dtype=w.dtype).scatter_(2, idx, w)[..., :size]


def resized_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
                 width: torch.Tensor, side: int, interpolation: str = "bilinear",
                 flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop box i of image i, resampled to side × side, optionally mirrored: float [b, C, s, s].

    Separable: out_i = R_i · x_i · C_iᵀ with R_i [s, H] and C_i [s, W] holding the 2 (bilinear) or 4
    (bicubic) tap weights per output pixel of :func:`_axis_taps` (zero outside the box); two batched
    matmuls. A flip reverses the rows of C_i. Bicubic output is clamped to [0, 255]. (Under TF32
    matmuls, if enabled, the result is accurate to about 1e-3 relative instead of float32's 1e-7.)
    """
    _, _, h_in, w_in = x.shape
    iy, wy = _axis_taps(top, height, side, interpolation, h_in)  # [b, s, T]
    ix, wx = _axis_taps(left, width, side, interpolation, w_in)
    if flip is not None:
        f = flip.view(-1, 1, 1)
        ix, wx = torch.where(f, ix.flip(1), ix), torch.where(f, wx.flip(1), wx)
    rows, cols = _tap_matrix(iy, wy, h_in), _tap_matrix(ix, wx, w_in)
    out = rows.unsqueeze(1) @ x.float() @ cols.transpose(1, 2).unsqueeze(1)
    return out.clamp_(0.0, 255.0) if interpolation == "bicubic" else out


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Grey level g = 0.2989 R + 0.587 G + 0.114 B as [b, 1, H, W] (a 1-channel image is its own grey)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (r * LUMA[0] + g * LUMA[1] + b * LUMA[2]).unsqueeze(1)


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _blend_round(x: torch.Tensor, op: torch.Tensor, factors: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """One round of ColorJitter's linear ops, image i doing op[i] with its factor f (or nothing):

    brightness clip(f x), contrast clip(f x + (1 − f) mean(g)), saturation clip(f x + (1 − f) g),
    all as clip(a x + (β g + γ ḡ)) with per-image (a, β, γ); hue and inactive images get (1, 0, 0).
    """
    f = factors.gather(1, op.unsqueeze(1)).squeeze(1)
    one, zero = torch.ones_like(f), torch.zeros_like(f)
    a = torch.where(active & (op != HUE), f, one)
    beta = torch.where(active & (op == SATURATION), 1 - f, zero)
    if x.shape[1] == 1:  # torchvision leaves a 1-channel image's saturation alone
        a = torch.where(op == SATURATION, one, a)
        beta = zero
    gamma = torch.where(active & (op == CONTRAST), 1 - f, zero)
    g = grayscale(x)
    mean = g.mean(dim=(2, 3), keepdim=True)
    return (x * _col(a) + (g * _col(beta) + mean * _col(gamma))).clamp_(0.0, 255.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` turns per image (RGB → HSV, H += shift mod 1, → RGB), x in [0, 255].

    H' = 6H ∈ [0, 6) from the max channel ((G−B)/Δ, 2 + (B−R)/Δ or 4 + (R−G)/Δ, Δ = max − min); back
    as channel_n = V − Δ·clip(min(k, 4 − k), 0, 1), k = (n + H') mod 6, n = 5, 3, 1 for R, G, B (V·S = Δ).
    """
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h6 = torch.remainder(h + 6 * shift.view(-1, 1, 1), 6.0)
    out = [maxc - delta * torch.minimum(k := torch.remainder(n + h6, 6.0), 4 - k).clamp(0.0, 1.0)
           for n in (5.0, 3.0, 1.0)]
    return torch.stack(out, dim=1)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, apply: torch.Tensor,
                 with_hue: bool = True) -> torch.Tensor:
    """ColorJitter with per-image factors and op order (x in [0, 255]), on the images where ``apply``.

    Image i runs its ops in ``order[i]``. Batched: with p_i the position of hue in order[i], the
    linear ops before it run in rounds r = 0..2 (image i active iff r < p_i), hue once, then the ones
    after it in rounds r = 1..3 (active iff r > p_i): 6 cheap rounds and one HSV round trip.
    """
    if not with_hue or x.shape[1] == 1:  # hue is the identity: four plain rounds
        for r in range(4):
            x = _blend_round(x, order[:, r], factors, apply)
        return x
    pos = (order == HUE).to(torch.uint8).argmax(dim=1)
    for r in range(3):
        x = _blend_round(x, order[:, r], factors, apply & (pos > r))
    x = torch.where(_col(apply), adjust_hue(x, factors[:, HUE]), x)
    for r in range(1, 4):
        x = _blend_round(x, order[:, r], factors, apply & (pos < r))
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Per-image Gaussian blur: weights ∝ exp(−d² / 2σ_i²), d = −K//2..K//2, reflect padding.

    Separable, as two grouped convolutions (one group per image channel) on the padded batch.
    """
    b, c, h, w = x.shape
    d = torch.arange(kernel, device=x.device, dtype=x.dtype) - kernel // 2
    k = torch.exp(-(d * d) / (2 * sigma.view(-1, 1) ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [b·C, K]
    p = kernel // 2
    xp = F.pad(x, (p, p, p, p), mode="reflect").view(1, b * c, h + 2 * p, w + 2 * p)
    xp = F.conv2d(xp, k.view(b * c, 1, 1, kernel), groups=b * c)
    xp = F.conv2d(xp, k.view(b * c, 1, kernel, 1), groups=b * c)
    return xp.view(b, c, h, w)


def apply_view(x: torch.Tensor, spec: ViewSpec, p: ViewParams) -> torch.Tensor:
    """The view of uint8 batch ``x`` [b, C, H, W] under parameters ``p``: float [b, C, s, s] in [0, 255].

    Order: crop + resize (+ flip), colour jitter, greyscale, blur, solarise. Ops whose probability is 0
    (or whose strengths are all 0) are skipped without changing the draws.
    """
    side = spec.output_side(x.shape[2], x.shape[3])
    out = resized_crop(x, p.top, p.left, p.height, p.width, side, spec.interpolation, p.flip)
    if spec.jitter_p > 0 and (spec.brightness or spec.contrast or spec.saturation or spec.hue):
        out = color_jitter(out, p.factors, p.order, p.jitter, with_hue=spec.hue > 0)
    if spec.gray_p > 0 and out.shape[1] == 3:
        out = torch.where(_col(p.gray), grayscale(out).expand_as(out), out)
    if spec.blur_p > 0:
        kernel = spec.kernel_size(side)
        if kernel // 2 >= side:
            raise ValueError(f"blur kernel {kernel} needs an output side above {kernel // 2}, got {side}")
        out = torch.where(_col(p.blur), gaussian_blur(out, p.sigma, kernel), out)
    if spec.solarize_p > 0:
        out = torch.where(_col(p.solarize) & (out >= spec.solarize_threshold), 255.0 - out, out)
    return out


def make_views(x: torch.Tensor, spec: ViewSpec, gen: torch.Generator, shard: Shard | None = None) -> torch.Tensor:
    """One view of a uint8 batch [b, C, H, W]: float [b, C, s, s] in [0, 255], each image its own draws.

    With ``shard``, ``x`` is rows [lo, hi) of a global batch of ``total``: the parameters are drawn for
    all ``total`` rows (one ``[total, 36]`` uniform draw) and rows [lo, hi) are used. ``spec`` is not
    validated here (``ViewsBatch`` does that once); call ``spec.problems()`` for loose specs.
    """
    s = _rows(x, shard)
    params = draw_view_params(spec, s.total, x.shape[2], x.shape[3], gen, x.device)
    return apply_view(x, spec, params.rows(s.lo, s.hi))


# ------------------------------------------------------------------------------------------ presets

_SOLO_ASYM = ViewSpec(scale=(0.08, 1.0), interpolation="bicubic", flip_p=0.5, jitter_p=0.8, brightness=0.4,
                      contrast=0.4, saturation=0.2, hue=0.1, gray_p=0.2)
_SOLO_SYM = ViewSpec(scale=(0.08, 1.0), interpolation="bicubic", flip_p=0.5, jitter_p=0.8, brightness=0.8,
                     contrast=0.8, saturation=0.8, hue=0.2, gray_p=0.2, blur_p=0.5)

PRESETS: dict[str, tuple[ViewSpec, ViewSpec]] = {
    # solo-learn's CIFAR views (scripts/pretrain/cifar/*.yaml; RRC is bicubic there): MoCo v3, BYOL, DINO
    "asymmetric": (_SOLO_ASYM, replace(_SOLO_ASYM, solarize_p=0.2)),
    # SimCLR's
    "symmetric": (_SOLO_SYM, _SOLO_SYM),
}


def local_view(spec: ViewSpec, size_frac: float = LOCAL_SIZE_FRAC,
               scale: tuple[float, float] = LOCAL_SCALE) -> ViewSpec:
    """A multi-crop local view of ``spec``: a smaller output (``size_frac`` of the input side), a
    smaller crop area range, no solarisation (DINO's local transform)."""
    return replace(spec, size=0, size_frac=size_frac, scale=scale, solarize_p=0.0)


def multicrop(global_specs: ViewSpec | Sequence[ViewSpec], local_spec: ViewSpec, n_local: int,
              n_global: int = 2) -> tuple[ViewSpec, ...]:
    """DINO's multi-crop: the global views, then ``n_local`` copies of ``local_spec``.

    ``global_specs``: one spec (used ``n_global`` times) or one per global view.
    """
    globals_ = (global_specs,) * n_global if isinstance(global_specs, ViewSpec) else tuple(global_specs)
    return globals_ + (local_spec,) * n_local


def _base_views(preset: str, n_views: int) -> tuple[ViewSpec, ...]:
    """The preset's views; beyond its two, local crops of view 0 (and globals' scale from 0.14 up)."""
    pair = PRESETS[preset]
    if n_views <= 2:
        return pair[:n_views]
    globals_ = tuple(replace(v, scale=(LOCAL_SPLIT, v.scale[1])) for v in pair)
    return multicrop(globals_, local_view(pair[0]), n_views - 2)


def _override_items(overrides: Any, n_views: int) -> tuple[list[tuple[str, list[int], Any]], list[str]]:
    """(label, view indices, changes) per override entry, and the problems of their keys."""
    if overrides is None:
        return [], []
    if isinstance(overrides, Mapping):
        entries = list(overrides.items())
    elif isinstance(overrides, Sequence) and not isinstance(overrides, (str, bytes)):
        entries = list(enumerate(overrides))
    else:
        return [], [f"expected a table of view number -> {{field = value}} (or a list of such tables), "
                    f"got {overrides!r}"]
    items: list[tuple[str, list[int], Any]] = []
    problems: list[str] = []
    locals_ = list(range(2, n_views))
    for key, changes in entries:
        text = str(key)
        if text == "all":
            items.append(("all views", list(range(n_views)), changes))
        elif text == "local":
            if not locals_:
                problems.append(f"'local' names the local crops, but this method uses {n_views} view(s) and none "
                                "is local")
            items.append(("local views", locals_, changes))
        elif (isinstance(key, int) and not isinstance(key, bool)) or (text.isascii() and text.isdigit()):
            k = int(key)
            if 0 <= k < n_views:
                items.append((f"view {k}", [k], changes))
            else:
                problems.append(f"view {text}: views are numbered 0 to {n_views - 1} (this method uses "
                                f"{n_views} view(s)); valid keys: 0..{n_views - 1}, all, local")
        else:
            problems.append(f"unknown view {text!r}{did_you_mean(text, ['all', 'local'])}; valid keys: view numbers "
                            f"0..{n_views - 1}, all, local")
    order = {"all views": 0, "local views": 1}  # all, then local, then single views
    items.sort(key=lambda it: order.get(it[0], 2))
    return items, problems


def _resolve(preset: Any, overrides: Any, n_views: Any, image_size: Any) -> tuple[tuple[ViewSpec, ...], list[str]]:
    if not isinstance(preset, str) or preset not in PRESETS:
        hint = did_you_mean(str(preset), PRESETS)
        return (), [f"unknown view preset {preset!r}{hint}; valid presets: {', '.join(PRESETS)}"]
    if not (isinstance(n_views, int) and not isinstance(n_views, bool) and n_views >= 1):
        return (), [f"n_views: expected an integer >= 1, got {n_views!r}"]
    views = list(_base_views(preset, n_views))
    items, problems = _override_items(overrides, n_views)
    names = [f.name for f in fields(ViewSpec)]
    for label, indices, changes in items:
        if not isinstance(changes, Mapping):
            problems.append(f"{label}: expected a table of field = value, got {changes!r}")
            continue
        good: dict[str, Any] = {}
        for field, value in changes.items():
            if field not in names:
                problems.append(f"{label}: unknown field {str(field)!r}{did_you_mean(str(field), names)}; valid "
                                f"fields: {', '.join(names)}")
            elif (p := _field_problem(field, list(value) if isinstance(value, tuple) else value)) is not None:
                problems.append(f"{label}: {p}")
            else:
                good[field] = tuple(value) if isinstance(value, list) else value
        for k in indices:
            views[k] = replace(views[k], **good)
    if problems:
        return (), problems
    for k, v in enumerate(views):
        problems += [f"view {k}: {p}" for p in v.problems()]
        if isinstance(image_size, int) and not isinstance(image_size, bool) and image_size > 0 and v.blur_p > 0:
            side = v.output_side(image_size, image_size)
            if v.kernel_size(side) // 2 >= side:
                problems.append(f"view {k}: blur_kernel: {v.kernel_size(side)} is too large for a {side}-pixel "
                                f"view; expected at most {2 * side - 1}")
    return tuple(views), problems


def view_problems(preset: Any, overrides: Any = None, image_size: int | None = None, *, n_views: Any = 2
                  ) -> list[str]:
    """One sentence per problem of a preset name plus overrides (empty when they resolve); never raises."""
    return _resolve(preset, overrides, n_views, image_size)[1]


class ViewSpecError(ValueError):
    """Views that do not resolve; ``problems`` holds one sentence each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def resolve_views(preset: str, overrides: Mapping[Any, Any] | Sequence[Any] | None = None,
                  image_size: int | None = None, *, n_views: int = 2) -> tuple[ViewSpec, ...]:
    """The ViewSpecs a recipe asks for: ``PRESETS[preset]``, multi-crop beyond 2 views, then overrides.

    ``n_views`` > 2: views 0 and 1 are the preset's with scale (0.14, hi) and views 2.. are local crops
    of view 0 (:func:`local_view`: half the side, scale (0.05, 0.14), no solarisation).
    ``overrides``: ``{"<k>": {field: value}}`` for view k (TOML ``view_overrides.1.solarize_p = 0``),
    ``"all"`` for every view and ``"local"`` for every local crop (applied first, in that order), or a
    list of tables, one per view from 0. ``image_size`` (optional) checks blur kernels against the
    output sides. Raises :class:`ViewSpecError` with every problem of :func:`view_problems`.
    """
    views, problems = _resolve(preset, overrides, n_views, image_size)
    if problems:
        raise ViewSpecError(problems)
    return views


def spec_dict(spec: ViewSpec) -> dict[str, Any]:
    """The spec as a plain dict (tuples as lists), for run records."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}


__all__ = ["ViewSpec", "VIEW_FIELDS", "ViewParams", "ViewSpecError", "PRESETS", "INTERPOLATIONS", "LUMA",
           "rrc_boxes", "draw_view_params", "resized_crop", "grayscale", "adjust_hue", "color_jitter",
           "gaussian_blur", "apply_view", "make_views", "local_view", "multicrop", "resolve_views",
           "view_problems", "spec_dict"]
