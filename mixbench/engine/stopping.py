"""Turning SIGINT/SIGTERM into a clean stop: at once during setup, at the next step while training.

:class:`StopFlag` is installed before anything of a run is built. Until :meth:`StopFlag.defer`
(the start of the training loop) the first signal raises :class:`Interrupted` where the program
is, so that loading data or building a model stops promptly and the run's status is recorded as
``interrupted``; from then on the handler only sets a flag that the loop checks between steps (no
work in the handler). A second signal always stops at once.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any


class Interrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM; the CLI exits with code 130.

    ``checkpoint_epoch`` is the epoch of the checkpoint the run kept (None: none written, or not known),
    ``note`` what was kept and how to go on, in words (empty when not known).
    """

    def __init__(self, note: str = "", checkpoint_epoch: int | None = None):
        super().__init__(note)
        self.note, self.checkpoint_epoch = note, checkpoint_epoch


class StopFlag:
    """``requested`` turns True on the first SIGINT/SIGTERM; a second one stops at once.

    With ``immediate`` the first signal also raises :class:`Interrupted`, until :meth:`defer` is called.
    """

    def __init__(self, immediate: bool = False) -> None:
        self.requested = False
        self.immediate = immediate
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def defer(self) -> None:
        """From now on a signal only sets ``requested`` (the loop stops at its next check)."""
        self.immediate = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.immediate:
            self.immediate = False
            raise Interrupted

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
