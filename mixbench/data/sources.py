"""Readers for each on-disk format, all returning uint8 [N, 3, H, W] tensors and int64 labels.

``cifar10``/``cifar100``: torchvision's pickle batches. ``imagefolder``: ``train/`` and
``test/`` (or ``val/``) class folders, as a tree or a ``.tar``/``.tar.gz`` archive.
``tiny-imagenet``: ``wnids.txt``, ``train/<wnid>/images`` and the flat ``val/images`` with
``val/val_annotations.txt``, as the extracted ``tiny-imagenet-200/`` folder or its ``.tar``/``.tar.gz``
(with or without that top folder). An archive is read in two sequential passes (gzip cannot seek): one
lists its members, the other reads only the images of the chosen subset, in archive order.
``resize_uint8`` resizes decoded tensors (cifar's pickles, which hold 32x32 only).

Whole sets: given a :class:`WholeSet` policy (from :func:`mixbench.data.cache.cached_split`), a reader decodes
the whole set instead of the asked subsets when :meth:`WholeSet.wanted` says so, and marks it ``"whole": True``;
the cache keeps it and cuts every subset from it with the same :func:`balanced_subset`. An archive is then read
in one pass (image bytes kept as its members pass by, within :meth:`WholeSet.budget`). Should an image outside
the asked subsets not decode (or differ in size), the asked subsets are decoded as without a policy, so a set
that loaded before still loads.
"""

from __future__ import annotations

import contextlib
import io
import lzma
import math
import os
import pickle
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
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
    ``[data].image_size`` resizes it (cifar: its 32x32 pickles are resized after decoding)."""

    classes: int
    train: int
    test: int
    side: int
    resizes: bool


LAYOUTS = {
    "cifar10": Layout(10, 50_000, 10_000, 32, resizes=True),
    "cifar100": Layout(100, 50_000, 10_000, 32, resizes=True),
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


@dataclass(frozen=True)
class WholeSet:
    """When a reader decodes the whole set rather than only the asked subsets (``mixbench.data.cache``).

    Always when the subsets are the whole set. Otherwise only when the whole set's uint8 tensors fit ``limit``
    bytes and decoding them this machine's memory, and either the subsets hold at least ``1/FRACTION`` of its
    images (decoding all costs at most twice the asked) or ``again``: another subset of this set was cached
    before (a sweep over sizes or seeds: decode once, then cut every subset from it). A first small slice
    (a test, a quick look at Tiny-ImageNet) decodes only itself.
    """

    FRACTION = 2
    limit: int
    again: bool = False

    def worth(self, n_whole: int, n_asked: int) -> bool:
        """Whether decoding ``n_whole`` images for ``n_asked`` pays off, size aside."""
        return n_asked >= n_whole or self.again or n_asked * self.FRACTION >= n_whole

    def budget(self, train_size: int | None, test_size: int | None) -> list[float]:
        """[bytes, images] an archive's listing reads as its members pass by: the most a whole set worth
        decoding can hold (``limit`` bytes; ``FRACTION`` times the asked images unless ``again``)."""
        asked = None if train_size is None or test_size is None else train_size + test_size
        return [self.limit, math.inf if self.again or asked is None else self.FRACTION * asked]

    def wanted(self, n_whole: int, n_asked: int, h: int, w: int) -> bool:
        if n_asked >= n_whole:
            return True
        nbytes = n_whole * 3 * h * w
        return (self.worth(n_whole, n_asked) and nbytes <= self.limit
                and memory_problem(DECODE_OVERHEAD * nbytes, "decoding") is None)


def asked_images(lengths: list[int], sizes: list[int | None]) -> int:
    """Images the balanced subsets of ``sizes`` hold, of splits with ``lengths`` images."""
    return sum(n if size is None else min(size, n) for n, size in zip(lengths, sizes, strict=True))


def _decode(data: bytes, image_size: int | None, where: str) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data))
        img = img.convert("RGB") if img.mode != "RGB" else img  # RGB: convert would only copy it
    except Exception:
        raise UserError(f"[data].root: cannot decode image {where}") from None
    if image_size is not None and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


DECODE_CHUNK = 256  # images per thread-pool task: one task per image costs more than a 32 px JPEG decode


def _decode_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(32, n))


def decode_all(items: list[tuple[str, bytes]], image_size: int | None, where: str) -> torch.Tensor:
    """Decode (name, bytes) pairs on a thread pool (Pillow decodes without the GIL), in chunks of
    ``DECODE_CHUNK`` images, straight into one uint8 [N, 3, H, W] tensor."""
    if not items:
        return torch.zeros(0, 3, image_size or 32, image_size or 32, dtype=torch.uint8)
    first = _decode(items[0][1], image_size, items[0][0])  # the set's size is known from its first image
    _check_fits(len(items), first.shape[0], first.shape[1], where)
    out = np.empty((len(items), 3, *first.shape[:2]), dtype=np.uint8)
    odd: list[tuple[int, ...]] = []  # shapes that differ from the first image's

    def work(lo: int) -> None:
        for i in range(lo, min(lo + DECODE_CHUNK, len(items))):
            a = first if i == 0 else _decode(items[i][1], image_size, items[i][0])
            if a.shape != first.shape:
                odd.append(a.shape)
            else:
                out[i] = a.transpose(2, 0, 1)

    with ThreadPoolExecutor(_decode_workers()) as pool:
        list(pool.map(work, range(0, len(items), DECODE_CHUNK)))  # re-raises the first failing chunk's error
    if odd:
        shapes = list(dict.fromkeys([first.shape, *odd]))
        raise UserError(f"[data].image_size: images under {where} have different sizes "
                        f"({', '.join(str(s[:2]) for s in shapes[:3])}); set data.image_size "
                        "to resize them to one side length")
    return torch.from_numpy(out)


def _split_and_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """('train'|'test', class name) for a path like [wrap/]train/<class>/<file>."""
    for i, part in enumerate(parts[:-2]):
        for split, names in SPLITS.items():
            if part in names and i + 2 == len(parts) - 1:
                return split, parts[i + 1]
    return None


def _suffix(name: str) -> str:
    """``PurePath(name).suffix.lower()`` of a bare file name, without building a path."""
    i = name.rfind(".")
    return name[i:].lower() if 0 < i < len(name) - 1 else ""


def _images_below(folder: str) -> list[tuple[str, str]]:
    """(path, first component below ``folder``) of every image file below ``folder``, sorted by path.

    An ``os.scandir`` walk with what ``sorted(Path(folder).rglob("*"))`` + ``is_file()`` found before:
    symlinked files count, symlinked folders are not entered, unreadable folders are skipped.
    """
    found: list[tuple[str, str]] = []
    stack: list[tuple[str, str | None]] = [(folder, None)]
    while stack:
        path, top = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except PermissionError:
            continue
        for e in entries:
            first = e.name if top is None else top
            if e.is_dir(follow_symlinks=False):
                stack.append((e.path, first))
            elif _suffix(e.name) in IMAGE_EXTS and e.is_file():
                found.append((e.path, first))
    found.sort()
    return found


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, budget: list[float]) -> object:
    """A member's bytes while the ``budget`` of [bytes, images] lasts (read as the listing passes by: no second
    pass over the archive), else its (tar, member) handle; once the budget is spent every later member gets a
    handle."""
    if budget[1] >= 1 and 0 <= member.size <= budget[0]:
        budget[0] -= member.size
        budget[1] -= 1
        return tar.extractfile(member).read()
    budget[0] = budget[1] = -1
    return (tar, member)


def _listing(root: Path, tar: tarfile.TarFile | None,
             budget: list[float] | None = None) -> dict[str, list[tuple[str, str, object]]]:
    """Per split: (path, class, handle) of every image, from a folder tree or an open tar archive (archive
    images are read as they pass by while ``budget`` lasts, see :func:`_read_member`: their handle is their
    bytes)."""
    found: dict[str, list[tuple[str, str, object]]] = {"train": [], "test": []}
    if tar is not None:
        budget = budget or [0, 0]
        for member in tar:
            if member.isfile():
                name = PurePosixPath(member.name)
                if name.suffix.lower() in IMAGE_EXTS:
                    sc = _split_and_class(name.parts)
                    if sc:
                        found[sc[0]].append((member.name, sc[1], _read_member(tar, member, budget)))
        return found
    for split, names in SPLITS.items():
        for name in names:
            folder = root / name
            if folder.is_dir():
                found[split] = [(p, top, p) for p, top in _images_below(str(folder))]
                break
    return found


def _read_many(handles: list[object]) -> list[bytes]:
    """Bytes of each handle (bytes already read, a path, or a (tar, member) pair read in archive order)."""
    out: list[bytes] = [b""] * len(handles)
    order = sorted(range(len(handles)),
                   key=lambda i: handles[i][1].offset_data if isinstance(handles[i], tuple) else i)
    for i in order:
        h = handles[i]
        if isinstance(h, bytes):
            out[i] = h
        elif isinstance(h, str | Path):
            try:
                with open(h, "rb") as f:
                    out[i] = f.read()
            except OSError as e:
                raise UserError(f"[data].root: cannot read {h} ({e.strerror or e})") from None
        else:
            tar, member = h
            out[i] = tar.extractfile(member).read()
    return out


def read_imagefolder(root: Path, image_size: int | None, train_size: int | None,
                     test_size: int | None, seed: int, whole: WholeSet | None = None) -> Split:
    """Read an ImageFolder tree or archive; subsets are chosen before decoding (or the whole set decoded, as
    ``whole`` decides: module docstring)."""
    if not root.exists():
        raise UserError(f"[data].root: {root} does not exist; imagefolder expects train/ and test/ "
                        "(or val/) class folders, or a .tar/.tar.gz of them")
    if root.is_dir():
        return _decode_listing(root, _listing(root, None), image_size, train_size, test_size, seed, whole)
    try:
        with tarfile.open(root, "r:*") as tar:
            found = _listing(root, tar, whole.budget(train_size, test_size) if whole else None)
            return _decode_listing(root, found, image_size, train_size, test_size, seed, whole)
    except ARCHIVE_ERRORS as e:  # truncated gzip (EOFError), corrupt stream (zlib.error), not a tar at all, ...
        raise UserError(_archive_problem(root, e)) from None


def _archive_problem(root: Path, e: BaseException) -> str:
    """The one sentence for an archive that cannot be read to its end."""
    detail = " ".join(str(e).split())  # tarfile's "r:*" lists every method it tried, one a line
    return (f"[data].root: {root} is not a readable tar archive, or it is truncated or corrupt "
            f"({type(e).__name__}: {detail}); download or pack it again, or point [data].root at the extracted "
            "folder")


def _decode_listing(root: Path, found: dict, image_size: int | None, train_size: int | None,
                    test_size: int | None, seed: int, whole: WholeSet | None = None) -> Split:
    if not found["train"] or not found["test"]:
        raise UserError(f"[data].root: {root} needs train/<class>/ and test/<class>/ (or val/<class>/) "
                        f"image folders; found {len(found['train'])} train and {len(found['test'])} "
                        "test images")
    classes = sorted({c for _, c, _ in found["train"]})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for _, c, _ in found["test"]} - set(index))
    if unknown:
        raise UserError(f"[data].root: test classes {', '.join(unknown[:3])} of {root} have no train folder")
    splits = {split: ([(name, index[c], h) for name, c, h in sorted(found[split], key=lambda e: e[0])], size)
              for split, size in (("train", train_size), ("test", test_size))}
    return _decode_splits(root, classes, splits, image_size, seed, whole)


Entries = list[tuple[str, int, object]]  # (name, label, handle) in the set's order


def _decode_splits(root: Path, classes: list[str], splits: dict[str, tuple[Entries, int | None]],
                   image_size: int | None, seed: int, whole: WholeSet | None) -> Split:
    """Decode each split's balanced subset of the given size, or the whole set marked ``"whole"`` when
    ``whole`` asks for it (module docstring)."""
    covers = all(size is None or size >= len(entries) for entries, size in splits.values())
    if whole is not None and (covers or _whole_wanted(splits, image_size, whole)):
        try:
            out = _decode_subsets(root, classes, {s: (e, None) for s, (e, _) in splits.items()}, image_size, seed)
        except UserError:
            if covers:
                raise
        else:
            out["whole"] = True
            return out
    return _decode_subsets(root, classes, splits, image_size, seed)


def _whole_wanted(splits: dict[str, tuple[Entries, int | None]], image_size: int | None, whole: WholeSet) -> bool:
    """``whole.wanted`` for these splits (the side from ``image_size`` or the first image's header); an archive
    whose image bytes passed ``whole.limit`` as it was listed is too big."""
    entries = [e for es, _ in splits.values() for e in es]
    n_asked = asked_images([len(es) for es, _ in splits.values()], [size for _, size in splits.values()])
    if not entries or not whole.worth(len(entries), n_asked) or any(isinstance(h, tuple) for _, _, h in entries):
        return False
    if image_size is not None:
        h = w = image_size
    else:
        try:
            w, h = Image.open(io.BytesIO(_read_many([entries[0][2]])[0])).size
        except Exception:  # the reader's own error comes from decoding the subset
            return False
    return whole.wanted(len(entries), n_asked, h, w)


def _decode_subsets(root: Path, classes: list[str], splits: dict[str, tuple[Entries, int | None]],
                    image_size: int | None, seed: int) -> Split:
    out: Split = {"classes": classes}
    for split, (entries, size) in splits.items():
        labels = [y for _, y, _ in entries]
        keep = balanced_subset(labels, size, seed)
        blobs = _read_many([entries[i][2] for i in keep])
        items = [(entries[i][0], blob) for i, blob in zip(keep, blobs, strict=True)]
        out[f"{split}_x"] = decode_all(items, image_size, f"{root} ({split})")
        out[f"{split}_y"] = torch.tensor([labels[i] for i in keep], dtype=torch.int64)
    return out


TINY_WRAP = "tiny-imagenet-200"


@dataclass
class TinyListing:
    """What a Tiny-ImageNet tree or archive holds: the text of ``wnids.txt`` and ``val/val_annotations.txt``
    (``None`` when absent), training images by wnid as (name, handle) and validation images by file name.
    A handle is a Path or a (tar, member) pair, as :func:`_read_many` takes them."""

    wnids: str | None = None
    annotations: str | None = None
    train: dict[str, list[tuple[str, object]]] = field(default_factory=dict)
    val: dict[str, object] = field(default_factory=dict)


def _tiny_folder(root: Path) -> TinyListing:
    """List an extracted Tiny-ImageNet folder (``root`` itself or its ``tiny-imagenet-200/``)."""
    if not (root / "wnids.txt").is_file() and (root / TINY_WRAP / "wnids.txt").is_file():
        root = root / TINY_WRAP
    found = TinyListing()
    wnids, ann = root / "wnids.txt", root / "val" / "val_annotations.txt"
    if wnids.is_file():
        found.wnids = wnids.read_text()
    if ann.is_file():
        found.annotations = ann.read_text()
    if (root / "train").is_dir():
        for folder in sorted((root / "train").iterdir()):
            images = folder / "images"
            if images.is_dir():
                found.train[folder.name] = [(str(p), p) for p in sorted(images.iterdir())
                                            if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    if (root / "val" / "images").is_dir():
        found.val = {p.name: p for p in (root / "val" / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS}
    return found


def _tiny_archive(tar: tarfile.TarFile, budget: list[float] | None = None) -> TinyListing:
    """List a Tiny-ImageNet archive in one sequential pass; the two text files (and images while ``budget``
    lasts, see :func:`_read_member`) are read as they pass by.

    Members are recognised by the end of their path (``wnids.txt``, ``val/val_annotations.txt``,
    ``train/<wnid>/images/<file>``, ``val/images/<file>``), so any top folder (or none) works; the top
    folder of ``wnids.txt`` is the one kept when an archive holds several.
    """
    by_top: dict[tuple[str, ...], TinyListing] = {}
    budget = budget or [0, 0]
    for member in tar:
        if not member.isfile():
            continue
        parts = PurePosixPath(member.name).parts
        ext = PurePosixPath(member.name).suffix.lower()
        if parts[-1:] == ("wnids.txt",):
            by_top.setdefault(parts[:-1], TinyListing()).wnids = _member_text(tar, member)
        elif parts[-2:] == ("val", "val_annotations.txt"):
            by_top.setdefault(parts[:-2], TinyListing()).annotations = _member_text(tar, member)
        elif ext not in IMAGE_EXTS:
            continue
        elif len(parts) >= 4 and parts[-4] == "train" and parts[-2] == "images":
            listing = by_top.setdefault(parts[:-4], TinyListing())
            listing.train.setdefault(parts[-3], []).append((member.name, _read_member(tar, member, budget)))
        elif len(parts) >= 3 and parts[-3:-1] == ("val", "images"):
            by_top.setdefault(parts[:-3], TinyListing()).val[parts[-1]] = _read_member(tar, member, budget)
    with_wnids = [listing for listing in by_top.values() if listing.wnids is not None]
    return with_wnids[0] if with_wnids else TinyListing()


def _member_text(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    return tar.extractfile(member).read().decode("utf-8", errors="replace")


def read_tiny_imagenet(root: Path, image_size: int | None, train_size: int | None,
                       test_size: int | None, seed: int, whole: WholeSet | None = None) -> Split:
    """Tiny-ImageNet-200 from its folder or its .tar/.tar.gz; subsets are chosen before anything is decoded
    (or the whole set decoded, as ``whole`` decides: module docstring)."""
    if not root.exists():
        raise UserError(f"[data].root: {root} does not exist; tiny-imagenet expects the extracted "
                        f"{TINY_WRAP}/ folder or its .tar/.tar.gz")
    if root.is_dir():
        return _decode_tiny(root, _tiny_folder(root), image_size, train_size, test_size, seed, whole)
    try:
        with tarfile.open(root, "r:*") as tar:
            found = _tiny_archive(tar, whole.budget(train_size, test_size) if whole else None)
            return _decode_tiny(root, found, image_size, train_size, test_size, seed, whole)
    except ARCHIVE_ERRORS as e:  # truncated gzip, corrupt stream, not a tar at all, ...
        raise UserError(_archive_problem(root, e)) from None


def _decode_tiny(root: Path, found: TinyListing, image_size: int | None, train_size: int | None,
                 test_size: int | None, seed: int, whole: WholeSet | None = None) -> Split:
    """Pick the balanced subsets from a listing, read their bytes in one pass and decode them."""
    if found.wnids is None or found.annotations is None:
        raise UserError(f"[data].root: tiny-imagenet expects wnids.txt, train/<wnid>/images/ and val/images/ "
                        f"with val/val_annotations.txt in {root} (directly or under {TINY_WRAP}/)")
    classes = sorted(w.strip() for w in found.wnids.split() if w.strip())
    index = {c: i for i, c in enumerate(classes)}
    train = [(name, index[c], handle) for c in classes for name, handle in sorted(found.train.get(c, []),
                                                                                  key=lambda e: e[0])]
    test = []
    for line in found.annotations.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in index:
            handle = found.val.get(fields[0])
            if handle is None:
                raise UserError(f"[data].root: val/val_annotations.txt in {root} names val/images/{fields[0]}, "
                                "which is missing; download or extract the data set again")
            test.append((f"val/images/{fields[0]}", index[fields[1]], handle))
    return _decode_splits(root, classes, {"train": (train, train_size), "test": (test, test_size)}, image_size,
                          seed, whole)


def resize_uint8(x: torch.Tensor, side: int, chunk: int = 1024) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, side, side] by antialiased bilinear interpolation, rounded.

    ``x`` itself when it already has that side; ``chunk`` images at a time bound the float32 working memory.
    """
    if tuple(x.shape[-2:]) == (side, side):
        return x
    out = torch.empty(*x.shape[:-2], side, side, dtype=torch.uint8)
    for i in range(0, x.shape[0], chunk):
        y = F.interpolate(x[i:i + chunk].float(), size=(side, side), mode="bilinear", antialias=True,
                          align_corners=False)
        out[i:i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out
