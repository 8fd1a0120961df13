"""SLURM: a sweep's runs as one job array, submitted through submitit and written as an sbatch script.

``mixbench sweep ... --launcher slurm`` writes the manifest, then ``OUT/sweeps/<id>/slurm/array.sbatch``
(a plain job-array script for ``sbatch`` by hand: each task is ``python -m mixbench.sweep.worker
MANIFEST $SLURM_ARRAY_TASK_ID``, see :mod:`mixbench.sweep.worker`), then submits the runs that are not
done through ``submitit.AutoExecutor(...).map_array`` (its job files in ``slurm/submitit/``). The
job function is :class:`SweepTask`, a ``submitit.helpers.Checkpointable``: a job that times out or is
preempted is requeued by submitit, and the requeued task resumes the run from its checkpoint.

Scheduler settings come from ``--slurm KEY=VALUE`` (repeatable), in submitit's names: ``timeout_min``,
``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``slurm_partition``, ``slurm_account``,
``slurm_qos``, ``slurm_constraint``, ... (``--slurm`` values are TOML values; a bare word is a string).

submitit is the optional extra ``slurm`` (``pip install 'mixbench[slurm]'``); without it this module still
imports, and :func:`require_submitit` refuses in one sentence. ``$MIXBENCH_SUBMITIT_CLUSTER=local`` runs
the array with submitit's local executor (processes on this machine) instead of SLURM, for tests.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixbench.errors import UserError
from mixbench.sweep.plan import Plan, RunSpec, refresh, utc_now, write_manifest

CLUSTER_ENV = "MIXBENCH_SUBMITIT_CLUSTER"
INSTALL = "pip install 'mixbench[slurm]'"
DEFAULTS = {"timeout_min": 24 * 60}
# submitit parameter -> sbatch option for the by-hand script (other slurm_<x> become --<x>)
SBATCH = {
    "timeout_min": "time",
    "gpus_per_node": "gpus-per-node",
    "cpus_per_task": "cpus-per-task",
    "mem_gb": "mem",
    "nodes": "nodes",
    "tasks_per_node": "ntasks-per-node",
}


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError(
            f"--launcher slurm needs submitit, which is not installed; install it with: {INSTALL}"
        ) from None
    return submitit


def parse_options(texts: list[str]) -> dict[str, Any]:
    """``--slurm KEY=VALUE`` → submitit parameters (values read as TOML, a bare word as a string)."""
    from mixbench.recipe import tomllib

    out: dict[str, Any] = {}
    for text in texts:
        key, eq, raw = text.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[a-z][a-z0-9_]*", key) or not raw.strip():
            raise UserError(
                f"--slurm {text}: expected KEY=VALUE in submitit's names, e.g. --slurm "
                "slurm_partition=gpu or --slurm timeout_min=600"
            )
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key] = value
    return out


def _sbatch_lines(params: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in params.items():
        if key in (
            "name",
            "slurm_array_parallelism",
            "stderr_to_stdout",
            "slurm_additional_parameters",
            "slurm_setup",
            "slurm_srun_args",
            "slurm_use_srun",
        ):
            continue
        if key in SBATCH:
            option = SBATCH[key]
        elif key.startswith("slurm_"):
            option = key[len("slurm_") :].replace("_", "-")
        else:
            continue
        if key == "mem_gb":
            value = f"{value}G"
        lines.append(f"#SBATCH --{option}={value}")
    return lines


def write_sbatch(plan: Plan, params: dict[str, Any], parallelism: int | None) -> Path:
    """``slurm/array.sbatch``: every run of the manifest as one array task (done runs end at once)."""
    folder = plan.folder / "slurm"
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    path = folder / "array.sbatch"
    n = len(plan.runs)
    array = f"0-{n - 1}" + (f"%{parallelism}" if parallelism else "")
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"# mixbench sweep {plan.sweep_id}: {n} run(s) as one SLURM job array, written by `mixbench sweep` "
        f"({utc_now()}).",
        "# Submit by hand:",
        f"#   sbatch {q(str(path))}                 # every run: completed ones end at once, interrupted ones resume",
        f"#   sbatch --array=2,5 {q(str(path))}     # only some runs (their index in manifest.json)",
        "# Each task becomes `mixbench run ...` for one run (with --resume where its folder holds an interrupted",
        "# attempt), through `python -m mixbench.sweep.worker MANIFEST INDEX`.",
        f"#SBATCH --job-name=mixbench-{plan.sweep_id}",
        f"#SBATCH --array={array}",
        f"#SBATCH --output={folder / 'logs'}/%A_%a.out",
        "#SBATCH --signal=B:TERM@120",
        *_sbatch_lines(params),
        "",
        "set -eu",
        f"cd {q(os.getcwd())}",
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
        f"exec {q(sys.executable)} -m mixbench.sweep.worker {q(str(plan.manifest_path))} "
        '"${SLURM_ARRAY_TASK_ID:?submit this script with sbatch, or set SLURM_ARRAY_TASK_ID to a run index}"',
        "",
    ]
    from mixbench.results.atomic import atomic_write_text

    atomic_write_text(path, "\n".join(lines))
    path.chmod(path.stat().st_mode | 0o111)
    return path


def _ignore_usr2() -> None:
    """In the run's process: ignore SIGUSR2, submitit's 'time is nearly up' signal (SLURM sends it to every
    process of the step; the run stops on the SIGTERM that follows the requeue, recording 'interrupted')."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


try:  # the job function's base class: submitit requeues a Checkpointable that times out or is preempted
    from submitit.helpers import Checkpointable as _TaskBase
except ImportError:  # submitit absent: require_submitit() stops every path that would use SweepTask
    _TaskBase = object


class SweepTask(_TaskBase):
    """One sweep run as a submitit job: requeued (and then resumed) when SLURM times it out or preempts it."""

    def __call__(self, manifest: str, index: int) -> int:
        from mixbench.sweep.worker import command

        cmd, label, state = command(manifest, index)
        if cmd is None:
            print(f"{label}: already {state}; nothing to do", flush=True)
            return 0
        print(f"{label}: {' '.join(cmd)}", flush=True)
        return subprocess.call(cmd, preexec_fn=_ignore_usr2)


ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")


def still_queued(plan: Plan, runs: list[RunSpec]) -> list[RunSpec]:
    """The runs whose job of an earlier submission SLURM still holds (asked through submitit, i.e. sacct); a
    rerun of the sweep does not submit them twice. Outside SLURM (or when sacct cannot tell) none."""
    if (os.environ.get(CLUSTER_ENV) or "slurm") != "slurm":
        return []
    submitit = require_submitit()
    queued = []
    for run in runs:
        if not run.job_id:
            continue
        try:
            state = submitit.SlurmJob(folder=plan.folder / "slurm" / "submitit", job_id=run.job_id).state
        except Exception:  # no sacct, an unknown id: treat as gone
            continue
        if str(state).upper() in ACTIVE:
            run.status = "submitted"
            queued.append(run)
    return queued


def submit(
    plan: Plan,
    todo: list[RunSpec],
    *,
    params: dict[str, Any],
    parallelism: int | None,
    device: str,
    say: Callable[[str], None],
    manifest_fields: dict[str, Any],
) -> list[Any]:
    """Submit ``todo`` as one job array; records each run's job id in the manifest and returns the jobs."""
    submitit = require_submitit()
    cluster = os.environ.get(CLUSTER_ENV) or "slurm"
    executor = submitit.AutoExecutor(folder=plan.folder / "slurm" / "submitit", cluster=cluster)
    settings = {"name": f"mixbench-{plan.sweep_id}", **params}
    if parallelism:
        settings["slurm_array_parallelism"] = parallelism
    try:
        executor.update_parameters(**settings)
    except (NameError, AssertionError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--slurm: {first}") from None
    task = SweepTask()
    try:
        jobs = executor.map_array(task, [str(plan.manifest_path)] * len(todo), [r.index for r in todo])
    except Exception as e:  # sbatch missing or refusing: say so in one sentence, nothing was started
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"submitting the job array failed ({first}); the sbatch script "
            f"{plan.folder / 'slurm' / 'array.sbatch'} can be submitted by hand"
        ) from None
    for run, job in zip(todo, jobs, strict=True):
        run.job_id, run.status, run.started, run.ended = str(job.job_id), "submitted", utc_now(), None
    write_manifest(plan, **manifest_fields)
    return jobs


def wait(
    plan: Plan,
    todo: list[RunSpec],
    jobs: list[Any],
    *,
    say: Callable[[str], None],
    done_before: int,
    manifest_fields: dict[str, Any],
    line: Callable[..., str],
) -> bool:
    """Report each submitted run as its job ends; False when a signal stopped the waiting (jobs go on)."""
    from mixbench.sweep.local import _Signals, last_error

    total, done = len(plan.runs), done_before
    pending = dict(zip([r.index for r in todo], jobs, strict=True))
    by_index = {r.index: r for r in todo}
    t0 = time.monotonic()
    with _Signals() as sig:
        while pending and not sig.count:
            for index, job in list(pending.items()):
                if not job.done():
                    continue
                del pending[index]
                run = by_index[index]
                try:
                    code = job.result()
                except Exception as e:  # the job itself failed (node lost, cancelled, ...)
                    code, run.error = 1, (str(e).strip().splitlines() or ["job failed"])[-1][:500]
                run.exit_code, run.ended = code, utc_now()
                refresh(run)
                if run.status in ("pending", "running", "stale"):
                    run.status = "failed"
                if run.status == "completed":
                    run.error = None
                elif not run.error:
                    run.error = last_error(Path(str(job.paths.stdout))) or f"exit code {code}"
                done += run.status != "interrupted"
                write_manifest(plan, **manifest_fields)
                say(
                    line(
                        run, done, total, time.monotonic() - t0, f"{len(pending)} queued or running" if pending else ""
                    )
                )
            if pending:
                time.sleep(1.0)
    if pending:
        say(
            f"stopped waiting; {len(pending)} job(s) keep running (scancel {jobs[0].job_id.split('_')[0]} stops "
            "them); rerun the sweep command to see where they are"
        )
        return False
    return True
