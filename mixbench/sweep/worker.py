"""One run of a sweep manifest, as a SLURM array task runs it: ``python -m mixbench.sweep.worker MANIFEST INDEX``.

It reads entry INDEX of the manifest, looks at the run's folder, and then does what a rerun of the sweep
would do for that run: nothing for a completed (or diverged) run, ``mixbench run ... --resume`` for an
interrupted or failed one, ``mixbench run ...`` otherwise, in the sweep's working directory. From a
shell (or an sbatch script) the worker *becomes* that ``mixbench run`` process (``exec``), so SLURM's
signals reach the engine directly and the exit code is the run's. :func:`run_entry` is the same as a
function, for submitit's job array (the run is a subprocess there; its exit code is returned).
The worker never writes the manifest (many array tasks run at once); the sweep command reads each
run's state from its folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mixbench.errors import UserError
from mixbench.sweep.plan import DONE, load_manifest, refresh, spec_from_manifest, wants_resume


def command(manifest: str | Path, index: int) -> tuple[list[str] | None, str, str]:
    """(the ``mixbench run`` command, or None when there is nothing to do; the run's label; its state)."""
    data = load_manifest(Path(manifest))
    run = spec_from_manifest(data, index, Path(manifest))
    if run.status == "invalid" or run.run_dir is None:
        raise UserError(f"{manifest}: run {index} ({run.label}) is invalid: {run.error}")
    os.chdir(data.get("cwd") or ".")
    refresh(run)
    if run.status in DONE:
        return None, run.label, run.status
    if run.status == "running":
        raise UserError(f"{run.run_dir} is being written by another process; not starting it twice")
    device = data.get("device") or "auto"
    cmd = [
        sys.executable,
        "-m",
        "mixbench",
        "run",
        *run.run_args(Path(data["out"]), device),
        *(["--resume"] if wants_resume(run) else []),
    ]
    return cmd, run.label, run.status


def run_entry(manifest: str, index: int) -> int:
    """Run entry ``index`` in a subprocess (submitit's job function); returns its exit code (0: nothing to do)."""
    cmd, label, state = command(manifest, index)
    if cmd is None:
        print(f"{label}: already {state}; nothing to do", flush=True)
        return 0
    print(f"{label}: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        print("usage: python -m mixbench.sweep.worker MANIFEST INDEX", file=sys.stderr)
        return 2
    try:
        cmd, label, state = command(args[0], int(args[1]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cmd is None:
        print(f"{label}: already {state}; nothing to do", flush=True)
        return 0
    print(f"{label}: {' '.join(cmd)}", flush=True)
    os.execv(cmd[0], cmd)  # becomes the run: signals and exit code are the engine's
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
