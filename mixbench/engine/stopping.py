"""Turning SIGINT/SIGTERM into a flag the loop checks between steps (no work in the handler)."""

from __future__ import annotations

import contextlib
import signal
from typing import Any


class Interrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM; the CLI exits with code 130."""


class StopFlag:
    """``requested`` turns True on the first SIGINT/SIGTERM; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
