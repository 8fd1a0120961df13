"""Data sources and the on-device loaders.

``load_image_data(cfg)`` gives uint8 tensors (decoded once, cached on disk);
``build_loaders(cfg, ...)`` puts them on the training device and returns train/test loaders that
augment and normalise with batched tensor ops; ``build_semisup_loaders(cfg, ...)`` does the same for
semi-supervised methods (labelled stream + weak/strong unlabelled views, see ``semisup``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mixbench.data import shapes
from mixbench.data.cache import cached, fingerprint
from mixbench.data.gpu_loader import Augment, DeviceLoader
from mixbench.data.semisup import build_semisup_loaders
from mixbench.data.sources import read_cifar, read_imagefolder, read_tiny_imagenet
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


@DATASETS.register("cifar10", doc="CIFAR-10 from torchvision's pickle files under data.root",
                   mean=CIFAR_MEAN, std=CIFAR_STD)
def _cifar10(cfg: DataConfig) -> dict:
    return _subset(read_cifar("cifar10", _root(cfg), cfg.download), cfg)


@DATASETS.register("cifar100", doc="CIFAR-100 (fine labels) from torchvision's pickle files under data.root",
                   mean=CIFAR_MEAN, std=CIFAR_STD)
def _cifar100(cfg: DataConfig) -> dict:
    return _subset(read_cifar("cifar100", _root(cfg), cfg.download), cfg)


@DATASETS.register("imagefolder", doc="train/ and test/ (or val/) class folders, or a .tar/.tar.gz of them",
                   mean=IMAGENET_MEAN, std=IMAGENET_STD)
def _imagefolder(cfg: DataConfig) -> dict:
    return read_imagefolder(_root(cfg), cfg.image_size, cfg.train_size, cfg.test_size, cfg.seed)


@DATASETS.register("tiny-imagenet", doc="Tiny-ImageNet-200 (64x64) with its flat val/ folder",
                   mean=IMAGENET_MEAN, std=IMAGENET_STD)
def _tiny(cfg: DataConfig) -> dict:
    return read_tiny_imagenet(_root(cfg), cfg.image_size, cfg.train_size, cfg.test_size, cfg.seed)


def _norm(cfg: DataConfig, source: str) -> tuple[tuple, tuple]:
    """The recipe's mean/std when given, else the data set's own constants."""
    meta = DATASETS.entry(source).meta
    return (tuple(cfg.mean) if cfg.mean is not None else meta["mean"],
            tuple(cfg.std) if cfg.std is not None else meta["std"])


def load_image_data(cfg: DataConfig) -> ImageData:
    """Decode (or load from the cache) the whole data set as uint8 tensors on the CPU."""
    entry = DATASETS.entry(cfg.source)
    key = {"source": cfg.source, "image_size": cfg.image_size, "train_size": cfg.train_size,
           "test_size": cfg.test_size, "seed": cfg.seed}
    if cfg.source == "shapes":
        key["generator_version"] = shapes.VERSION
    else:
        root = _root(cfg).resolve()
        if not root.exists() and not cfg.download:
            entry.factory(cfg)  # raises the source's own message naming the files it expects
        key |= {"root": str(root), "fingerprint": fingerprint(root) if root.exists() else None}
    split = cached(cfg.cache_dir, key, lambda: entry.factory(cfg))
    mean, std = _norm(cfg, cfg.source)
    return ImageData(cfg.source, split["train_x"], split["train_y"], split["test_x"], split["test_y"],
                     list(split["classes"]), mean, std)


def build_loaders(cfg: DataConfig, *, device: torch.device, batch_size: int, eval_batch_size: int,
                  generator: torch.Generator, channels_last: bool = False, drop_last: bool = True):
    """(train loader, test loader, DataInfo) with the data on ``device``."""
    aug = Augment(cfg.augment, cfg.crop_padding, cfg.padding_mode)
    if cfg.streaming:
        return _streaming(cfg, aug, device, batch_size, eval_batch_size, generator, channels_last, drop_last)
    data = load_image_data(cfg)
    if data.train_x.shape[0] == 0 or data.test_x.shape[0] == 0:
        raise UserError(f"[data]: source '{cfg.source}' gave no training or test images")
    kw = {"augment": aug, "mean": data.mean, "std": data.std, "channels_last": channels_last}
    train = DeviceLoader(data.train_x.to(device), data.train_y.to(device), batch_size, train=True,
                         generator=generator, drop_last=drop_last, **kw)
    test = DeviceLoader(data.test_x.to(device), data.test_y.to(device), eval_batch_size, train=False, **kw)
    num_classes = len(data.classes)
    info = DataInfo(cfg.source, num_classes, data.classes, tuple(data.train_x.shape[2:]),
                    data.train_x.shape[0], data.test_x.shape[0], data.mean, data.std)
    return train, test, info


def _streaming(cfg, aug, device, batch_size, eval_batch_size, generator, channels_last, drop_last):
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
    kw = {"augment": aug, "mean": mean, "std": std, "device": device, "num_workers": cfg.num_workers,
          "channels_last": channels_last}
    train = StreamingLoader(root / "train", cfg.image_size, batch_size, train=True, generator=generator,
                            drop_last=drop_last, **kw)
    test = StreamingLoader(test_dir, cfg.image_size, eval_batch_size, train=False, generator=None,
                           drop_last=False, classes=train.classes, **kw)
    info = DataInfo("imagefolder", len(train.classes), train.classes, (cfg.image_size, cfg.image_size),
                    len(train.dataset), len(test.dataset), mean, std)
    return train, test, info


__all__ = ["DataConfig", "ImageData", "DataInfo", "DATASETS", "load_image_data", "build_loaders",
           "build_semisup_loaders", "DeviceLoader", "Augment", "StreamingLoader"]
