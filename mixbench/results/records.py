"""Run records: one folder per run, ``results/<recipe name>/<run id>/``.

``recipe.toml`` (resolved), ``meta.json`` (versions, git, device, command, seed, times, status, the
pid and host of the process writing it), ``metrics.jsonl`` (one line per epoch), ``summary.json``
(what ``compare`` reads) and ``checkpoint.pt``. Every write is atomic; an existing run is never
replaced without ``--resume`` or ``--overwrite``.

:func:`open_run` takes a run folder for one run: it locks it (:mod:`mixbench.results.lock`), finishes
or undoes what a killed run left half done, refuses a run that is still alive, and says when a run
is taken over or started afresh. ``--overwrite`` writes the new run into a hidden staging folder
next to the results, ``<out>/.<name>.<run id>.staging``, and swaps it in place of the old run only
once it has written its first checkpoint (:meth:`RunDir.commit`), so an overwrite that is stopped,
killed, or fails before then leaves the old run whole. Until then its meta.json is called
``meta.staged.json`` and it has no summary.json, so ``compare`` (which finds runs by those two
files) never counts a half-made run, and never counts one run twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixbench.errors import UserError
from mixbench.results.atomic import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    exchange_paths,
    remove_temporaries,
)
from mixbench.results.liveness import is_stale
from mixbench.results.lock import RunLock, lock_path

if TYPE_CHECKING:
    import torch


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


STAGED_META = "meta.staged.json"  # a staged run's meta.json until it is committed


def staging_path(target: Path) -> Path:
    """Where an overwrite of the run folder ``target`` is written until its first checkpoint."""
    return target.parent.parent / f".{target.parent.name}.{target.name}.staging"


def _aside_path(target: Path) -> Path:
    """Where the old run waits during a swap on systems that cannot exchange two folders at once."""
    return target.parent.parent / f".{target.parent.name}.{target.name}.old"


def _unlist(path: Path) -> None:
    """Remove what makes ``compare`` count a folder as a run: its summary.json and meta.json."""
    for name in ("summary.json", "meta.json"):
        (path / name).unlink(missing_ok=True)


def _remove_run(path: Path) -> None:
    """Delete a run folder, unlisted first (so that ``compare`` stops counting it at once)."""
    if path.is_dir():
        _unlist(path)
        shutil.rmtree(path, ignore_errors=True)


def _publish_meta(path: Path) -> None:
    """Give a committed run's ``meta.staged.json`` its real name."""
    if (path / STAGED_META).is_file() and not (path / "meta.json").exists():
        os.replace(path / STAGED_META, path / "meta.json")


def recover(target: Path) -> None:
    """Finish or undo an overwrite that a killed process left half done (call it holding the run's lock).

    A swap cut short is completed when the new run already has its checkpoint, else undone; staging and
    aside folders left behind are deleted.
    """
    staging, aside = staging_path(target), _aside_path(target)
    if not target.exists():
        if (staging / "checkpoint.pt").is_file():
            os.replace(staging, target)
        elif aside.is_dir():
            os.replace(aside, target)
    for leftover in (staging, aside):
        _remove_run(leftover)
    _publish_meta(target)


def _parse_metrics(path: Path, warn: Callable[[str], None]) -> list[dict[str, Any]]:
    """The epoch lines of ``path``; a torn last line is dropped with a warning, a bad middle line refused."""
    lines = [(i, line) for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if line.strip()]
    records = []
    for n, (i, line) in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            if n == len(lines):  # cut off by a kill or a full disk: the epoch it held is re-run or lost
                warn(f"{path}: line {i} is cut off (not JSON); dropping it")
                continue
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise UserError(f"{path}: line {i} is not an epoch record (corrupt file); repair or delete that line, "
                            "or start the run again with --overwrite")
        records.append(record)
    return records


class RunDir:
    """The folder of one run and the atomic writers for each of its files.

    ``path`` is where the files are written now; ``target`` where the run lives. They differ while an
    overwrite is staged (:attr:`staged`), until :meth:`commit` swaps it in.
    """

    def __init__(self, path: Path, target: Path | None = None):
        self.path = Path(path)
        self.target = Path(target) if target is not None else self.path
        self.warn: Callable[[str], None] = _warn  # where a dropped metrics line is reported

    recipe_path = property(lambda self: self.path / "recipe.toml")
    meta_path = property(lambda self: self.path / (STAGED_META if self.staged else "meta.json"))
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")

    @property
    def staged(self) -> bool:
        """True while an overwrite is written aside and the old run still stands at ``target``."""
        return self.path != self.target

    @staticmethod
    def check(out_root: Path, recipe_name: str, run_id: str, *, resume: bool, overwrite: bool) -> Path:
        """The run folder's path; raises if resuming finds no checkpoint or a run would be clobbered."""
        path = Path(out_root) / recipe_name / run_id
        if resume and not (path / "checkpoint.pt").is_file():
            raise UserError(f"{path}: no checkpoint.pt to resume from; run without --resume")
        if not resume and not overwrite and path.is_dir() and any(path.iterdir()):
            raise UserError(f"{path} already holds a run: pass --resume or --overwrite "
                            "(or use another --out or --seed)")
        return path

    @classmethod
    def create(cls, out_root: Path, recipe_name: str, run_id: str, *, resume: bool,
               overwrite: bool) -> RunDir:
        """Make (or, with ``resume``, reopen) the run folder; refuse to clobber an existing run.

        With ``overwrite`` an existing run stays in place: the new one is staged (see :meth:`commit`).
        """
        path = cls.check(out_root, recipe_name, run_id, resume=resume, overwrite=overwrite)
        if resume:
            return cls(path)
        if path.is_dir() and any(path.iterdir()):
            return cls.stage(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def stage(cls, target: Path) -> RunDir:
        """An empty staging folder for a run that will replace ``target`` at its first checkpoint."""
        staging = staging_path(target)
        _remove_run(staging)  # a killed overwrite's
        staging.mkdir(parents=True)
        return cls(staging, target)

    def commit(self) -> None:
        """Put a staged run in place of the old one, then delete the old one; nothing when not staged.

        One atomic exchange of the two folders where the system has it (Linux), else two renames that
        :func:`recover` completes if a kill falls between them.
        """
        if not self.staged:
            return
        if exchange_paths(self.path, self.target):
            old = self.path
        else:
            old = _aside_path(self.target)
            os.replace(self.target, old)
            os.replace(self.path, self.target)
        self.path = self.target
        _unlist(old)  # first the old run leaves compare's view, then the new one enters it
        _publish_meta(self.target)
        _remove_run(old)

    def discard(self) -> None:
        """Delete a staged run that never reached its first checkpoint; the old run is untouched."""
        if self.staged:
            _remove_run(self.path)

    def write_recipe(self, toml_text: str) -> None:
        atomic_write_text(self.recipe_path, toml_text)

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.meta_path, meta)

    def read_meta(self) -> dict[str, Any]:
        return json.loads(self.meta_path.read_text()) if self.meta_path.exists() else {}

    def update_meta(self, **fields: Any) -> None:
        self.write_meta({**self.read_meta(), **fields})

    def append_metrics(self, record: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, record)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The epoch lines; a cut-off last line is dropped (with a warning), a corrupt one elsewhere refused."""
        return _parse_metrics(self.metrics_path, self.warn) if self.metrics_path.exists() else []

    def truncate_metrics(self, epochs_done: int) -> None:
        """Drop lines past ``epochs_done`` (a resumed run re-runs the unfinished epoch)."""
        kept = [m for m in self.read_metrics() if m["epoch"] <= epochs_done]
        atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, summary)


def process_fields() -> dict[str, Any]:
    """``pid`` and ``host`` of this process, as meta.json records them (see :mod:`mixbench.results.liveness`)."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _read_meta_quietly(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _running_note(path: Path) -> str | None:
    """For a run whose meta.json still says ``running`` while nobody holds its lock: refuse it when its
    process is alive on this host, else return the sentence that says it is taken over."""
    meta = _read_meta_quietly(path)
    if meta.get("status") != "running":
        return None
    pid, host = meta.get("pid"), meta.get("host")
    if is_stale(meta):
        return f"{path} was stale: meta.json said running, but its process (pid {pid}) is gone"
    if host == socket.gethostname() and pid is not None and pid != os.getpid():  # our own pid: an earlier fit here
        raise UserError(f"{path} is still being written by pid {pid} on this host; wait for it to end or stop it")
    where = f"pid {pid} on host {host}" if pid is not None else "a process that recorded no pid"
    return f"{path}: meta.json says {where} runs it, but nothing holds its lock; taking it over"


@dataclass
class OpenRun:
    """A run folder taken for one run (rank 0): its lock, where to write, and what the user should be told."""

    run_dir: RunDir
    lock: RunLock
    resume: bool  # load the checkpoint (False when a run without one is started afresh)
    fresh: bool  # this run made the folder: nothing of an earlier run is in it
    notes: list[str] = field(default_factory=list)
    made: list[Path] = field(default_factory=list)  # folders above the run that this run created

    def end_early(self, status: str, *, user_error: bool = False) -> None:
        """Record a run that ended before training began.

        A staged run is left to :meth:`close` (it is dropped; the old run keeps its record); a folder this run
        made is removed after a user error (nothing ran: a corrected rerun needs no flag); else meta.json
        gets the final ``status``.
        """
        if self.run_dir.staged:
            return
        if self.fresh and user_error:
            shutil.rmtree(self.run_dir.path, ignore_errors=True)
            return
        self.run_dir.update_meta(status=status, end_time=utc_now())

    def close(self) -> None:
        """Drop a staged run that never reached its first checkpoint (the old run stays), and unlock.

        When a user error removed the run's folder, the lock file and the empty folders this run made
        above it go too: a refused run leaves the results folder as it found it.
        """
        try:
            self.run_dir.discard()
        finally:
            self.lock.release()
        if not self.run_dir.path.exists():
            lock_path(self.run_dir.path).unlink(missing_ok=True)
            for folder in self.made:  # deepest first; a folder something else wrote into stays
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _plan(path: Path, *, resume: bool, overwrite: bool) -> tuple[bool, bool, list[str]]:
    """``(resume, overwrite, notes)`` for a run into ``path``, or the one-sentence refusal.

    A run that meta.json calls running is refused while its process lives on this host; ``--resume`` of a
    folder without a checkpoint becomes a fresh start that replaces it (staged like an overwrite).
    """
    notes = [note] if (note := _running_note(path)) else []
    if resume and path.is_dir() and not (path / "checkpoint.pt").is_file():
        notes.append(f"{path} has no checkpoint (it stopped before its first one): starting it afresh")
        resume, overwrite = False, True
    RunDir.check(path.parent.parent, path.parent.name, path.name, resume=resume, overwrite=overwrite)
    return resume, overwrite, notes


def check_run(out_root: Path, recipe_name: str, run_id: str, *, resume: bool, overwrite: bool) -> None:
    """Refuse, as :func:`open_run` would, without taking the folder (the ``--nproc`` launcher, before torchrun)."""
    path = Path(out_root) / recipe_name / run_id
    RunLock.check_free(path)
    _plan(path, resume=resume, overwrite=overwrite)


def open_run(out_root: Path, recipe_name: str, run_id: str, *, resume: bool, overwrite: bool) -> OpenRun:
    """Lock the run folder and make it ready for this run; ``close()`` the result on every exit path.

    Refuses (:class:`UserError`, one sentence) a folder another run holds, a run still alive, a run that
    would be clobbered, and ``--resume`` where there is no run. ``--resume`` of a run stopped before its
    first checkpoint starts it afresh. Half-done swaps and temporary files of killed writes are cleaned up.
    """
    path = Path(out_root) / recipe_name / run_id
    made = [p for p in (path.parent, Path(out_root)) if not p.exists()]
    lock = RunLock.acquire(path)
    try:
        recover(path)
        resume, overwrite, notes = _plan(path, resume=resume, overwrite=overwrite)
        fresh = not (path.is_dir() and any(path.iterdir()))
        if not fresh:
            remove_temporaries(path)
        run_dir = RunDir.create(path.parent.parent, recipe_name, run_id, resume=resume, overwrite=overwrite)
        return OpenRun(run_dir, lock, resume, fresh, notes, made)
    except BaseException:
        lock.release()
        raise


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed or no version attribute
        return None


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's architecture and core count."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def collect_meta(command_line: list[str], seed: int, device: torch.device) -> dict[str, Any]:
    """Everything that says where and how a run was made; ``status`` starts as ``running``."""
    import torch

    from mixbench import __version__

    commit = _git("rev-parse", "HEAD")
    dirty = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "versions": {"python": platform.python_version(), "mixbench": __version__,
                     **{m: _version(m) for m in ("torch", "torchvision", "timm", "numpy")}},
        "git": {"commit": commit, "dirty": dirty},
        "device": device_name(device), "device_type": device.type, "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), **process_fields(),  # pid and host
        "command_line": list(command_line), "python_executable": sys.executable,
        "seed": seed, "start_time": utc_now(),
        "end_time": None, "status": "running",
    }


def _stats(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """(best, last, median of the last 10) of a list of evaluated accuracies."""
    if not values:
        return None, None, None
    return max(values), values[-1], statistics.median(values[-10:])


def summarize(metrics: list[dict[str, Any]], *, status: str, base: dict[str, Any]) -> dict[str, Any]:
    """summary.json from the epoch lines: best / last / median of the last 10 evaluated epochs, and the
    headline ``<key>_median`` over the schedule's window (``median_window`` epochs, see
    :func:`mixbench.results.inspect.median_window`: 10 for 200+ epochs, else 5 % of the evaluated epochs)."""
    from mixbench.results.inspect import window_median

    out = dict(base)
    out["status"] = status
    out["epochs_done"] = max((m["epoch"] for m in metrics), default=0)
    extra = sorted({k for m in metrics for k in m if k.endswith(("_top1", "_top5"))})  # ema_, momentum_, ...
    for key in ("top1", "top5", *extra):
        values = [m[key] for m in metrics if m.get(key) is not None]
        if key in extra and not values:
            continue
        out[f"{key}_best"], out[f"{key}_last"], out[f"{key}_median_last10"] = _stats(values)
        wm = window_median(values, out.get("epochs"))
        out[f"{key}_median"] = wm.value
        if key == "top1":
            out["median_window"] = wm.n or None
    ips = [m["images_per_s"] for m in metrics if m.get("images_per_s")]
    out["images_per_s"] = statistics.fmean(ips) if ips else None
    return out
