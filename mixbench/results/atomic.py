"""Atomic file writes: write a temporary file in the same folder, fsync, then ``os.replace``.

A reader sees either the old file or the complete new one, never a half-written file; a failed
write leaves the old file untouched and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _clean(obj: Any) -> Any:
    """Replace NaN and infinities by ``None`` (JSON has no such numbers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON with indent 2; NaN/inf become null. Serialised before the file is touched."""
    atomic_write_text(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line by rewriting the whole (small, per-epoch) file atomically."""
    line = json.dumps(_clean(record), allow_nan=False) + "\n"
    old = Path(path).read_bytes() if Path(path).exists() else b""
    atomic_write_bytes(path, old + line.encode("utf-8"))
