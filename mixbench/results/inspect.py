"""Read one run folder without trusting it: the headline window, the run line's wording, and the
checks ``compare`` makes before it averages anything.

The headline top-1 is the median of the last N evaluated epochs. N comes from the schedule: runs
of 200 or more epochs take the last 10 evaluated epochs (OpenMixup's rule for its CIFAR tables);
shorter runs take the last 5 % of their evaluated epochs, rounded up, at least 1 (6 epochs -> 1,
40 -> 2, 100 -> 5, 199 -> 10). N never exceeds the evaluated epochs there are; where it falls short
of the window, the wording says so.

``inspect_run`` turns a run folder (summary.json, meta.json, metrics.jsonl, recipe.toml,
checkpoint.pt) into one record for the leaderboard plus a list of problems, each a phrase that
says what is wrong and what compare does about it. Bad values (NaN, inf, negative, out of range,
wrong type) are dropped, never averaged. No torch import here (``compare`` must stay light).

A completed run's stored evaluations (``evals/<evaluator>-<protocol hash>/result.json``, see
``mixbench.evaluate.store``) give ``linear_top1`` (``linear``), ``knn_top1`` (``knn``), ``ece``
(summary.json's ``ece``, else the ``calibration`` result's), ``mca`` (``corruptions``: mean corruption
accuracy), ``occlusion_auc`` (``occlusion``: area under the occlusion curve) and ``fgsm_top1`` (``fgsm``),
each with its protocol hash in ``<key>_protocol``. A ``transfer`` result gives one value per target data
set (its ``protocol["data"]``): ``transfer:<data>`` holds its ``transfer_top1``, ``transfer_protocol:<data>``
the hash and ``transfer_mode:<data>`` its ``protocol["mode"]`` (``linear`` or ``finetune``; ``?`` when
missing). Of several results of one evaluator (per target data set for transfer) the most recent
(``created``) counts.

Each row also holds ``differs`` (how its method differs from the reference: summary.json's ``differs``, else,
for runs written before it was recorded, the registry's current text) and ``differs_from`` (``run record`` or
``registry``); see ``mixbench.results.differs``.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbench.results.differs import run_differs
from mixbench.results.liveness import is_stale

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LONG_RUN_EPOCHS = 200  # schedules this long use OpenMixup's fixed window
LONG_RUN_WINDOW = 10
SHORT_RUN_DIVISOR = 20  # otherwise 1/20 = 5 % of the evaluated epochs, rounded up

STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
LAST10 = ("top1_median_last10", "momentum_top1_median_last10")  # summary.json's stored medians
ACCURACIES = ("top1_best", "top1_last", "top1_median", "momentum_top1_median", *LAST10)
POSITIVE = ("wall_time_s", "images_per_s")  # must be > 0 in a completed run
NON_NEGATIVE = ("mixer_ms_per_step",)
# leaderboard column -> (evaluator, its metric); the row holds the value under the metric's name
EVAL_COLUMNS = {"linear": ("linear", "linear_top1"), "knn": ("knn", "knn_top1"), "ece": ("calibration", "ece"),
                "mca": ("corruptions", "mca"), "occlusion": ("occlusion", "occlusion_auc"),
                "fgsm": ("fgsm", "fgsm_top1")}
TRANSFER = "transfer"  # evaluator whose results become one column per target data set
TRANSFER_METRIC = "transfer_top1"
TRANSFER_PREFIX = "transfer:"  # column (and row key) ``transfer:<data>``
EVALS = "evals"  # mixbench.evaluate.store.EVALS (not imported: that module imports torch helpers)
SUMMARY_PROTOCOL = "summary.json"  # the protocol of an ece taken from summary.json


def median_window(epochs: int | None, evaluated: int) -> int:
    """The window the rule asks for: 10 for a schedule of 200+ epochs, else ceil(5 % of ``evaluated``), >= 1.

    ``epochs`` is the recipe's schedule (None: unknown, judged by ``evaluated``); the window actually
    used is ``min(window, evaluated)``.
    """
    if (epochs if epochs is not None else evaluated) >= LONG_RUN_EPOCHS:
        return LONG_RUN_WINDOW
    return max(1, -(-evaluated // SHORT_RUN_DIVISOR))


@dataclass
class WindowMedian:
    value: float | None
    n: int  # evaluated epochs the median covers
    window: int  # what the rule asked for (n < window: the run has fewer evaluated epochs)


def window_median(values: list[float], epochs: int | None) -> WindowMedian:
    """The median of the last N of ``values`` (evaluated accuracies, in epoch order), N by the rule above."""
    window = median_window(epochs, len(values))
    n = min(window, len(values))
    return WindowMedian(statistics.median(values[-n:]) if n else None, n, window)


def median_phrase(n: int, window: int | None = None) -> str:
    """'median of last 5 epochs', noting when the run had fewer evaluated epochs than its window."""
    text = f"median of last {n} epoch{'s' if n != 1 else ''}"
    if window is not None and n < window:
        text += f" (only {n} evaluated; window {window})"
    return text


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """metrics.jsonl's readable lines, and what is wrong with the others ('the last line is not JSON')."""
    lines, problems = [], []
    raw = Path(path).read_text(errors="replace").splitlines()
    for i, line in enumerate(raw, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(f"{'the last line' if i == len(raw) else f'line {i}'} is not JSON")
            continue
        if not isinstance(record, dict) or not _is_int(record.get("epoch")):
            problems.append(f"line {i} has no integer epoch")
            continue
        lines.append(record)
    return lines, problems


def evaluated(metrics: list[dict[str, Any]], key: str = "top1") -> tuple[list[float], list[str]]:
    """The evaluated values of ``key`` in epoch order (null = not evaluated), and any bad ones."""
    values, problems = [], []
    for m in metrics:
        v = m.get(key)
        if v is None:
            continue
        bad = _bad_accuracy(v)
        if bad:
            problems.append(f"epoch {m['epoch']}'s {key} {bad}")
        else:
            values.append(float(v))
    return values, problems


def headline(summary: dict[str, Any], metrics: list[dict[str, Any]] | Path | str) -> str:
    """The run line's top-1 headline, e.g. 'median of last 1 epoch 58.50%'; '' when there is none.

    ``metrics``: the epoch lines, or the run folder (or its metrics.jsonl) to read them from.
    """
    epochs = summary.get("epochs")
    epochs = epochs if _is_int(epochs) else None
    stored = _stored_median(summary, "top1")
    if stored is not None:
        value, n = stored
        return f"{median_phrase(n, _stored_window(n, epochs))} {value:.2f}%"
    if isinstance(metrics, (str, Path)):
        path = Path(metrics)
        path = path / "metrics.jsonl" if path.is_dir() else path
        metrics = read_metrics(path)[0] if path.is_file() else []
    values, _ = evaluated(metrics)
    wm = window_median(values, epochs)
    if wm.value is None:
        return ""
    return f"{median_phrase(wm.n, wm.window)} {wm.value:.2f}%"


@dataclass
class RunRecord:
    """One run as compare sees it: ``row`` feeds the leaderboard, ``problems`` the warning line."""

    path: Path
    row: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    skip: bool = False  # unusable even for grouping (wrong-typed fields): warned about, left out

    def warning(self) -> str | None:
        return f"warning: {self.path}: {'; '.join(self.problems)}" if self.problems else None


def inspect_run(folder: Path) -> RunRecord:
    """Read and check one run folder (see the module docstring).

    ``row["status"]``: the summary's status, ``running`` / ``stale`` while meta.json says running,
    ``unreadable`` for a summary.json that is not one, ``invalid`` for a completed run without a
    usable top-1. Only ``completed`` rows are averaged.
    """
    folder = Path(folder)
    rec = RunRecord(folder, {"path": str(folder)})
    summary = _read_json(folder / "summary.json", rec.problems, need_method=True)
    meta = _read_json(folder / "meta.json", rec.problems)
    recipe = _read_recipe(folder)
    info = dict(summary or {})
    for k, v in _from_recipe(recipe, meta).items():
        info.setdefault(k, v)
    if summary is None and (folder / "summary.json").exists():
        rec.row["status"] = "unreadable"
        info.setdefault("method", folder.parent.name)
    if not _check_identity(rec, info, meta):
        return rec
    _note_differs(rec, summary)
    metrics, metric_problems = [], []
    if (folder / "metrics.jsonl").is_file():
        metrics, metric_problems = read_metrics(folder / "metrics.jsonl")
    if rec.row["status"] != "completed":
        _note_unfinished(rec, info, meta, metrics)
    elif summary is None:
        rec.problems.append("meta.json says completed but there is no summary.json, run not averaged")
        rec.row["status"] = "invalid"
    else:
        _check_completed(rec, info, recipe, metrics, metric_problems)
    return rec


def _check_identity(rec: RunRecord, info: dict[str, Any], meta: dict[str, Any] | None) -> bool:
    """Settle the row's status and copy the fields that group runs; False (run skipped) when one is mistyped."""
    row, problems = rec.row, rec.problems
    meta_status = (meta or {}).get("status")
    if meta_status == "running":  # also a resumed run whose summary.json is from before
        row["status"] = "stale" if is_stale(meta) else "running"
    elif "status" not in row:
        row["status"] = info.get("status", meta_status)
    status = row["status"]
    if not isinstance(status, str):
        problems.append("no status in summary.json or meta.json, run skipped" if status is None
                        else f"status is {_show(status)}, not a string, run skipped")
        rec.skip = True
        return False
    for key in ("method", "dataset", "backbone", "loss", "name", "run_id"):
        v = info.get(key)
        if v is not None and not isinstance(v, str):
            problems.append(f"{key} is {_show(v)}, not a string, run skipped")
            rec.skip = True
    for key in ("epochs", "labels", "epochs_done"):
        v = info.get(key)
        if v is not None and not _is_int(v):
            problems.append(f"{key} is {_show(v)}, not an integer, run skipped")
            rec.skip = True
    if rec.skip:
        return False
    for key in ("method", "dataset", "backbone", "epochs", "labels", "loss", "name", "run_id"):
        row[key] = info.get(key)
    return True


def _note_differs(rec: RunRecord, summary: dict[str, Any] | None) -> None:
    """``differs`` / ``differs_from``: how the run's method differs from its reference (summary.json's record,
    else the registry's current text; see ``mixbench.results.differs``); a wrong-typed record is named."""
    stored = (summary or {}).get("differs")
    if stored is not None and not isinstance(stored, str):
        rec.problems.append(f"differs is {_show(stored)}, not a string, the registry's current text is shown")
        summary = {k: v for k, v in (summary or {}).items() if k != "differs"}
    rec.row["differs"], rec.row["differs_from"] = run_differs(summary, rec.row.get("method"))


def _of_epochs(info: dict[str, Any]) -> str:
    epochs = info.get("epochs")
    return f"{epochs if epochs is not None else '?'} epochs"


def _note_unfinished(rec: RunRecord, info: dict[str, Any], meta: dict[str, Any] | None,
                     metrics: list[dict[str, Any]]) -> None:
    """The warning for a run that is not averaged: running, stale, stopped, or unreadable."""
    status, meta = rec.row["status"], meta or {}
    last_epoch = max((m["epoch"] for m in metrics), default=0)
    if status == "stale":
        rec.problems.append(f"stale: meta.json says running, but no process {meta.get('pid')} is alive on this "
                            f"host (killed?) after {last_epoch} of {_of_epochs(info)}, not averaged")
    elif status == "running":
        where = f" (pid {meta.get('pid')} on {meta['host']})" if meta.get("host") else ""
        rec.problems.append(f"still running{where}: {last_epoch} of {_of_epochs(info)} done, not averaged")
    elif status == "unreadable":
        rec.problems.append("summary.json is not a readable mixbench summary, not averaged")
    else:
        done = info.get("epochs_done", last_epoch or None)
        after = f" after {done} of {_of_epochs(info)}" if done is not None else ""
        unknown = "" if status in STATUSES else " (unknown status)"
        rec.problems.append(f"status {status}{unknown}{after}, not averaged")


def _metrics_note(folder: Path, metrics: list[dict[str, Any]], metric_problems: list[str],
                  coverage: int) -> str | None:
    """What is wrong with metrics.jsonl of a completed run (missing, truncated, corrupt), or None."""
    if not (folder / "metrics.jsonl").is_file():
        return "no metrics.jsonl"
    last_epoch = max((m["epoch"] for m in metrics), default=0)
    parts = list(metric_problems)
    if last_epoch < coverage:
        parts.append(f"its last readable epoch is {last_epoch} of {coverage}")
    if not parts:
        return None
    cut = all(p.startswith(("the last line", "its last")) for p in parts)
    return f"metrics.jsonl is {'truncated' if cut else 'corrupt'}: {', '.join(parts)}"


def _check_completed(rec: RunRecord, info: dict[str, Any], recipe: dict[str, Any] | None,
                     metrics: list[dict[str, Any]], metric_problems: list[str]) -> None:
    """Check everything compare would average of a completed run; blank bad values, name each problem."""
    row, problems = rec.row, rec.problems
    epochs, done = info.get("epochs"), info.get("epochs_done")
    if not (rec.path / "checkpoint.pt").is_file():
        problems.append("no checkpoint.pt (cannot be resumed or re-evaluated), still averaged")
    if done is not None and epochs is not None and done < epochs:
        problems.append(f"status completed but only {done} of {_of_epochs(info)} done, run not averaged")
        row["status"] = "invalid"
        return
    bad_values: dict[str, str] = {}
    for key in ACCURACIES + POSITIVE + NON_NEGATIVE:
        v = info.get(key)
        bad = None if v is None else (_bad_accuracy(v) if key in ACCURACIES else _bad_number(v, key in POSITIVE))
        row[key] = None if bad or v is None else float(v)
        if bad:
            bad_values[key] = bad
    coverage = max(x for x in (done, epochs, 0) if x is not None)
    metrics_note = _metrics_note(rec.path, metrics, metric_problems, coverage)
    every, sources = _eval_every(recipe), {}
    for key in ("top1", "momentum_top1"):
        value, n, source = _headline_value(info, row, metrics if metrics_note is None else None, key, epochs, every)
        row[key], sources[key] = value, source
        if key == "top1":
            row["median_window"] = n
        if value is not None and source.startswith("summary.json's") and metrics_note:
            metrics_note += f"; {key} from {source}"
        elif value is None and source:
            if key == "top1":
                row["status"] = "invalid"
            problems.append(f"no usable {key} ({source}), {'run' if key == 'top1' else key} not averaged")
    for key, bad in bad_values.items():
        base = key.replace("_median_last10", "")
        used = key in LAST10 and row[base] is not None
        problems.append(f"{key} {bad}, " + (f"ignored ({base} taken from {sources[base]})" if used else "not averaged"))
    if metrics_note:
        problems.append(metrics_note)
    _check_evals(rec, info)


def protocol_key(key: str) -> str:
    """The row key of the protocol hash behind the value under ``key`` (``linear_top1_protocol``,
    ``transfer_protocol:<data>`` for ``transfer:<data>``, so that no data set name can collide)."""
    if key.startswith(TRANSFER_PREFIX):
        return f"transfer_protocol:{key[len(TRANSFER_PREFIX):]}"
    return f"{key}_protocol"


def mode_key(key: str) -> str:
    """The row key of a ``transfer:<data>`` value's transfer mode: ``transfer_mode:<data>``."""
    return f"transfer_mode:{key[len(TRANSFER_PREFIX):]}"


def created_time(v: Any) -> datetime.datetime | None:
    """``created`` of a result.json as an aware time (naive = UTC), or None when it is not an ISO time."""
    if not isinstance(v, str):
        return None
    try:
        t = datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=datetime.timezone.utc)


def read_evals(folder: Path, problems: list[str]) -> dict[str, list[tuple[datetime.datetime | None, str, dict]]]:
    """The readable ``evals/*/result.json`` of a run by evaluator: [(created, protocol hash, metrics)].

    ``metrics`` also holds ``_file`` (the result's path in the run folder) and ``_protocol`` (its protocol
    object, or None). A result.json that is unreadable or wrong-typed (not a JSON object, metrics not an
    object, evaluator not a string) adds one phrase to ``problems`` and is left out; evaluators compare does
    not show are ignored.
    """
    found: dict[str, list[tuple[datetime.datetime | None, str, dict]]] = {}
    root = Path(folder) / EVALS
    if not root.is_dir():
        return found
    wanted = {ev for ev, _ in EVAL_COLUMNS.values()} | {TRANSFER}
    for path in sorted(root.glob("*/result.json")):
        name = f"{EVALS}/{path.parent.name}/result.json"
        prefix, _, digest = path.parent.name.rpartition("-")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            problems.append(f"{name} is unreadable ({type(e).__name__}), not averaged")
            continue
        if not isinstance(data, dict):
            problems.append(f"{name} is {type(data).__name__}, not a result object, not averaged")
            continue
        evaluator = data.get("evaluator", prefix)
        if not isinstance(evaluator, str):
            problems.append(f"{name}'s evaluator is {_show(evaluator)}, not a string, not averaged")
            continue
        if evaluator not in wanted:
            continue
        metrics = data.get("metrics")
        if not isinstance(metrics, dict):
            problems.append(f"{name}'s metrics is {_show(metrics)}, not an object, not averaged")
            continue
        found.setdefault(evaluator, []).append((created_time(data.get("created")), digest or path.parent.name,
                                                metrics | {"_file": name, "_protocol": data.get("protocol")}))
    return found


def _check_evals(rec: RunRecord, info: dict[str, Any]) -> None:
    """Set the row's evaluator values (``linear_top1``, ``knn_top1``, ``ece``, ``mca``, ``occlusion_auc``,
    ``fgsm_top1``, ``transfer:<data>``) and their protocol hashes; name every value left out."""
    row, problems = rec.row, rec.problems
    results = read_evals(rec.path, problems)
    for column, (evaluator, key) in EVAL_COLUMNS.items():
        row[key], row[protocol_key(key)] = None, None
        if column == "ece" and info.get("ece") is not None:
            value, protocol, where = info["ece"], SUMMARY_PROTOCOL, "summary.json's ece"
        elif results.get(evaluator):
            created, protocol, metrics = _latest(results[evaluator])
            where = f"{metrics['_file']}'s {key}"
            value = metrics.get(key)
            if value is None:
                problems.append(f"{metrics['_file']} has no {key}, {column} not averaged")
                continue
        else:
            continue
        bad = _bad_accuracy(value)
        if bad:
            problems.append(f"{where} {bad}, not averaged")
            continue
        row[key], row[protocol_key(key)] = float(value), protocol
    _check_transfer(row, problems, results.get(TRANSFER, []))


def _latest(results: list[tuple[datetime.datetime | None, str, dict]]) -> tuple[datetime.datetime | None, str, dict]:
    """The most recent result (``created``; undated ones count as oldest, ties broken by protocol hash)."""
    oldest = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    return max(results, key=lambda r: (r[0] or oldest, r[1]))


def _check_transfer(row: dict[str, Any], problems: list[str],
                    results: list[tuple[datetime.datetime | None, str, dict]]) -> None:
    """``transfer:<data>`` per target data set (the most recent result of each), its protocol hash and mode."""
    by_data: dict[str, list[tuple[datetime.datetime | None, str, dict]]] = {}
    for result in results:
        metrics = result[2]
        protocol = metrics["_protocol"]
        data = protocol.get("data") if isinstance(protocol, dict) else None
        if not isinstance(data, str) or not data.strip():
            what = "no protocol object" if not isinstance(protocol, dict) else f"protocol data {_show(data)}"
            problems.append(f"{metrics['_file']} has {what}, not a target data set name, not averaged")
            continue
        by_data.setdefault(data.strip(), []).append(result)
    for data, found in sorted(by_data.items()):
        _, protocol, metrics = _latest(found)
        key, value = f"{TRANSFER_PREFIX}{data}", metrics.get(TRANSFER_METRIC)
        if value is None:
            problems.append(f"{metrics['_file']} has no {TRANSFER_METRIC}, {key} not averaged")
            continue
        bad = _bad_accuracy(value)
        if bad:
            problems.append(f"{metrics['_file']}'s {TRANSFER_METRIC} {bad}, not averaged")
            continue
        mode = metrics["_protocol"].get("mode")
        row[key], row[protocol_key(key)] = float(value), protocol
        row[mode_key(key)] = mode if isinstance(mode, str) and mode else "?"


def _headline_value(summary: dict[str, Any], row: dict[str, Any], metrics: list[dict[str, Any]] | None, key: str,
                    epochs: int | None, every: int | None) -> tuple[float | None, int | None, str]:
    """(median of the last N, N, where it came from / why there is none) for ``top1`` or ``momentum_top1``.

    Taken from summary.json's ``<key>_median`` + ``median_window`` when summarize stored them, else from
    a complete metrics.jsonl, else from summary.json where it holds the same statistic: ``<key>_last``
    when N is 1, ``<key>_median_last10`` for a 200+ epoch schedule. Otherwise there is none (reason).
    """
    stored = _stored_median(summary, key)
    if stored is not None:
        return stored[0], stored[1], "summary.json's median"
    if metrics is not None:
        values, bad = evaluated(metrics, key)
        if bad:
            return None, None, f"metrics.jsonl: {bad[0]}"
        if values:
            wm = window_median(values, epochs)
            return wm.value, wm.n, "metrics.jsonl"
        return None, None, "no evaluated epoch in metrics.jsonl" if key == "top1" else ""
    if epochs is None:
        return None, None, "no epochs and no complete metrics.jsonl"
    count = len({*range(every or 1, epochs + 1, every or 1), epochs})  # evaluated epochs of the schedule
    n = min(median_window(epochs, count), count)
    last, last10 = row.get(f"{key}_last"), row.get(f"{key}_median_last10")  # bad values dropped already
    if n == 1 and last is not None:
        return last, 1, f"summary.json's {key}_last"
    if epochs >= LONG_RUN_EPOCHS and last10 is not None:
        return last10, n, f"summary.json's {key}_median_last10"
    field_ = f"{key}_last" if n == 1 else f"{key}_median_last10" if epochs >= LONG_RUN_EPOCHS else None
    if field_ and summary.get(field_) is not None:  # there, but a bad value (reported as such)
        return None, None, f"summary.json's {field_} is unusable and metrics.jsonl is not complete"
    if summary.get(f"{key}_last") is None and summary.get(f"{key}_median_last10") is None:
        return None, None, "" if key != "top1" else "none in summary.json and no complete metrics.jsonl"
    return None, None, (f"the median of the last {n} of {count} evaluated epochs needs a complete metrics.jsonl; "
                        "summary.json holds only the median of the last 10")


def _stored_median(summary: dict[str, Any], key: str) -> tuple[float, int] | None:
    """summary.json's ``<key>_median`` and ``median_window``, when summarize wrote them and they are sane."""
    value, n = summary.get(f"{key}_median"), summary.get("median_window")
    if value is None or not _is_int(n) or n < 1 or _bad_accuracy(value):
        return None
    return float(value), int(n)


def _stored_window(n: int, epochs: int | None) -> int:
    """The rule's window for a stored median over ``n`` epochs: only a 200+ epoch run can fall short."""
    return LONG_RUN_WINDOW if epochs is not None and epochs >= LONG_RUN_EPOCHS else n


def _read_recipe(folder: Path) -> dict[str, Any]:
    try:
        recipe = tomllib.loads((folder / "recipe.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in recipe.items() if k == "name" or isinstance(v, dict)}


def _eval_every(recipe: dict[str, Any]) -> int | None:
    every = recipe.get("eval", {}).get("every")
    return every if _is_int(every) and every >= 1 else None


def _from_recipe(recipe: dict[str, Any], meta: dict[str, Any] | None) -> dict[str, Any]:
    """Grouping fields for a run without a (complete) summary.json: meta.json, then recipe.toml."""
    out: dict[str, Any] = {}
    if isinstance(meta, dict):
        for key, mkey in (("method", "method"), ("name", "recipe_name"), ("run_id", "run_id")):
            if meta.get(mkey) is not None:
                out[key] = meta[mkey]
    for key, (table, name) in (("dataset", ("data", "source")), ("backbone", ("model", "name")),
                               ("epochs", ("train", "epochs")), ("loss", ("loss", "name")),
                               ("method", ("method", "name"))):
        value = recipe.get(table, {}).get(name)
        if value is not None:
            out.setdefault(key, value)
    if recipe.get("name") is not None:
        out.setdefault("name", recipe["name"])
    return out


def _read_json(path: Path, problems: list[str], need_method: bool = False) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or (need_method and "method" not in data):
            raise ValueError("not a mixbench record")
    except (OSError, ValueError) as e:
        if not need_method:  # an unreadable summary.json is reported with the status
            problems.append(f"{path.name} is unreadable ({type(e).__name__})")
        return None
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def _bad_number(v: Any, positive: bool) -> str | None:
    """Why ``v`` cannot be averaged as a time or rate, or None."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return f"is {_show(v)}, not a number"
    if math.isnan(v):
        return "is NaN"
    if math.isinf(v):
        return f"is {v}"
    if v < 0:
        return f"is negative ({v})"
    if positive and v == 0:
        return "is 0"
    return None


def _bad_accuracy(v: Any) -> str | None:
    """Why ``v`` is not a top-1/top-5 percentage, or None."""
    bad = _bad_number(v, positive=False)
    if bad is None and v > 100:
        return f"is {v}, above 100 %"
    return bad
