"""Common-corruption robustness in the style of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019).

The corrupted test sets are not read from the CIFAR-10-C files (none offline): each corruption is
regenerated on the device from the clean uint8 test batch, as batched tensor ops, with a
``torch.Generator`` seeded from (seed, corruption index, severity). Severity constants are those of
Hendrycks' ``make_cifar_c.py``; where an operation is approximated, its function's docstring says so on
its ``differs:`` line (:attr:`Corruption.differs`).

A corruption maps float images x ∈ [0, 1]^{N×3×H×W} and a severity s ∈ {0, …, 5} to images in [0, 1];
s = 0 is the identity. :func:`corrupt` does the same for uint8 images and rounds the result to uint8
as a saved PNG would (CIFAR-10-C's ``np.uint8`` truncates instead).

The evaluator reports top-1 of the method's first classifier on every corruption and severity 1..5,
``corruption_top1@<name>/<s>``, and their mean, ``mca`` (mean corruption accuracy). ``mca`` is the mean
over the 9 types generated here: 7 of the 15 of CIFAR-10-C's benchmark (noise ×3, defocus blur,
brightness, contrast, pixelate) and 2 of Hendrycks' extra validation corruptions (gaussian_blur,
saturate), so it is not the published 15-type mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F

from mixbench.data.gpu_loader import Normalize
from mixbench.engine.distributed import all_reduce_sum
from mixbench.evaluate.base import EVALUATORS, EvalContext, Evaluator, reported_classifier
from mixbench.mixing.features import eval_mode

Tensor = torch.Tensor


@dataclass(frozen=True)
class Corruption:
    """One corruption type: ``params[s - 1]`` is the constant of severity s (1..5)."""

    name: str
    params: tuple[Any, ...]
    fn: Callable[[Tensor, Any, torch.Generator], Tensor]

    def apply(self, x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
        """Corrupt float images ``x`` in [0, 1] ([N, 3, H, W]) at ``severity`` (0 = identity); output in [0, 1]."""
        if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= len(self.params):
            raise ValueError(f"{self.name}: severity must be an int in 0..{len(self.params)}, got {severity!r}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images [N, 3, H, W], got {tuple(x.shape)}")
        if severity == 0:
            return x.clamp(0.0, 1.0)
        return self.fn(x, self.params[severity - 1], gen).clamp(0.0, 1.0)

    __call__ = apply

    @property
    def differs(self) -> str:
        """How this corruption differs from Hendrycks' reference (the ``differs:`` docstring line)."""
        for line in (self.fn.__doc__ or "").splitlines():
            if line.strip().lower().startswith("differs:"):
                return line.strip()[len("differs:"):].strip()
        return ""


# --------------------------------------------------------------------------------------------- noise


def _gaussian_noise(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    """x + N(0, c²) per value, clipped. c = [.04, .06, .08, .09, .10] (CIFAR).

    differs: none (numpy's normal sampler replaced by torch's: same distribution, other draws).
    """
    return x + c * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)


def _shot_noise(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    """Poisson(c·x) / c per value, clipped. c = [500, 250, 100, 75, 50] photons (CIFAR).

    differs: none (torch's Poisson sampler instead of numpy's).
    """
    return torch.poisson(x.float() * c, generator=gen).to(x.dtype) / c


def _impulse_noise(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    """Salt-and-pepper: each value (per channel) is replaced with probability c, half by 0, half by 1,
    as ``skimage.util.random_noise(mode='s&p', amount=c)``. c = [.01, .02, .03, .05, .07] (CIFAR).

    differs: none (one uniform draw per value decides pepper u < c/2, salt c/2 ≤ u < c).
    """
    u = torch.rand(x.shape, generator=gen, device=x.device, dtype=torch.float32)
    out = torch.where(u < c / 2, torch.zeros((), device=x.device, dtype=x.dtype), x)
    return torch.where((u >= c / 2) & (u < c), torch.ones((), device=x.device, dtype=x.dtype), out)


# ---------------------------------------------------------------------------------------------- blur


def _depthwise(x: Tensor, kernel: Tensor, pad_mode: str) -> Tensor:
    """Correlate every channel of ``x`` with the 2-D ``kernel`` [kh, kw] (odd sizes), padding with ``pad_mode``."""
    kh, kw = kernel.shape
    xp = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode=pad_mode)
    weight = kernel.to(device=x.device, dtype=x.dtype).expand(x.shape[1], 1, kh, kw)
    return F.conv2d(xp, weight, groups=x.shape[1])


@cache
def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> Tensor:
    """scipy.ndimage's Gaussian: exp(−t²/2σ²) for |t| ≤ int(truncate·σ + 0.5), normalised (float64)."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gaussian_blur(x: Tensor, sigma: float, gen: torch.Generator) -> Tensor:
    """Separable Gaussian blur of each channel, as ``skimage.filters.gaussian(sigma=c, multichannel=True)``
    (scipy ``gaussian_filter``: truncate 4σ, ``mode='nearest'``). c = [.4, .6, .7, .8, 1] (CIFAR).

    differs: none (float32 convolution instead of float64).
    """
    k = gaussian_kernel1d(float(sigma))
    x = _depthwise(x, k.view(1, -1), "replicate")
    return _depthwise(x, k.view(-1, 1), "replicate")


@cache
def disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """Hendrycks' ``disk``: the aliased disk X² + Y² ≤ r² on a 17×17 grid (r ≤ 8), normalised, then
    ``cv2.GaussianBlur`` 3×3 with σ = alias_blur; cropped to its non-zero support (float64)."""
    if radius > 8:
        raise ValueError("disk_kernel: radius > 8 is not used by CIFAR-10-C")
    grid = torch.arange(-8, 9, dtype=torch.float64)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).double()
    disk /= disk.sum()
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * alias_blur**2))  # cv2 3-tap kernel
    g /= g.sum()
    k = F.conv2d(F.pad(disk.view(1, 1, 17, 17), (1, 1, 1, 1), mode="reflect"), (g.view(-1, 1) * g).view(1, 1, 3, 3))
    k = k[0, 0]
    nz = (k != 0).any(0).nonzero()
    half = int(max(8 - nz.min().item(), nz.max().item() - 8))
    return k[8 - half:9 + half, 8 - half:9 + half].contiguous()


def _defocus_blur(x: Tensor, c: tuple[float, float], gen: torch.Generator) -> Tensor:
    """Each channel correlated with Hendrycks' anti-aliased disk (radius, alias blur) =
    [(.3, .4), (.4, .5), (.5, .6), (1, .2), (1.5, .1)] (CIFAR), border reflected as ``cv2.filter2D``'s default
    (BORDER_REFLECT_101).

    differs: none (float32 convolution; the kernel is built in torch, not by cv2, and cropped to its support).
    """
    return _depthwise(x, disk_kernel(*c), "reflect")


# ------------------------------------------------------------------------------------------- digital


def _brightness(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    """HSV value V += c (clipped to 1), hue and saturation kept. c = [.05, .1, .15, .2, .3] (CIFAR).

    With H and S fixed an RGB pixel is V times a colour that does not depend on V, so the HSV round trip is
    computed in RGB: x · min(V + c, 1) / V, and a black pixel (V = 0, S = 0) becomes grey c.
    differs: none (exact HSV algebra instead of skimage's rgb2hsv/hsv2rgb round trip; equal up to float error).
    """
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(max=1.0)
    return torch.where(v > 0, x * (v_new / v.clamp(min=1e-12)), v_new.expand_as(x))


def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB [N, 3, H, W] in [0, 1] -> HSV [N, 3, H, W], each channel in [0, 1], as ``skimage.color.rgb2hsv``.

    V = max, Δ = max − min, S = Δ / V (0 where V = 0), H = (1/6)·{(G − B)/Δ, 2 + (B − R)/Δ, 4 + (R − G)/Δ}
    for R, G or B the maximum, taken mod 1, and 0 where Δ = 0 (grey).
    """
    r, g, b = x.unbind(1)
    v, vmin = x.amax(dim=1), x.amin(dim=1)
    delta = v - vmin
    s = torch.where(v > 0, delta / v.clamp(min=1e-12), torch.zeros_like(v))
    d = delta.clamp(min=1e-12)
    h = torch.where(b == v, 4.0 + (r - g) / d, torch.where(g == v, 2.0 + (b - r) / d, (g - b) / d))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack((h, s, v), dim=1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """HSV [N, 3, H, W] (H in [0, 1)) -> RGB, the inverse of :func:`rgb_to_hsv` (``skimage.color.hsv2rgb``).

    Channel n ∈ {R: 5, G: 3, B: 1} is V − V·S·clip(min(k, 4 − k), 0, 1) with k = (n + 6H) mod 6: the
    six-sector formula without branches.
    """
    h, s, v = hsv.unbind(1)
    n = torch.tensor((5.0, 3.0, 1.0), device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    return v.unsqueeze(1) * (1.0 - s.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))


def _saturate(x: Tensor, c: tuple[float, float], gen: torch.Generator) -> Tensor:
    """HSV saturation S ← clip(S·c₀ + c₁, 0, 1), hue and value kept, as Hendrycks' ``saturate``.
    c = [(.3, 0), (.1, 0), (1.5, 0), (2, .1), (2.5, .2)] (CIFAR; ImageNet-C uses (2, 0), (5, .1), (20, .2)).

    Severities 1-2 desaturate (2 more than 1), 3-5 saturate; a grey pixel has hue 0, so c₁ > 0 tints it red,
    as in skimage. One of his extra (validation) corruptions, not one of the 15 of CIFAR-10-C's mCE; it
    counts in ``mca``, which is the mean over every corruption generated here (gaussian_blur is extra too).
    differs: none (batched float32 HSV round trip in torch instead of skimage's float64).
    """
    hsv = rgb_to_hsv(x)
    h, s, v = hsv.unbind(1)
    return hsv_to_rgb(torch.stack((h, (s * c[0] + c[1]).clamp(0.0, 1.0), v), dim=1))


def _contrast(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    """(x − m)·c + m, m the per-image, per-channel mean over pixels. c = [.75, .5, .4, .3, .15] (CIFAR).

    differs: none.
    """
    m = x.mean(dim=(2, 3), keepdim=True)
    return (x - m) * c + m


@cache
def pil_box_matrix(in_size: int, out_size: int) -> Tensor:
    """[out, in] weights of Pillow's ``Image.BOX`` resampling along one axis (float64).

    Pillow point-samples its box filter: output pixel o averages the input pixels i whose centre lies in
    its footprint, −½ < (i + ½ − (o + ½)·s) / max(s, 1) ≤ ½ with s = in/out; for upscaling this is nearest.
    """
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = 0.5 * fscale
    w = torch.zeros(out_size, in_size, dtype=torch.float64)
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        for i in range(lo, hi):
            t = (i - center + 0.5) / fscale
            if -0.5 < t <= 0.5:
                w[o, i] = 1.0
    return w / w.sum(1, keepdim=True)


def _quantize(x: Tensor) -> Tensor:
    return (x * 255.0).round() / 255.0


def _pil_box_resize(x: Tensor, out_h: int, out_w: int) -> Tensor:
    """Pillow BOX resize of an 8-bit image: horizontal pass, rounded to 8 bits, then vertical, rounded."""
    mw = pil_box_matrix(x.shape[3], out_w).to(device=x.device, dtype=x.dtype)
    mh = pil_box_matrix(x.shape[2], out_h).to(device=x.device, dtype=x.dtype)
    x = _quantize(torch.einsum("nchw,ow->ncho", x, mw))
    return _quantize(torch.einsum("nchw,oh->ncow", x, mh))


def _pixelate(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    """Pillow BOX resize to (int(H·c), int(W·c)), then BOX back to (H, W) (nearest for the upscale).
    c = [.95, .9, .85, .75, .65] (CIFAR).

    differs: 8-bit rounding after each pass as Pillow's; Pillow's fixed-point weights may differ by 1/255.
    """
    h, w = x.shape[2], x.shape[3]
    small = _pil_box_resize(x, max(int(h * c), 1), max(int(w * c), 1))
    return _pil_box_resize(small, h, w)


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c for c in (
        Corruption("gaussian_noise", (0.04, 0.06, 0.08, 0.09, 0.10), _gaussian_noise),
        Corruption("shot_noise", (500.0, 250.0, 100.0, 75.0, 50.0), _shot_noise),
        Corruption("impulse_noise", (0.01, 0.02, 0.03, 0.05, 0.07), _impulse_noise),
        Corruption("defocus_blur", ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)), _defocus_blur),
        Corruption("gaussian_blur", (0.4, 0.6, 0.7, 0.8, 1.0), _gaussian_blur),
        Corruption("brightness", (0.05, 0.1, 0.15, 0.2, 0.3), _brightness),
        Corruption("contrast", (0.75, 0.5, 0.4, 0.3, 0.15), _contrast),
        Corruption("pixelate", (0.95, 0.9, 0.85, 0.75, 0.65), _pixelate),
        Corruption("saturate", ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)), _saturate),
    )
}
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(images_u8: Tensor, name: str, severity: int, gen: torch.Generator) -> Tensor:
    """uint8 images [N, 3, H, W] corrupted by ``CORRUPTIONS[name]`` at ``severity``, rounded back to uint8."""
    if name not in CORRUPTIONS:
        raise KeyError(f"unknown corruption '{name}'; known: {', '.join(CORRUPTIONS)}")
    if images_u8.dtype != torch.uint8:
        raise TypeError(f"corrupt: expected uint8 images, got {images_u8.dtype}")
    if severity == 0:
        CORRUPTIONS[name].apply(images_u8[:0].float(), 0, gen)  # validates the shape
        return images_u8.clone()
    y = CORRUPTIONS[name].apply(images_u8.float() / 255.0, severity, gen)
    return (y * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def corruption_seed(seed: int, index: int, severity: int) -> int:
    """The generator seed of corruption number ``index`` (in :data:`CORRUPTIONS` order) at ``severity``."""
    return (seed * 1_000 + index) * 10 + severity


def _protocol(names: Sequence[str], severities: Sequence[int], seed: int, batch: int | None) -> str:
    return (f"top-1 of the first classifier on corrupted test images ({', '.join(names)}; severities "
            f"{', '.join(map(str, severities))}; mca = mean over all), generated on the device, approximations of "
            f"CIFAR-10-C (no CIFAR-C files offline), Hendrycks' severity constants, torch.Generator per "
            f"(corruption, severity) seeded from seed {seed}, batches of {batch or 'data.batch or 256'}, "
            "uint8-rounded before normalisation")


@EVALUATORS.register("corruptions")
class Corruptions(Evaluator):
    """Top-1 on CIFAR-10-C-style corruptions, ``corruption_top1@<name>/<s>``, and their mean ``mca``.

    ``data`` has ``test_x`` (uint8 [N, 3, H, W] on the device), ``test_y``, ``mean``, ``std`` and optionally
    ``batch``. Noise draws depend on the batch size and, under torchrun, repeat across ranks' shards.
    """

    name = "corruptions"
    protocol = _protocol(list(CORRUPTIONS), SEVERITIES, 0, None)

    def __init__(self, batch: int | None = None, seed: int = 0, names: Sequence[str] | None = None,
                 severities: Sequence[int] = SEVERITIES):
        names = list(CORRUPTIONS) if names is None else list(names)
        unknown = [n for n in names if n not in CORRUPTIONS]
        if unknown:
            raise ValueError(f"unknown corruptions {unknown}; known: {', '.join(CORRUPTIONS)}")
        if not names or any(not 1 <= s <= 5 for s in severities) or not severities:
            raise ValueError("corruptions: need at least one corruption and severities in 1..5")
        if batch is not None and batch < 1:
            raise ValueError(f"batch must be positive, got {batch}")
        self.batch, self.seed, self.names, self.severities = batch, seed, names, tuple(severities)
        self.protocol = _protocol(names, self.severities, seed, batch)  # type: ignore[misc]

    @torch.no_grad()
    def __call__(self, method: Any, data: Any, ctx: EvalContext) -> dict[str, float]:
        model = reported_classifier(method)
        batch = self.batch or getattr(data, "batch", None) or 256
        normalize = Normalize(data.mean, data.std, ctx.device)
        x_all, y_all = data.test_x.to(ctx.device), data.test_y.to(ctx.device)
        index = {n: i for i, n in enumerate(CORRUPTIONS)}
        keys = [(n, s) for n in self.names for s in self.severities]
        hits = torch.zeros(len(keys) + 1, device=ctx.device, dtype=torch.int64)  # last: images seen
        hits[-1] = y_all.shape[0]
        with eval_mode(model):
            for k, (n, s) in enumerate(keys):
                gen = torch.Generator(device=ctx.device).manual_seed(corruption_seed(self.seed, index[n], s))
                for lo in range(0, x_all.shape[0], batch):
                    xc = corrupt(x_all[lo:lo + batch], n, s, gen)
                    with ctx.autocast():
                        logits = model(normalize(xc))
                    hits[k] += (logits.argmax(1) == y_all[lo:lo + batch]).sum()
        counts = all_reduce_sum(hits, ctx.dist).cpu().tolist()
        seen = max(counts[-1], 1)
        out = {f"corruption_top1@{n}/{s}": 100.0 * counts[k] / seen for k, (n, s) in enumerate(keys)}
        out = {"mca": math.fsum(out.values()) / len(out), **out}
        return out
