"""Data held on the training device as uint8, augmented and normalised with batched tensor ops.

Random crop with padding p: output pixel (i, j) reads source (i + s_y − p, j + s_x − p) with
offsets s ~ U{0..2p}, reflected (or zeroed) outside the image; a flip maps j → W − 1 − j. Both are
folded into one gather on uint8. RandomResizedCrop samples area a ~ U(s0, 1) and log-ratio r, and
resamples the box with ``grid_sample``. Normalisation: x̂ = (x / 255 − μ) / σ.

Sharding (W processes, global batch B, b = B / W): every rank draws the same permutation and the
augmentation parameters of all B rows from identically seeded generators, and rank r keeps rows
[r·b, (r+1)·b); so the ranks' batches, concatenated, are the batch of a one-process run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

AUGMENT_KINDS = ("crop_flip", "rrc_flip", "flip", "none")


@dataclass(frozen=True)
class Augment:
    """Training augmentation: ``kind`` in crop_flip | rrc_flip | flip | none."""

    kind: str = "crop_flip"
    padding: int = 4
    padding_mode: str = "reflect"
    rrc_scale: tuple[float, float] = (0.35, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)


class Shard(NamedTuple):
    """Rows [lo, hi) of a global batch of ``total`` rows: what one process augments."""

    lo: int
    hi: int
    total: int


def shard_of(total: int, rank: int, world_size: int) -> Shard:
    """Rank r's contiguous share of ``total`` rows: [⌊r·total/W⌋, ⌊(r+1)·total/W⌋) (r·b.. when W | total)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size = {world_size})")
    return Shard(rank * total // world_size, (rank + 1) * total // world_size, total)


def _rows(x: torch.Tensor, shard: Shard | None) -> Shard:
    """The shard ``x`` holds (all of it when None), checked against its batch size."""
    b = x.shape[0]
    if shard is None:
        return Shard(0, b, b)
    if shard.hi - shard.lo != b or not 0 <= shard.lo <= shard.hi <= shard.total:
        raise ValueError(f"a batch of {b} images cannot be rows [{shard.lo}, {shard.hi}) of {shard.total}")
    return shard


def _reflect(q: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect indices into [0, size) without repeating the edge (numpy/torch 'reflect')."""
    q = q.abs()
    return torch.where(q >= size, 2 * (size - 1) - q, q)


def crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int, padding_mode: str,
              flip: bool = True, shard: Shard | None = None) -> torch.Tensor:
    """Random padded crop + horizontal flip of a uint8 batch [b, C, H, W] as one gather.

    With ``shard``, ``x`` holds rows [lo, hi) of a global batch: offsets and flips are drawn for all
    ``total`` rows (so the generator advances as for the whole batch) and rows [lo, hi) are used.
    Returns a [b, C, H, W] view whose memory is channels_last (call ``.contiguous()`` for NCHW).
    """
    b, _, h, w = x.shape
    s = _rows(x, shard)
    dev = x.device
    rows = torch.arange(h, device=dev).expand(b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    if padding > 0:
        sy = torch.randint(0, 2 * padding + 1, (s.total, 1), device=dev, generator=gen)[s.lo:s.hi]
        sx = torch.randint(0, 2 * padding + 1, (s.total, 1), device=dev, generator=gen)[s.lo:s.hi]
        rows, cols = rows + sy - padding, cols + sx - padding
    if flip:
        flipped = torch.rand(s.total, 1, device=dev, generator=gen)[s.lo:s.hi] < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    valid = None
    if padding > 0 and padding_mode == "zeros":
        valid = (((rows >= 0) & (rows < h)).unsqueeze(2) & ((cols >= 0) & (cols < w)).unsqueeze(1))
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    elif padding > 0:
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    bidx = torch.arange(b, device=dev).view(b, 1, 1)
    out = x.permute(0, 2, 3, 1)[bidx, rows.unsqueeze(2), cols.unsqueeze(1)]  # [b, H, W, C]
    if valid is not None:
        out = out * valid.unsqueeze(3).to(out.dtype)
    return out.permute(0, 3, 1, 2)


def random_resized_crop_flip(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float],
                             ratio: tuple[float, float], shard: Shard | None = None) -> torch.Tensor:
    """Batched RandomResizedCrop + flip of a float batch via one affine ``grid_sample``.

    Box w/W = √(a·r), h/H = √(a/r) (clipped to 1), centre uniform inside the image. With ``shard``
    the parameters are drawn for all ``total`` rows of the global batch and rows [lo, hi) are used.
    """
    b, _, h, w = x.shape
    s = _rows(x, shard)
    dev = x.device
    u = torch.rand(s.total, 4, device=dev, generator=gen)[s.lo:s.hi]
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = torch.exp(log_r)
    bw = torch.sqrt(area * r).clamp(max=1.0)  # box width / image width
    bh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - bw)  # centre in [-1 + bw, 1 - bw] (normalised coordinates)
    cy = (2 * u[:, 3] - 1) * (1 - bh)
    sign = torch.where(torch.rand(s.total, device=dev, generator=gen)[s.lo:s.hi] < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = bw * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = bh, cy
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class Normalize:
    """x̂ = (x − 255 μ) / (255 σ) on a uint8 or [0, 255] float batch, output float32."""

    def __init__(self, mean, std, device: torch.device):
        self.shift = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.scale = 1.0 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.shift) * self.scale


def augment_batch(x: torch.Tensor, aug: Augment, gen: torch.Generator, shard: Shard | None = None) -> torch.Tensor:
    """Apply ``aug`` to a uint8 batch; returns uint8 (crop/flip) or float in [0, 255] (rrc).

    ``shard``: ``x`` is rows [lo, hi) of a global batch; see :func:`crop_flip`.
    """
    if aug.kind == "crop_flip":
        return crop_flip(x, gen, aug.padding, aug.padding_mode, flip=True, shard=shard)
    if aug.kind == "flip":
        return crop_flip(x, gen, 0, aug.padding_mode, flip=True, shard=shard)
    if aug.kind == "rrc_flip":
        return random_resized_crop_flip(x.float(), gen, aug.rrc_scale, aug.rrc_ratio, shard=shard)
    return x


def model_input(x: torch.Tensor, normalize: Normalize, channels_last: bool) -> torch.Tensor:
    """Normalised float32 batch in the model's memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return normalize(x).contiguous(memory_format=fmt)


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """⌊n / B⌋ global batches (drop_last) or ⌈n / B⌉; the same on every rank."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def sharded_batches(order: torch.Tensor, steps: int, batch_size: int, rank: int,
                    world_size: int) -> Iterator[tuple[torch.Tensor, Shard]]:
    """Per step i, this rank's indices of the global batch ``order[i·B:(i+1)·B]`` and their :class:`Shard`.

    A last, partial global batch of m < B rows is shared as ⌊r·m/W⌋.. (a rank may get none).
    """
    for i in range(steps):
        idx = order[i * batch_size:(i + 1) * batch_size]
        shard = shard_of(idx.shape[0], rank, world_size)
        yield idx[shard.lo:shard.hi], shard


class DeviceLoader:
    """Batches from uint8 images and int64 labels that already live on the device.

    Training: an on-device permutation per epoch from ``generator`` (all randomness comes from it,
    so restoring its state reproduces the epoch), then batched augmentation and normalisation.
    ``batch_size`` is the global batch B; with ``world_size`` W > 1 this rank yields its B / W rows
    of each (see the module docstring), and ``len`` is the global step count on every rank.
    Evaluation: in order, no augmentation, last partial batch kept (shard a test set by slicing it).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool,
                 augment: Augment, mean, std, generator: torch.Generator | None = None,
                 drop_last: bool = True, channels_last: bool = False, rank: int = 0, world_size: int = 1):
        if train and generator is None:
            raise ValueError("a training loader needs a generator")
        if not train and world_size > 1:
            raise ValueError("an evaluation loader is not sharded: give it this rank's slice of the images")
        shard_of(batch_size, rank, world_size)  # checks the rank
        self.images, self.labels = images, labels
        self.batch_size, self.train = batch_size, train
        self.augment, self.generator = augment, generator
        self.drop_last = drop_last and train
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.images_per_step = batch_size  # global images per optimiser step
        self.normalize = Normalize(mean, std, images.device)

    def __len__(self) -> int:
        return steps_per_epoch(self.images.shape[0], self.batch_size, self.drop_last)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return model_input(x, self.normalize, self.channels_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = self.images.shape[0], self.batch_size
        if not self.train:
            for i in range(len(self)):
                sl = slice(i * bs, (i + 1) * bs)
                yield self._finish(self.images[sl]), self.labels[sl]
            return
        order = torch.randperm(n, device=self.images.device, generator=self.generator)
        for idx, shard in sharded_batches(order, len(self), bs, self.rank, self.world_size):
            x = augment_batch(self.images[idx], self.augment, self.generator, shard)
            yield self._finish(x), self.labels[idx]


class Views(NamedTuple):
    """One step of a views loader: view k of image i is ``views[k][i]``; ``y`` is for diagnostics/kNN only."""

    views: tuple[torch.Tensor, ...]  # N float [b, C, H_k, W_k], normalised (multi-crop: sizes differ)
    y: torch.Tensor  # int64 [b]


class ViewsLoader:
    """N differently augmented views of the same images per step (self-supervised methods).

    Per epoch one on-device permutation; per step the global batch of B images is gathered once
    and view k is ``views[k]`` applied to it with its own draws (view 0's, then view 1's, ...).
    A view is an :class:`Augment` (``augment_batch``) or a ``ViewSpec`` (``mixbench.data.views.make_views``:
    crop, colour jitter, greyscale, blur, solarisation); views may differ in size (multi-crop).
    ``images_per_step = B·N``; sharding as :class:`DeviceLoader`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, views: Sequence[object],
                 mean, std, generator: torch.Generator, drop_last: bool = True, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        from mixbench.data.views import ViewSpec, make_views  # views.py imports this module

        if len(views) == 0:
            raise ValueError("a views loader needs at least one view")
        bad = [v for v in views if not isinstance(v, (Augment, ViewSpec))]
        if bad:
            raise ValueError(f"a view is an Augment or a ViewSpec, got {bad}")
        shard_of(batch_size, rank, world_size)  # checks the rank
        self.images, self.labels = images, labels
        self.batch_size, self.views = batch_size, tuple(views)
        self.generator, self.drop_last, self.channels_last = generator, drop_last, channels_last
        self.rank, self.world_size = rank, world_size
        self.images_per_step = batch_size * len(self.views)
        self.normalize = Normalize(mean, std, images.device)
        self._make_views = make_views

    def __len__(self) -> int:
        return steps_per_epoch(self.images.shape[0], self.batch_size, self.drop_last)

    def _view(self, raw: torch.Tensor, view, shard: Shard) -> torch.Tensor:
        if isinstance(view, Augment):
            return augment_batch(raw, view, self.generator, shard)
        return self._make_views(raw, view, self.generator, shard)

    def __iter__(self) -> Iterator[Views]:
        gen = self.generator
        order = torch.randperm(self.images.shape[0], device=self.images.device, generator=gen)
        for idx, shard in sharded_batches(order, len(self), self.batch_size, self.rank, self.world_size):
            raw = self.images[idx]
            xs = tuple(model_input(self._view(raw, v, shard), self.normalize, self.channels_last)
                       for v in self.views)
            yield Views(xs, self.labels[idx])


__all__ = ["AUGMENT_KINDS", "Augment", "Shard", "shard_of", "crop_flip", "random_resized_crop_flip", "Normalize",
           "augment_batch", "model_input", "steps_per_epoch", "sharded_batches", "DeviceLoader", "Views",
           "ViewsLoader"]
