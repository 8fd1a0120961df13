"""Atomic file writes: write a temporary file in the same folder, fsync, then ``os.replace``.

A reader sees either the old file or the complete new one, never a half-written file; a failed
write leaves the old file untouched and no temporary file behind. A process killed mid-write
(SIGKILL, out of memory) can leave its temporary ``.<name>.<random>.tmp``;
:func:`remove_temporaries` clears those when the run starts again. Files get the permissions of
an ordinary ``open``: ``0o666`` less the user's umask, so colleagues sharing a results folder can
read them. No torch import at module level (``compare`` reads records without torch).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")  # what tempfile.mkstemp makes with our prefix/suffix


@functools.cache
def file_mode() -> int:
    """``0o666`` less the process's umask, read once (from /proc where it can be, without changing it)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return 0o666 & ~int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    umask = os.umask(0o022)  # no /proc: the only portable read sets it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that killed atomic writes left anywhere below ``folder``; returns them.

    Call it only while no other process writes to ``folder`` (a run holds its lock).
    """
    found = [p for p in Path(folder).rglob(".*.tmp") if _TEMP_NAME.match(p.name) and p.is_file()]
    for p in found:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return found


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2`` (Linux, glibc 2.28+), or None where there is none."""
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (``renameat2(RENAME_EXCHANGE)``).

    Returns False, changing nothing, where the system or file system cannot (then rename them one by one).
    """
    call = _renameat2()
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


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
    """Replace ``path`` by ``data`` atomically."""
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON with indent 2; NaN/inf become null. Serialised before the file is touched."""
    atomic_write_text(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    _atomic(path, lambda f: torch.save(obj, f))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line by rewriting the whole (small, per-epoch) file atomically."""
    line = json.dumps(_clean(record), allow_nan=False) + "\n"
    old = Path(path).read_bytes() if Path(path).exists() else b""
    atomic_write_bytes(path, old + line.encode("utf-8"))
