"""``mixbench compare``: every run's summary.json -> one table per (dataset, backbone, epochs).

One row per configuration (method, loss and the recipe's config hash: runs differing only in the
seed share a row), labelled by the method, ``+ loss`` when the loss is not plain CE, and the
recipe name when two rows would otherwise look alike. Per row: completed runs n; top-1 = median
of the last 10 evaluated epochs, as mean ± sample std over runs (± 0.00 for a single run); best
and last top-1 (means); Δ to ``vanilla`` in the same group; the momentum encoder's top-1 for
AutoMix/SAMix (its own column, never folded into top-1); wall time and images/s (means). Runs
that did not complete are never averaged in: their counts appear in the ``other`` column (e.g. ``1 interrupted``).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from mixbench.errors import UserError

FORMATS = ("table", "markdown", "csv", "json", "latex")
REFERENCE_CSV = Path(__file__).with_name("reference_cifar.csv")
COLUMNS = ["method", "n", "top1", "top1_std", "delta", "best", "last", "momentum_top1", "wall_min",
           "images_per_s", "mixer_ms", "other"]


@dataclass
class Group:
    dataset: str
    backbone: str
    epochs: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    labels: int | None = None  # semi-supervised: labelled images; None = every label

    @property
    def title(self) -> str:
        labelled = f" · {self.labels} labels" if self.labels is not None else ""
        return f"{self.dataset} · {self.backbone} · {self.epochs} epochs{labelled}"


def collect_runs(dirs: list[Path]) -> pd.DataFrame:
    """One row per summary.json below ``dirs``; unreadable files become rows with that status."""
    rows = []
    missing = [str(d) for d in dirs if not Path(d).is_dir()]
    if missing:
        raise UserError(f"compare: no such folder: {', '.join(missing)}")
    for d in dirs:
        for path in sorted(Path(d).rglob("summary.json")):
            try:
                s = json.loads(path.read_text())
                if not isinstance(s, dict) or "method" not in s:
                    raise ValueError("not a mixbench summary")
            except (OSError, ValueError):
                s = {"status": "unreadable", "method": path.parent.parent.name}
            s["path"] = str(path.parent)
            rows.append(s)
    if not rows:
        raise UserError(f"compare: no summary.json found below {', '.join(map(str, dirs))}; "
                        "run `mixbench run RECIPE` first")
    df = pd.DataFrame(rows)
    for col in ("dataset", "backbone", "epochs", "top1_median_last10", "top1_best", "top1_last",
                "wall_time_s", "images_per_s", "mixer_ms_per_step", "momentum_top1_median_last10", "loss",
                "run_id", "name", "labels"):
        if col not in df:
            df[col] = None
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
    done = runs[runs["status"] == "completed"]
    others = runs[runs["status"] != "completed"]["status"].value_counts()
    top1 = pd.to_numeric(done["top1_median_last10"], errors="coerce").dropna()
    wall = _mean(done["wall_time_s"])
    return {
        "method": method, "n": int(len(done)),
        "top1": float(top1.mean()) if len(top1) else None,
        "top1_std": float(top1.std(ddof=1)) if len(top1) > 1 else (0.0 if len(top1) else None),
        "delta": None, "best": _mean(done["top1_best"]), "last": _mean(done["top1_last"]),
        "momentum_top1": _mean(done["momentum_top1_median_last10"]),
        "wall_min": wall / 60 if wall is not None else None,
        "images_per_s": _mean(done["images_per_s"]), "mixer_ms": _mean(done["mixer_ms_per_step"]),
        "other": ", ".join(f"{n} {status}" for status, n in others.items()),
    }


def leaderboard(runs: pd.DataFrame, *, include_reference: bool = False) -> list[Group]:
    """Group runs by (dataset, backbone, epochs) and build one row per method."""
    groups: list[Group] = []
    runs = runs.copy()
    runs["epochs"] = pd.to_numeric(runs["epochs"], errors="coerce").fillna(0).astype(int)
    runs[["dataset", "backbone"]] = runs[["dataset", "backbone"]].fillna("?")
    runs["labels"] = pd.to_numeric(runs["labels"], errors="coerce").fillna(-1).astype(int)  # -1: all labels
    for (dataset, backbone, epochs, labels), g in runs.groupby(["dataset", "backbone", "epochs", "labels"],
                                                              sort=True):
        group = Group(dataset, backbone, int(epochs), labels=None if labels < 0 else int(labels))
        configs = [r for _, r in g.groupby("row_key", sort=True)]
        group.rows = [_method_row(r["label"].iloc[0], r) for r in configs]
        labels = [r["method"] for r in group.rows]
        for row, r in zip(group.rows, configs, strict=True):
            if labels.count(row["method"]) > 1:  # same label, other settings: name the recipe
                row["method"] += f" [{r['name'].iloc[0] or r['row_key'].iloc[0].split('|')[-1]}]"
        base = next((r["top1"] for r in group.rows if r["method"] == "vanilla"), None)
        for r in group.rows:
            if base is not None and r["top1"] is not None:
                r["delta"] = r["top1"] - base
        if include_reference and group.labels is None:
            group.rows += reference_rows(dataset, backbone, int(epochs))
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


def _display(row: dict[str, Any]) -> list[str]:
    top1 = "" if row["top1"] is None else (
        f"{row['top1']:.2f}" + (f" ± {row['top1_std']:.2f}" if row["top1_std"] is not None else ""))
    delta = "" if row["delta"] is None else f"{row['delta']:+.2f}"
    return [row["method"], str(row["n"]), top1, delta, _fmt(row["best"]), _fmt(row["last"]),
            _fmt(row.get("momentum_top1")), _fmt(row["wall_min"], 1), _fmt(row["images_per_s"], 0),
            _fmt(row["mixer_ms"], 2), row["other"]]


HEADERS = ["method", "n", "top-1 (med. last 10)", "Δ vanilla", "best", "last", "momentum enc. top-1",
           "wall (min)", "img/s", "mixer ms/step", "other runs"]


def render(groups: list[Group], fmt: str) -> str:
    """The leaderboard as table (terminal), markdown, csv, json or latex."""
    if fmt not in FORMATS:
        raise UserError(f"compare: unknown format '{fmt}'; valid: {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps([{"dataset": g.dataset, "backbone": g.backbone, "epochs": g.epochs, "labels": g.labels,
                            "rows": g.rows} for g in groups], indent=2)
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
        rows, headers = [_display(r) for r in g.rows], list(HEADERS)
        if not any(r[momentum_col] for r in rows):  # only learned-mixer runs have a momentum encoder
            rows, headers = [r[:momentum_col] + r[momentum_col + 1:] for r in rows], headers[:momentum_col] + \
                headers[momentum_col + 1:]
        table = tabulate(rows, headers=headers, tablefmt=style, disable_numparse=True)
        title = {"markdown": f"### {g.title}\n", "latex": f"% {g.title}\n"}.get(fmt, f"{g.title}\n")
        parts.append(title + table)
    return "\n\n".join(parts)
