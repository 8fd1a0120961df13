"""``mixbench compare``: every run folder -> one table per (dataset, backbone, epochs).

Run folders are found by their summary.json or meta.json (a run still going, or killed before
its first summary, has only the latter). One row per configuration (method, loss and the
recipe's config hash: runs differing only in the seed share a row), labelled by the method,
``+ loss`` when the loss is not plain CE, and the recipe name when two rows would otherwise look
alike. Per row: completed runs n; top-1 as mean ± sample std over runs (± 0.00 for a single
run); best and last top-1 (means); Δ to ``vanilla`` in the same group; the momentum encoder's
top-1 for AutoMix/SAMix (its own column, never folded into top-1); wall time and images/s (means).

Stored evaluations add columns (means over the row's runs, like best/last), in this order:
``linear`` (the linear probe's ``linear_top1``), ``knn`` (``knn_top1``), ``transfer:<data>`` (the
transfer evaluator's ``transfer_top1`` on target data set ``<data>``, one column per target; its
mode, linear or finetune, in a note under the table), ``ece`` (summary.json's ``ece``, else the
calibration result's), ``mca`` (mean corruption accuracy), ``occlusion`` (area under the occlusion
curve) and ``fgsm`` (top-1 under FGSM), each only in groups where some row has a value, so tables
without evaluations look as before. Of several results of one evaluator in a run the most recent
counts; when the runs averaged in one row used different protocols for an evaluator, a note under
the table says so (and the row's ``protocols_differ`` names the evaluators, in csv and json too).

Ranking and statistics (``--metric``, default ``top1``; any evaluator column above is valid). Rows
are sorted by the metric's mean, vanilla first, best next (``ece`` ascending: lower is better;
rows without a value last). For the metric, over the seeds of a row: mean ± sample std, the n
values behind it, a two-sided 95 % Student-t interval ``mean ± t(0.975, n-1)·std/√n`` (``ci_low``,
``ci_high``; n >= 2) and Welch's two-sided t-test against the group's ``vanilla`` row
(``p_vanilla``; both rows n >= 2; ``scipy.stats.ttest_ind(equal_var=False)``). ``delta`` is the
metric's difference to vanilla. For a metric other than top-1 the row also holds ``<metric>_std``
and ``<metric>_n`` (evaluations may exist for fewer runs than the row averages); csv and json name
the metric of a group in ``metric``.

``render_pivot`` lays the groups out as OpenMixup's papers do: methods down, one column per group
(data set · backbone · epochs), each cell the metric's mean (± std where n >= 2), the best measured
value of each column in bold (``**x**`` in Markdown, ``\textbf{x}`` in LaTeX, ``x *`` in a
terminal table). Published reference rows (``--reference``) are rows of their own under the
method they belong to, never bold.

Where a method differs from its reference implementation (its ``differs`` text, recorded in summary.json,
else the registry's current text for runs written before that, see ``mixbench.results.differs``), its row's
method carries a dagger and the table a footnote with each distinct text once (``†``; ``†1``, ``†2``, ... when
there are several); csv and json hold the texts in ``differs`` and their source in ``differs_from``. Groups
where no row differs keep their columns as before. With ``--reference``, each row whose method has one
published value of the ranked metric for the group's data set, backbone and epochs gets ``published`` and
``delta_published`` (ours − published), shown as ``published`` and ``Δ published`` right after the metric, so
a gap reads at once against the footnote that explains it; the ``(published)`` rows stay as before.

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
import html
import io
import json
import math
import re
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from mixbench.errors import UserError
from mixbench.results.differs import by_label, footnotes, row_differs
from mixbench.results.inspect import (
    EVAL_COLUMNS,
    LONG_RUN_EPOCHS,
    LONG_RUN_WINDOW,
    TRANSFER_PREFIX,
    inspect_run,
    mode_key,
    protocol_key,
)

FORMATS = ("table", "markdown", "csv", "json", "latex", "html")
PIVOT_FORMATS = ("table", "markdown", "latex")
REFERENCE_CSV = Path(__file__).with_name("reference_cifar.csv")
REFERENCE_SSL_CSV = Path(__file__).with_name("reference_ssl.csv")  # solo-learn and lightly, with their protocol
COLUMNS = ["method", "n", "top1", "top1_std", "median_window", "ci_low", "ci_high", "p_vanilla", "delta", "best",
           "last", "momentum_top1", "wall_min", "images_per_s", "mixer_ms", "other"]
METRICS = ("top1", "linear", "knn", "ece", "mca", "occlusion", "fgsm")  # and transfer:<data>
LOWER_IS_BETTER = frozenset({"ece"})
EVAL_ORDER = ("linear", "knn", TRANSFER_PREFIX, "ece", "mca", "occlusion", "fgsm")  # column order in tables
EVAL_HEADERS = {"linear": "linear top-1", "knn": "knn top-1", "ece": "ece", "mca": "mCA",
                "occlusion": "occlusion area", "fgsm": "FGSM top-1"}  # transfer:<data> is its own header
CONFIDENCE = 0.95
PUBLISHED = " (published)"


@dataclass
class Group:
    dataset: str
    backbone: str
    epochs: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    labels: int | None = None  # semi-supervised: labelled images; None = every label
    windows: list[int] = field(default_factory=list)  # median windows of the averaged runs
    notes: list[str] = field(default_factory=list)  # lines under the table (protocols that differ, modes)
    metric: str = "top1"  # the ranking column; ci/p/delta are of it
    evals: list[str] = field(default_factory=list)  # evaluator columns shown (some row has a value)

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
                "run_id", "name", "labels", "differs", "differs_from",
                *(c for _, key in EVAL_COLUMNS.values() for c in (key, protocol_key(key)))):
        if col not in df:
            df[col] = None
    df["method"] = df["method"].fillna("?")
    loss = df["loss"].where(df["loss"].notna() & (df["loss"] != "ce"), "")
    df["label"] = df["method"].astype(str) + loss.map(lambda v: f" + {v}" if v else "")
    config = df["run_id"].map(lambda r: str(r).split("-", 1)[-1] if isinstance(r, str) else "")
    df["row_key"] = df["label"] + "|" + config
    return df


def check_metric(name: str) -> str:
    """The canonical name of a ``--metric`` (case-insensitive; ``top-1`` is ``top1``), or a UserError."""
    text = name.strip()
    fixed = {"top-1": "top1"}.get(text.lower(), text.lower())
    if fixed in METRICS:
        return fixed
    if text.lower().startswith(TRANSFER_PREFIX) and text[len(TRANSFER_PREFIX):].strip():
        return TRANSFER_PREFIX + text[len(TRANSFER_PREFIX):].strip()
    raise UserError(f"compare: unknown metric '{name}'; valid: {', '.join(METRICS)}, "
                    f"{TRANSFER_PREFIX}<target data set> (e.g. {TRANSFER_PREFIX}tiny-imagenet)")


def eval_columns(columns: Iterable[str]) -> dict[str, str]:
    """Leaderboard evaluator column -> the run frame's key, in table order, for a frame with ``columns``.

    The fixed evaluators always; one ``transfer:<data>`` per target data set some run has a result for.
    """
    transfer = sorted(c for c in columns if isinstance(c, str) and c.startswith(TRANSFER_PREFIX))
    out: dict[str, str] = {}
    for column in EVAL_ORDER:
        if column == TRANSFER_PREFIX:
            out |= {c: c for c in transfer}
        else:
            out[column] = EVAL_COLUMNS[column][1]
    return out


def _mean(s: pd.Series) -> float | None:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.mean()) if len(s) else None


def _values(done: pd.DataFrame, key: str) -> list[float]:
    """The usable values of ``key`` over the completed runs ``done`` (bad ones were blanked by inspect_run)."""
    if key not in done:
        return []
    return [float(v) for v in pd.to_numeric(done[key], errors="coerce").dropna()]


def _metric_key(metric: str, evals: dict[str, str]) -> str:
    """The run frame's key behind a leaderboard metric."""
    return "top1" if metric == "top1" else evals[metric]


def _method_row(method: str, runs: pd.DataFrame, evals: dict[str, str]) -> dict[str, Any]:
    """One leaderboard row from the runs of one configuration (ci/p/delta are filled in by ``leaderboard``)."""
    done = runs[runs["status"] == "completed"]  # inspect_run marks completed runs without a usable top-1 invalid
    others = runs[runs["status"] != "completed"]["status"].value_counts()
    top1 = _values(done, "top1")
    windows = sorted({int(w) for w in pd.to_numeric(done["median_window"], errors="coerce").dropna()})
    wall = _mean(done["wall_time_s"])
    differs, differs_from = row_differs(*(list(done[k]) if k in done else [None] * len(done)
                                          for k in ("differs", "differs_from")))
    return {
        "method": method, "n": int(len(done)),
        "top1": sum(top1) / len(top1) if top1 else None,
        "top1_std": float(pd.Series(top1).std(ddof=1)) if len(top1) > 1 else (0.0 if top1 else None),
        "median_window": (windows[0] if len(windows) == 1 else f"{windows[0]}-{windows[-1]}") if windows else None,
        "ci_low": None, "ci_high": None, "p_vanilla": None,
        "delta": None, "best": _mean(done["top1_best"]), "last": _mean(done["top1_last"]),
        "momentum_top1": _mean(done["momentum_top1"]),
        **{column: _mean(done[key]) if key in done else None for column, key in evals.items()},
        "wall_min": wall / 60 if wall is not None else None,
        "images_per_s": _mean(done["images_per_s"]), "mixer_ms": _mean(done["mixer_ms_per_step"]),
        "other": ", ".join(f"{n} {status}" for status, n in sorted(others.items(), key=lambda kv: (-kv[1], kv[0]))),
        "protocols_differ": ", ".join(column for column, key in evals.items() if len(_protocols(done, key)) > 1),
        "differs": differs, "differs_from": differs_from,
    }


def _protocols(done: pd.DataFrame, key: str) -> list[str]:
    """The protocol hashes behind the averaged values of ``key`` (sorted, distinct)."""
    if key not in done or protocol_key(key) not in done:
        return []
    used = done[pd.to_numeric(done[key], errors="coerce").notna()]
    return sorted({str(p) for p in used[protocol_key(key)].dropna()})


def _eval_columns(group: Group, configs: list[pd.DataFrame], evals: dict[str, str]) -> None:
    """Keep the evaluator columns some row has a value in; note transfer modes and rows whose runs used
    different protocols."""
    shown = group.evals = [c for c in evals if any(r[c] is not None for r in group.rows)]
    differ = any(r["protocols_differ"] for r in group.rows)
    for column in (c for c in shown if c.startswith(TRANSFER_PREFIX)):
        group.notes.append(_mode_note(column, group.rows, configs))
    for row, runs in zip(group.rows, configs, strict=True):
        for column in evals:
            if column not in shown:
                del row[column]
        if not differ:
            del row["protocols_differ"]
        elif row["protocols_differ"]:
            done = runs[runs["status"] == "completed"]
            for column in row["protocols_differ"].split(", "):
                hashes = _protocols(done, evals[column])
                group.notes.append(f"note: {row['method']}: its runs used different {column} protocols "
                                   f"({', '.join(hashes)}); the {column} mean mixes them")


def _mode_note(column: str, rows: list[dict[str, Any]], configs: list[pd.DataFrame]) -> str:
    """'note: transfer:<data>: transfer_top1 on <data>, mode linear' (per mode the rows, where modes differ)."""
    by_mode: dict[str, list[str]] = {}
    for row, runs in zip(rows, configs, strict=True):
        done = runs[runs["status"] == "completed"]
        if mode_key(column) not in done:
            continue
        used = done[pd.to_numeric(done[column], errors="coerce").notna()]
        for mode in sorted({str(m) for m in used[mode_key(column)].dropna()}):
            by_mode.setdefault(mode, []).append(row["method"])
    data = column[len(TRANSFER_PREFIX):]
    if len(by_mode) == 1:
        return f"note: {column}: transfer_top1 on {data}, mode {next(iter(by_mode))}"
    modes = "; ".join(f"{mode} ({', '.join(methods)})" for mode, methods in sorted(by_mode.items()))
    return f"note: {column}: transfer_top1 on {data}, modes differ: {modes}"


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The two-sided Student-t interval of the mean of ``values``: mean ± t((1+c)/2, n-1)·std/√n; None if n < 2."""
    n = len(values)
    if n < 2:
        return None
    from scipy import stats  # imported here: compare without seeds to average stays light

    mean = sum(values) / n
    std = float(pd.Series(values).std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p of Welch's t-test (unequal variances) of ``a`` against ``b``; None unless both n >= 2 and
    the test is defined (both samples constant and equal give no p)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    with warnings.catch_warnings():  # near-constant samples: scipy warns about precision on stderr
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return p if math.isfinite(p) else None


def _rank_stats(group: Group, configs: list[pd.DataFrame], key: str) -> None:
    """Fill in each row's std, n (other metrics than top-1), 95 % interval, Welch p and Δ of the group's metric."""
    metric = group.metric
    values = [_values(runs[runs["status"] == "completed"], key) for runs in configs]
    base = next((i for i, r in enumerate(group.rows) if r["method"] == "vanilla"), None)
    for i, (row, vals) in enumerate(zip(group.rows, values, strict=True)):
        if metric != "top1":
            row[f"{metric}_std"] = float(pd.Series(vals).std(ddof=1)) if len(vals) > 1 else (0.0 if vals else None)
            row[f"{metric}_n"] = len(vals)
        ci = t_interval(vals)
        row["ci_low"], row["ci_high"] = ci if ci else (None, None)
        if base is not None and i != base:
            row["p_vanilla"] = welch_p(vals, values[base])
        mean, base_mean = row.get(metric), None if base is None else group.rows[base].get(metric)
        if mean is not None and base_mean is not None:
            row["delta"] = mean - base_mean


def _rank_key(metric: str) -> Callable[[dict[str, Any]], tuple]:
    """Sort key: vanilla first, then by the metric (best first), rows without it last, ties by top-1."""
    sign = 1 if metric in LOWER_IS_BETTER else -1

    def key(r: dict[str, Any]) -> tuple:
        v, top1 = r.get(metric), r.get("top1")
        return (r["method"] != "vanilla", v is None, sign * v if v is not None else 0.0,
                -(top1 if top1 is not None else -1))

    return key


def leaderboard(runs: pd.DataFrame, *, include_reference: bool = False, metric: str = "top1") -> list[Group]:
    """Group runs by (dataset, backbone, epochs, labels), build one row per configuration, rank by ``metric``.

    An unknown ``metric``, or one no completed run has a value for, is a UserError naming what is valid.
    """
    metric = check_metric(metric)
    groups: list[Group] = []
    runs = runs.copy()
    evals = eval_columns(runs.columns)
    for key in evals.values():
        for col in (key, protocol_key(key)):
            if col not in runs:  # a frame not from collect_runs
                runs[col] = None
    if metric != "top1":
        _check_has_values(runs, metric, evals)
    runs["epochs"] = pd.to_numeric(runs["epochs"], errors="coerce").fillna(0).astype(int)
    runs[["dataset", "backbone"]] = runs[["dataset", "backbone"]].fillna("?")
    runs["labels"] = pd.to_numeric(runs["labels"], errors="coerce").fillna(-1).astype(int)  # -1: all labels
    for (dataset, backbone, epochs, labels), g in runs.groupby(["dataset", "backbone", "epochs", "labels"],
                                                              sort=True):
        group = Group(dataset, backbone, int(epochs), labels=None if labels < 0 else int(labels), metric=metric)
        configs = [r for _, r in g.groupby("row_key", sort=True)]
        group.rows = [_method_row(r["label"].iloc[0], r, evals) for r in configs]
        done = g[g["status"] == "completed"]
        group.windows = sorted({int(w) for w in pd.to_numeric(done["median_window"], errors="coerce").dropna()})
        labels = [r["method"] for r in group.rows]
        for row, r in zip(group.rows, configs, strict=True):
            if labels.count(row["method"]) > 1:  # same label, other settings: name the recipe
                row["method"] += f" [{r['name'].iloc[0] or r['row_key'].iloc[0].split('|')[-1]}]"
        _eval_columns(group, configs, evals)
        if not any(r["differs"] for r in group.rows):  # no row differs from its reference: no columns for it
            for row in group.rows:
                del row["differs"], row["differs_from"]
        if metric != "top1" and all(r.get(metric) is None for r in group.rows):
            group.metric = "top1"  # nothing to rank by here: say so, and give top-1 its statistics
            group.notes.append(f"note: no run in this table has {metric}; rows are ranked by top-1")
        _rank_stats(group, configs, _metric_key(group.metric, evals))
        if include_reference and group.labels is None:
            ssl = [self_supervised_run(r.get("path"), r.get("method")) for _, r in g.iterrows()]
            _published_columns(group, configs, supervised=not all(ssl), self_supervised=any(ssl))
            extra = [k for k in group.rows[0] if k not in COLUMNS] if group.rows else []
            published = reference_rows(dataset, backbone, int(epochs), supervised=not all(ssl),
                                       self_supervised=any(ssl))
            group.rows += [{k: None for k in extra} | r for r in published]
            shown = set(group.evals) | {c for r in published for c in evals if r.get(c) is not None}
            group.evals = [c for c in evals if c in shown]  # e.g. lightly's kNN rows bring the knn column
        group.rows.sort(key=_rank_key(group.metric))
        groups.append(group)
    return groups


def _published_columns(group: Group, configs: list[pd.DataFrame], *, supervised: bool,
                       self_supervised: bool) -> None:
    """``published`` and ``delta_published`` (our mean − published) of each row whose method has exactly one
    published value of the group's metric for this data set, backbone and epochs; none where no row has one.
    Where a method has several (lightly's kNN at two batch sizes), a note points to its published rows."""
    table = [r for r in published_values(supervised=supervised, self_supervised=self_supervised)
             if (r["dataset"], r["backbone"], r["epochs"], r["metric"])
             == (group.dataset, group.backbone, group.epochs, group.metric)]
    for row, runs in zip(group.rows, configs, strict=True):
        method = runs["method"].iloc[0]
        values = sorted({r["value"] for r in table if r["method"] == method})
        value = values[0] if len(values) == 1 else None
        mean = row.get(group.metric)
        row["published"] = value
        row["delta_published"] = mean - value if value is not None and mean is not None else None
        if len(values) > 1:
            group.notes.append(f"note: {row['method']}: {len(values)} published {group.metric} values here "
                               f"({', '.join(f'{v:.2f}' for v in values)}); see its (published) rows")
    if all(r["published"] is None for r in group.rows):
        for row in group.rows:
            del row["published"], row["delta_published"]


def published_values(*, supervised: bool = True, self_supervised: bool = False) -> list[dict[str, Any]]:
    """Every published number as ``{dataset, backbone, epochs, method, metric, value}``: OpenMixup's top-1
    (``supervised``), solo-learn's and lightly's rows with their metric (``self_supervised``)."""
    out = []
    if supervised:
        with open(REFERENCE_CSV, newline="") as f:
            out += [{"dataset": r["dataset"], "backbone": r["backbone"], "epochs": int(r["epochs"]),
                     "method": r["method"], "metric": "top1", "value": float(r["top1"])} for r in csv.DictReader(f)]
    if self_supervised:
        out += [{"dataset": r["dataset"], "backbone": r["backbone"], "epochs": int(r["epochs"]), "method": r["method"],
                 "metric": r["metric"], "value": float(r["value"])} for r in _ssl_reference()]
    return out


def _check_has_values(runs: pd.DataFrame, metric: str, evals: dict[str, str]) -> None:
    """A UserError when no completed run has a value of ``metric`` to rank by, naming the metrics that have."""
    done = runs[runs["status"] == "completed"]
    having = ["top1"] + [c for c, key in evals.items() if _values(done, key)]
    if metric not in having:
        raise UserError(f"compare: no completed run has a {metric} result to rank by; "
                        f"metrics with values here: {', '.join(having)}")


def reference_rows(dataset: str, backbone: str, epochs: int, *, supervised: bool = True,
                   self_supervised: bool = False) -> list[dict[str, Any]]:
    """Published numbers for this group, as rows marked '(published)': OpenMixup's supervised top-1
    (``supervised``) and the self-supervised rows of solo-learn and lightly (``self_supervised``).

    A self-supervised row names its protocol in the label, ``byol [kNN k=200 T=0.1, batch 128] (published)``,
    and holds its value in that protocol's column: solo-learn's online linear top-1 under ``top1`` (what a
    self-supervised run reports as its top-1), lightly's kNN top-1 under ``knn`` (the ``mixbench knn`` column).
    """
    rows = []
    if supervised:
        with open(REFERENCE_CSV, newline="") as f:
            for r in csv.DictReader(f):
                if (r["dataset"], r["backbone"], int(r["epochs"])) == (dataset, backbone, epochs):
                    rows.append({c: None for c in COLUMNS} | {
                        "method": f"{r['method']} (published)", "n": 0, "top1": float(r["top1"]),
                        "other": f"OpenMixup, alpha {r['alpha'] or '-'}, {r['note']}"})
    if self_supervised:
        for r in _ssl_reference():
            if (r["dataset"], r["backbone"], int(r["epochs"])) == (dataset, backbone, epochs):
                rows.append({c: None for c in COLUMNS} | {
                    "method": f"{r['method']} [{r['protocol']}, batch {r['batch']}]{PUBLISHED}", "n": 0,
                    r["metric"]: float(r["value"]), "other": f"{r['source']}, {r['note']}"})
    return rows


def _ssl_reference() -> list[dict[str, str]]:
    with open(REFERENCE_SSL_CSV, newline="") as f:
        return list(csv.DictReader(f))


def self_supervised_run(path: Any, method: Any) -> bool:
    """Whether a run is self-supervised: its summary's ``method_settings`` name the protocol of its top-1
    (``SelfSupervised.describe()["top1"]``), or, without a readable summary, its method has self-supervised
    reference rows."""
    if isinstance(path, str):
        try:
            settings = json.loads((Path(path) / "summary.json").read_text()).get("method_settings")
        except (OSError, ValueError, AttributeError):
            settings = None
        if isinstance(settings, dict) and isinstance(settings.get("top1"), str):
            return True
    return method in {r["method"] for r in _ssl_reference()}


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _std(row: dict[str, Any], column: str) -> float | None:
    return row.get("top1_std" if column == "top1" else f"{column}_std")


def _mean_std(row: dict[str, Any], column: str) -> str:
    """'80.50 ± 1.20' for the column's mean (± std where the row has one), '(n=2)' when fewer runs have it."""
    mean = row.get(column)
    if mean is None:
        return ""
    std, n = _std(row, column), row.get(f"{column}_n")
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
    return text + (f" (n={n})" if n is not None and n != row["n"] and row["n"] else "")


def _fmt_p(p: float | None) -> str:
    if p is None:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _fmt_ci(row: dict[str, Any]) -> str:
    return "" if row.get("ci_low") is None else f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def metric_header(metric: str, windows: list[int]) -> str:
    """The column header of a metric: 'top-1 (median of last N)', 'linear top-1', 'mCA', 'transfer:<data>'."""
    return top1_header(windows) if metric == "top1" else EVAL_HEADERS.get(metric, metric)


Column = tuple[str, Callable[[dict[str, Any]], str]]


def _table_columns(g: Group, marks: list[str] | None = None) -> list[Column]:
    """The (header, cell) columns of one group's table: the ranked metric with its statistics after n, the
    published value and our difference to it next to the metric (``--reference``). ``marks``: each row's
    dagger (``footnotes``), shown after its method."""
    m, rows = g.metric, g.rows
    mark = {id(r): f" {x}" for r, x in zip(rows, marks or [], strict=False) if x}
    cols: list[Column] = [("method", lambda r: r["method"] + mark.get(id(r), "")), ("n", lambda r: str(r["n"])),
                          (metric_header(m, g.windows), lambda r: _mean_std(r, m))]
    if any(r.get("published") is not None for r in rows):
        cols += [("published", lambda r: _fmt(r.get("published"))),
                 ("Δ published", lambda r: "" if r.get("delta_published") is None else f"{r['delta_published']:+.2f}")]
    if any(r.get("ci_low") is not None for r in rows):
        cols.append(("95% CI", _fmt_ci))
    if any(r.get("p_vanilla") is not None for r in rows):
        cols.append(("p vs vanilla", lambda r: _fmt_p(r.get("p_vanilla"))))
    cols.append(("Δ vanilla", lambda r: "" if r["delta"] is None else f"{r['delta']:+.2f}"))
    if m != "top1":
        cols.append((top1_header(g.windows), lambda r: _mean_std(r, "top1")))
    cols += [("best", lambda r: _fmt(r["best"])), ("last", lambda r: _fmt(r["last"]))]
    if any(r.get("momentum_top1") is not None for r in rows):  # only learned-mixer runs have a momentum encoder
        cols.append(("momentum enc. top-1", lambda r: _fmt(r.get("momentum_top1"))))
    for c in g.evals:
        if c != m:
            cols.append((EVAL_HEADERS.get(c, c), lambda r, c=c: _fmt(r.get(c))))
    return cols + [("wall (min)", lambda r: _fmt(r["wall_min"], 1)), ("img/s", lambda r: _fmt(r["images_per_s"], 0)),
                   ("mixer ms/step", lambda r: _fmt(r["mixer_ms"], 2)), ("other runs", lambda r: r["other"])]


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


def legend(g: Group, headers: list[str]) -> list[str]:
    """The lines under a table that say what its ranking and statistics columns are."""
    lines = []
    name = metric_header(g.metric, g.windows)
    if g.metric != "top1":
        better = "lower" if g.metric in LOWER_IS_BETTER else "higher"
        lines.append(f"ranking: {name}, {better} is better; 95% CI, p and Δ vanilla are of {name}")
    if "published" in headers:
        what = "top-1" if g.metric == "top1" else name
        lines.append(f"published: the published {what} of the same method, data set, backbone and epochs (its "
                     "(published) row); Δ published = ours − published")
    if "95% CI" in headers:
        text = "stats: 95% CI = mean ± t(0.975, n-1) * std / sqrt(n) over the seeds of a row"
        if "p vs vanilla" in headers:
            text += "; p vs vanilla = Welch's two-sided t-test against vanilla's seeds (both n >= 2)"
        lines.append(text)
    return lines


def _with_notes(table: str, notes: list[str], fmt: str) -> str:
    for note in notes:
        if note:
            table += {"markdown": f"\n\n{note}", "latex": f"\n% {note}",
                      "html": f"\n<p>{html.escape(note)}</p>"}.get(fmt, f"\n{note}")
    return table


def _flat(v: Any) -> Any:
    """A csv cell: a list (a row's ``differs`` texts) joined by `` | ``."""
    return " | ".join(map(str, v)) if isinstance(v, list) else v


def render(groups: list[Group], fmt: str) -> str:
    """The leaderboard as table (terminal), markdown, csv, json, latex or html.

    Rows whose method differs from its reference carry a dagger after the method and a footnote under the
    table (``mixbench.results.differs.footnotes``); csv and json hold the texts in ``differs`` (csv: joined by
    `` | ``) and where each came from in ``differs_from``.
    """
    if fmt not in FORMATS:
        raise UserError(f"compare: unknown format '{fmt}'; valid: {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps([{"dataset": g.dataset, "backbone": g.backbone, "epochs": g.epochs, "labels": g.labels,
                            "metric": g.metric, "rows": g.rows} | ({"notes": g.notes} if g.notes else {})
                           for g in groups], indent=2)
    if fmt == "csv":
        flat = [{"dataset": g.dataset, "backbone": g.backbone, "epochs": g.epochs, "labels": g.labels,
                 "metric": g.metric, **{k: _flat(v) for k, v in r.items()}} for g in groups for r in g.rows]
        buf = io.StringIO()
        pd.DataFrame(flat).to_csv(buf, index=False)
        return buf.getvalue()
    style = {"table": "simple", "markdown": "github", "latex": "latex_booktabs", "html": "html"}[fmt]
    parts = []
    for g in groups:
        marks, lines = footnotes(g.rows)
        cols = _table_columns(g, marks)
        headers = [h for h, _ in cols]
        table = tabulate([[cell(r) for _, cell in cols] for r in g.rows], headers=headers, tablefmt=style,
                         disable_numparse=True)
        title = {"markdown": f"### {g.title}\n", "latex": f"% {g.title}\n",
                 "html": f"<h3>{html.escape(g.title)}</h3>\n"}.get(fmt, f"{g.title}\n")
        parts.append(title + _with_notes(table, [window_note(g), *g.notes, *legend(g, headers), *lines], fmt))
    return "\n\n".join(parts)


# --- the paper layout: methods down, one column per data set / backbone ------------------------------------------

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (one pass, so no escape is escaped again)."""
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], text)


def _pivot_order(groups: list[Group], metric: str) -> list[str]:
    """Row labels: vanilla, then measured rows by mean rank over the columns they appear in (then name),
    each published row right under the measured row of its method, published rows of methods not run last."""
    measured: dict[str, list[float]] = {}
    published: list[str] = []
    for g in groups:
        ours = [r for r in g.rows if not r["method"].endswith(PUBLISHED)]
        for r in g.rows:
            if r["method"].endswith(PUBLISHED):
                published += [r["method"]] if r["method"] not in published else []
            else:
                measured.setdefault(r["method"], [])
        scored = pd.Series({r["method"]: r.get(metric) for r in ours}, dtype=float).dropna()
        ranks = scored.rank(method="min", ascending=metric in LOWER_IS_BETTER)
        for label, rank in ranks.items():
            measured[label].append(float(rank))
    order = sorted(measured, key=lambda m: (m != "vanilla", not measured[m],
                                            sum(measured[m]) / len(measured[m]) if measured[m] else 0.0, m))
    rows: list[str] = []
    for label in order:  # 'byol [kNN k=200 T=0.1, batch 128] (published)' belongs under 'byol'
        rows += [label] + [p for p in published if p.removesuffix(PUBLISHED).split(" [")[0] == label]
    return rows + [p for p in published if p not in rows]


def _pivot_cell(row: dict[str, Any] | None, metric: str, best: float | None, fmt: str) -> str:
    """One pivot cell: the mean and ± std where n >= 2 ('-' without a value); the column's best measured mean
    in bold (markdown ``**x**``, latex ``\\textbf{x}``) or followed by `` *`` (table)."""
    if row is None or row.get(metric) is None:
        return "-"
    mean, std = row[metric], _std(row, metric)
    n = row["n"] if metric == "top1" else row.get(f"{metric}_n", row["n"])
    marked = best is not None and not row["method"].endswith(PUBLISHED) and round(mean, 2) == best
    text = f"{mean:.2f}"
    if marked and fmt != "table":
        text = f"**{text}**" if fmt == "markdown" else f"\\textbf{{{text}}}"
    if n is not None and n >= 2 and std is not None:
        text += f" $\\pm$ {std:.2f}" if fmt == "latex" else f" ± {std:.2f}"
    return text + (" *" if marked and fmt == "table" else "")


def _column_best(g: Group, metric: str) -> float | None:
    """The best measured value of a pivot column (at display precision), None with fewer than two values."""
    values = [round(r[metric], 2) for r in g.rows
              if not r["method"].endswith(PUBLISHED) and r.get(metric) is not None]
    if len(values) < 2:
        return None
    return min(values) if metric in LOWER_IS_BETTER else max(values)


def check_pivot_format(fmt: str) -> None:
    """A UserError unless ``--pivot`` can lay out ``fmt`` (markdown, latex, table)."""
    if fmt not in PIVOT_FORMATS:
        raise UserError(f"compare: --pivot lays out {', '.join(PIVOT_FORMATS)} output, not {fmt}; "
                        "use --format markdown or --format latex")


def render_pivot(groups: list[Group], fmt: str, metric: str | None = None) -> str:
    """One table of every group: methods down, a column per group, ``metric``'s mean ± std, best in bold.

    ``fmt``: markdown (``**x**``), latex (``\\textbf{x}``, booktabs) or table (a terminal table, best ``x *``).
    ``metric``: the one ``leaderboard`` ranked by (default: the groups' metric; a group without it, which
    ``leaderboard`` ranked by top-1, shows '-'). The groups' notes follow, each with its group's title, then
    the footnotes of the methods that differ from their reference (a dagger after the method, as in ``render``).
    """
    check_pivot_format(fmt)
    if metric is None:
        metric = next((g.metric for g in groups if g.metric != "top1"), "top1")
    metric = check_metric(metric)
    windows = sorted({w for g in groups for w in g.windows})
    name = metric_header(metric, windows)
    labels = _pivot_order(groups, metric)
    rows_by_label = [{r["method"]: r for r in g.rows} for g in groups]
    bests = [_column_best(g, metric) for g in groups]
    mark = {"markdown": "bold", "latex": "bold", "table": "*"}[fmt]
    published = [x for x in labels if x.endswith(PUBLISHED)]
    whose = ("OpenMixup's numbers; solo-learn's and lightly's for self-supervised rows, protocol in brackets"
             if any(" [" in x for x in published) else "OpenMixup's numbers")
    notes = [f"cells: mean ± std over seeds where n >= 2, else one run's value; {mark}: best measured value "
             "per column" + (f"; (published): {whose}, never marked" if published else "")]
    for g in groups:
        notes += [f"note: {g.title}: {n.removeprefix('note: ')}" for n in [window_note(g), *g.notes] if n]
    measured = by_label([r for label in labels for g in groups for r in g.rows
                         if r["method"] == label and not label.endswith(PUBLISHED)])
    marks, footnote_lines = footnotes(measured)
    dagger = {row["method"]: f" {x}" for row, x in zip(measured, marks, strict=True) if x}
    notes += footnote_lines
    if fmt == "latex":
        return _pivot_latex(groups, metric, labels, rows_by_label, bests, name, notes, dagger)
    esc = (lambda x: x.replace("|", "\\|")) if fmt == "markdown" else (lambda x: x)
    body = [[esc(label) + dagger.get(label, ""), *(_pivot_cell(rows.get(label), metric, best, fmt)
                                                   for rows, best in zip(rows_by_label, bests, strict=True))]
            for label in labels]
    table = tabulate(body, headers=["method", *(esc(g.title) for g in groups)],
                     tablefmt="github" if fmt == "markdown" else "simple", disable_numparse=True)
    title = f"### {name}, by data set and backbone\n" if fmt == "markdown" else f"{name}, by data set and backbone\n"
    return title + _with_notes(table, notes, fmt)


def _pivot_latex(groups: list[Group], metric: str, labels: list[str], rows_by_label: list[dict[str, dict[str, Any]]],
                 bests: list[float | None], name: str, notes: list[str], dagger: dict[str, str]) -> str:
    """The pivot as a booktabs tabular, every text escaped, ± as $\\pm$, best as \\textbf{}."""
    lines = [f"% {name}, by data set and backbone", "\\begin{tabular}{l" + "c" * len(groups) + "}", "\\toprule",
             " & ".join(["method", *(latex_escape(g.title.replace(" · ", ", ")) for g in groups)]) + " \\\\",
             "\\midrule"]
    for label in labels:
        cells = [_pivot_cell(rows.get(label), metric, best, "latex")
                 for rows, best in zip(rows_by_label, bests, strict=True)]
        lines.append(" & ".join([latex_escape(label) + dagger.get(label, ""), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return _with_notes("\n".join(lines), notes, "latex")
