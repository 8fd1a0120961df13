"""One device check that fits a time budget: environment, train-step grid, mixer and method costs, short CIFAR-10
runs (vanilla, mixup, samix) and, if time is left, a short BYOL run, with one JSON and one Markdown report.

    python benchmarks/gpu_check.py --budget-s 480 --cifar10 data_local/cifar10-jpeg.tar.gz --out results/gpu_check
    python benchmarks/gpu_check.py --budget-s 60 --device cpu --cifar10 shapes --out /tmp/gpu_check   # CPU, tiny

The budget counts from this process's start. A planner gives each stage a share of the time that is left
(unused time passes to the later stages), runs every stage in a child process with a timeout, and skips what the
time left cannot cover ("skipped: budget" in the report, with the estimate that did not fit). The reports
(``gpu_check.json``, ``gpu_check.md`` in OUT) are rewritten atomically whenever a measurement comes in, so a check
that is killed still leaves what it measured. The parent process never imports torch: the environment is read by a
child too, so a GPU in exclusive-process mode is held by one process at a time.

Sizes: ``--size full`` (default on CUDA) is ResNet-18 CIFAR at width 1, batch 256/512 for the step grid, the full
CIFAR-10 (50,000 / 10,000); ``--size tiny`` (default on the CPU) is width 0.125, batch 16/32 and a few hundred
images, to check the machinery in CI, not to measure anything.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here
START_UNIX = time.time()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # a device checkout may have no installed mixbench: use this one
    sys.path.insert(0, str(REPO))

from mixbench.results.atomic import atomic_write_json, atomic_write_text  # noqa: E402  (torch-free)

SCHEMA = 1
SKIPPED_BUDGET = "skipped: budget"
STAGES = ("environment", "train_step", "mixers", "methods", "cifar10", "ssl")
# share of the time left that a stage gets when it starts, relative to the stages still to come
WEIGHTS = {"train_step": 0.30, "mixers": 0.10, "methods": 0.15, "cifar10": 0.30, "ssl": 0.15}
CIFAR_METHODS = ("vanilla", "mixup", "samix")
# a training image's cost relative to vanilla's (pass counts: benchmarks/README.md, "Method cost")
COST_X = {"vanilla": 1.0, "mixup": 1.05, "samix": 3.0, "byol": 2.7}
ARCHIVE = "cifar10-jpeg.tar.gz"
DEFAULT_ARCHIVES = (REPO / "data_local" / ARCHIVE, REPO.parent / "shared" / "data" / ARCHIVE)

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "train_step": {
            "backbone": "resnet18_cifar",
            "width": 1.0,
            "batches": [256, 512],
            "images": 4096,
            "steps": 20,
            "warmup": 3,
            "method": "mixup",
        },
        "mixers": {"backbone": "resnet18_cifar", "width": 1.0, "batch": 256, "repeats": 5},
        "methods": {
            "backbone": "resnet18_cifar",
            "width": 1.0,
            "batch": 100,
            "repeats": 5,
            "names": ["vanilla", "mixup", "automix", "samix", "samixp"],
        },
        "cifar10": {
            "model": "resnet18_cifar",
            "width": 1.0,
            "train_size": 50000,
            "test_size": 10000,
            "min_train": 5000,
            "max_epochs": 30,
            "log_every": 100,
        },
        "ssl": {
            "model": "resnet18_cifar",
            "width": 1.0,
            "train_size": 50000,
            "test_size": 10000,
            "min_train": 5000,
            "max_epochs": 20,
            "log_every": 100,
        },
    },
    "tiny": {
        "train_step": {
            "backbone": "resnet18_cifar",
            "width": 0.125,
            "batches": [16, 32],
            "images": 64,
            "steps": 2,
            "warmup": 1,
            "method": "mixup",
        },
        "mixers": {"backbone": "resnet18_cifar", "width": 0.125, "batch": 32, "repeats": 1},
        "methods": {
            "backbone": "resnet18_cifar",
            "width": 0.125,
            "batch": 32,
            "repeats": 1,
            "names": ["vanilla", "mixup", "samix"],
        },
        "cifar10": {
            "model": "resnet18_cifar",
            "width": 0.125,
            "train_size": 200,
            "test_size": 100,
            "min_train": 200,
            "max_epochs": 2,
            "log_every": 1,
        },
        "ssl": {
            "model": "resnet18_cifar",
            "width": 0.125,
            "train_size": 256,
            "test_size": 100,
            "min_train": 256,
            "max_epochs": 1,
            "log_every": 1,
        },
    },
}

# Prior cost estimates (seconds), replaced by measurements as they come in. The CUDA ones are guesses for an
# H100-class GPU until a check has run there; the CPU ones are the tiny profile on an idle 2-core machine, scaled by
# how slowly the environment child started (a loaded machine). proc_start: a child's start (python, torch, mixbench,
# the device); run_start: a `mixbench run`'s time beyond its epochs (start, data, model); *_compute: a bench
# stage's measuring beyond its start (CPU methods: each method in a fresh process, one proc_start each on top).
PRIORS: dict[str, dict[str, float]] = {
    "cuda": {
        "proc_start": 15.0,
        "run_start": 35.0,
        "cell_setup": 4.0,
        "compile": 75.0,
        "s_per_img_fp32": 1 / 15000,
        "bf16_factor": 0.6,
        "mixers_compute": 30.0,
        "methods_compute": 45.0,
        "vanilla_ips": 8000.0,
        "grace": 5.0,
    },
    "cpu": {
        "proc_start": 5.0,
        "run_start": 10.0,
        "cell_setup": 1.0,
        "compile": 60.0,
        "s_per_img_fp32": 1 / 150,
        "bf16_factor": 6.0,
        "mixers_compute": 10.0,
        "methods_compute": 12.0,
        "vanilla_ips": 200.0,
        "grace": 2.0,
    },
}


class Stopped(Exception):
    """The check itself was asked to stop (SIGTERM, SIGINT, SIGHUP)."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def elapsed() -> float:
    return time.monotonic() - T0


# ----------------------------------------------------------------------------------------------- train-step cells


def train_step_cells(batches: list[int]) -> list[dict[str, Any]]:
    """Every (batch, precision, channels_last, compile) cell, the most informative first: the fp32 eager baseline
    (cheap, comparable with the CPU rows in benchmarks/README.md), the fast eager setting, then the setting the
    40,000 img/s target is for (large batch, bf16, channels_last, compiled), then compiled fp32, then the rest."""
    small, large = batches
    first = [
        (small, "fp32", False, False),
        (small, "bf16", True, False),
        (large, "bf16", True, True),
        (small, "fp32", False, True),
        (large, "bf16", True, False),
        (small, "bf16", True, True),
        (large, "fp32", False, False),
        (large, "fp32", False, True),
    ]
    grid = [
        (b, p, cl, c) for c in (False, True) for b in (small, large) for p in ("fp32", "bf16") for cl in (False, True)
    ]
    order = first + [cell for cell in grid if cell not in first]
    return [
        {"batch": b, "precision": p, "channels_last": cl, "mode": "compiled" if c else "eager"} for b, p, cl, c in order
    ]


def cell_label(cell: dict[str, Any]) -> str:
    return (
        f"batch {cell['batch']} {cell['precision']} {'channels_last' if cell['channels_last'] else 'contiguous'} "
        f"{cell['mode']}"
    )


class CellEstimator:
    """Seconds a train-step cell will take: priors, replaced by the cells measured so far."""

    def __init__(self, prior: dict[str, float], steps: int, warmup: int):
        self.prior, self.steps, self.warmup = prior, steps, warmup
        self.s_per_img: dict[str, float] = {}  # precision -> measured seconds per image of a step
        self.setup: float | None = None  # measured seconds outside the timed steps and the warm-up
        self.compile: float | None = None  # measured extra warm-up of a compiled cell

    def estimate(self, cell: dict[str, Any]) -> float:
        p = cell["precision"]
        if p in self.s_per_img:
            per_img = self.s_per_img[p]
        elif "fp32" in self.s_per_img:
            per_img = self.s_per_img["fp32"] * (self.prior["bf16_factor"] if p == "bf16" else 1.0)
        else:
            per_img = self.prior["s_per_img_fp32"] * (self.prior["bf16_factor"] if p == "bf16" else 1.0)
        steps = self.warmup + 2 * self.steps + 2  # warm-up, timed steps, core warm-up, core steps
        est = (self.setup if self.setup is not None else self.prior["cell_setup"]) + steps * per_img * cell["batch"]
        if cell["mode"] == "compiled":
            est += self.compile if self.compile is not None else self.prior["compile"]
        return 1.2 * est

    def update(self, cell: dict[str, Any], row: dict[str, Any], wall: float) -> None:
        per_img = row["step_ms"] / 1e3 / cell["batch"]
        if cell["mode"] == "eager" or cell["precision"] not in self.s_per_img:
            self.s_per_img[cell["precision"]] = per_img
        warm_extra = max(0.0, row["warmup_s"] - self.warmup * per_img * cell["batch"])
        timed = (2 * self.steps + 2) * per_img * cell["batch"]
        if cell["mode"] == "compiled":
            self.compile = warm_extra
        else:
            self.setup = max(0.0, wall - timed - row["warmup_s"]) + warm_extra


# ------------------------------------------------------------------------------------------------------ workers


def worker_main(kind: str, spec_path: Path) -> None:
    """Child process: measure one stage, appending JSON lines to spec['events'] as results come in."""
    spec = json.loads(spec_path.read_text())
    events = open(spec["events"], "a", buffering=1)  # noqa: SIM115  (line-buffered for the parent's polls)

    def emit(record: dict[str, Any]) -> None:
        events.write(json.dumps(record, default=str) + "\n")
        events.flush()

    {
        "environment": worker_environment,
        "train_step": worker_train_step,
        "mixers": worker_mixers,
        "methods": worker_methods,
    }[kind](spec, emit)
    emit({"event": "done"})


def git_commit(repo: Path) -> dict[str, Any] | None:
    """HEAD's commit read from the .git folder (no git process); None where the checkout has no .git."""
    git = repo / ".git"
    with contextlib.suppress(OSError, IndexError, ValueError):
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = (repo / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return {"commit": head, "ref": None}
        ref = head.split(":", 1)[1].strip()
        bases = [git]
        if (git / "commondir").is_file():  # a worktree's refs live in the main .git
            bases.append((git / (git / "commondir").read_text().strip()).resolve())
        for base in bases:
            if (base / ref).is_file():
                return {"commit": (base / ref).read_text().strip(), "ref": ref}
            if (base / "packed-refs").is_file():
                for line in (base / "packed-refs").read_text().splitlines():
                    if line.endswith(" " + ref):
                        return {"commit": line.split()[0], "ref": ref}
        return {"commit": None, "ref": ref}
    return None


def worker_environment(spec: dict[str, Any], emit) -> None:
    import torch

    import mixbench

    env: dict[str, Any] = {
        "date_utc": utc_now(),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "mixbench": mixbench.__version__,
        "mixbench_path": str(Path(mixbench.__file__).resolve().parent),
        "git": git_commit(REPO),
    }
    for module in ("torchvision", "timm", "numpy"):
        with contextlib.suppress(Exception):
            env[module] = __import__(module).__version__
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env |= {
            "gpu": props.name,
            "gpu_count": torch.cuda.device_count(),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_capability": f"{props.major}.{props.minor}",
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            env["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout else None
    emit({"event": "environment", **env})


def worker_train_step(spec: dict[str, Any], emit) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    import train_step as ts  # benchmarks/train_step.py: its parser and its bench_one, not a copy

    p = spec["profile"]
    device = torch.device(spec["device"])
    est = CellEstimator(spec["prior"], p["steps"], p["warmup"])
    for cell in spec["cells"]:
        if cell["precision"] == "bf16" and not ts.bf16_supported(device):
            emit({"event": "skip", "cell": cell, "status": "skipped: no bf16 on this GPU"})
            continue
        e = est.estimate(cell)
        left = spec["deadline_unix"] - time.time()
        if e > left:
            emit({"event": "skip", "cell": cell, "status": SKIPPED_BUDGET, "estimate_s": e, "left_s": left})
            continue
        emit({"event": "start", "cell": cell, "estimate_s": e})
        argv = [
            "--device",
            spec["device"],
            "--backbone",
            p["backbone"],
            "--width",
            str(p["width"]),
            "--method",
            p["method"],
            "--batch",
            str(cell["batch"]),
            "--images",
            str(max(p["images"], cell["batch"])),
            "--steps",
            str(p["steps"]),
            "--warmup",
            str(p["warmup"]),
        ]
        args = ts.parse_args(argv + (["--channels-last"] if cell["channels_last"] else []))
        t = time.perf_counter()
        row = ts.bench_one(args, device, cell["mode"] == "compiled", cell["precision"])
        wall = time.perf_counter() - t
        est.update(cell, row, wall)
        emit({"event": "row", "cell": cell, "status": "ran", "estimate_s": e, "wall_s": wall, **row})
        if cell["mode"] == "compiled":
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def worker_mixers(spec: dict[str, Any], emit) -> None:
    import torch

    from mixbench.bench import bench_mixers
    from mixbench.mixing import MIXERS

    p = spec["profile"]
    costly = ["puzzlemix", "attentivemix"]  # they run the network themselves: measured last
    names = [e.name for e in MIXERS if e.name not in ("switch", *costly)] + [n for n in costly if n in MIXERS]
    emit({"event": "start", "names": names})
    result = bench_mixers(
        torch.device(spec["device"]),
        batch=p["batch"],
        backbone=p["backbone"],
        width=p["width"],
        names=names,
        repeats=p["repeats"],
        on_row=lambda row: emit({"event": "row", **row}),
    )
    emit({"event": "result", **{k: v for k, v in result.items() if k != "mixers"}})


def worker_methods(spec: dict[str, Any], emit) -> None:
    import torch

    from mixbench.bench import bench_methods

    p = spec["profile"]
    emit({"event": "start", "names": p["names"]})
    result = bench_methods(
        torch.device(spec["device"]),
        batch=p["batch"],
        backbone=p["backbone"],
        width=p["width"],
        names=p["names"],
        repeats=p["repeats"],
        on_row=lambda row: emit({"event": "row", **row}),
    )
    emit({"event": "result", **{k: v for k, v in result.items() if k != "methods"}})


# ------------------------------------------------------------------------------------------------ child processes


class Children:
    """Runs one child at a time in its own process group, with a timeout; stops it (TERM, grace, KILL) on time."""

    def __init__(self) -> None:
        self.current: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        }

    def run(self, cmd: list[str], log: Path, timeout: float, grace: float, poll=None) -> tuple[int | None, bool]:
        """(exit code, whether it was stopped on time). ``poll()`` is called every second while it runs."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            f.write(f"\n$ {' '.join(cmd)}   (timeout {timeout:.0f} s)\n".encode())
            f.flush()
            proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=self.env, start_new_session=True
            )
            self.current = proc
            end = time.monotonic() + max(0.0, timeout)
            stopped = False
            try:
                while True:
                    try:
                        proc.wait(timeout=max(0.01, min(1.0, end - time.monotonic())))
                        break
                    except subprocess.TimeoutExpired:
                        if poll:
                            poll()
                        if time.monotonic() >= end:
                            stopped = True
                            self.stop(grace)
                            break
            finally:
                self.current = None
                if poll:
                    poll()
        return proc.returncode, stopped

    def stop(self, grace: float) -> None:
        proc = self.current
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait)
                return


def read_events(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a worker's event file (a line still being written is left for later)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def log_tail(path: Path, lines: int = 6) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


# ---------------------------------------------------------------------------------------------------- the check


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.budget = float(args.budget_s)
        self.reserve = args.reserve_s  # kept back for the last report write
        self.deadline = self.budget - self.reserve  # in seconds since T0
        self.out: Path = args.out.resolve()
        self.work = self.out / "work"
        self.children = Children()
        self.device = args.device or "cpu"
        self.size = args.size
        self.prior = dict(PRIORS["cuda" if self.device == "cuda" else "cpu"])
        self.data = self.resolve_data(args.cifar10)
        self.vanilla_ips: tuple[float, str] | None = None  # (images/s, where the number comes from)
        self.run_start: float | None = None  # measured overhead of a `mixbench run` beyond its epochs
        self.report: dict[str, Any] = {
            "schema": SCHEMA,
            "status": "running",
            "started_utc": utc_now(),
            "budget_s": self.budget,
            "reserve_s": self.reserve,
            "elapsed_s": 0.0,
            "device": self.device,
            "size": self.size,
            "out": str(self.out),
            "command": [sys.executable, *sys.argv],
            "data": self.data,
            "environment": {"status": "pending"},
            "stages": {name: {"status": "pending"} for name in STAGES if name != "environment"},
        }

    # ----- reports

    def write(self) -> None:
        self.report["elapsed_s"] = round(elapsed(), 1)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "gpu_check.json", self.report)
        atomic_write_text(self.out / "gpu_check.md", render_markdown(self.report))

    def left(self) -> float:
        return self.deadline - elapsed()

    def resolve_data(self, cifar10: str | None) -> dict[str, Any]:
        if cifar10 == "shapes":
            return {"source": "shapes", "note": "built-in synthetic shapes (10 classes), not CIFAR-10"}
        if cifar10 is None:
            found = next((p for p in DEFAULT_ARCHIVES if p.is_file()), None)
            if found is None:
                return {
                    "source": "shapes",
                    "note": "no CIFAR-10 archive given or found in "
                    f"{', '.join(str(p) for p in DEFAULT_ARCHIVES)}: built-in shapes instead",
                }
            cifar10 = str(found)
        path = Path(cifar10).resolve()
        if not path.exists():
            raise SystemExit(f"--cifar10 {cifar10}: no such file (the JPEG archive, or 'shapes')")
        return {"source": "imagefolder", "root": str(path), "bytes": path.stat().st_size}

    # ----- the planner

    def min_cost(self, stage: str) -> float:
        """Seconds a stage needs to produce anything at all (a child's start plus its first, cheapest piece)."""
        pr = self.prior
        if stage == "train_step":
            p = PROFILES[self.size]["train_step"]
            cell = train_step_cells(p["batches"])[0]
            return pr["proc_start"] + CellEstimator(pr, p["steps"], p["warmup"]).estimate(cell)
        if stage == "mixers":
            return pr["proc_start"] + 0.5 * pr["mixers_compute"]
        if stage == "methods":  # vanilla and one more
            return self.methods_cost(2)
        if stage == "cifar10":
            return self.run_cost("vanilla", 1, PROFILES[self.size]["cifar10"]["min_train"])
        if stage == "ssl":
            return self.run_cost("byol", 1, PROFILES[self.size]["ssl"]["min_train"])
        return 0.0

    def expected_cost(self, stage: str) -> float:
        """Seconds the whole stage would take by the current estimates (shown in the report)."""
        pr = self.prior
        if stage == "train_step":
            p = PROFILES[self.size]["train_step"]
            e = CellEstimator(pr, p["steps"], p["warmup"])
            return pr["proc_start"] + sum(e.estimate(c) for c in train_step_cells(p["batches"]))
        if stage == "mixers":
            return pr["proc_start"] + pr["mixers_compute"]
        if stage == "methods":
            return self.methods_cost(len(PROFILES[self.size]["methods"]["names"]))
        if stage == "cifar10":
            p = PROFILES[self.size]["cifar10"]
            return sum(self.run_cost(m, p["max_epochs"], p["train_size"]) for m in CIFAR_METHODS)
        if stage == "ssl":
            p = PROFILES[self.size]["ssl"]
            return self.run_cost("byol", p["max_epochs"], p["train_size"])
        return 0.0

    def methods_cost(self, n: int) -> float:
        pr, names = self.prior, PROFILES[self.size]["methods"]["names"]
        per_process = n * pr["proc_start"] if self.device == "cpu" else 0.0
        return pr["proc_start"] + per_process + pr["methods_compute"] * n / len(names)

    def calibrate(self, env_wall: float) -> None:
        """Priors from the environment child's start: it is a child's start (proc_start) on this machine; on a
        CPU its ratio to the prior also scales the compute estimates (a machine shared with other work)."""
        base = PRIORS[self.device]
        self.prior = dict(base)
        self.prior["proc_start"] = 1.2 * env_wall
        if self.device == "cpu":
            f = min(10.0, max(0.5, env_wall / base["proc_start"]))
            for k in ("run_start", "cell_setup", "compile", "s_per_img_fp32", "mixers_compute", "methods_compute"):
                self.prior[k] = base[k] * f
            self.prior["vanilla_ips"] = base["vanilla_ips"] / f
            self.report["slowness"] = round(f, 2)
        else:
            self.prior["run_start"] = max(base["run_start"], self.prior["proc_start"] + 15.0)

    def ips(self) -> float:
        return self.vanilla_ips[0] if self.vanilla_ips else self.prior["vanilla_ips"]

    def epoch_cost(self, method: str, train_size: int) -> float:
        """Seconds of one epoch of ``method``: training plus one evaluation pass (kNN: the bank too)."""
        p = PROFILES[self.size]["ssl" if method == "byol" else "cifar10"]
        evaluated = p["test_size"] + (train_size if method == "byol" else 0)
        return (COST_X[method] * train_size + evaluated / 3) / self.ips()

    def run_cost(self, method: str, epochs: int, train_size: int) -> float:
        start = self.run_start if self.run_start is not None else self.prior["run_start"]
        return start + epochs * self.epoch_cost(method, train_size) + self.prior["grace"]

    def allot(self, stage: str, later: list[str]) -> float | None:
        """This stage's seconds: its weight's share of the time left, at least its minimum cost (the stages come in
        order of priority: a later one gives way); None where even its minimum does not fit (skipped: budget)."""
        left = self.left()
        share = left * WEIGHTS[stage] / sum(WEIGHTS[s] for s in [stage, *later])
        need = self.min_cost(stage)
        return None if need > left else max(share, need)

    # ----- stages

    def run_worker(self, kind: str, spec: dict[str, Any], allot: float, on_events) -> tuple[list, int | None, bool]:
        """Run a worker child for at most ``allot`` seconds (its stop's grace included); ``on_events(all events)``
        whenever it has reported something new."""
        self.work.mkdir(parents=True, exist_ok=True)
        events = self.work / f"{kind}.events.jsonl"
        events.unlink(missing_ok=True)
        spec_path = self.work / f"{kind}.spec.json"
        spec = {**spec, "events": str(events), "device": self.device}
        spec_path.write_text(json.dumps(spec, indent=2))
        seen = [0]

        def poll() -> None:
            evs = read_events(events)
            if len(evs) != seen[0]:
                seen[0] = len(evs)
                on_events(evs)
                self.write()

        rc, stopped = self.children.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", str(spec_path)],
            self.out / "logs" / f"{kind}.log",
            allot - self.prior["grace"],
            self.prior["grace"],
            poll,
        )
        return read_events(events), rc, stopped

    def stage_environment(self) -> None:
        rep = self.report["environment"]
        rep.update(status="running")
        self.write()
        t = time.monotonic()
        evs, rc, stopped = self.run_worker("environment", {}, min(self.left(), 90.0), lambda evs: None)
        env_wall = time.monotonic() - t
        env = next((e for e in evs if e.get("event") == "environment"), None)
        if env is None:
            rep.update(
                status="failed" if not stopped else "stopped: time ran out",
                exit_code=rc,
                log_tail=log_tail(self.out / "logs" / "environment.log"),
            )
        else:
            env.pop("event")
            rep.clear()
            rep.update(status="ran", **env)
        if self.args.device is None:
            self.device = "cuda" if rep.get("cuda_available") else "cpu"
            self.report["device"] = self.device
        self.calibrate(env_wall)
        if self.size == "auto":
            self.size = "full" if self.device == "cuda" else "tiny"
        self.report["size"] = self.size
        self.report["profile"] = PROFILES[self.size]
        self.report["priors"] = self.prior

    def stage_train_step(self, allot: float, rep: dict[str, Any]) -> None:
        p = PROFILES[self.size]["train_step"]
        cells = train_step_cells(p["batches"])
        deadline = START_UNIX + elapsed() + allot - self.prior["grace"]  # the worker's own last start
        rep["cells"] = [{"cell": c, "label": cell_label(c), "status": "pending"} for c in cells]

        def on_events(evs: list[dict[str, Any]]) -> None:
            by_label = {r["label"]: r for r in rep["cells"]}
            for e in evs:
                if "cell" not in e:
                    continue
                r = by_label[cell_label(e["cell"])]
                r.update({k: v for k, v in e.items() if k not in ("event", "cell")})
                r["status"] = {"start": "running"}.get(e["event"], e.get("status", r["status"]))
            self.learn_ips(rep)

        spec = {"profile": p, "cells": cells, "deadline_unix": deadline, "prior": self.prior}
        _, rc, stopped = self.run_worker("train_step", spec, allot, on_events)
        for r in rep["cells"]:
            if r["status"] == "running":
                r["status"] = "stopped: stage time ran out" if stopped else f"failed (exit {rc})"
            elif r["status"] == "pending":
                r["status"] = SKIPPED_BUDGET if stopped else f"not run (worker exit {rc})"
        self.finish_worker_stage(rep, "train_step", rc, stopped)

    def learn_ips(self, rep: dict[str, Any]) -> None:
        """Vanilla's images/s in a CIFAR run, guessed from the eager fp32 train-step row: a mixup step at a larger
        batch than the recipe's 100 and without evaluation, so scaled down."""
        for r in rep["cells"]:
            c = r["cell"]
            if r["status"] == "ran" and c["mode"] == "eager" and c["precision"] == "fp32" and not c["channels_last"]:
                scale = 0.5 if self.device == "cuda" else 0.8
                self.vanilla_ips = (scale * r["images_per_s"], f"train-step row ({cell_label(c)}) x {scale}")
                return

    def finish_worker_stage(self, rep: dict[str, Any], kind: str, rc: int | None, stopped: bool) -> None:
        rows = rep.get("cells") or rep.get("rows") or []
        skipped = sum(r["status"] == SKIPPED_BUDGET for r in rows)
        if rows and all(r["status"] == "ran" or r["status"].startswith("skipped: no") for r in rows):
            rep["status"] = "ran"  # everything measured (a worker stopped while closing down lost nothing)
        elif rows and rc == 0 and skipped:  # the worker ended by itself: the rest ran
            rep["status"] = f"partial: {skipped} of {len(rows)} skipped: budget"
        elif stopped:
            rep["status"] = "partial: stage time ran out"
        elif rc != 0:
            rep["status"] = f"failed (exit {rc})"
            rep["log_tail"] = log_tail(self.out / "logs" / f"{kind}.log")
        else:
            rep["status"] = "ran"

    def stage_mixers(self, allot: float, rep: dict[str, Any]) -> None:
        p = PROFILES[self.size]["mixers"]
        rep["rows"] = []

        def on_events(evs: list[dict[str, Any]]) -> None:
            for e in evs:
                if e["event"] == "start" and not rep["rows"]:  # the worker names the mixers (the parent has no torch)
                    rep["rows"] = [{"mixer": n, "status": "pending"} for n in e["names"]]
            rows = {r["mixer"]: r for r in rep["rows"]}
            for e in evs:
                if e["event"] == "row":
                    rep["train_step_ms"] = e.pop("train_step_ms")
                    rows[e["mixer"]].update({k: v for k, v in e.items() if k != "event"}, status="ran")
                elif e["event"] == "result":
                    rep["setup"] = {k: v for k, v in e.items() if k != "event"}

        _, rc, stopped = self.run_worker("mixers", {"profile": p}, allot, on_events)
        for r in rep["rows"]:
            if r["status"] == "pending":
                r["status"] = SKIPPED_BUDGET if stopped else f"not run (worker exit {rc})"
        self.finish_worker_stage(rep, "mixers", rc, stopped)

    def stage_methods(self, allot: float, rep: dict[str, Any]) -> None:
        p = PROFILES[self.size]["methods"]
        rep["rows"] = [{"method": n, "status": "pending"} for n in p["names"]]

        def on_events(evs: list[dict[str, Any]]) -> None:
            rows = {r["method"]: r for r in rep["rows"]}
            for e in evs:
                if e["event"] == "row":
                    rows[e["method"]].update({k: v for k, v in e.items() if k != "event"}, status="ran")
                elif e["event"] == "result":
                    rep["setup"] = {k: v for k, v in e.items() if k != "event"}
            base = rows["vanilla"].get("step_ms")
            for r in rep["rows"]:
                if base and r.get("step_ms"):
                    r["x_vanilla"] = r["step_ms"] / base

        _, rc, stopped = self.run_worker("methods", {"profile": p}, allot, on_events)
        for r in rep["rows"]:
            if r["status"] == "pending":
                r["status"] = SKIPPED_BUDGET if stopped else f"not run (worker exit {rc})"
        self.finish_worker_stage(rep, "methods", rc, stopped)

    def data_overrides(self, p: dict[str, Any], train_size: int) -> list[str]:
        d = self.data
        sets = [
            f"data.source={json.dumps(d['source'])}",
            f"data.train_size={train_size}",
            f"data.test_size={p['test_size']}",
        ]
        if d["source"] == "imagefolder":
            sets.append(f"data.root={json.dumps(d['root'])}")
        else:
            sets.append("data.image_size=32")
        return sets

    def plan_runs(self, stage_s: float, methods: list[str], p: dict[str, Any]) -> tuple[int, int]:
        """(train images, epochs) for ``methods`` run one after another in ``stage_s`` seconds, the same for all:
        every image first (up to max_epochs), then fewer images (down to min_train) when one epoch does not fit."""
        start = (self.run_start if self.run_start is not None else self.prior["run_start"]) + self.prior["grace"]
        train_s = stage_s - len(methods) * start
        per_epoch = sum(self.epoch_cost(m, p["train_size"]) for m in methods)
        epochs = int(train_s // per_epoch) if per_epoch > 0 else 1
        if epochs >= 1:
            return p["train_size"], min(epochs, p["max_epochs"])
        per_image = per_epoch / p["train_size"]
        n = int(train_s / per_image) if per_image > 0 else p["min_train"]
        n = max(p["min_train"], n // 1000 * 1000 if n >= 2000 else n)
        return min(n, p["train_size"]), 1

    def run_recipe(
        self,
        key: str,
        method: str,
        recipe: str,
        p: dict[str, Any],
        train_size: int,
        epochs: int,
        timeout: float,
        extra: list[str],
        rep: dict[str, Any],
    ) -> None:
        """One `mixbench run` in a child; its epochs as they land in metrics.jsonl, whether it ends or is stopped."""
        runs = self.work / "runs" / key
        shutil.rmtree(runs, ignore_errors=True)
        sets = [
            *self.data_overrides(p, train_size),
            f"model.name={json.dumps(p['model'])}",
            f"model.width={p['width']}",
            f"train.epochs={epochs}",
            f"train.log_every={p['log_every']}",
            f"name={json.dumps('gpu_check_' + key)}",
            *extra,
        ]
        cmd = [
            sys.executable,
            "-m",
            "mixbench",
            "run",
            str(REPO / recipe),
            "--out",
            str(runs),
            "--device",
            self.device,
            *[a for s in sets for a in ("--set", s)],
        ]
        rep.update(
            status="running",
            recipe=recipe,
            epochs=epochs,
            train_size=train_size,
            test_size=p["test_size"],
            timeout_s=round(timeout, 1),
            overrides=sets,
        )
        t = time.monotonic()

        def poll() -> None:
            self.read_run(runs, rep)
            rep["wall_s"] = round(time.monotonic() - t, 1)
            self.write()

        rc, stopped = self.children.run(cmd, self.out / "logs" / f"{key}.log", timeout, self.prior["grace"], poll)
        rep["wall_s"] = round(time.monotonic() - t, 1)
        self.read_run(runs, rep)
        rep["exit_code"] = rc
        done = rep.get("epochs_done", 0)
        if done >= epochs:  # every epoch measured (a run stopped while closing down lost nothing of them)
            rep["status"] = "ran"
        elif stopped:
            rep["status"] = f"partial: stopped at its timeout after {done}/{epochs} epochs"
        elif rc != 0:
            rep["status"] = f"failed (exit {rc})"
            rep["log_tail"] = log_tail(self.out / "logs" / f"{key}.log")
        else:
            rep["status"] = "ran"
        if done and rep.get("train_s") is not None:
            self.run_start = max(0.0, rep["wall_s"] - rep["train_s"] - rep.get("eval_s", 0.0))
        for f in runs.rglob("*.pt"):  # checkpoints are not what this check is for; keep OUT small
            f.unlink(missing_ok=True)

    @staticmethod
    def read_run(runs: Path, rep: dict[str, Any]) -> None:
        metrics: list[dict[str, Any]] = []
        for path in runs.rglob("metrics.jsonl"):  # also a hidden staging folder's
            metrics = read_events(path)
            rep["run_dir"] = str(path.parent)
        if not metrics:
            return
        last = metrics[-1]
        top1 = [m["top1"] for m in metrics if m.get("top1") is not None]
        knn = [m["knn_top1"] for m in metrics if m.get("knn_top1") is not None]
        ips = [m["images_per_s"] for m in metrics if m.get("images_per_s")]
        rep.update(
            epochs_done=last["epoch"],
            train_loss_last=last.get("train_loss"),
            top1_last=top1[-1] if top1 else None,
            top1_best=max(top1) if top1 else None,
            images_per_s=sum(ips) / len(ips) if ips else None,
            train_s=sum(m.get("epoch_seconds", 0.0) for m in metrics),
            eval_s=sum(m.get("eval_seconds", 0.0) or 0.0 for m in metrics),
        )
        if knn:
            rep.update(knn_top1_last=knn[-1], knn_top1_best=max(knn))

    def stage_cifar10(self, allot: float, rep: dict[str, Any]) -> None:
        p = PROFILES[self.size]["cifar10"]
        end = elapsed() + allot
        train_size, epochs = self.plan_runs(allot, list(CIFAR_METHODS), p)
        rep["plan"] = {
            "train_size": train_size,
            "epochs": epochs,
            "vanilla_ips_estimate": round(self.ips(), 1),
            "estimate_from": self.vanilla_ips[1] if self.vanilla_ips else "prior",
        }
        rep["runs"] = {m: {"status": "pending"} for m in CIFAR_METHODS}
        short = ["method.momentum=0.99", "method.momentum_end=0.999"]  # the momentum schedule, shortened to the run
        for i, m in enumerate(CIFAR_METHODS):
            r = rep["runs"][m]
            later = list(CIFAR_METHODS[i + 1 :])
            left = end - elapsed()
            cost = {k: self.run_cost(k, epochs, train_size) for k in [m, *later]}
            share = left * cost[m] / sum(cost.values())
            e = epochs
            if cost[m] > share:  # the measured speed says the plan does not fit: fewer epochs for this run
                per = self.epoch_cost(m, train_size)
                e = max(1, int((share - self.run_cost(m, 0, train_size)) // per))
            need = self.run_cost(m, e, train_size)
            r["estimate_s"] = round(need, 1)
            if need > left:
                r["status"] = SKIPPED_BUDGET
                continue
            later_min = sum(self.run_cost(k, 1, train_size) for k in later)
            timeout = min(left, max(share, min(1.5 * need, left - later_min))) - self.prior["grace"]
            self.run_recipe(
                f"cifar10_{m}",
                m,
                f"recipes/cifar10_r18_{m}.toml",
                p,
                train_size,
                e,
                timeout,
                short if m == "samix" else [],
                r,
            )
            if m == "vanilla" and r.get("images_per_s"):
                self.vanilla_ips = (r["images_per_s"], "measured: the vanilla CIFAR-10 run")
        statuses = [r["status"] for r in rep["runs"].values()]
        rep["status"] = (
            "ran"
            if all(s == "ran" for s in statuses)
            else (SKIPPED_BUDGET if all(s == SKIPPED_BUDGET for s in statuses) else "partial")
        )

    def stage_ssl(self, allot: float, rep: dict[str, Any]) -> None:
        p = PROFILES[self.size]["ssl"]
        train_size, epochs = self.plan_runs(allot, ["byol"], p)
        need = self.run_cost("byol", epochs, train_size)
        rep["plan"] = {"train_size": train_size, "epochs": epochs, "estimate_s": round(need, 1)}
        rep["run"] = r = {"status": "pending", "estimate_s": round(need, 1)}
        timeout = min(self.left(), max(allot, need)) - self.prior["grace"]
        extra = ["method.knn_every=1", "train.warmup_epochs=0"]
        self.run_recipe(
            "ssl_byol", "byol", "recipes/ssl/cifar10_r18_byol_lightly200.toml", p, train_size, epochs, timeout, extra, r
        )
        rep["status"] = r["status"]

    # ----- main loop

    def run(self) -> int:
        self.write()
        self.stage_environment()
        self.write()
        wanted = [s for s in STAGES[1:] if s in self.args.stages]
        env = self.report["environment"]
        cannot = None
        if env.get("status") != "ran":
            cannot = "skipped: the environment check failed (see logs/environment.log)"
        elif self.device == "cuda" and not env.get("cuda_available"):
            cannot = "skipped: --device cuda, but torch sees no CUDA device"
        for stage in STAGES[1:]:
            rep = self.report["stages"][stage]
            if stage not in wanted:
                rep["status"] = "skipped: not asked (--stages)"
            elif cannot:
                rep["status"] = cannot
        if cannot:
            self.report["status"] = cannot.replace("skipped: ", "not run: ")
            self.write()
            return 1
        for i, stage in enumerate(wanted):
            rep = self.report["stages"][stage]
            rep["expected_s"] = round(self.expected_cost(stage), 1)
            rep["min_s"] = round(self.min_cost(stage), 1)
            later = wanted[i + 1 :]
            allot = self.allot(stage, later)
            rep["left_at_start_s"] = round(self.left(), 1)
            if allot is None:
                rep["status"] = SKIPPED_BUDGET
                self.write()
                continue
            rep.update(status="running", allotted_s=round(allot, 1), started_at_s=round(elapsed(), 1))
            self.write()
            t = time.monotonic()
            try:
                getattr(self, f"stage_{stage}")(allot, rep)
            except (Stopped, KeyboardInterrupt):
                raise
            except Exception as e:  # a bug here must not cost the other stages their measurements
                self.children.stop(self.prior["grace"])
                rep.update(status=f"failed: {type(e).__name__}: {e}")
            finally:
                rep["used_s"] = round(time.monotonic() - t, 1)
                self.write()
        failed = [s for s, r in self.report["stages"].items() if str(r.get("status", "")).startswith("failed")]
        self.report["status"] = "complete" + (f", failed: {', '.join(failed)}" if failed else "")
        self.write()
        return 1 if failed or self.report["environment"].get("status") != "ran" else 0


# ---------------------------------------------------------------------------------------------------- Markdown


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return fmt.format(v)
    return str(v)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(_f(c) for c in r) + " |" for r in rows),
        "",
    ]


def render_markdown(rep: dict[str, Any]) -> str:
    env, stages = rep["environment"], rep["stages"]
    out = [
        f"# mixbench device check ({rep['device']}, {rep['size']} sizes)",
        "",
        f"Status: **{rep['status']}**; {rep['elapsed_s']:.0f} s of a {rep['budget_s']:.0f} s budget used "
        f"(started {rep['started_utc']}). Data: {rep['data']['source']}"
        + (f" `{rep['data']['root']}`" if rep["data"].get("root") else f" ({rep['data'].get('note', '')})")
        + ".",
        "",
    ]
    out += ["## Environment", ""]
    if env.get("status") == "ran":
        git = env.get("git") or {}
        gpu = (
            f"{env.get('gpu')} ({env.get('gpu_memory_gib')} GiB, capability {env.get('gpu_capability')}, "
            f"driver {env.get('driver')}, bf16 {env.get('bf16_supported')})"
            if env.get("gpu")
            else "none"
        )
        out += _table(
            ["what", "value"],
            [
                ["date (UTC)", env.get("date_utc")],
                ["host", env.get("host")],
                ["GPU", gpu],
                [
                    "CPU",
                    f"{env.get('cpu_count')} cores ({env.get('cpu_affinity')} usable), "
                    f"{env.get('torch_threads')} torch threads",
                ],
                ["torch / CUDA / cuDNN", f"{env.get('torch')} / {env.get('cuda_build')} / {env.get('cudnn')}"],
                ["python / platform", f"{env.get('python')} / {env.get('platform')}"],
                ["mixbench", f"{env.get('mixbench')} (commit {git.get('commit') or 'unknown: no .git'})"],
            ],
        )
    else:
        out += [f"{env.get('status')}", ""]
    out += [
        "## Budget plan",
        "",
        "Each stage gets its share of the time left when it starts (unused time passes on); `expected` is the "
        "whole stage by the estimates at that moment, `minimum` what it needs to produce anything."
        + (f" CPU estimates x {rep['slowness']:g} (how slowly a child started)." if rep.get("slowness") else ""),
        "",
    ]
    out += _table(
        ["stage", "status", "left at start s", "allotted s", "expected s", "minimum s", "used s"],
        [
            [
                s,
                r.get("status"),
                r.get("left_at_start_s"),
                r.get("allotted_s"),
                r.get("expected_s"),
                r.get("min_s"),
                r.get("used_s"),
            ]
            for s, r in stages.items()
        ],
    )
    ts = stages["train_step"]
    out += ["## Train step (`benchmarks/train_step.py`)", ""]
    prof = rep.get("profile", {}).get("train_step")
    if prof:
        out += [
            f"{prof['backbone']} width {prof['width']:g}, method {prof['method']}, {prof['images']} images held "
            f"on the device, {prof['steps']} timed steps after {prof['warmup']} warm-up steps. Cells in order "
            "of priority.",
            "",
        ]
    if ts.get("cells"):
        out += _table(
            [
                "cell",
                "status",
                "img/s",
                "step ms",
                "outside fwd/bwd %",
                "warm-up s",
                "peak MiB",
                "estimate s",
                "wall s",
            ],
            [
                [
                    r["label"],
                    r["status"],
                    _f(r.get("images_per_s"), "{:.0f}"),
                    r.get("step_ms"),
                    None if r.get("outside_fwd_bwd_share") is None else 100 * r["outside_fwd_bwd_share"],
                    r.get("warmup_s"),
                    _f(r.get("peak_memory_mb"), "{:.0f}"),
                    r.get("estimate_s"),
                    r.get("wall_s"),
                ]
                for r in ts["cells"]
            ],
        )
    else:
        out += [f"{ts.get('status')}", ""]
    mx = stages["mixers"]
    out += ["## Mixer cost (`mixbench bench mixers`)", ""]
    if mx.get("rows"):
        if mx.get("train_step_ms"):
            out += [f"One training step: {mx['train_step_ms']:.1f} ms.", ""]
        out += _table(
            ["mixer", "status", "ms / batch", "% of a step", "target %", "within"],
            [
                [
                    r["mixer"],
                    r["status"],
                    _f(r.get("ms_per_batch"), "{:.2f}"),
                    _f(r.get("overhead_pct"), "{:.2f}"),
                    r.get("target_pct"),
                    {True: "yes", False: "NO"}.get(r.get("within_target"), ""),
                ]
                for r in mx["rows"]
            ],
        )
    else:
        out += [f"{mx.get('status')}", ""]
    me = stages["methods"]
    out += ["## Method cost (`mixbench bench methods`)", ""]
    if me.get("rows"):
        out += _table(
            ["method", "status", "ms / step", "x vanilla", "peak MiB"],
            [
                [
                    r["method"],
                    r["status"],
                    r.get("step_ms"),
                    _f(r.get("x_vanilla"), "{:.2f}"),
                    _f(r.get("peak_memory_mb"), "{:.0f}"),
                ]
                for r in me["rows"]
            ],
        )
    else:
        out += [f"{me.get('status')}", ""]
    c10 = stages["cifar10"]
    out += ["## Short CIFAR-10 runs (`recipes/cifar10_r18_*.toml`)", ""]
    if c10.get("runs"):
        plan = c10["plan"]
        out += [
            f"Planned: {plan['train_size']} training images, {plan['epochs']} epoch(s) each, from an estimate of "
            f"{plan['vanilla_ips_estimate']:.0f} vanilla img/s ({plan['estimate_from']}).",
            "",
        ]
        out += _table(
            ["method", "status", "epochs done / asked", "top-1 last", "top-1 best", "img/s", "wall s", "estimate s"],
            [
                [
                    m,
                    r["status"],
                    f"{r.get('epochs_done', 0)} / {r.get('epochs', '')}",
                    r.get("top1_last"),
                    r.get("top1_best"),
                    _f(r.get("images_per_s"), "{:.0f}"),
                    r.get("wall_s"),
                    r.get("estimate_s"),
                ]
                for m, r in c10["runs"].items()
            ],
        )
    else:
        out += [f"{c10.get('status')}", ""]
    ssl = stages["ssl"]
    out += ["## Short SSL run (BYOL, `recipes/ssl/cifar10_r18_byol_lightly200.toml`)", ""]
    if ssl.get("run"):
        r = ssl["run"]
        out += _table(
            [
                "status",
                "epochs done / asked",
                "train images",
                "kNN top-1 last",
                "online linear top-1",
                "img/s",
                "wall s",
                "estimate s",
            ],
            [
                [
                    r["status"],
                    f"{r.get('epochs_done', 0)} / {r.get('epochs', '')}",
                    r.get("train_size"),
                    r.get("knn_top1_last"),
                    r.get("top1_last"),
                    _f(r.get("images_per_s"), "{:.0f}"),
                    r.get("wall_s"),
                    r.get("estimate_s"),
                ]
            ],
        )
    else:
        out += [f"{ssl.get('status')}", ""]
    out += ["Logs of every child process are in `logs/`; the raw numbers in `gpu_check.json`.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock seconds for the whole check (default 480)")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if available")
    p.add_argument(
        "--cifar10",
        default=None,
        help="the CIFAR-10 JPEG archive (cifar10-jpeg.tar.gz), or 'shapes' for the built-in data "
        "(default: data_local/cifar10-jpeg.tar.gz, then ../shared/data/, then shapes)",
    )
    p.add_argument("--out", type=Path, default=REPO / "results" / "gpu_check", help="report folder")
    p.add_argument(
        "--size",
        choices=["auto", "full", "tiny"],
        default="auto",
        help="full: ResNet-18 at CIFAR scale; tiny: CI-sized (default: full on cuda, tiny on cpu)",
    )
    p.add_argument(
        "--stages",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=list(STAGES[1:]),
        help=f"comma-separated subset of {','.join(STAGES[1:])}",
    )
    p.add_argument("--reserve-s", type=float, default=1.0, help="seconds kept back for the last report write")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None:
        if args.budget_s <= 0:
            p.error("--budget-s must be positive")
        bad = [s for s in args.stages if s not in STAGES[1:]]
        if bad:
            p.error(f"--stages: unknown {', '.join(bad)}; valid: {', '.join(STAGES[1:])}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.spec)
        return 0
    check = Check(args)

    def on_signal(signum, frame):
        check.children.stop(0.5)
        raise Stopped(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        code = check.run()
    except Stopped as e:
        for rep in [check.report["environment"], *check.report["stages"].values()]:
            if rep.get("status") in ("running", "pending"):
                rep["status"] = f"stopped: the check got {e}"
        check.report["status"] = f"stopped by {e} after {elapsed():.0f} s"
        check.write()
        return 143
    print(f"{check.report['status']} in {elapsed():.0f} s of {check.budget:.0f} s: {check.out / 'gpu_check.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
