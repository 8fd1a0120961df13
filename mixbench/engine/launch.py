"""``mixbench run --nproc N``: start torchrun for the user, on this machine, and report the run's status.

The command becomes ``python -m torch.distributed.run --standalone --nproc_per_node N -m mixbench run ...``
(the same recipe and options, without ``--nproc``). Ctrl-C reaches the workers from the terminal; a SIGTERM
sent to this launcher is passed on to torchrun. torchrun exits 1 whenever a worker fails, so the exit
code is read back from the run record's status: completed 0, diverged 3, interrupted 130, else 1.
For several nodes, call torchrun (or ``srun torchrun``) directly; see the README.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

STATUS_EXIT = {"completed": 0, "diverged": 3, "interrupted": 130}


def torchrun_command(nproc: int, run_args: list[str]) -> list[str]:
    """The torchrun command line that runs ``mixbench run RUN_ARGS`` in ``nproc`` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "mixbench", "run", *run_args]


def launch(nproc: int, run_args: list[str], run_dir: Path) -> int:
    """Run torchrun with ``nproc`` workers; the exit code follows the run's recorded status.

    Each worker gets ``OMP_NUM_THREADS`` = cores / ``nproc`` unless the caller set it.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.Popen(torchrun_command(nproc, run_args), env=env)
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the workers get the terminal's Ctrl-C themselves
    old_term = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    if code == 0:
        return 0
    meta = run_dir / "meta.json"
    status = json.loads(meta.read_text()).get("status") if meta.is_file() else None
    return STATUS_EXIT.get(status, 2 if code == 2 else 1)
