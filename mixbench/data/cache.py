"""The on-disk uint8 tensor cache: decode a data set once, load it in a blink afterwards.

The key hashes the source, resolved root, a fingerprint of the input files (sizes and mtimes),
the image size, subset sizes, seed and the cache format version. Files are written atomically;
a corrupt file is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CACHE_VERSION = 1


def cache_root(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get("MIXBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mixbench"


def fingerprint(root: Path) -> str:
    """Cheap identity of a file or folder tree: names, sizes and mtimes of its files."""
    h = hashlib.sha256()
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(root.parent)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cached(cache_dir: str | None, key: dict[str, Any], build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Return the cached dict for ``key``, building and saving it on a miss or a corrupt file."""
    from mixbench.results.atomic import atomic_torch_save

    blob = json.dumps({**key, "version": CACHE_VERSION}, sort_keys=True).encode()
    path = cache_root(cache_dir) / f"{key.get('source', 'data')}-{hashlib.sha256(blob).hexdigest()[:20]}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated or corrupt: rebuild below
            pass
    data = build()
    with contextlib.suppress(OSError):  # a read-only cache folder must not stop training
        atomic_torch_save(path, data)
    return data
