"""Run records: one folder per run, ``results/<recipe name>/<run id>/``.

``recipe.toml`` (resolved), ``meta.json`` (versions, git, device, command, seed, times, status),
``metrics.jsonl`` (one line per epoch), ``summary.json`` (what ``compare`` reads) and
``checkpoint.pt``. Every write is atomic; an existing run is never replaced without
``--resume`` or ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mixbench.errors import UserError
from mixbench.results.atomic import append_jsonl, atomic_write_json, atomic_write_text


class RunDir:
    """The folder of one run and the atomic writers for each of its files."""

    def __init__(self, path: Path):
        self.path = Path(path)

    recipe_path = property(lambda self: self.path / "recipe.toml")
    meta_path = property(lambda self: self.path / "meta.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")

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
        """Make (or, with ``resume``, reopen) the run folder; refuse to clobber an existing run."""
        path = cls.check(out_root, recipe_name, run_id, resume=resume, overwrite=overwrite)
        if resume:
            return cls(path)
        if path.is_dir() and any(path.iterdir()):
            aside = path.with_name(f"{path.name}.old-{int(time.time() * 1000)}")
            os.replace(path, aside)  # the old run stays whole until the new folder exists
            path.mkdir(parents=True)
            shutil.rmtree(aside, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

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
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, epochs_done: int) -> None:
        """Drop lines past ``epochs_done`` (a resumed run re-runs the unfinished epoch)."""
        kept = [m for m in self.read_metrics() if m["epoch"] <= epochs_done]
        atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, summary)


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
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def collect_meta(command_line: list[str], seed: int, device: torch.device) -> dict[str, Any]:
    """Everything that says where and how a run was made; ``status`` starts as ``running``."""
    from mixbench import __version__

    commit = _git("rev-parse", "HEAD")
    dirty = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "versions": {"python": platform.python_version(), "mixbench": __version__,
                     **{m: _version(m) for m in ("torch", "torchvision", "timm", "numpy")}},
        "git": {"commit": commit, "dirty": dirty},
        "device": device_name(device), "device_type": device.type, "torch_threads": torch.get_num_threads(),
        "hostname": socket.gethostname(), "platform": platform.platform(),
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
    """summary.json from the epoch lines: best / last / median of the last 10 evaluated epochs."""
    out = dict(base)
    out["status"] = status
    out["epochs_done"] = max((m["epoch"] for m in metrics), default=0)
    extra = sorted({k for m in metrics for k in m if k.endswith(("_top1", "_top5"))})  # ema_, momentum_, ...
    for key in ("top1", "top5", *extra):
        values = [m[key] for m in metrics if m.get(key) is not None]
        if key in extra and not values:
            continue
        out[f"{key}_best"], out[f"{key}_last"], out[f"{key}_median_last10"] = _stats(values)
    ips = [m["images_per_s"] for m in metrics if m.get("images_per_s")]
    out["images_per_s"] = statistics.fmean(ips) if ips else None
    return out
