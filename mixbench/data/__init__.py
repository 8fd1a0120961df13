"""Data sources and the on-device loaders.

``load_image_data(cfg)`` gives uint8 tensors (decoded once, cached on disk);
``build_loaders(cfg, ..., batch=spec)`` puts them on the training device and returns train/test
loaders that augment and normalise with batched tensor ops. The spec (``batches``) picks the train
loader: ``LabelledBatch`` → (x, y), ``SemiSupervisedBatch`` → ``SemiBatch`` (labelled stream +
weak/strong unlabelled views, see ``semisup``), ``ViewsBatch`` → ``Views`` (N views per image).

Sharding over W processes: ``batch_size`` is the global batch B; every rank permutes the whole
training set with the same generator and yields rows [r·B/W, (r+1)·B/W) of each global batch
(concatenated over ranks: the one-process batch); rank r's test loader holds test images
[⌊r·N/W⌋, ⌊(r+1)·N/W⌋).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mixbench.data import shapes
from mixbench.data.batches import BatchSpec, LabelledBatch, SemiSupervisedBatch, ViewsBatch
from mixbench.data.cache import cached, cached_split, fingerprint
from mixbench.data.gpu_loader import Augment, DeviceLoader, Views, ViewsLoader, shard_of
from mixbench.data.semisup import build_semisup_loaders, semisup_train_loader
from mixbench.data.sources import (
    WholeSet,
    asked_images,
    read_cifar,
    read_imagefolder,
    read_tiny_imagenet,
    resize_uint8,
)
from mixbench.data.streaming import StreamingLoader
from mixbench.errors import UserError
from mixbench.registry import Registry

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.201)  # OpenMixup's constants
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

DATASETS = Registry("dataset")


@dataclass
class DataConfig:
    """The validated ``[data]`` table of a recipe (see ``mixbench.recipe.DATA_SCHEMA``)."""

    source: str = "shapes"
    root: str | None = None
    download: bool = False
    cache_dir: str | None = None
    image_size: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    augment: str = "crop_flip"
    crop_padding: int = 4
    padding_mode: str = "reflect"
    mean: tuple[float, float, float] | list[float] | None = None
    std: tuple[float, float, float] | list[float] | None = None
    streaming: bool = False
    num_workers: int = 4
    labels_per_class: int | None = None  # semi-supervised: labelled images per class
    num_labels: int | None = None  # semi-supervised: labelled images in all (exclusive with the above)
    unlabeled_ratio: int = 7  # semi-supervised: unlabelled images per labelled image in a step (μ)


@dataclass
class ImageData:
    name: str
    train_x: torch.Tensor  # uint8 [N, 3, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class DataInfo:
    name: str
    num_classes: int
    classes: list[str]
    image_size: tuple[int, int]
    train_len: int
    test_len: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise UserError(f"[data].root is required for source '{cfg.source}'")
    return Path(cfg.root)


@DATASETS.register("shapes", doc="built-in synthetic set: 10 shape classes over textured backgrounds, from a seed",
                   mean=shapes.MEAN, std=shapes.STD)
def _shapes(cfg: DataConfig) -> dict:
    n_train, n_test = cfg.train_size or 5000, cfg.test_size or 1000
    size = cfg.image_size or 32
    x, y = shapes.generate(n_train + n_test, size, cfg.seed)
    return {"train_x": x[:n_train], "train_y": y[:n_train], "test_x": x[n_train:],
            "test_y": y[n_train:], "classes": list(shapes.CLASSES)}


def _subset(split: dict, cfg: DataConfig) -> dict:
    from mixbench.data.sources import balanced_subset

    for name, size in (("train", cfg.train_size), ("test", cfg.test_size)):
        keep = torch.from_numpy(balanced_subset(split[f"{name}_y"].numpy(), size, cfg.seed))
        split[f"{name}_x"], split[f"{name}_y"] = split[f"{name}_x"][keep], split[f"{name}_y"][keep]
    return split


def _cifar(which: str, cfg: DataConfig, whole: WholeSet | None = None) -> dict:
    """The pickles' subset, resized (antialiased bilinear) when ``image_size`` asks for another side than 32;
    the whole set marked ``"whole"`` when ``whole`` asks for it (see ``mixbench.data.cache``)."""
    split = read_cifar(which, _root(cfg), cfg.download)
    side = cfg.image_size or 32
    lengths = [split["train_y"].shape[0], split["test_y"].shape[0]]
    asked = asked_images(lengths, [cfg.train_size, cfg.test_size])
    keep_whole = whole is not None and whole.wanted(sum(lengths), asked, side, side)
    if not keep_whole:
        split = _subset(split, cfg)
    if cfg.image_size is not None:
        for name in ("train_x", "test_x"):
            split[name] = resize_uint8(split[name], cfg.image_size)
    return split | {"whole": True} if keep_whole else split


# whole_set: the factory takes ``whole`` (a WholeSet) and its subsets are balanced_subset choices of the whole set
@DATASETS.register("cifar10", doc="CIFAR-10 from torchvision's pickle files under data.root",
                   mean=CIFAR_MEAN, std=CIFAR_STD, whole_set=True)
def _cifar10(cfg: DataConfig, whole: WholeSet | None = None) -> dict:
    return _cifar("cifar10", cfg, whole)


@DATASETS.register("cifar100", doc="CIFAR-100 (fine labels) from torchvision's pickle files under data.root",
                   mean=CIFAR_MEAN, std=CIFAR_STD, whole_set=True)
def _cifar100(cfg: DataConfig, whole: WholeSet | None = None) -> dict:
    return _cifar("cifar100", cfg, whole)


@DATASETS.register("imagefolder", doc="train/ and test/ (or val/) class folders, or a .tar/.tar.gz of them",
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, whole_set=True)
def _imagefolder(cfg: DataConfig, whole: WholeSet | None = None) -> dict:
    return read_imagefolder(_root(cfg), cfg.image_size, cfg.train_size, cfg.test_size, cfg.seed, whole)


@DATASETS.register("tiny-imagenet", doc="Tiny-ImageNet-200 (64x64) with its flat val/ folder",
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, whole_set=True)
def _tiny(cfg: DataConfig, whole: WholeSet | None = None) -> dict:
    return read_tiny_imagenet(_root(cfg), cfg.image_size, cfg.train_size, cfg.test_size, cfg.seed, whole)


def _norm(cfg: DataConfig, source: str) -> tuple[tuple, tuple]:
    """The recipe's mean/std when given, else the data set's own constants."""
    meta = DATASETS.entry(source).meta
    return (tuple(cfg.mean) if cfg.mean is not None else meta["mean"],
            tuple(cfg.std) if cfg.std is not None else meta["std"])


def load_image_data(cfg: DataConfig) -> ImageData:
    """Decode (or load from the cache) the data set as uint8 tensors on the CPU.

    A ``whole_set`` source is decoded whole once and its subsets taken by index (``cached_split``, see
    ``mixbench.data.cache``); ``shapes`` and other sources are cached per subset.
    """
    entry = DATASETS.entry(cfg.source)
    key = {"source": cfg.source, "image_size": cfg.image_size}
    sizes = {"train_size": cfg.train_size, "test_size": cfg.test_size, "seed": cfg.seed}
    if cfg.source == "shapes":
        key["generator_version"] = shapes.VERSION
    else:
        if cfg.source in ("cifar10", "cifar100") and cfg.image_size not in (None, 32):
            key["resize"] = "antialiased bilinear"  # earlier mixbench cached these at 32 px under the same key
        root = _root(cfg).resolve()
        if not root.exists() and not cfg.download:
            entry.factory(cfg)  # raises the source's own message naming the files it expects
        key |= {"root": str(root), "fingerprint": fingerprint(root) if root.exists() else None}
    if entry.meta.get("whole_set"):
        split = cached_split(cfg.cache_dir, key, cfg.train_size, cfg.test_size, cfg.seed,
                             lambda whole: entry.factory(cfg, whole=whole))
    else:
        split = cached(cfg.cache_dir, key | sizes, lambda: entry.factory(cfg))
    mean, std = _norm(cfg, cfg.source)
    return ImageData(cfg.source, split["train_x"], split["train_y"], split["test_x"], split["test_y"],
                     list(split["classes"]), mean, std)


def _augment(cfg: DataConfig) -> Augment:
    return Augment(cfg.augment, cfg.crop_padding, cfg.padding_mode)


def _check_sharding(batch_size: int, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size or batch_size < 1 or batch_size % world_size:
        raise ValueError(f"the global batch {batch_size} must split evenly over world_size = {world_size} "
                         f"processes, and rank {rank} must be in [0, {world_size})")


def build_loaders(cfg: DataConfig, *, device: torch.device, batch_size: int, eval_batch_size: int,
                  generator: torch.Generator, channels_last: bool = False, batch: BatchSpec = LabelledBatch(),
                  rank: int = 0, world_size: int = 1, drop_last: bool = True):
    """(train loader, test loader, DataInfo) with the data on ``device``, the train loader chosen by ``batch``.

    ``batch_size`` is the global batch B (over all ``world_size`` processes, divisible by it); this
    rank's loaders yield its share (module docstring). The train loader has ``len`` = steps per epoch
    (equal on every rank) and ``images_per_step`` (global augmented images per step). ``drop_last``
    applies to labelled and views loaders (semi-supervised steps always drop the remainder).
    ``info.train_len``: training images (labelled ones for semi-supervised); ``info.test_len``: the
    whole test set.
    """
    _check_sharding(batch_size, rank, world_size)
    if cfg.streaming:
        return _streaming(cfg, batch, device, batch_size, eval_batch_size, generator, channels_last, drop_last,
                          world_size)
    data = load_image_data(cfg)
    if data.train_x.shape[0] == 0 or data.test_x.shape[0] == 0:
        raise UserError(f"[data]: source '{cfg.source}' gave no training or test images")
    train, train_len = _train_loader(cfg, data, batch, device=device, batch_size=batch_size, generator=generator,
                                     channels_last=channels_last, rank=rank, world_size=world_size,
                                     drop_last=drop_last)
    test = _test_loader(cfg, data, device, eval_batch_size, channels_last, rank, world_size)
    info = DataInfo(cfg.source, len(data.classes), data.classes, tuple(data.train_x.shape[2:]),
                    train_len, data.test_x.shape[0], data.mean, data.std)
    return train, test, info


def _train_loader(cfg: DataConfig, data: ImageData, batch: BatchSpec, *, device: torch.device, batch_size: int,
                  generator: torch.Generator, channels_last: bool, rank: int, world_size: int,
                  drop_last: bool) -> tuple[DeviceLoader | ViewsLoader, int]:
    """The train loader ``batch`` asks for, and the training-set size DataInfo reports."""
    shard = {"rank": rank, "world_size": world_size, "channels_last": channels_last}
    if isinstance(batch, SemiSupervisedBatch):
        loader = semisup_train_loader(cfg, data, batch, device=device, batch_size=batch_size, generator=generator,
                                      **shard)
        return loader, loader.num_labelled
    x, y, n = data.train_x.to(device), data.train_y.to(device), data.train_x.shape[0]
    kw = {"mean": data.mean, "std": data.std, "generator": generator, "drop_last": drop_last} | shard
    if isinstance(batch, LabelledBatch):
        return DeviceLoader(x, y, batch_size, train=True, augment=_augment(cfg), **kw), n
    if isinstance(batch, ViewsBatch):
        return ViewsLoader(x, y, batch_size, views=batch.views, **kw), n
    raise TypeError(f"unknown batch spec {batch!r}; expected one of {BatchSpec}")


def _test_loader(cfg: DataConfig, data: ImageData, device: torch.device, eval_batch_size: int,
                 channels_last: bool, rank: int, world_size: int) -> DeviceLoader:
    """Rank r's contiguous share of the test set, in order: images [⌊r·N/W⌋, ⌊(r+1)·N/W⌋)."""
    lo, hi, _ = shard_of(data.test_x.shape[0], rank, world_size)
    return DeviceLoader(data.test_x[lo:hi].to(device), data.test_y[lo:hi].to(device), eval_batch_size,
                        train=False, augment=_augment(cfg), mean=data.mean, std=data.std,
                        channels_last=channels_last)


def _streaming(cfg, batch, device, batch_size, eval_batch_size, generator, channels_last, drop_last, world_size):
    if not isinstance(batch, LabelledBatch):
        raise UserError(f"[data].streaming only feeds labelled (x, y) batches, not the {batch.description} "
                        "batches this method trains on; set data.streaming = false")
    if world_size > 1:
        raise UserError(f"[data].streaming does not shard across processes (world size {world_size}); "
                        "set data.streaming = false or train in one process")
    root = _root(cfg)
    if root.is_file():
        raise UserError(f"[data].streaming reads class folders, not archives: extract {root} first "
                        "or set data.streaming = false")
    if cfg.image_size is None:
        raise UserError("[data].streaming needs [data].image_size (the side length to resize to)")
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not (root / "train").is_dir() or not test_dir.is_dir():
        raise UserError(f"[data].root: {root} needs train/ and test/ (or val/) class folders")
    mean, std = _norm(cfg, "imagefolder")
    kw = {"augment": _augment(cfg), "mean": mean, "std": std, "device": device, "num_workers": cfg.num_workers,
          "channels_last": channels_last}
    train = StreamingLoader(root / "train", cfg.image_size, batch_size, train=True, generator=generator,
                            drop_last=drop_last, **kw)
    train.images_per_step = batch_size
    test = StreamingLoader(test_dir, cfg.image_size, eval_batch_size, train=False, generator=None,
                           drop_last=False, classes=train.classes, **kw)
    info = DataInfo("imagefolder", len(train.classes), train.classes, (cfg.image_size, cfg.image_size),
                    len(train.dataset), len(test.dataset), mean, std)
    return train, test, info


__all__ = ["DataConfig", "ImageData", "DataInfo", "DATASETS", "load_image_data", "build_loaders",
           "build_semisup_loaders", "DeviceLoader", "ViewsLoader", "Views", "Augment", "StreamingLoader",
           "BatchSpec", "LabelledBatch", "SemiSupervisedBatch", "ViewsBatch"]
