"""The on-disk uint8 tensor cache: decode a data set once, load it in a blink afterwards.

A file's key hashes the source, resolved root, a fingerprint of the input files (names, sizes and
mtimes), the image size and the cache format version. Files are written atomically and carry a CRC-32
of every tensor; a file that cannot be read, lacks a tensor or fails its checksum (truncated, corrupt,
written by an older mixbench) is rebuilt, never trusted.

Whole-set caching (:func:`cached_split`, for sources whose subsets are index choices of the whole
set: cifar, imagefolder, tiny-imagenet): the whole set is decoded once and cached without
``train_size``/``test_size``/``seed`` in its key; every subset is then cut from it by index
(:func:`take_subsets`, the same :func:`~mixbench.data.sources.balanced_subset` the readers apply, so a
subset holds exactly the images, in the same order, that decoding only the subset gives). When
(:class:`~mixbench.data.sources.WholeSet`): the asked subsets are the whole set; or the whole set's uint8
tensors fit ``MIXBENCH_CACHE_WHOLE_GIB`` (default 2 GiB: CIFAR at 32 px is 0.17 GiB, Tiny-ImageNet at
64 px 1.26 GiB; CIFAR resized to 224 px, 8.4 GiB, is not; ``0`` turns this off) and this machine's memory,
and either the subsets hold at least half its images or another subset of the same set is already cached
(the second train_size or seed of a sweep decodes the whole set, every later one is free). A first small
slice (a test reading 600 Tiny-ImageNet images) decodes only itself, cached under a key with its sizes and
seed, as before. The whole file is opened memory-mapped: a warm load reads its pages once (checksum) and
copies only the subset.

``shapes`` keeps a per-size key: ``shapes.generate(n)`` draws every random tensor with n rows, so
the first k images of ``generate(n)`` depend on n and a subset cannot be cut from a bigger set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mixbench.data.sources import WholeSet, balanced_subset
from mixbench.errors import UserError

CACHE_VERSION = 2  # 2: CRC-32 per tensor, whole-set files
WHOLE_LIMIT_ENV = "MIXBENCH_CACHE_WHOLE_GIB"
DEFAULT_WHOLE_GIB = 2.0
SPLIT_KEYS = ("train_x", "train_y", "test_x", "test_y")


def cache_root(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get("MIXBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mixbench"


def whole_limit() -> int:
    """Bytes of uint8 data up to which a whole data set is decoded and cached (``MIXBENCH_CACHE_WHOLE_GIB``)."""
    text = os.environ.get(WHOLE_LIMIT_ENV, "").strip()
    if not text:
        return int(DEFAULT_WHOLE_GIB * 2**30)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise UserError(
            f"{WHOLE_LIMIT_ENV}={text!r}: expected a number of GiB >= 0 up to which a whole data set "
            f"is decoded and cached (default {DEFAULT_WHOLE_GIB:g}; 0 caches only the asked subset)"
        )
    return int(value * 2**30)


def fingerprint(root: Path) -> str:
    """Cheap identity of a file or folder tree: relative names, sizes and mtimes of its files.

    One ``os.scandir`` walk and one ``stat`` per file (no per-file ``Path`` objects, no file contents);
    symlinked files count by their target, symlinked folders are not entered (as ``Path.rglob``);
    unreadable folders are skipped.
    """
    root = Path(root)
    h = hashlib.sha256()
    if root.is_file():
        st = root.stat()
        h.update(f"{root.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]
    rows: list[str] = []
    stack = [(str(root), root.name)]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append((e.path, f"{rel}/{e.name}"))
                elif e.is_file():
                    st = e.stat()
                    rows.append(f"{rel}/{e.name}:{st.st_size}:{st.st_mtime_ns}\n")
            except OSError:  # vanished or a broken link while we looked
                continue
    rows.sort()
    h.update("".join(rows).encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def cache_path(cache_dir: str | None, key: dict[str, Any]) -> Path:
    blob = json.dumps({**key, "version": CACHE_VERSION}, sort_keys=True).encode()
    return cache_root(cache_dir) / f"{key.get('source', 'data')}-{hashlib.sha256(blob).hexdigest()[:20]}.pt"


def _checksum(t: torch.Tensor) -> str:
    """dtype, shape and CRC-32 of a tensor's bytes."""
    flat = t.detach().contiguous().reshape(-1)
    crc = zlib.crc32(flat.view(torch.uint8).numpy()) if flat.numel() else 0
    return f"{str(t.dtype).removeprefix('torch.')}:{list(t.shape)}:{crc:08x}"


def _with_checksums(data: dict[str, Any]) -> dict[str, Any]:
    sums = {k: _checksum(v) for k, v in data.items() if isinstance(v, torch.Tensor)}
    return {**data, "checksums": sums}


def _verified(data: Any) -> dict[str, Any] | None:
    """``data`` without its checksums when every tensor is there and intact, else ``None``."""
    if not isinstance(data, dict) or not isinstance(data.get("checksums"), dict):
        return None
    sums = data["checksums"]
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if set(tensors) != set(sums) or any(_checksum(v) != sums[k] for k, v in tensors.items()):
        return None
    return {k: v for k, v in data.items() if k != "checksums"}


def _valid_split(data: dict[str, Any]) -> bool:
    """The four tensors of a split, their sizes in agreement, and class names."""
    if not all(isinstance(data.get(k), torch.Tensor) for k in SPLIT_KEYS) or "classes" not in data:
        return False
    return all(
        data[f"{s}_x"].dim() == 4
        and data[f"{s}_x"].dtype == torch.uint8
        and data[f"{s}_y"].shape == data[f"{s}_x"].shape[:1]
        for s in ("train", "test")
    )


def load(path: Path, split: bool = False) -> dict[str, Any] | None:
    """The verified contents of a cache file (tensors memory-mapped), or ``None`` when absent or not intact."""
    if not path.is_file():
        return None
    try:
        data = _verified(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    except Exception:  # truncated, corrupt, not a torch zip file: rebuilt by the caller
        return None
    if data is None or (split and not _valid_split(data)):
        return None
    return data


def save(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` with its checksums atomically; a read-only or full cache folder does not stop training."""
    from mixbench.results.atomic import atomic_torch_save

    with contextlib.suppress(OSError):
        atomic_torch_save(path, _with_checksums(data))


def _owned(data: dict[str, Any]) -> dict[str, Any]:
    """Tensors copied out of the memory-mapped file (the caller may keep them as long as it likes)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in data.items()}


def cached(cache_dir: str | None, key: dict[str, Any], build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Return the cached dict for ``key``, building and saving it on a miss or a file that is not intact."""
    path = cache_path(cache_dir, key)
    hit = load(path)
    if hit is not None:
        return _owned(hit)
    data = build()
    save(path, data)
    return data


def take_subsets(
    split: dict[str, Any], train_size: int | None, test_size: int | None, seed: int, *, copy: bool = True
) -> dict[str, Any]:
    """The class-balanced subsets the readers choose (:func:`balanced_subset` of each split's labels), in the
    whole set's order; a whole split is returned as it is unless ``copy`` (memory-mapped input)."""
    out: dict[str, Any] = {"classes": list(split["classes"])}
    for name, size in (("train", train_size), ("test", test_size)):
        x, y = split[f"{name}_x"], split[f"{name}_y"]
        keep = balanced_subset(y.numpy(), size, seed)
        if len(keep) == len(y):  # the whole split (balanced_subset keeps every index, in order)
            out[f"{name}_x"], out[f"{name}_y"] = (x.clone(), y.clone()) if copy else (x, y)
        else:
            keep = torch.from_numpy(keep)
            out[f"{name}_x"], out[f"{name}_y"] = x.index_select(0, keep), y.index_select(0, keep)
    return out


def _subset_files(whole_path: Path) -> list[Path]:
    """The subset files cached beside ``whole_path`` (named ``<whole stem>-<subset hash>.pt``)."""
    prefix = f"{whole_path.stem}-"
    try:
        with os.scandir(whole_path.parent) as it:
            return [Path(e.path) for e in it if e.name.startswith(prefix) and e.name.endswith(".pt")]
    except OSError:
        return []


def cached_split(
    cache_dir: str | None,
    key: dict[str, Any],
    train_size: int | None,
    test_size: int | None,
    seed: int,
    build: Callable[[WholeSet], dict[str, Any]],
) -> dict[str, Any]:
    """A split's subsets from the whole-set cache, else from the subset's own cache, else built.

    ``build(whole)`` reads the source: it returns the whole set marked ``"whole": True`` when the
    :class:`~mixbench.data.sources.WholeSet` policy asks for it, else the asked subsets. The whole set is
    cached under ``key`` alone (the subset files of the same set are then removed: it holds them all), a
    subset under ``key`` with its sizes and seed (module docstring).
    """
    limit = whole_limit()  # a bad MIXBENCH_CACHE_WHOLE_GIB is reported on every load, not only on a miss
    whole_path = cache_path(cache_dir, {**key, "whole": True})
    sizes = json.dumps({"train_size": train_size, "test_size": test_size, "seed": seed}, sort_keys=True)
    subset_path = whole_path.with_name(f"{whole_path.stem}-{hashlib.sha256(sizes.encode()).hexdigest()[:12]}.pt")
    hit = load(whole_path, split=True)
    if hit is not None:
        return take_subsets(hit, train_size, test_size, seed)
    hit = load(subset_path, split=True)
    if hit is not None:
        return _owned(hit)
    others = [p for p in _subset_files(whole_path) if p != subset_path]
    data = build(WholeSet(limit, again=bool(others)))
    if data.pop("whole", False):
        save(whole_path, data)
        if whole_path.is_file():
            for p in [*others, subset_path]:
                with contextlib.suppress(OSError):
                    p.unlink()
        return take_subsets(data, train_size, test_size, seed, copy=False)
    save(subset_path, data)
    return data
