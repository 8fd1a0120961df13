"""``mixbench compare``: every run folder -> one table per (dataset, backbone, epochs).

Run folders are found by their summary.json or meta.json (a run still going, or killed before
its first summary, has only the latter). One row per configuration (method, loss and the
recipe's config hash: runs differing only in the seed share a row), labelled by the method,
``+ loss`` when the loss is not plain CE, and the recipe name when two rows would otherwise look
alike. Per row: completed runs n; top-1 as mean ± sample std over runs (± 0.00 for a single
run); best and last top-1 (means); Δ to ``vanilla`` in the same group; the momentum encoder's
top-1 for AutoMix/SAMix (its own column, never folded into top-1); wall time and images/s (means).

Stored evaluations add columns (means over the row's runs, like best/last): ``linear`` (the linear
probe's ``linear_top1``), ``knn`` (``knn_top1``) and ``ece`` (summary.json's ``ece``, else the
calibration result's), each only in groups where some row has a value, so tables without evaluations
look as before. Of several results of one evaluator in a run the most recent counts; when the runs
averaged in one row used different protocols for an evaluator, a note under the table says so (and
the row's ``protocols_differ`` names the evaluators, in csv and json too).

Headline top-1 = the median of the last N evaluated epochs, N from the schedule: the last 10
evaluated epochs for runs of 200 or more epochs (OpenMixup's rule), otherwise the last 5 % of
the evaluated epochs, rounded up, at least 1 (6 epochs -> 1, 100 -> 5, 199 -> 10); N is at most
the number of evaluated epochs. The column header names the real N (``top-1 (median of last 1)``),
and each row's ``median_window`` holds it (see ``mixbench.results.inspect``).

Nothing suspicious is averaged in silently: every run folder that is skipped or has a problem
gets one ``warning: <run folder>: ...`` line on stderr (truncated metrics.jsonl, missing
checkpoint.pt, NaN / inf / negative / wrong-typed values, which are left out of every mean;
wrong-typed dataset, backbone, method or epochs, which leave the run out). Runs that did not
complete are never averaged in: their counts appear in the ``other`` column (``1 interrupted``,
``1 running``, ``1 stale`` for a run whose process is gone, ``1 invalid`` for a completed run with
no usable top-1, ``1 unreadable``).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from mixbench.errors import UserError
from mixbench.results.inspect import EVAL_COLUMNS, LONG_RUN_EPOCHS, LONG_RUN_WINDOW, inspect_run

FORMATS = ("table", "markdown", "csv", "json", "latex")
REFERENCE_CSV = Path(__file__).with_name("reference_cifar.csv")
COLUMNS = ["method", "n", "top1", "top1_std", "median_window", "delta", "best", "last", "momentum_top1", "wall_min",
           "images_per_s", "mixer_ms", "other"]


@dataclass
class Group:
    dataset: str
    backbone: str
    epochs: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    labels: int | None = None  # semi-supervised: labelled images; None = every label
    windows: list[int] = field(default_factory=list)  # median windows of the averaged runs
    notes: list[str] = field(default_factory=list)  # lines under the table (protocols that differ)

    @property
    def title(self) -> str:
        labelled = f" · {self.labels} labels" if self.labels is not None else ""
        return f"{self.dataset} · {self.backbone} · {self.epochs} epochs{labelled}"


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def find_runs(dirs: list[Path]) -> list[Path]:
    """Every run folder below ``dirs``: one holding a summary.json or a meta.json.

    Hidden folders are skipped: an ``--overwrite`` stages its new run in ``.<name>.<run id>.staging``
    until its first checkpoint, and the run it replaces waits there a moment during the swap.
    """
    missing = [str(d) for d in dirs if not Path(d).is_dir()]
    if missing:
        raise UserError(f"compare: no such folder: {', '.join(missing)}")
    found: dict[Path, Path] = {}
    for d in dirs:
        for name in ("summary.json", "meta.json"):
            for path in Path(d).rglob(name):
                if not any(part.startswith(".") for part in path.relative_to(d).parts):
                    found.setdefault(path.parent.resolve(), path.parent)
    return sorted(found.values())


def collect_runs(dirs: list[Path], *, warn: Callable[[str], None] | None = _stderr) -> pd.DataFrame:
    """One row per run folder below ``dirs``, each checked by ``inspect_run``.

    Every folder with a problem gives one warning line to ``warn`` (stderr by default); bad values
    are blanked, runs with wrong-typed identity fields left out, unfinished runs kept with their status.
    """
    folders = find_runs(dirs)
    if not folders:
        raise UserError(f"compare: no summary.json or meta.json found below {', '.join(map(str, dirs))}; "
                        "run `mixbench run RECIPE` first")
    rows = []
    for folder in folders:
        rec = inspect_run(folder)
        if warn is not None and rec.warning():
            warn(rec.warning())
        if not rec.skip:
            rows.append(rec.row)
    if not rows:
        raise UserError(f"compare: none of the {len(folders)} run folders below {', '.join(map(str, dirs))} "
                        "can be used (see the warnings above)")
    df = pd.DataFrame(rows)
    for col in ("method", "status", "dataset", "backbone", "epochs", "top1", "median_window", "top1_best",
                "top1_last", "wall_time_s", "images_per_s", "mixer_ms_per_step", "momentum_top1", "loss",
                "run_id", "name", "labels",
                *(c for _, key in EVAL_COLUMNS.values() for c in (key, f"{key}_protocol"))):
        if col not in df:
            df[col] = None
    df["method"] = df["method"].fillna("?")
    loss = df["loss"].where(df["loss"].notna() & (df["loss"] != "ce"), "")
    df["label"] = df["method"].astype(str) + loss.map(lambda v: f" + {v}" if v else "")
    config = df["run_id"].map(lambda r: str(r).split("-", 1)[-1] if isinstance(r, str) else "")
    df["row_key"] = df["label"] + "|" + config
    return df


def _mean(s: pd.Series) -> float | None:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.mean()) if len(s) else None


def _method_row(method: str, runs: pd.DataFrame) -> dict[str, Any]:
    """One leaderboard row from the runs of one configuration."""
    done = runs[runs["status"] == "completed"]  # inspect_run marks completed runs without a usable top-1 invalid
    others = runs[runs["status"] != "completed"]["status"].value_counts()
    top1 = pd.to_numeric(done["top1"], errors="coerce").dropna()
    windows = sorted({int(w) for w in pd.to_numeric(done["median_window"], errors="coerce").dropna()})
    wall = _mean(done["wall_time_s"])
    return {
        "method": method, "n": int(len(done)),
        "top1": float(top1.mean()) if len(top1) else None,
        "top1_std": float(top1.std(ddof=1)) if len(top1) > 1 else (0.0 if len(top1) else None),
        "median_window": (windows[0] if len(windows) == 1 else f"{windows[0]}-{windows[-1]}") if windows else None,
        "delta": None, "best": _mean(done["top1_best"]), "last": _mean(done["top1_last"]),
        "momentum_top1": _mean(done["momentum_top1"]),
        "wall_min": wall / 60 if wall is not None else None,
        "images_per_s": _mean(done["images_per_s"]), "mixer_ms": _mean(done["mixer_ms_per_step"]),
        "other": ", ".join(f"{n} {status}" for status, n in sorted(others.items(), key=lambda kv: (-kv[1], kv[0]))),
        **{column: _mean(done[key]) for column, (_, key) in EVAL_COLUMNS.items()},
        "protocols_differ": ", ".join(column for column, (_, key) in EVAL_COLUMNS.items()
                                      if len(_protocols(done, key)) > 1),
    }


def _protocols(done: pd.DataFrame, key: str) -> list[str]:
    """The protocol hashes behind the averaged values of ``key`` (sorted, distinct)."""
    used = done[pd.to_numeric(done[key], errors="coerce").notna()]
    return sorted({str(p) for p in used[f"{key}_protocol"].dropna()})


def _eval_columns(group: Group, configs: list[pd.DataFrame]) -> None:
    """Keep the evaluator columns some row has a value in; note rows whose runs used different protocols."""
    shown = [c for c in EVAL_COLUMNS if any(r[c] is not None for r in group.rows)]
    differ = any(r["protocols_differ"] for r in group.rows)
    for row, runs in zip(group.rows, configs, strict=True):
        for column in EVAL_COLUMNS:
            if column not in shown:
                del row[column]
        if not differ:
            del row["protocols_differ"]
        elif row["protocols_differ"]:
            done = runs[runs["status"] == "completed"]
            for column in row["protocols_differ"].split(", "):
                hashes = _protocols(done, EVAL_COLUMNS[column][1])
                group.notes.append(f"note: {row['method']}: its runs used different {column} protocols "
                                   f"({', '.join(hashes)}); the {column} mean mixes them")


def leaderboard(runs: pd.DataFrame, *, include_reference: bool = False) -> list[Group]:
    """Group runs by (dataset, backbone, epochs) and build one row per method."""
    groups: list[Group] = []
    runs = runs.copy()
    for col in (c for _, key in EVAL_COLUMNS.values() for c in (key, f"{key}_protocol")):
        if col not in runs:  # a frame not from collect_runs
            runs[col] = None
    runs["epochs"] = pd.to_numeric(runs["epochs"], errors="coerce").fillna(0).astype(int)
    runs[["dataset", "backbone"]] = runs[["dataset", "backbone"]].fillna("?")
    runs["labels"] = pd.to_numeric(runs["labels"], errors="coerce").fillna(-1).astype(int)  # -1: all labels
    for (dataset, backbone, epochs, labels), g in runs.groupby(["dataset", "backbone", "epochs", "labels"],
                                                              sort=True):
        group = Group(dataset, backbone, int(epochs), labels=None if labels < 0 else int(labels))
        configs = [r for _, r in g.groupby("row_key", sort=True)]
        group.rows = [_method_row(r["label"].iloc[0], r) for r in configs]
        done = g[g["status"] == "completed"]
        group.windows = sorted({int(w) for w in pd.to_numeric(done["median_window"], errors="coerce").dropna()})
        labels = [r["method"] for r in group.rows]
        for row, r in zip(group.rows, configs, strict=True):
            if labels.count(row["method"]) > 1:  # same label, other settings: name the recipe
                row["method"] += f" [{r['name'].iloc[0] or r['row_key'].iloc[0].split('|')[-1]}]"
        _eval_columns(group, configs)
        base = next((r["top1"] for r in group.rows if r["method"] == "vanilla"), None)
        for r in group.rows:
            if base is not None and r["top1"] is not None:
                r["delta"] = r["top1"] - base
        if include_reference and group.labels is None:
            extra = [k for k in group.rows[0] if k not in COLUMNS] if group.rows else []
            group.rows += [{k: None for k in extra} | r for r in reference_rows(dataset, backbone, int(epochs))]
        group.rows.sort(key=lambda r: (r["method"] != "vanilla" or "published" in r["method"],
                                       -(r["top1"] if r["top1"] is not None else -1)))
        groups.append(group)
    return groups


def reference_rows(dataset: str, backbone: str, epochs: int) -> list[dict[str, Any]]:
    """OpenMixup's published top-1 for this group, as rows marked '(published)'."""
    rows = []
    with open(REFERENCE_CSV, newline="") as f:
        for r in csv.DictReader(f):
            if (r["dataset"], r["backbone"], int(r["epochs"])) == (dataset, backbone, epochs):
                rows.append({c: None for c in COLUMNS} | {
                    "method": f"{r['method']} (published)", "n": 0, "top1": float(r["top1"]),
                    "other": f"OpenMixup, alpha {r['alpha'] or '-'}, {r['note']}"})
    return rows


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _display(row: dict[str, Any], evals: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The row's cells under HEADERS, with the ``evals`` columns (of EVAL_HEADERS) after momentum's."""
    top1 = "" if row["top1"] is None else (
        f"{row['top1']:.2f}" + (f" ± {row['top1_std']:.2f}" if row["top1_std"] is not None else ""))
    delta = "" if row["delta"] is None else f"{row['delta']:+.2f}"
    return [row["method"], str(row["n"]), top1, delta, _fmt(row["best"]), _fmt(row["last"]),
            _fmt(row.get("momentum_top1")), *(_fmt(row.get(c)) for c in evals),
            _fmt(row["wall_min"], 1), _fmt(row["images_per_s"], 0), _fmt(row["mixer_ms"], 2), row["other"]]


HEADERS = ["method", "n", "top-1", "Δ vanilla", "best", "last", "momentum enc. top-1",
           "wall (min)", "img/s", "mixer ms/step", "other runs"]
EVAL_HEADERS = {"linear": "linear top-1", "knn": "knn top-1", "ece": "ece"}  # shown after momentum enc. top-1


def top1_header(windows: list[int]) -> str:
    """'top-1 (median of last N)' with the real N of the averaged runs (a range where they differ)."""
    if not windows:
        return "top-1"
    n = str(windows[0]) if len(windows) == 1 else f"{windows[0]}-{windows[-1]}"
    return f"top-1 (median of last {n})"


def window_note(group: Group) -> str:
    """A line under the table when runs of a 200+ epoch schedule had fewer than 10 evaluated epochs."""
    if group.epochs >= LONG_RUN_EPOCHS and group.windows and group.windows[0] < LONG_RUN_WINDOW:
        return (f"note: top-1 is the median of fewer than the last {LONG_RUN_WINDOW} evaluated epochs: "
                "some runs evaluated less often")
    return ""


def render(groups: list[Group], fmt: str) -> str:
    """The leaderboard as table (terminal), markdown, csv, json or latex."""
    if fmt not in FORMATS:
        raise UserError(f"compare: unknown format '{fmt}'; valid: {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps([{"dataset": g.dataset, "backbone": g.backbone, "epochs": g.epochs, "labels": g.labels,
                            "rows": g.rows} | ({"notes": g.notes} if g.notes else {}) for g in groups], indent=2)
    if fmt == "csv":
        flat = [{"dataset": g.dataset, "backbone": g.backbone, "epochs": g.epochs, "labels": g.labels, **r}
                for g in groups for r in g.rows]
        buf = io.StringIO()
        pd.DataFrame(flat).to_csv(buf, index=False)
        return buf.getvalue()
    style = {"table": "simple", "markdown": "github", "latex": "latex_booktabs"}[fmt]
    parts = []
    momentum_col = HEADERS.index("momentum enc. top-1")
    for g in groups:
        evals = [c for c in EVAL_HEADERS if any(c in r for r in g.rows)]
        rows = [_display(r, evals) for r in g.rows]
        headers = HEADERS[:momentum_col + 1] + [EVAL_HEADERS[c] for c in evals] + HEADERS[momentum_col + 1:]
        headers[2] = top1_header(g.windows)
        if not any(r[momentum_col] for r in rows):  # only learned-mixer runs have a momentum encoder
            rows, headers = [r[:momentum_col] + r[momentum_col + 1:] for r in rows], headers[:momentum_col] + \
                headers[momentum_col + 1:]
        table = tabulate(rows, headers=headers, tablefmt=style, disable_numparse=True)
        title = {"markdown": f"### {g.title}\n", "latex": f"% {g.title}\n"}.get(fmt, f"{g.title}\n")
        for note in [window_note(g), *g.notes]:
            if note:
                table += {"markdown": f"\n\n{note}", "latex": f"\n% {note}"}.get(fmt, f"\n{note}")
        parts.append(title + table)
    return "\n\n".join(parts)
