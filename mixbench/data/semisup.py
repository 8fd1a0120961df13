"""Data for semi-supervised (FixMatch-style) training: a labelled stream and weak/strong unlabelled views.

``labelled_indices`` picks the class-balanced labelled subset; :class:`SemiSupLoader` yields one
:class:`SemiBatch` per step: B weakly augmented labelled images and μ·B unlabelled images (all
training images, labels hidden: FixMatch's convention) as a weak view (crop/flip) and a strong view
(another crop/flip, then RandAugment + Cutout). Everything stays on the device; all randomness
comes from the loader's generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from mixbench.data.gpu_loader import Augment, Normalize, augment_batch
from mixbench.data.randaugment import rand_augment
from mixbench.errors import UserError


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


class SemiSupLoader:
    """FixMatch batches from uint8 images and int64 labels that already live on the device.

    Per epoch: ``len(self) = N // (μ·B)`` steps over one on-device permutation of all N training
    images (the unlabelled set; the remainder is dropped), paired with B labelled images per step
    from a stream of fresh permutations of the labelled set, concatenated (a new permutation
    whenever the previous one is used up, so every labelled image appears once per pass; as
    many passes as the epoch needs). The stream restarts with each epoch, so an epoch depends only
    on the generator's state at its start (restoring that state reproduces it). Weak view: the
    ``augment`` crop/flip; strong view: an independent crop/flip, then :func:`rand_augment`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor, batch_size: int, *,
                 augment: Augment, mean, std, generator: torch.Generator, unlabeled_ratio: int = 7,
                 channels_last: bool = False, strong_ops: int = 2, cutout: float = 0.5):
        if labelled.numel() == 0:
            raise ValueError("the labelled set is empty")
        if batch_size < 1 or unlabeled_ratio < 1:
            raise ValueError("batch_size and unlabeled_ratio must be at least 1")
        self.images, self.labels = images, labels
        self.labelled = labelled.to(device=images.device, dtype=torch.long)
        self.batch_size, self.unlabeled_ratio = batch_size, unlabeled_ratio
        self.augment, self.generator = augment, generator
        self.channels_last = channels_last
        self.strong_ops, self.cutout = strong_ops, cutout
        self.normalize = Normalize(mean, std, images.device)
        self.num_labelled = int(self.labelled.numel())
        self.num_unlabelled = int(images.shape[0])

    def __len__(self) -> int:
        return self.num_unlabelled // (self.unlabeled_ratio * self.batch_size)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

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

    def __iter__(self) -> Iterator[SemiBatch]:
        steps, bs = len(self), self.batch_size
        ubs = self.unlabeled_ratio * bs
        gen = self.generator
        stream = self.labelled_stream(steps)
        order = torch.randperm(self.num_unlabelled, device=self.images.device, generator=gen)
        for i in range(steps):
            li = stream[i * bs:(i + 1) * bs]
            x_l = augment_batch(self.images[li], self.augment, gen)
            ui = order[i * ubs:(i + 1) * ubs]
            raw = self.images[ui]
            u_w = augment_batch(raw, self.augment, gen)
            strong = augment_batch(raw, self.augment, gen)
            if strong.dtype != torch.uint8:  # rrc_flip gives float in [0, 255]
                strong = strong.round().clamp(0, 255).to(torch.uint8)
            u_s = rand_augment(strong, gen, self.strong_ops, self.cutout)
            yield SemiBatch(self._finish(x_l), self.labels[li], self._finish(u_w), self._finish(u_s),
                            self.labels[ui])


def build_semisup_loaders(cfg, *, device: torch.device, batch_size: int, eval_batch_size: int,
                          generator: torch.Generator, channels_last: bool = False):
    """(train :class:`SemiSupLoader`, test ``DeviceLoader``, ``DataInfo``) with the data on ``device``.

    ``cfg`` is a ``DataConfig``; ``batch_size`` is the labelled batch B (the unlabelled batch is
    ``cfg.unlabeled_ratio · B``); ``info.train_len`` is the number of labelled images.
    """
    from mixbench.data import DataInfo, DeviceLoader, load_image_data

    if cfg.streaming:
        raise UserError("[data].streaming is not supported by semi-supervised methods; set data.streaming = false")
    data = load_image_data(cfg)
    if data.train_x.shape[0] == 0 or data.test_x.shape[0] == 0:
        raise UserError(f"[data]: source '{cfg.source}' gave no training or test images")
    n, mu = data.train_x.shape[0], cfg.unlabeled_ratio
    if n < mu * batch_size:
        raise UserError(f"one semi-supervised step needs unlabeled_ratio × batch size = {mu} × {batch_size} = "
                        f"{mu * batch_size} unlabelled images but the training set has only {n}; "
                        "lower [train].batch_size or [data].unlabeled_ratio")
    keep = labelled_indices(data.train_y.numpy(), cfg.labels_per_class, cfg.num_labels, cfg.seed,
                            num_classes=len(data.classes))
    aug = Augment(cfg.augment, cfg.crop_padding, cfg.padding_mode)
    kw = {"augment": aug, "mean": data.mean, "std": data.std, "channels_last": channels_last}
    train = SemiSupLoader(data.train_x.to(device), data.train_y.to(device), torch.from_numpy(keep).to(device),
                          batch_size, generator=generator, unlabeled_ratio=mu, **kw)
    test = DeviceLoader(data.test_x.to(device), data.test_y.to(device), eval_batch_size, train=False, **kw)
    info = DataInfo(cfg.source, len(data.classes), data.classes, tuple(data.train_x.shape[2:]),
                    len(keep), data.test_x.shape[0], data.mean, data.std)
    return train, test, info


__all__ = ["SemiBatch", "SemiSupLoader", "labelled_indices", "build_semisup_loaders"]
