"""Data for semi-supervised (FixMatch-style) training: a labelled stream and weak/strong unlabelled views.

``labelled_indices`` picks the class-balanced labelled subset; :class:`SemiSupLoader` yields one
:class:`SemiBatch` per step: B weakly augmented labelled images and μ·B unlabelled images (all
training images, labels hidden: FixMatch's convention) as a weak view (crop/flip) and a strong view
(another crop/flip, then RandAugment + Cutout). Everything stays on the device; all randomness
comes from the loader's generator.

Sharding (W processes, global labelled batch B): all ranks draw the same labelled stream,
permutation and augmentation parameters for the whole global step (B labelled, μ·B unlabelled
rows) and rank r augments and yields only its rows [r·B/W, (r+1)·B/W) and [r·μB/W, (r+1)·μB/W).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from mixbench.data.batches import SemiSupervisedBatch
from mixbench.data.gpu_loader import Augment, Normalize, Shard, augment_batch, model_input, shard_of, sharded_batches
from mixbench.data.randaugment import CUTOUT_FILL, OPS, apply_ops, cutout_mask, rand_augment
from mixbench.errors import UserError

if TYPE_CHECKING:
    from mixbench.data import DataConfig, ImageData


class SemiBatch(NamedTuple):
    """One semi-supervised step. ``u_y`` (true labels of the unlabelled images) is for diagnostics
    only, e.g. pseudo-label accuracy; it must not be used for training."""

    x_l: torch.Tensor  # float [B, C, H, W], normalised weak views of labelled images
    y_l: torch.Tensor  # int64 [B]
    u_w: torch.Tensor  # float [μB, C, H, W], normalised weak views of unlabelled images
    u_s: torch.Tensor  # float [μB, C, H, W], normalised strong views of the same images
    u_y: torch.Tensor  # int64 [μB]


def labelled_indices(labels: np.ndarray, per_class: int | None, total: int | None, seed: int, *,
                     num_classes: int | None = None) -> np.ndarray:
    """Sorted indices of the class-balanced labelled subset, fixed by ``seed``.

    ``per_class`` images of every class, or ``total`` split evenly with the remainder going one
    each to the first classes in class order (so ``total`` need not be a multiple of the class
    count); both None: every image is labelled. Each class draws one seeded permutation of its
    images and takes a prefix, so with one seed a smaller labelled set is a subset of a larger
    one. ``num_classes`` (when given) makes classes absent from ``labels`` count, as errors.
    Raises :class:`UserError` when both are given, when a class has too few images, or when
    ``total`` is smaller than the number of classes.
    """
    labels = np.asarray(labels)
    if per_class is not None and per_class < 1:
        raise UserError(f"[data].labels_per_class must be at least 1, got {per_class}")
    if per_class is not None and total is not None:
        raise UserError("[data].labels_per_class and [data].num_labels are mutually exclusive; give one of them")
    if per_class is None and total is None:
        return np.arange(len(labels))
    classes = np.arange(num_classes) if num_classes is not None else np.unique(labels)
    k = len(classes)
    if k == 0:
        raise UserError("[data]: there are no training images to pick labelled images from")
    if total is not None:
        if total < k:
            raise UserError(f"[data].num_labels = {total} is fewer than the {k} classes; "
                            "give at least one labelled image per class")
        per, extra = divmod(total, k)
        counts = [per + (i < extra) for i in range(k)]
        key = f"[data].num_labels = {total}"
    else:
        counts = [per_class] * k
        key = f"[data].labels_per_class = {per_class}"
    rng = np.random.Generator(np.random.PCG64(seed))
    picks = []
    for c, n in zip(classes, counts, strict=True):  # a loop over classes, not samples
        idx = np.flatnonzero(labels == c)
        if len(idx) < n:
            raise UserError(f"{key} needs {n} labelled images of class {c}, which has only {len(idx)} "
                            "training images")
        picks.append(rng.permutation(idx)[:n])
    return np.sort(np.concatenate(picks))


def sharded_rand_augment(x: torch.Tensor, gen: torch.Generator, shard: Shard | None = None, num_ops: int = 2,
                         cutout: float = 0.5) -> torch.Tensor:
    """:func:`rand_augment` of rows [lo, hi) of a global batch of ``shard.total`` uint8 images.

    Draws the ops, magnitudes, signs and Cutout centres of all ``total`` rows in ``rand_augment``'s
    order and applies rows [lo, hi) to ``x``, so the result is ``rand_augment(whole)[lo:hi]`` for the
    same generator state (a test pins this); the whole batch (or no shard) calls ``rand_augment``.
    """
    if shard is None or (shard.lo == 0 and shard.hi == shard.total):
        return rand_augment(x, gen, num_ops, cutout)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[0] != shard.hi - shard.lo:
        raise ValueError(f"expected uint8 rows [{shard.lo}, {shard.hi}) of a batch, got {x.dtype} {tuple(x.shape)}")
    _, _, h, w = x.shape
    dev, t, rows = x.device, shard.total, slice(shard.lo, shard.hi)
    side = int(round(cutout * min(h, w)))
    ops = torch.randint(0, len(OPS), (t, num_ops), device=dev, generator=gen)[rows]
    mags = torch.rand(t, num_ops, device=dev, generator=gen)[rows]
    signs = torch.where(torch.rand(t, num_ops, device=dev, generator=gen)[rows] < 0.5, -1.0, 1.0)
    if side > 0:
        cy = torch.randint(0, h, (t,), device=dev, generator=gen)[rows]
        cx = torch.randint(0, w, (t,), device=dev, generator=gen)[rows]
    out = apply_ops(x.float(), ops, mags, signs).to(torch.uint8) if num_ops > 0 else x.clone()
    if side > 0:
        out = torch.where(cutout_mask(cy, cx, side, h, w), CUTOUT_FILL, out)
    return out


class SemiSupLoader:
    """FixMatch batches from uint8 images and int64 labels that already live on the device.

    Per epoch: ``len(self) = N // (μ·B)`` steps over one on-device permutation of all N training
    images (the unlabelled set; the remainder is dropped), paired with B labelled images per step
    from a stream of fresh permutations of the labelled set, concatenated (a new permutation
    whenever the previous one is used up, so every labelled image appears once per pass; as
    many passes as the epoch needs). The stream restarts with each epoch, so an epoch depends only
    on the generator's state at its start (restoring that state reproduces it). Weak view: the
    ``augment`` crop/flip; strong view: an independent crop/flip, then :func:`rand_augment`.
    ``batch_size`` is the global B and ``images_per_step = B·(1 + μ)``; with ``world_size`` W > 1
    this rank yields its B/W labelled and μB/W unlabelled rows, drawing every random number of the
    global step (crop/flip and RandAugment parameters sliced, see :func:`sharded_rand_augment`).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor, batch_size: int, *,
                 augment: Augment, mean, std, generator: torch.Generator, unlabeled_ratio: int = 7,
                 channels_last: bool = False, strong_ops: int = 2, cutout: float = 0.5, rank: int = 0,
                 world_size: int = 1):
        if labelled.numel() == 0:
            raise ValueError("the labelled set is empty")
        if batch_size < 1 or unlabeled_ratio < 1:
            raise ValueError("batch_size and unlabeled_ratio must be at least 1")
        shard_of(batch_size, rank, world_size)  # checks the rank
        self.images, self.labels = images, labels
        self.labelled = labelled.to(device=images.device, dtype=torch.long)
        self.batch_size, self.unlabeled_ratio = batch_size, unlabeled_ratio
        self.augment, self.generator = augment, generator
        self.channels_last = channels_last
        self.strong_ops, self.cutout = strong_ops, cutout
        self.rank, self.world_size = rank, world_size
        self.images_per_step = batch_size * (1 + unlabeled_ratio)  # global images per optimiser step
        self.normalize = Normalize(mean, std, images.device)
        self.num_labelled = int(self.labelled.numel())
        self.num_unlabelled = int(images.shape[0])

    def __len__(self) -> int:
        return self.num_unlabelled // (self.unlabeled_ratio * self.batch_size)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return model_input(x, self.normalize, self.channels_last)

    def labelled_stream(self, steps: int) -> torch.Tensor:
        """``steps · B`` labelled image indices: concatenated fresh permutations of the labelled set."""
        n, dev = self.num_labelled, self.images.device
        perms = math.ceil(steps * self.batch_size / n)
        if perms == 0:
            return self.labelled[:0]
        # Independent uniform permutations in one call: argsort of i.i.d. float64 keys (ties have
        # probability ~n²/2⁵⁴, and a stable sort keeps the result deterministic even then).
        keys = torch.rand(perms, n, dtype=torch.float64, device=dev, generator=self.generator)
        order = torch.argsort(keys, dim=1, stable=True).view(-1)
        return self.labelled[order[:steps * self.batch_size]]

    def _strong(self, raw: torch.Tensor, shard: Shard) -> torch.Tensor:
        """Strong view of this rank's rows: an independent crop/flip, then RandAugment + Cutout."""
        strong = augment_batch(raw, self.augment, self.generator, shard)
        if strong.dtype != torch.uint8:  # rrc_flip gives float in [0, 255]
            strong = strong.round().clamp(0, 255).to(torch.uint8)
        return sharded_rand_augment(strong, self.generator, shard, self.strong_ops, self.cutout)

    def __iter__(self) -> Iterator[SemiBatch]:
        steps, bs = len(self), self.batch_size
        gen, rank, ws = self.generator, self.rank, self.world_size
        stream = self.labelled_stream(steps)
        order = torch.randperm(self.num_unlabelled, device=self.images.device, generator=gen)
        labelled = sharded_batches(stream, steps, bs, rank, ws)
        unlabelled = sharded_batches(order, steps, self.unlabeled_ratio * bs, rank, ws)
        for (li, sl), (ui, su) in zip(labelled, unlabelled, strict=True):
            x_l = augment_batch(self.images[li], self.augment, gen, sl)
            raw = self.images[ui]
            u_w = augment_batch(raw, self.augment, gen, su)
            u_s = self._strong(raw, su)
            yield SemiBatch(self._finish(x_l), self.labels[li], self._finish(u_w), self._finish(u_s),
                            self.labels[ui])


def semisup_train_loader(cfg: DataConfig, data: ImageData, spec: SemiSupervisedBatch, *, device: torch.device,
                         batch_size: int, generator: torch.Generator, channels_last: bool = False, rank: int = 0,
                         world_size: int = 1) -> SemiSupLoader:
    """The :class:`SemiSupLoader` of ``data`` (CPU tensors, moved to ``device``) for global labelled batch B.

    Checks that one step's μ·B unlabelled images exist and picks the labelled subset from ``cfg``.
    """
    n, mu = data.train_x.shape[0], cfg.unlabeled_ratio
    if n < mu * batch_size:
        raise UserError(f"one semi-supervised step needs unlabeled_ratio × batch size = {mu} × {batch_size} = "
                        f"{mu * batch_size} unlabelled images but the training set has only {n}; "
                        "lower [train].batch_size or [data].unlabeled_ratio")
    keep = labelled_indices(data.train_y.numpy(), cfg.labels_per_class, cfg.num_labels, cfg.seed,
                            num_classes=len(data.classes))
    aug = Augment(cfg.augment, cfg.crop_padding, cfg.padding_mode)
    return SemiSupLoader(data.train_x.to(device), data.train_y.to(device), torch.from_numpy(keep).to(device),
                         batch_size, augment=aug, mean=data.mean, std=data.std, generator=generator,
                         unlabeled_ratio=mu, channels_last=channels_last, strong_ops=spec.strong_ops,
                         cutout=spec.cutout, rank=rank, world_size=world_size)


def build_semisup_loaders(cfg: DataConfig, *, device: torch.device, batch_size: int, eval_batch_size: int,
                          generator: torch.Generator, channels_last: bool = False, rank: int = 0,
                          world_size: int = 1):
    """``build_loaders(cfg, ..., batch=SemiSupervisedBatch())``: (train :class:`SemiSupLoader`, test, info).

    ``batch_size`` is the global labelled batch B (the unlabelled batch is ``cfg.unlabeled_ratio · B``);
    ``info.train_len`` is the number of labelled images.
    """
    from mixbench.data import build_loaders

    return build_loaders(cfg, device=device, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         generator=generator, channels_last=channels_last, batch=SemiSupervisedBatch(),
                         rank=rank, world_size=world_size)


__all__ = ["SemiBatch", "SemiSupLoader", "labelled_indices", "sharded_rand_augment", "semisup_train_loader",
           "build_semisup_loaders"]
