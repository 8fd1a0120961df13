"""Progress reporting: a rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _fmt(metrics: dict[str, Any]) -> str:
    parts = []
    flat = {k: v for k, v in metrics.items() if k != "terms"} | metrics.get("terms", {})
    for k, v in flat.items():
        if v is None:
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


class Reporter:
    """Receives the engine's events; ``PlainReporter`` prints lines, ``RichReporter`` draws a bar."""

    def start(self, total_epochs: int, steps_per_epoch: int, start_epoch: int) -> None: ...
    def step(self, epoch: int, step: int, loss: float, lr: float, images_per_s: float) -> None: ...
    def epoch_end(self, metrics: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class SilentReporter(Reporter):
    """Reports nothing (non-main ranks, tests)."""


class PlainReporter(Reporter):
    """One log line every ``log_every`` steps and one per epoch, for logs and CI."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.total = 0
        self.steps = 0

    def _print(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def start(self, total_epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        self.total, self.steps = total_epochs, steps_per_epoch
        self._print(f"training {total_epochs} epochs x {steps_per_epoch} steps"
                    + (f", resuming after epoch {start_epoch}" if start_epoch else ""))

    def step(self, epoch, step, loss, lr, images_per_s):
        self._print(f"epoch {epoch}/{self.total} step {step}/{self.steps} loss={loss:.4f} "
                    f"lr={lr:.4g} img/s={images_per_s:.0f}")

    def epoch_end(self, metrics):
        self._print(_fmt(metrics))

    def message(self, text):
        self._print(text)


class RichReporter(Reporter):
    """A rich progress bar: epoch, step, loss, lr, images/s and ETA."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} lr {task.fields[lr]} {task.fields[ips]} img/s"),
            TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.task = None
        self.last_step = 0

    def start(self, total_epochs, steps_per_epoch, start_epoch):
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=total_epochs * steps_per_epoch, completed=start_epoch * steps_per_epoch,
            epoch=start_epoch, epochs=total_epochs, loss="-", lr="-", ips="-")
        self.steps = steps_per_epoch

    def step(self, epoch, step, loss, lr, images_per_s):
        done = (epoch - 1) * self.steps + step
        self.progress.update(self.task, completed=done, epoch=epoch, loss=f"{loss:.4f}",
                             lr=f"{lr:.4g}", ips=f"{images_per_s:.0f}")

    def epoch_end(self, metrics):
        self.progress.update(self.task, completed=metrics["epoch"] * self.steps)
        self.progress.console.print(_fmt(metrics))

    def message(self, text):
        self.progress.console.print(text)

    def close(self):
        self.progress.stop()


def make_reporter(is_main: bool, stream: TextIO | None = None) -> Reporter:
    """Rich bar on an interactive terminal, plain lines otherwise, nothing on non-main ranks."""
    if not is_main:
        return SilentReporter()
    stream = stream or sys.stdout
    if stream.isatty():
        return RichReporter(Console(file=stream))
    return PlainReporter(stream)
