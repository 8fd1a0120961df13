"""Running a sweep's runs on this machine, ``jobs`` processes at once.

Each run is a ``python -m mixbench run ...`` subprocess (the engine's own signal handling, run lock,
resume and records), its output appended to ``OUT/sweeps/<id>/logs/<name>.<run id>.log``. A job gets
``OMP_NUM_THREADS`` = usable cores // jobs (unless the caller's environment sets it); with CUDA
the jobs share the GPU, or take the visible GPUs in turn when there are several.

Signals: the children run in their own sessions, so a Ctrl-C at the terminal reaches only the sweep,
which passes each SIGINT/SIGTERM on to every running child exactly once (the first makes a child stop
at its next step and record ``interrupted``, a second stops it at once, a third is a SIGKILL), starts
nothing more, waits for the children, writes the manifest and exits 130. On Linux a child also gets a
SIGTERM when the sweep dies without passing one on (``PR_SET_PDEATHSIG``: a SIGKILLed sweep still
stops its runs cleanly). A rerun of the same command continues where it stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mixbench.sweep.plan import Plan, RunSpec, refresh, utc_now, wants_resume, write_manifest

POLL_S = 0.2
EXIT_STATUS = {0: "completed", 3: "diverged", 130: "interrupted"}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    return max(1, usable_cores() // max(1, jobs))


def gpu_slots(device: str) -> list[str] | None:
    """The GPU ids jobs take in turn (None: leave CUDA_VISIBLE_DEVICES alone, e.g. one GPU or the CPU)."""
    if device == "cpu":
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
    else:
        try:
            import torch

            ids = [str(i) for i in range(torch.cuda.device_count())]
        except Exception:  # no usable CUDA: the run itself says so
            ids = []
    return ids if len(ids) > 1 else None


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for a SIGTERM when the sweep dies (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def run_command(run: RunSpec, out: Path, device: str, *, resume: bool) -> list[str]:
    return [sys.executable, "-m", "mixbench", "run", *run.run_args(out, device), *(["--resume"] if resume else [])]


def last_error(log: Path | None) -> str | None:
    """The last ``error:`` / ``diverged:`` / ``interrupted:`` / ``internal error`` line of a run's log."""
    if log is None or not log.is_file():
        return None
    with open(log, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - 16384))
        lines = f.read().decode("utf-8", "replace").splitlines()
    keys = ("error:", "diverged:", "interrupted:", "internal error")
    for line in reversed(lines):
        text = line.strip()
        if text.startswith(keys) or text.split("] ", 1)[-1].startswith(keys):
            return text[:500]
    tail = [line.strip() for line in lines if line.strip()]
    return tail[-1][:500] if tail else None


class _Signals:
    """Counts SIGINT/SIGTERM (the handler does nothing else); restores the old handlers on exit."""

    def __init__(self) -> None:
        self.count, self.last = 0, signal.SIGTERM
        self._old: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.count += 1
        self.last = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@dataclass
class _Job:
    run: RunSpec
    proc: subprocess.Popen
    log: IO[bytes]
    t0: float
    signalled: int = 0


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def finish_line(run: RunSpec, done: int, total: int, wall: float | None, tail: str) -> str:
    """One line for a finished run: ``[3/9] completed  name/run-id  top-1 63.20  1m42s  (2 running, 4 to go)``."""
    width = len(str(total))
    parts = [f"[{done:>{width}}/{total}]", f"{run.status:<11}", run.label]
    if run.top1 is not None:
        parts.append(f"top-1 {run.top1:.2f}")
    if wall is not None:
        parts.append(_fmt_s(wall))
    if run.status not in ("completed", "interrupted") and run.error:
        parts.append(f"- {run.error}")
    return "  ".join(parts) + (f"  ({tail})" if tail else "")


def run_local(
    plan: Plan,
    todo: list[RunSpec],
    *,
    jobs: int,
    device: str,
    say: Callable[[str], None],
    done_before: int,
    manifest_fields: dict,
) -> bool:
    """Run ``todo`` (in order, ``jobs`` at once); returns False when a signal stopped the sweep."""
    total = len(plan.runs)
    done = done_before
    queue = deque(todo)
    running: list[_Job] = []
    slots = gpu_slots(device)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_job(jobs)))
    env["PYTHONUNBUFFERED"] = "1"
    started = 0

    def save() -> None:
        write_manifest(plan, **manifest_fields)

    def start(run: RunSpec) -> None:
        nonlocal started
        resume = wants_resume(run)
        log_path = plan.log_path(run)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 (closed when the job ends)
        cmd = run_command(run, plan.out, device, resume=resume)
        log.write(f"\n=== {utc_now()} attempt {run.attempts + 1}: {' '.join(cmd)}\n".encode())
        log.flush()
        job_env = env
        if slots:
            job_env = {**env, "CUDA_VISIBLE_DEVICES": slots[started % len(slots)]}
        started += 1
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=job_env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        run.status, run.attempts, run.log = "running", run.attempts + 1, str(log_path)
        run.started, run.ended, run.exit_code, run.job_id = utc_now(), None, None, None
        running.append(_Job(run, proc, log, time.monotonic()))
        save()

    def finish(job: _Job, code: int) -> None:
        nonlocal done
        job.log.close()
        run = job.run
        run.exit_code, run.ended = code, utc_now()
        refresh(run)
        if run.status in ("running", "stale", "pending"):  # killed before it could record an end
            run.status = EXIT_STATUS.get(code, "failed") if code >= 0 else "failed"
        if run.status == "completed":
            run.error = None
        else:
            run.error = last_error(Path(run.log)) or (f"killed by signal {-code}" if code < 0 else f"exit code {code}")
        if run.status != "interrupted" or code == 0:  # exit 0 and interrupted: [train].stop_after, a finished step
            done += 1
        save()
        tail = f"{len(running)} running, {len(queue)} to go" if running or queue else ""
        say(finish_line(run, done, total, time.monotonic() - job.t0, tail))

    with _Signals() as sig:
        forwarded = 0
        while queue or running:
            while queue and len(running) < jobs and not sig.count:
                start(queue.popleft())
            for job in list(running):
                code = job.proc.poll()
                if code is not None:
                    running.remove(job)
                    finish(job, code)
            if sig.count > forwarded:
                forwarded = sig.count
                if forwarded == 1 and (running or queue):
                    say(
                        f"stopping: {len(running)} running run(s) asked to stop (they record 'interrupted'); "
                        f"{len(queue)} not started; a second signal stops them at once"
                    )
                for job in running:
                    if job.proc.poll() is None:
                        job.signalled += 1
                        with contextlib.suppress(ProcessLookupError):
                            job.proc.send_signal(signal.SIGKILL if forwarded >= 3 else sig.last)
            if sig.count:
                queue.clear()
            if running:
                time.sleep(POLL_S)
        return sig.count == 0
