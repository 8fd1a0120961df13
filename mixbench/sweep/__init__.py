"""Sweeps: many runs as one command, and suites (whole published tables) as shipped sweeps.

``mixbench sweep RECIPE... [--seeds 0,1,2] [--grid key=V1,V2 ...] [--jobs N] [--launcher local|slurm]``
expands to ``recipes × grid × seeds`` runs (:mod:`mixbench.sweep.plan`), writes a manifest in
``OUT/sweeps/<sweep id>/manifest.json``, skips completed runs, resumes interrupted or failed ones, and
runs the rest: ``jobs`` ``mixbench run`` processes at once on this machine (:mod:`mixbench.sweep.local`)
or a SLURM job array through submitit (:mod:`mixbench.sweep.slurm`). A run that fails does not stop
the others; failures are listed at the end and the exit code is then 1. A SIGINT/SIGTERM stops the
children cleanly (exit 130); the same command continues where it stopped. Suites
(:mod:`mixbench.sweep.suites`, ``mixbench suite list|run``) are sweeps named by a manifest file.

Layout:

- ``plan.py``: ``--grid``/``--seeds`` parsing, expansion and validation, run-folder states, the manifest
- ``local.py``: the process pool, thread counts, GPU sharing, signal forwarding, one line per finished run
- ``slurm.py``: the sbatch script, submitit job array, requeue on timeout
- ``worker.py``: ``python -m mixbench.sweep.worker MANIFEST INDEX`` (one array task)
- ``suites.py``: suite files, lookup, cost estimate
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixbench.errors import UserError
from mixbench.sweep.plan import (
    DONE,
    RESUMABLE,
    Plan,
    RunSpec,
    expand,
    merge_history,
    parse_grid,
    parse_seeds,
    refresh,
    write_manifest,
)

__all__ = ["sweep", "run_suite", "parse_seeds", "Plan", "RunSpec"]

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
LAUNCHERS = ("local", "slurm")


def _action(run: RunSpec) -> str:
    if run.status == "invalid":
        return "invalid"
    if run.status in DONE:
        return f"skip ({run.status})"
    if run.status == "running":
        return "running elsewhere"
    return "resume" if run.status in RESUMABLE else "start"


def _counts(runs: list[RunSpec]) -> str:
    actions: dict[str, int] = {}
    for run in runs:
        a = _action(run)
        actions[a] = actions.get(a, 0) + 1
    order = ["skip (completed)", "skip (diverged)", "resume", "start", "running elsewhere", "invalid"]
    return ", ".join(f"{actions[a]} {'to ' + a if a in ('resume', 'start') else a}" for a in order if a in actions)


def _lock(plan: Plan):
    from mixbench.results.lock import RunLock

    try:
        return RunLock.acquire(plan.folder)
    except UserError as e:
        holder = re.search(r"\((pid [^)]*)\)", str(e))
        raise UserError(
            f"{plan.manifest_path}: another mixbench sweep of the same runs is going on "
            f"({holder.group(1) if holder else 'another process'}); wait for it to end or stop it"
        ) from None


def _report(plan: Plan, say: Callable[[str], None], wall: float, *, stopped: bool, reference: bool) -> int:
    """The closing lines: counts, every run that did not complete (with why and its log), how to go on."""
    from mixbench.sweep.local import _fmt_s

    counts: dict[str, int] = {}
    for run in plan.runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: (kv[0] != "completed", kv[0])))
    say(f"sweep {plan.sweep_id}: {len(plan.runs)} runs: {text} ({_fmt_s(wall)} this time)")
    bad = [r for r in plan.runs if r.status in ("failed", "diverged", "invalid", "stale")]
    if bad:
        say(f"not completed ({len(bad)}):")
        for run in bad:
            where = f" (log: {run.log})" if run.log else ""
            say(f"  {run.status:<9} {run.label}: {run.error or 'no error recorded'}{where}")
    rest = [r for r in plan.runs if r.status in ("pending", "interrupted", "running", "submitted")]
    if stopped or rest:
        say(f"{len(rest)} run(s) not finished; run the same command again to continue")
    say(f"manifest: {plan.manifest_path}")
    say(f"table: mixbench compare {plan.out}{' --reference' if reference else ''}")
    if stopped:
        return EXIT_INTERRUPTED
    return EXIT_OK if all(r.status == "completed" for r in plan.runs) else EXIT_FAILED


def sweep(
    recipes: list[str | Path],
    *,
    seeds: list[int] | None = None,
    grid: list[str] | None = None,
    sets: list[str] | None = None,
    out: Path = Path("results"),
    jobs: int | None = None,
    launcher: str = "local",
    device: str = "auto",
    dry_run: bool = False,
    slurm: list[str] | None = None,
    wait: bool = False,
    label: str | None = None,
    suite: str | None = None,
    shown: list[str] | None = None,
    reference: bool = False,
    say: Callable[[str], None] = print,
) -> int:
    """Plan, record and run a sweep (see the module docstring); returns the exit code (0, 1 or 130).

    Bad arguments raise :class:`UserError` before anything is written or started.
    """
    if launcher not in LAUNCHERS:
        raise UserError(f"--launcher {launcher}: valid: {', '.join(LAUNCHERS)}")
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs {jobs}: expected a number of processes >= 1")
    params: dict[str, Any] = {}
    if launcher == "slurm":
        from mixbench.sweep import slurm as slurm_mod

        slurm_mod.require_submitit()
        params = {
            **slurm_mod.DEFAULTS,
            **({"gpus_per_node": 1} if device != "cpu" else {}),
            **slurm_mod.parse_options(list(slurm or [])),
        }
    elif slurm or wait:
        raise UserError(f"{'--slurm' if slurm else '--wait'} applies to --launcher slurm only")
    else:  # the runs start here: a device this machine lacks is refused once, not once per run
        from mixbench.engine import resolve_device

        resolve_device(device)
    axes = parse_grid(list(grid or []))
    plan = expand(recipes, seeds=seeds, grid=axes, sets=sets, out=out, label=label, shown=shown)
    plan.suite = suite
    for run in plan.runs:
        refresh(run)
    merge_history(plan)
    n_jobs = jobs or (1 if launcher == "local" else None)
    points = math.prod(len(a.values) for a in axes)
    shape = f"{len(recipes)} recipe(s) x {points} grid point(s) x {len(seeds) if seeds else 'its own'} seed(s)"
    if launcher == "local":
        from mixbench.sweep.local import threads_per_job

        how = f"{n_jobs} job(s) x {threads_per_job(n_jobs)} thread(s)"
    else:
        how = f"SLURM array{f', {n_jobs} at once' if n_jobs else ''}"
    say(f"sweep {plan.sweep_id}: {len(plan.runs)} runs ({shape}): {_counts(plan.runs)}; {how}")
    for dup in plan.duplicates[:5]:
        say(f"note: {dup} is the same run as one listed earlier; run once")
    if dry_run:
        width = len(str(len(plan.runs)))
        for run in plan.runs:
            extra = f": {run.error}" if run.status == "invalid" else ""
            say(f"  {run.index:>{width}}  {_action(run):<17} {run.label}{extra}")
        say(f"would write {plan.manifest_path}")
        return EXIT_OK
    fields = {"command": list(sys.argv), "launcher": launcher, "jobs": n_jobs, "device": device}
    t0 = time.monotonic()
    lock = _lock(plan)
    try:
        write_manifest(plan, **fields)
        todo = [r for r in plan.runs if r.status == "pending" or r.status in RESUMABLE]
        done_before = sum(r.status in DONE for r in plan.runs)
        for run in plan.runs:
            if run.status == "invalid":
                say(f"invalid: {run.label}: {run.error}")
            elif run.status == "running":
                say(f"running elsewhere, not started again: {run.label}")
        if launcher == "local":
            from mixbench.sweep.local import run_local

            finished = run_local(
                plan, todo, jobs=n_jobs, device=device, say=say, done_before=done_before, manifest_fields=fields
            )
        else:
            from mixbench.sweep import slurm as slurm_mod
            from mixbench.sweep.local import finish_line

            script = slurm_mod.write_sbatch(plan, params, n_jobs)
            say(f"sbatch script (for submitting by hand): {script}")
            finished = True
            queued = slurm_mod.still_queued(plan, todo)
            if queued:
                say(f"{len(queued)} run(s) still queued or running from an earlier submission, not submitted again")
                todo = [r for r in todo if r not in queued]
            if todo:
                submitted = slurm_mod.submit(
                    plan, todo, params=params, parallelism=n_jobs, device=device, say=say, manifest_fields=fields
                )
                say(
                    f"submitted {len(submitted)} run(s) as job array {submitted[0].job_id.split('_')[0]} "
                    f"(job files: {plan.folder / 'slurm' / 'submitit'})"
                )
                if wait:
                    finished = slurm_mod.wait(
                        plan,
                        todo,
                        submitted,
                        say=say,
                        done_before=done_before,
                        manifest_fields=fields,
                        line=finish_line,
                    )
                else:
                    say(f"manifest: {plan.manifest_path}")
                    say("rerun the same command to see where the runs are (and to resubmit stopped ones)")
                    bad = [r for r in plan.runs if r.status == "invalid"]
                    return EXIT_FAILED if bad else EXIT_OK
        return _report(plan, say, time.monotonic() - t0, stopped=not finished, reference=reference)
    finally:
        write_manifest(plan, **fields)
        lock.release()


def run_suite(name: str, *, seeds: list[int] | None = None, out: Path | None = None, **kwargs: Any) -> int:
    """``mixbench suite run NAME``: the suite's recipes and seeds as a sweep into ``OUT`` (default
    ``results/<suite>``), ``compare --reference`` named at the end."""
    from mixbench.sweep.suites import find_suite

    suite = find_suite(name)
    sets = [*suite.sets, *(kwargs.pop("sets", None) or [])]
    return sweep(
        [str(p) for p in suite.paths],
        seeds=seeds if seeds is not None else suite.seeds,
        sets=sets,
        out=out if out is not None else Path("results") / suite.name,
        label=suite.name,
        suite=suite.name,
        shown=suite.recipes,
        reference=True,
        **kwargs,
    )
