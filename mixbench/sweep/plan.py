"""Expanding a sweep into runs, reading each run's state from its folder, and the manifest.

A sweep is ``recipes × grid points × seeds``. Each point is one ``mixbench run`` with the sweep's
``--set`` overrides followed by the point's grid values (a later override wins), and ``--seed`` when
``--seeds`` is given. Every point is validated here, as ``mixbench run`` would validate it, so the
plan knows each run's folder (``OUT/<recipe name>/<run id>``) before anything trains.

The run folders are the truth; the manifest (``OUT/sweeps/<sweep id>/manifest.json``, written
atomically after every change) is a view of them plus what the sweep itself knows: the command, each
run's recipe, overrides, expected folder, status, exit code, log, start and end times. Every sweep
invocation plans afresh and reads each run's state from its folder (:func:`run_state`), so a rerun
skips completed runs, resumes interrupted or failed ones (``--resume``, the engine's own resume), and
starts the rest. The sweep id is a hash of the planned points, so the same command finds the same
manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import product
from pathlib import Path
from typing import Any

from mixbench.errors import RecipeError, UserError

MANIFEST_KIND = "mixbench-sweep"
MANIFEST_VERSION = 1
SWEEPS_DIR = "sweeps"  # below OUT; compare finds runs by summary.json/meta.json, never by manifest.json
MAX_RUNS = 10_000

# What a run folder's state means for the sweep: skip it, start it, or continue it with --resume.
DONE = ("completed", "diverged")  # final: a rerun skips them
RESUMABLE = ("interrupted", "failed", "stale")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- parsing --seeds and --grid


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` → ``[0, 1, 2]`` (duplicates dropped); None stays None (each recipe's own seed)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(re.fullmatch(r"\d{1,18}", p) for p in parts):
        raise UserError(f"--seeds {text}: expected non-negative integers separated by commas, e.g. --seeds 0,1,2")
    return list(dict.fromkeys(int(p) for p in parts))


def split_values(text: str) -> list[str]:
    """Split a grid's values at the commas outside brackets, braces and quotes.

    ``0.2,1.0`` → ``["0.2", "1.0"]``; ``[0,1],[2]`` → ``["[0,1]", "[2]"]``;
    ``{name="mixup",alpha=1.0},{name="vanilla"}`` → two inline tables (a whole ``[method]`` each).
    """
    out, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(text):
        if quote:
            if c == quote and text[i - 1] != "\\":
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "," and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
    out.append(text[start:].strip())
    return out


@dataclass(frozen=True)
class GridAxis:
    key: str
    values: tuple[str, ...]  # each a TOML value as written

    def overrides(self) -> list[str]:
        return [f"{self.key}={v}" for v in self.values]


def parse_grid(specs: list[str]) -> list[GridAxis]:
    """``--grid key.path=V1,V2,...`` (repeatable) → axes; their product is the grid.

    Each value is checked as a ``--set key.path=V`` would be; a key given twice is refused.
    """
    from mixbench.recipe import parse_override

    axes: list[GridAxis] = []
    for spec in specs:
        key, eq, raw = spec.partition("=")
        key = key.strip()
        example = "e.g. --grid method.alpha=0.2,1.0"
        if not eq or not key or not raw.strip():
            raise UserError(f"--grid {spec}: expected key.path=VALUE1,VALUE2,..., {example}")
        values = split_values(raw)
        if any(not v for v in values):
            raise UserError(f"--grid {spec}: an empty value between commas; {example}")
        for v in values:
            try:
                parse_override(f"{key}={v}")
            except RecipeError as e:
                raise UserError(f"--grid {spec}: {e.problems[0].split(': ', 1)[-1]}") from None
        if any(a.key == key for a in axes):
            raise UserError(f"--grid {key}: given twice; put all its values in one --grid {key}=V1,V2,...")
        axes.append(GridAxis(key, tuple(dict.fromkeys(values))))
    return axes


# ---------------------------------------------------------------- the runs of a sweep


@dataclass
class RunSpec:
    """One planned run and what the sweep knows of it (one entry of the manifest)."""

    index: int
    recipe: str  # as given (or as the suite names it)
    recipe_path: str  # absolute
    overrides: list[str]  # --set, then the grid point's values
    seed: int | None  # --seeds value; None: the recipe's own
    name: str | None = None  # recipe name, run id and folder (None when the point is invalid)
    run_id: str | None = None
    run_dir: str | None = None
    status: str = "pending"  # pending | running | completed | interrupted | failed | diverged | stale | invalid
    error: str | None = None  # why it failed, one sentence (validation problem or the run's last error line)
    exit_code: int | None = None
    attempts: int = 0
    log: str | None = None
    started: str | None = None
    ended: str | None = None
    top1: float | None = None
    job_id: str | None = None  # SLURM

    @property
    def label(self) -> str:
        """``<recipe name>/<run id>`` (or the recipe and its overrides, for an invalid point)."""
        if self.name and self.run_id:
            return f"{self.name}/{self.run_id}"
        seed = [f"seed={self.seed}"] if self.seed is not None else []
        return " ".join([self.recipe, *self.overrides, *seed])

    def key(self) -> str:
        return json.dumps([self.recipe_path, self.overrides, self.seed])

    def run_args(self, out: Path, device: str) -> list[str]:
        """The ``mixbench run`` arguments of this run (``--resume`` is added by the caller)."""
        args = [self.recipe_path, "--out", str(out), "--device", device]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        for text in self.overrides:
            args += ["--set", text]
        return args


@dataclass
class Plan:
    """A sweep: where it writes, its runs, and its manifest's path."""

    sweep_id: str
    out: Path
    runs: list[RunSpec]
    duplicates: list[str] = field(default_factory=list)  # points that resolve to a run already planned
    suite: str | None = None

    @property
    def folder(self) -> Path:
        return self.out / SWEEPS_DIR / self.sweep_id

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def log_path(self, run: RunSpec) -> Path:
        return self.folder / "logs" / f"{run.name}.{run.run_id}.log"


def _problem(e: RecipeError) -> str:
    return "; ".join(dict.fromkeys(e.problems))


def expand(
    recipes: list[str | Path],
    *,
    seeds: list[int] | None = None,
    grid: list[GridAxis] | None = None,
    sets: list[str] | None = None,
    out: Path,
    label: str | None = None,
    shown: list[str] | None = None,
) -> Plan:
    """Plan the runs of ``recipes × grid × seeds`` (seeds outermost: every configuration's first seed runs
    before any second seed, so a sweep stopped half-way already gives a whole table of one seed).

    Bad arguments (a missing recipe file, a malformed ``--set``) and a sweep whose every point is invalid
    raise a :class:`UserError`; a point that alone is invalid is planned with status ``invalid`` and
    its problem, and the others run. ``shown`` (one per recipe, for suites) is how each recipe is named in
    messages and the manifest (default: the path as given).
    """
    from mixbench.recipe import load_recipe, parse_override

    grid, sets = list(grid or []), list(sets or [])
    for text in sets:  # a malformed --set is the user's, whatever the recipe
        parse_override(text)
    paths: list[tuple[str, Path]] = []
    for i, recipe in enumerate(recipes):
        path = Path(recipe)
        if not path.is_file():
            raise UserError(f"{recipe}: recipe file not found")
        paths.append((shown[i] if shown else str(recipe), path.resolve()))
    points = list(product(*(a.overrides() for a in grid))) or [()]
    total = len(paths) * len(points) * len(seeds or [None])
    if total > MAX_RUNS:
        raise UserError(
            f"the sweep expands to {total:,} runs, more than {MAX_RUNS:,}; use fewer recipes, seeds or grid values"
        )
    out = Path(out).resolve()
    runs: list[RunSpec] = []
    seen: dict[str, RunSpec] = {}
    duplicates: list[str] = []
    for seed in seeds or [None]:
        for given, path in paths:
            for point in points:
                spec = RunSpec(len(runs), given, str(path), [*sets, *point], seed)
                overrides = spec.overrides + ([f"seed={seed}"] if seed is not None else [])
                try:
                    r = load_recipe(path, overrides)
                except RecipeError as e:
                    spec.status, spec.error = "invalid", _problem(e)
                else:
                    spec.name, spec.run_id = r.name, r.run_id()
                    spec.run_dir = str(out / r.name / spec.run_id)
                    if spec.run_dir in seen:
                        duplicates.append(
                            f"{spec.label} (as {seen[spec.run_dir].recipe} "
                            f"{' '.join(seen[spec.run_dir].overrides)})".rstrip()
                        )
                        continue
                    seen[spec.run_dir] = spec
                runs.append(spec)
    invalid = [r for r in runs if r.status == "invalid"]
    if invalid and len(invalid) == len(runs):
        raise RecipeError(list(dict.fromkeys(r.error for r in invalid)))
    name = label or (Path(paths[0][0]).stem if len(paths) == 1 else f"{Path(paths[0][0]).stem}+{len(paths) - 1}")
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)[:60]
    digest = hashlib.sha256(json.dumps([r.key() for r in runs]).encode()).hexdigest()[:6]
    return Plan(f"{name}-{digest}", out, runs, duplicates)


# ---------------------------------------------------------------- the state of a run folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_state(run_dir: str | Path) -> str:
    """What the run folder says: ``pending`` (nothing there), ``completed``, ``diverged``, ``interrupted``,
    ``failed``, ``running`` (its process holds the run's lock), or ``stale`` (meta.json says running but
    nobody holds the lock: a killed run)."""
    from mixbench.results.lock import RunLock

    path = Path(run_dir)
    if not path.is_dir() or not any(path.iterdir()):
        return "pending"
    meta = _read_json(path / "meta.json")
    status = meta.get("status") or _read_json(path / "summary.json").get("status")
    if status in ("completed", "diverged", "interrupted", "failed"):
        return status
    try:
        RunLock.check_free(path)
    except UserError:
        return "running"
    return "stale"


def top1_of(run_dir: str | Path) -> float | None:
    """The headline top-1 of a completed run (summary.json's ``top1_median``, else its last), or None."""
    s = _read_json(Path(run_dir) / "summary.json")
    value = s.get("top1_median", s.get("top1_last"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def refresh(run: RunSpec) -> None:
    """Set ``run.status`` (and its top-1) from its folder; an invalid point stays invalid."""
    if run.status == "invalid" or run.run_dir is None:
        return
    run.status = run_state(run.run_dir)
    run.top1 = top1_of(run.run_dir) if run.status == "completed" else None
    if run.status == "completed":
        run.error = None


def wants_resume(run: RunSpec) -> bool:
    """Continue the run with ``--resume`` (its folder holds an earlier attempt) rather than start it."""
    return run.status in RESUMABLE


# ---------------------------------------------------------------- the manifest


def load_manifest(path: Path) -> dict[str, Any]:
    """A manifest written by :func:`write_manifest`, or a one-sentence :class:`UserError`."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such sweep manifest") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable sweep manifest ({e})") from None
    if not isinstance(data, dict) or data.get("kind") != MANIFEST_KIND or not isinstance(data.get("runs"), list):
        raise UserError(f"{path}: not a mixbench sweep manifest (kind '{MANIFEST_KIND}' with a list of runs)")
    return data


def merge_history(plan: Plan) -> None:
    """Carry what an earlier invocation recorded (attempts, log, times, job id, last error) into ``plan``."""
    if not plan.manifest_path.is_file():
        return
    try:
        old = {
            json.dumps([r["recipe_path"], r["overrides"], r["seed"]]): r
            for r in load_manifest(plan.manifest_path)["runs"]
            if isinstance(r, dict)
        }
    except (UserError, KeyError, TypeError):
        return  # an unreadable old manifest is replaced, never trusted
    for run in plan.runs:
        prev = old.get(run.key())
        if prev is None:
            continue
        for name in ("attempts", "log", "started", "ended", "exit_code", "job_id"):
            if prev.get(name) is not None:
                setattr(run, name, prev[name])
        if run.status != "invalid" and prev.get("error"):
            run.error = prev["error"]


def write_manifest(plan: Plan, **fields: Any) -> None:
    """Write ``plan``'s manifest atomically (a reader sees the old file or the whole new one)."""
    from mixbench.results.atomic import atomic_write_json

    counts: dict[str, int] = {}
    for run in plan.runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    doc = {
        "kind": MANIFEST_KIND,
        "version": MANIFEST_VERSION,
        "sweep_id": plan.sweep_id,
        "suite": plan.suite,
        "out": str(plan.out),
        "cwd": os.getcwd(),
        "python": sys.executable,
        "updated": utc_now(),
        **fields,
        "counts": counts,
        "runs": [asdict(r) for r in plan.runs],
    }
    atomic_write_json(plan.manifest_path, doc)


def spec_from_manifest(data: dict[str, Any], index: int, where: Path) -> RunSpec:
    """Entry ``index`` of a loaded manifest as a :class:`RunSpec`."""
    runs = data["runs"]
    if not 0 <= index < len(runs):
        raise UserError(f"{where}: run index {index} is out of range; valid: 0..{len(runs) - 1}")
    known = set(RunSpec.__dataclass_fields__)
    return RunSpec(**{k: v for k, v in runs[index].items() if k in known})
