"""``mixbench run --nproc N``: start torchrun for the user, on this machine, and report the run's status.

The command becomes ``python -m torch.distributed.run --standalone --nproc_per_node N -m mixbench run ...``
(the same recipe and options, without ``--nproc``). Ctrl-C reaches the workers from the terminal; a SIGTERM
sent to this launcher is passed on to torchrun. torchrun exits 1 whenever a worker fails, so rank 0
writes its own exit code to the file named by ``MIXBENCH_EXIT_FILE``, and that is the launcher's exit
code (a rank killed before it could write: the run record's status decides, else 1).
For several nodes, call torchrun (or ``srun torchrun``) directly; see the README.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

STATUS_EXIT = {"completed": 0, "diverged": 3, "interrupted": 130}
EXIT_FILE_ENV = "MIXBENCH_EXIT_FILE"


def record_exit_code(code: int) -> None:
    """Rank 0 of a ``--nproc`` run: leave the exit code where the launcher reads it."""
    path = os.environ.get(EXIT_FILE_ENV)
    if path and os.environ.get("RANK", "0") == "0":
        Path(path).write_text(str(code))


def torchrun_command(nproc: int, run_args: list[str]) -> list[str]:
    """The torchrun command line that runs ``mixbench run RUN_ARGS`` in ``nproc`` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "mixbench", "run", *run_args]


def launch(nproc: int, run_args: list[str], run_dir: Path) -> int:
    """Run torchrun with ``nproc`` workers and return rank 0's exit code (see the module docstring).

    Each worker gets ``OMP_NUM_THREADS`` = cores / ``nproc`` unless the caller set it.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    with tempfile.TemporaryDirectory() as tmp:
        env[EXIT_FILE_ENV] = str(Path(tmp) / "exit-code")
        code = _wait(subprocess.Popen(torchrun_command(nproc, run_args), env=env))
        exit_file = Path(env[EXIT_FILE_ENV])
        if exit_file.is_file() and exit_file.read_text().strip().lstrip("-").isdigit():
            return int(exit_file.read_text())
    if code == 0:
        return 0
    meta = run_dir / "meta.json"
    status = json.loads(meta.read_text()).get("status") if meta.is_file() else None
    return STATUS_EXIT.get(status, 1)


def _wait(proc: subprocess.Popen) -> int:
    """Wait for torchrun, passing a SIGTERM on to it; the terminal's Ctrl-C reaches the workers directly."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the workers get the terminal's Ctrl-C themselves
    old_term = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
