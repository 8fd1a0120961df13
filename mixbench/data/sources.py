"""Readers for each on-disk format, all returning uint8 [N, 3, H, W] tensors and int64 labels.

``cifar10``/``cifar100``: torchvision's pickle batches. ``imagefolder``: ``train/`` and
``test/`` (or ``val/``) class folders, as a tree or a ``.tar``/``.tar.gz`` archive.
``tiny-imagenet``: ``wnids.txt``, ``train/<wnid>/images`` and the flat ``val/images`` with
``val/val_annotations.txt``.
"""

from __future__ import annotations

import contextlib
import io
import lzma
import os
import pickle
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mixbench.errors import UserError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}
SPLITS = {"train": ("train",), "test": ("test", "val")}

CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": "batches.meta", "label_key": b"labels", "names_key": b"label_names"},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "label_key": b"fine_labels", "names_key": b"fine_label_names"},
}

Split = dict[str, torch.Tensor | list[str]]

# What a broken or truncated archive raises while it is read (gzip: EOFError / zlib.error, xz: LZMAError).
ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
# Host memory per byte of the decoded uint8 set while a reader builds it (per-image arrays + the stacked tensor).
DECODE_OVERHEAD = 2


@dataclass(frozen=True)
class Layout:
    """A source's fixed shape: classes, full train/test split sizes, native side, and whether
    ``[data].image_size`` resizes it (cifar's pickles are always 32x32)."""

    classes: int
    train: int
    test: int
    side: int
    resizes: bool


LAYOUTS = {
    "cifar10": Layout(10, 50_000, 10_000, 32, resizes=False),
    "cifar100": Layout(100, 50_000, 10_000, 32, resizes=False),
    "tiny-imagenet": Layout(200, 100_000, 10_000, 64, resizes=True),
}


@dataclass(frozen=True)
class DataFacts:
    """What a ``[data]`` table implies before any file is read; ``None``: only the files will tell."""

    classes: int | None = None
    train: int | None = None  # training images (before any labelled subset)
    test: int | None = None
    side: int | None = None  # image side after any resize
    work_bytes: int | None = None  # host memory needed to decode (or generate) the uint8 set
    work: str = "decode"  # what takes that memory: "decode" or "generate"

    @property
    def data_bytes(self) -> int | None:
        """The uint8 [N, 3, S, S] tensors of both splits, as held on the training device."""
        if None in (self.train, self.test, self.side):
            return None
        return (self.train + self.test) * 3 * self.side * self.side


def data_facts(source: str, image_size: int | None, train_size: int | None, test_size: int | None) -> DataFacts:
    """Sizes implied by a ``[data]`` table (shapes: what is generated; a fixed-layout source: its
    split sizes, capped by ``train_size``/``test_size``; imagefolder: nothing is known)."""
    from mixbench.data import shapes

    if source == "shapes":
        train, test = train_size or shapes.DEFAULT_TRAIN, test_size or shapes.DEFAULT_TEST
        side = image_size or 32
        return DataFacts(len(shapes.CLASSES), train, test, side, shapes.generation_bytes(train + test, side),
                         "generate")
    layout = LAYOUTS.get(source)
    if layout is None:
        return DataFacts(side=image_size)
    train = layout.train if train_size is None else min(train_size, layout.train)
    test = layout.test if test_size is None else min(test_size, layout.test)
    side = image_size if layout.resizes and image_size is not None else layout.side
    facts = DataFacts(layout.classes, train, test, side)
    return DataFacts(layout.classes, train, test, side, DECODE_OVERHEAD * facts.data_bytes)


def train_class_counts(source: str, train_size: int | None, test_size: int | None, seed: int) -> list[int] | None:
    """Training images per class (class order) that a source yields, or ``None`` when only its files tell."""
    from mixbench.data import shapes

    if source == "shapes":
        return shapes.train_class_counts(train_size or shapes.DEFAULT_TRAIN, test_size or shapes.DEFAULT_TEST,
                                         seed)
    layout = LAYOUTS.get(source)
    if layout is None:
        return None
    per, extra = divmod(min(train_size or layout.train, layout.train), layout.classes)
    return [per + (i < extra) for i in range(layout.classes)]  # balanced_subset's split (exact for the full set)


def host_memory_bytes() -> int | None:
    """This machine's memory (the smaller of physical memory and a cgroup limit), or ``None``."""
    limits = []
    with contextlib.suppress(AttributeError, ValueError, OSError):  # not a POSIX system
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # v2, v1
        try:
            text = Path(cgroup).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return min(limits) if limits else None


def gib(n: int) -> str:
    """Bytes for a message, in MiB, GiB, TiB or PiB."""
    for unit, power in (("PiB", 50), ("TiB", 40), ("GiB", 30)):
        if n >= 2**power:
            return f"{n / 2**power:,.1f} {unit}"
    return f"{n / 2**20:,.1f} MiB"


def memory_problem(need: int, what: str) -> str | None:
    """A sentence when ``need`` bytes of host memory are more than this machine has, else ``None``."""
    have = host_memory_bytes()
    if have is None or need <= have:
        return None
    return f"{what} needs about {gib(need)} of memory, more than this machine's {gib(have)}"


def _check_fits(n: int, h: int, w: int, where: str) -> None:
    problem = memory_problem(DECODE_OVERHEAD * n * 3 * h * w, f"decoding {n:,} images of {h}x{w} from {where}")
    if problem:
        raise UserError(f"[data].root: {problem}; set [data].train_size/test_size or a smaller [data].image_size, "
                        "or use [data].streaming = true (imagefolder)")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def read_cifar(which: str, root: Path, download: bool) -> Split:
    """Read torchvision's CIFAR pickles under ``root`` (downloading them first when asked)."""
    spec = CIFAR[which]
    folder = root / spec["folder"]
    files = [*spec["train"], *spec["test"], spec["meta"]]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if which == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(str(root), train=True, download=True)
        except Exception as e:  # no network, disk full, ...
            raise UserError(f"[data].download: could not download {which} into {root} ({e}); "
                            f"place torchvision's files in {folder} instead") from None
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise UserError(f"[data].root: {which} expects torchvision's files {', '.join(files)} in "
                        f"{folder}, but {', '.join(missing)} is missing; set data.root to the folder "
                        "that holds them, or data.download = true with internet")
    out: Split = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for name in spec[split]:
            d = _unpickle(folder / name)
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[spec["label_key"]], dtype=np.int64))
        out[f"{split}_x"] = torch.from_numpy(np.concatenate(xs))
        out[f"{split}_y"] = torch.from_numpy(np.concatenate(ys))
    meta = _unpickle(folder / spec["meta"])
    out["classes"] = [n.decode() for n in meta[spec["names_key"]]]
    return out


def balanced_subset(labels: list[int] | np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of ``size`` (all, in order, when ``size`` is None)."""
    labels = np.asarray(labels)
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.Generator(np.random.PCG64(seed))
    classes = np.unique(labels)
    per, extra = divmod(size, len(classes))
    picks = []
    for i, c in enumerate(classes):  # a loop over classes, not samples
        idx = np.flatnonzero(labels == c)
        picks.append(rng.permutation(idx)[: per + (i < extra)])
    return np.sort(np.concatenate(picks))


def _decode(data: bytes, image_size: int | None, where: str) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except Exception:
        raise UserError(f"[data].root: cannot decode image {where}") from None
    if image_size is not None and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def decode_all(items: list[tuple[str, bytes]], image_size: int | None, where: str) -> torch.Tensor:
    """Decode (name, bytes) pairs on a thread pool into one uint8 [N, 3, H, W] tensor."""
    if not items:
        return torch.zeros(0, 3, image_size or 32, image_size or 32, dtype=torch.uint8)
    first = _decode(items[0][1], image_size, items[0][0])  # the set's size is known from its first image
    _check_fits(len(items), first.shape[0], first.shape[1], where)
    with ThreadPoolExecutor() as pool:
        arrays = list(pool.map(lambda it: _decode(it[1], image_size, it[0]), items))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UserError(f"[data].image_size: images under {where} have different sizes "
                        f"({', '.join(str(s[:2]) for s in list(shapes)[:3])}); set data.image_size "
                        "to resize them to one side length")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _split_and_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """('train'|'test', class name) for a path like [wrap/]train/<class>/<file>."""
    for i, part in enumerate(parts[:-2]):
        for split, names in SPLITS.items():
            if part in names and i + 2 == len(parts) - 1:
                return split, parts[i + 1]
    return None


def _listing(root: Path, tar: tarfile.TarFile | None) -> dict[str, list[tuple[str, str, object]]]:
    """Per split: (path, class, handle) of every image, from a folder tree or an open tar archive."""
    found: dict[str, list[tuple[str, str, object]]] = {"train": [], "test": []}
    if tar is not None:
        for member in tar:
            if member.isfile() and Path(member.name).suffix.lower() in IMAGE_EXTS:
                sc = _split_and_class(Path(member.name).parts)
                if sc:
                    found[sc[0]].append((member.name, sc[1], (tar, member)))
        return found
    for split, names in SPLITS.items():
        for name in names:
            folder = root / name
            if folder.is_dir():
                for p in sorted(folder.rglob("*")):
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
                        found[split].append((str(p), p.relative_to(folder).parts[0], p))
                break
    return found


def _read_many(handles: list[object]) -> list[bytes]:
    """Bytes of each handle (a Path, or a (tar, member) pair read in archive order)."""
    out: list[bytes] = [b""] * len(handles)
    order = sorted(range(len(handles)),
                   key=lambda i: handles[i][1].offset_data if isinstance(handles[i], tuple) else i)
    for i in order:
        h = handles[i]
        if isinstance(h, Path):
            try:
                out[i] = h.read_bytes()
            except OSError as e:
                raise UserError(f"[data].root: cannot read {h} ({e.strerror or e})") from None
        else:
            tar, member = h
            out[i] = tar.extractfile(member).read()
    return out


def read_imagefolder(root: Path, image_size: int | None, train_size: int | None,
                     test_size: int | None, seed: int) -> Split:
    """Read an ImageFolder tree or archive; subsets are chosen before decoding."""
    if not root.exists():
        raise UserError(f"[data].root: {root} does not exist; imagefolder expects train/ and test/ "
                        "(or val/) class folders, or a .tar/.tar.gz of them")
    if root.is_dir():
        return _decode_listing(root, _listing(root, None), image_size, train_size, test_size, seed)
    try:
        with tarfile.open(root, "r:*") as tar:
            return _decode_listing(root, _listing(root, tar), image_size, train_size, test_size, seed)
    except ARCHIVE_ERRORS as e:  # truncated gzip (EOFError), corrupt stream (zlib.error), not a tar at all, ...
        raise UserError(f"[data].root: {root} is not a readable tar archive, or it is truncated or corrupt "
                        f"({type(e).__name__}: {e}); download or pack it again, or point [data].root at the "
                        "extracted folder") from None


def _decode_listing(root: Path, found: dict, image_size: int | None, train_size: int | None,
                    test_size: int | None, seed: int) -> Split:
    if not found["train"] or not found["test"]:
        raise UserError(f"[data].root: {root} needs train/<class>/ and test/<class>/ (or val/<class>/) "
                        f"image folders; found {len(found['train'])} train and {len(found['test'])} "
                        "test images")
    classes = sorted({c for _, c, _ in found["train"]})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for _, c, _ in found["test"]} - set(index))
    if unknown:
        raise UserError(f"[data].root: test classes {', '.join(unknown[:3])} of {root} have no train folder")
    out: Split = {"classes": classes}
    for split, size in (("train", train_size), ("test", test_size)):
        entries = sorted(found[split], key=lambda e: e[0])
        labels = [index[c] for _, c, _ in entries]
        keep = balanced_subset(labels, size, seed)
        blobs = _read_many([entries[i][2] for i in keep])
        items = [(entries[i][0], blob) for i, blob in zip(keep, blobs, strict=True)]
        out[f"{split}_x"] = decode_all(items, image_size, f"{root} ({split})")
        out[f"{split}_y"] = torch.tensor([labels[i] for i in keep], dtype=torch.int64)
    return out


def read_tiny_imagenet(root: Path, image_size: int | None, train_size: int | None,
                       test_size: int | None, seed: int) -> Split:
    """Tiny-ImageNet-200: train/<wnid>/images/*.JPEG and val/images with val_annotations.txt."""
    wnids_file, ann = root / "wnids.txt", root / "val" / "val_annotations.txt"
    if not wnids_file.is_file() or not ann.is_file():
        raise UserError(f"[data].root: tiny-imagenet expects wnids.txt, train/<wnid>/images/ and "
                        f"val/images/ with val/val_annotations.txt under {root}")
    classes = sorted(w.strip() for w in wnids_file.read_text().split() if w.strip())
    index = {c: i for i, c in enumerate(classes)}
    train = [(p, index[c]) for c in classes
             for p in sorted((root / "train" / c / "images").glob("*")) if p.suffix.lower() in IMAGE_EXTS]
    test = []
    for line in ann.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in index:
            test.append((root / "val" / "images" / fields[0], index[fields[1]]))
    out: Split = {"classes": classes}
    for split, entries, size in (("train", train, train_size), ("test", test, test_size)):
        keep = balanced_subset([y for _, y in entries], size, seed)
        items = list(zip([str(entries[i][0]) for i in keep], _read_many([entries[i][0] for i in keep]), strict=True))
        out[f"{split}_x"] = decode_all(items, image_size, f"{root} ({split})")
        out[f"{split}_y"] = torch.tensor([entries[i][1] for i in keep], dtype=torch.int64)
    return out
