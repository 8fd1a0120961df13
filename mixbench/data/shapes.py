"""``shapes``: a synthetic 10-class data set generated from a seed, nothing on disk.

Each image is one geometric shape (the class) with random light colour, size, position and a
small rotation, drawn over a darker random texture (stripes, checkerboard, gradient or smooth
noise) with pixel noise. Colour and background carry no class information, so a model must find
the foreground: exactly what cut-and-paste mixing acts on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

VERSION = 2  # bump whenever the generator changes: it is part of the cache key
CLASSES = ["circle", "square", "triangle", "plus", "ring", "diamond", "star", "hexagon",
           "crescent", "h-bar"]
# Measured over 20,000 generated images (seed 0, 32x32, generator VERSION 2).
MEAN = (0.3867, 0.3880, 0.3891)
STD = (0.2617, 0.2610, 0.2601)
DEFAULT_TRAIN, DEFAULT_TEST = 5000, 1000  # images generated when [data].train_size / test_size are not given
# Peak host memory of ``generate`` per output pixel (all images drawn at once at 2x in float32):
# measured 262-264 bytes per image pixel (6,000 at 32 px and 2,000 at 64 px, VERSION 2), rounded up.
GENERATE_BYTES_PER_PIXEL = 280


def generation_bytes(n: int, image_size: int) -> int:
    """Host memory that ``generate(n, image_size)`` needs at its peak, in bytes (an estimate)."""
    return GENERATE_BYTES_PER_PIXEL * n * image_size * image_size


def draw_labels(n: int, g: torch.Generator) -> torch.Tensor:
    """The class of each of ``n`` images: balanced (i mod 10), shuffled; ``generate``'s first draw."""
    return (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=g)]


def train_class_counts(n_train: int, n_test: int, seed: int) -> list[int]:
    """Images per class among the first ``n_train`` of ``generate(n_train + n_test, seed=seed)``,
    without drawing any image (only the label permutation)."""
    labels = draw_labels(n_train + n_test, torch.Generator().manual_seed(seed))[:n_train]
    return torch.bincount(labels, minlength=len(CLASSES)).tolist()


def _inside(cls: int, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Inside-indicator of shape ``cls`` in its local coordinates (unit size, centred)."""
    ax, ay = px.abs(), py.abs()
    r = torch.sqrt(px**2 + py**2)
    if cls == 0:
        return r < 0.9
    if cls == 1:
        return torch.maximum(ax, ay) < 0.75
    if cls == 2:
        return (py > -0.55) & (py + 1.8 * ax < 0.95)
    if cls == 3:
        return ((ax < 0.28) & (ay < 0.95)) | ((ay < 0.28) & (ax < 0.95))
    if cls == 4:
        return (r > 0.55) & (r < 0.95)
    if cls == 5:
        return ax + ay < 0.95
    if cls == 6:
        return r < 0.4 + 0.5 * (0.5 + 0.5 * torch.cos(5 * torch.atan2(py, px)))
    if cls == 7:
        return torch.maximum(ax * 0.866 + ay * 0.5, ay) < 0.8
    if cls == 8:
        return (r < 0.95) & (torch.sqrt((px - 0.45) ** 2 + py**2) > 0.75)
    return ((ax > 0.5) & (ax < 0.9) & (ay < 0.9)) | ((ay < 0.2) & (ax < 0.9))


def _backgrounds(n: int, s: int, u: torch.Tensor, v: torch.Tensor,
                 g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 3, S, S] textures in [0, 1] (stripes, checkerboard, gradient or smooth noise) and
    their base colour [N, 3, 1, 1]."""
    c1 = 0.5 * torch.rand(n, 3, 1, 1, generator=g)  # backgrounds are darker than shapes
    k = 0.1 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)  # texture contrast
    c2 = c1 * (1 - k) + 0.5 * torch.rand(n, 3, 1, 1, generator=g) * k
    ang = torch.rand(n, 1, 1, generator=g) * math.pi
    freq = 2 + 6 * torch.rand(n, 1, 1, generator=g)
    proj = u * torch.cos(ang) + v * torch.sin(ang)
    stripes = (torch.sin(freq * math.pi * proj) > 0).float()
    cell = 0.15 + 0.35 * torch.rand(n, 1, 1, generator=g)
    checker = ((torch.floor((u + 1) / cell) + torch.floor((v + 1) / cell)) % 2).float()
    gradient = (proj + 1) / 2
    noise = F.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=(s, s), mode="bicubic",
                          align_corners=False).squeeze(1).clamp(0, 1)
    kind = torch.randint(0, 4, (n, 1, 1), generator=g)
    t = torch.where(kind == 0, stripes, torch.where(kind == 1, checker,
                    torch.where(kind == 2, gradient, noise))).unsqueeze(1)
    return c1 * t + c2 * (1 - t), c1


def generate(n: int, image_size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` class-balanced images (uint8 [N, 3, S, S]) and labels (int64 [N]) from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    s2 = image_size * 2  # draw at 2x and average-pool: anti-aliased edges
    labels = draw_labels(n, g)
    lin = (torch.arange(s2) + 0.5) / s2 * 2 - 1
    v, u = torch.meshgrid(lin, lin, indexing="ij")
    u, v = u.expand(n, s2, s2), v.expand(n, s2, s2)
    bg, base = _backgrounds(n, s2, u, v, g)

    def place(scale_lo: float, scale_hi: float, spread: float):
        cx, cy = ((torch.rand(n, 2, generator=g) * 2 - 1) * spread).unbind(1)
        scale = scale_lo + (scale_hi - scale_lo) * torch.rand(n, generator=g)
        rot = (torch.rand(n, generator=g) * 2 - 1) * math.radians(15)
        du, dv = u - cx.view(-1, 1, 1), v - cy.view(-1, 1, 1)
        cos, sin = torch.cos(rot).view(-1, 1, 1), torch.sin(rot).view(-1, 1, 1)
        sc = scale.view(-1, 1, 1)
        return (cos * du + sin * dv) / sc, (-sin * du + cos * dv) / sc

    px, py = place(0.6, 0.9, 0.25)
    shape = torch.zeros(n, 1, s2, s2)
    for c in range(len(CLASSES)):  # a loop over the 10 classes, each drawn for its whole group
        idx = (labels == c).nonzero().squeeze(1)
        shape[idx, 0] = _inside(c, px[idx], py[idx]).float()
    # foreground: a random light colour, brighter than the background in every channel
    fg = 0.55 + 0.45 * torch.rand(n, 3, 1, 1, generator=g)
    img = shape * fg + (1 - shape) * bg
    img = F.avg_pool2d(img, 2)
    img = img + 0.04 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels
