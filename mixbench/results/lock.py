"""One run at a time per run folder: an exclusive ``flock`` on ``<out>/<name>/.<run id>.lock``.

The lock is held on an open file for the whole run, with the holder's pid and host written into it,
so a second run of the same recipe into the same folder is refused with one sentence naming that
pid. The kernel drops a ``flock`` when its process dies, however it dies, so a killed run never
leaves a stale lock; the file itself is removed on release. Removing a lock file races with a
process that opened it just before: :meth:`RunLock.acquire` therefore checks, once it holds the
lock, that the path still names the file it locked, and starts again if not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

from mixbench.errors import UserError


def lock_path(run_path: Path) -> Path:
    """The lock file of the run folder ``run_path``: a hidden sibling, outside the folder it guards."""
    run_path = Path(run_path)
    return run_path.with_name(f".{run_path.name}.lock")


def _open(path: Path) -> int:
    """The lock file, made if missing; read-only where it is someone else's (a flock needs no write access)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def _holder(fd: int) -> str:
    """Who holds the lock: 'pid N on host H' as the holder wrote it (it may not have written yet)."""
    for _ in range(20):
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
        if len(text) >= 2 and text[0].isdigit():
            return f"pid {text[0]} on host {text[1]}"
        time.sleep(0.01)
    return "another process"


def _refusal(run_path: Path, fd: int) -> UserError:
    return UserError(f"{run_path} is in use by another mixbench run ({_holder(fd)}); wait for it to end or stop "
                     "that process first")


class RunLock:
    """An exclusive lock on one run folder, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = Path(path), fd

    @classmethod
    def acquire(cls, run_path: Path) -> RunLock:
        """Lock ``run_path`` for this process, or raise a :class:`UserError` naming the pid that holds it."""
        path = lock_path(run_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = _open(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                error = _refusal(run_path, fd)
                os.close(fd)
                raise error from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)  # the last holder removed this file after we opened it: lock the new one
        with contextlib.suppress(OSError):  # read-only (a colleague's file): we hold it without saying who
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return cls(path, fd)

    @staticmethod
    def check_free(run_path: Path) -> None:
        """Raise the same :class:`UserError` as :meth:`acquire` when another process holds the lock; take nothing."""
        try:
            fd = os.open(lock_path(run_path), os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(run_path, fd) from None
        finally:
            os.close(fd)  # closing drops the shared lock if we got it

    def release(self) -> None:
        """Remove the lock file and drop the lock; calling it again does nothing."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = -1
