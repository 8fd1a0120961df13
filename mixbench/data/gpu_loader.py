"""Data held on the training device as uint8, augmented and normalised with batched tensor ops.

Random crop with padding p: output pixel (i, j) reads source (i + s_y − p, j + s_x − p) with
offsets s ~ U{0..2p}, reflected (or zeroed) outside the image; a flip maps j → W − 1 − j. Both are
folded into one gather on uint8. RandomResizedCrop samples area a ~ U(s0, 1) and log-ratio r, and
resamples the box with ``grid_sample``. Normalisation: x̂ = (x / 255 − μ) / σ.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """Training augmentation: ``kind`` in crop_flip | rrc_flip | flip | none."""

    kind: str = "crop_flip"
    padding: int = 4
    padding_mode: str = "reflect"
    rrc_scale: tuple[float, float] = (0.35, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)


def _reflect(q: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect indices into [0, size) without repeating the edge (numpy/torch 'reflect')."""
    q = q.abs()
    return torch.where(q >= size, 2 * (size - 1) - q, q)


def crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int, padding_mode: str,
              flip: bool = True) -> torch.Tensor:
    """Random padded crop + horizontal flip of a uint8 batch [B, C, H, W] as one gather.

    Returns a [B, C, H, W] view whose memory is channels_last (call ``.contiguous()`` for NCHW).
    """
    b, _, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).expand(b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    if padding > 0:
        sy = torch.randint(0, 2 * padding + 1, (b, 1), device=dev, generator=gen)
        sx = torch.randint(0, 2 * padding + 1, (b, 1), device=dev, generator=gen)
        rows, cols = rows + sy - padding, cols + sx - padding
    if flip:
        flipped = torch.rand(b, 1, device=dev, generator=gen) < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    valid = None
    if padding > 0 and padding_mode == "zeros":
        valid = (((rows >= 0) & (rows < h)).unsqueeze(2) & ((cols >= 0) & (cols < w)).unsqueeze(1))
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    elif padding > 0:
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    bidx = torch.arange(b, device=dev).view(b, 1, 1)
    out = x.permute(0, 2, 3, 1)[bidx, rows.unsqueeze(2), cols.unsqueeze(1)]  # [B, H, W, C]
    if valid is not None:
        out = out * valid.unsqueeze(3).to(out.dtype)
    return out.permute(0, 3, 1, 2)


def random_resized_crop_flip(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float],
                             ratio: tuple[float, float]) -> torch.Tensor:
    """Batched RandomResizedCrop + flip of a float batch via one affine ``grid_sample``."""
    b, _, h, w = x.shape
    dev = x.device
    u = torch.rand(b, 4, device=dev, generator=gen)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = torch.exp(log_r)
    bw = torch.sqrt(area * r).clamp(max=1.0)  # box width / image width
    bh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - bw)  # centre in [-1 + bw, 1 - bw] (normalised coordinates)
    cy = (2 * u[:, 3] - 1) * (1 - bh)
    sign = torch.where(torch.rand(b, device=dev, generator=gen) < 0.5, -1.0, 1.0)
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


def augment_batch(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """Apply ``aug`` to a uint8 batch; returns uint8 (crop/flip) or float in [0, 255] (rrc)."""
    if aug.kind == "crop_flip":
        return crop_flip(x, gen, aug.padding, aug.padding_mode, flip=True)
    if aug.kind == "flip":
        return crop_flip(x, gen, 0, aug.padding_mode, flip=True)
    if aug.kind == "rrc_flip":
        return random_resized_crop_flip(x.float(), gen, aug.rrc_scale, aug.rrc_ratio)
    return x


class DeviceLoader:
    """Batches from uint8 images and int64 labels that already live on the device.

    Training: an on-device permutation per epoch from ``generator`` (all randomness comes from it,
    so restoring its state reproduces the epoch), then batched augmentation and normalisation.
    Evaluation: in order, no augmentation, last partial batch kept.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool,
                 augment: Augment, mean, std, generator: torch.Generator | None = None,
                 drop_last: bool = True, channels_last: bool = False):
        if train and generator is None:
            raise ValueError("a training loader needs a generator")
        self.images, self.labels = images, labels
        self.batch_size, self.train = batch_size, train
        self.augment, self.generator = augment, generator
        self.drop_last = drop_last and train
        self.channels_last = channels_last
        self.normalize = Normalize(mean, std, images.device)

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = self.images.shape[0], self.batch_size
        if self.train:
            order = torch.randperm(n, device=self.images.device, generator=self.generator)
        for i in range(len(self)):
            if self.train:
                idx = order[i * bs:(i + 1) * bs]
                x = augment_batch(self.images[idx], self.augment, self.generator)
                yield self._finish(x), self.labels[idx]
            else:
                sl = slice(i * bs, (i + 1) * bs)
                yield self._finish(self.images[sl]), self.labels[sl]
