"""``mixbench plot``: learning curves, reliability diagrams, occlusion and corruption robustness as PNG files.

Two halves, kept apart so that the numbers can be tested exactly and the pictures only for being pictures:

- *Extraction* (pure functions, no matplotlib): run folders in, :class:`Series` out. Runs are grouped as
  ``compare`` groups them (method, ``+ loss`` when the loss is not plain CE, and the recipe's config hash, so
  runs that differ only in the seed share a group); each group becomes one line, the mean over its runs at
  every x, with a seed band (``minmax``: the smallest and largest run; ``std``: mean ± one sample standard
  deviation, 0 for a single run). Each run counts where it has a value (a run still going adds its epochs so
  far; ``Series.n`` says how many runs stand behind each point).
- *Drawing* (matplotlib's object API on a fixed canvas, Agg, no pyplot state): one PNG of a fixed pixel size
  per kind (:func:`canvas_size`), written atomically.

Kinds and where their numbers come from (a run that lacks them is one error naming the folder and the command
that makes them):

``curves``       ``metrics.jsonl``: the chosen metric (``top1`` by default) of every evaluated epoch, and
                 ``train_loss``, one line per group with its seed band.
``reliability``  ``reliability.png``'s per-bin sums (a text chunk, see
                 :data:`mixbench.evaluate.calibration.RELIABILITY_KEY`), written by every completed run and
                 by ``mixbench evaluate --only calibration``; one diagram per run (accuracy and mean
                 confidence per bin, the diagonal, bin counts), ECE in its title.
``occlusion``    the newest ``evals/occlusion-*/result.json``: top-1 against the occluder's side (a fraction of
                 the image side), one line per group, the AUC in the legend.
``corruptions``  the newest ``evals/corruptions-*/result.json``: top-1 against severity, one panel per
                 corruption plus their mean, one line per group, mCA in the legend.

matplotlib is an optional extra (``pip install "mixbench[plot]"``); it is imported only to draw.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbench.errors import UserError
from mixbench.results.atomic import atomic_write_bytes
from mixbench.results.inspect import created_time, inspect_run, read_metrics

KINDS = ("curves", "reliability", "occlusion", "corruptions")
BANDS = ("minmax", "std")
# mixbench.evaluate.calibration.RELIABILITY_KEY (not imported: that module imports torch); a test holds them equal
RELIABILITY_KEY = "mixbench-reliability"
INSTALL_HINT = ('matplotlib is not installed; install it with `pip install "mixbench[plot]"` '
                "(or `pip install matplotlib`)")

DPI = 100
CURVES_INCHES = (11.0, 4.2)
OCCLUSION_INCHES = (6.4, 4.4)
RELIABILITY_PANEL = (3.6, 3.8)  # inches per diagram
RELIABILITY_COLUMNS = 4
CORRUPTION_PANEL = (2.6, 2.3)  # inches per corruption panel
CORRUPTION_COLUMNS = 5
CORRUPTION_LEGEND = 0.9  # inches under the panels for the shared legend


# ----------------------------------------------------------------------------------------------- run folders


@dataclass(frozen=True)
class RunInfo:
    """One run folder as the plots see it: what groups it (method, loss, config hash) and what labels it."""

    path: Path
    method: str
    loss: str | None = None
    name: str | None = None
    run_id: str | None = None
    dataset: str | None = None
    backbone: str | None = None

    @property
    def seed(self) -> int | None:
        """The seed in the run id (``seed3-ab12cd`` -> 3), or None."""
        m = re.fullmatch(r"seed(-?\d+)-.*", self.run_id or "")
        return int(m.group(1)) if m else None

    @property
    def config(self) -> str:
        """The recipe's config hash from the run id (runs differing only in the seed share it), else the folder."""
        if self.run_id and "-" in self.run_id:
            return self.run_id.split("-", 1)[1]
        return str(self.path)

    @property
    def label(self) -> str:
        """``method`` or ``method + loss``, as ``compare`` labels its rows."""
        return self.method + (f" + {self.loss}" if self.loss and self.loss != "ce" else "")


@dataclass
class Group:
    """Runs of one configuration (they differ only in the seed), drawn as one line."""

    label: str
    runs: list[RunInfo] = field(default_factory=list)


def _is_run(folder: Path) -> bool:
    return (folder / "summary.json").is_file() or (folder / "meta.json").is_file()


def resolve_runs(paths: Sequence[Path]) -> list[Path]:
    """Run folders named by ``paths``: each a run folder itself, or a folder searched for run folders below it
    (as ``compare`` searches); in the order given, each once."""
    from mixbench.results.leaderboard import find_runs

    out: dict[Path, Path] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise UserError(f"plot: {path} is not a folder; give run folders (results/<name>/<run id>) or a "
                            "folder that holds them")
        found = [path] if _is_run(path) else find_runs([path])
        if not found:
            raise UserError(f"plot: {path} is not a run folder and holds none (no summary.json or meta.json "
                            "below it); train one with `mixbench run RECIPE`")
        for run in found:
            out.setdefault(run.resolve(), run)
    return list(out.values())


def run_info(folder: Path) -> RunInfo:
    """What groups and labels ``folder`` (from summary.json, meta.json and recipe.toml, read as ``compare`` does)."""
    rec = inspect_run(Path(folder))
    if rec.skip:
        raise UserError(f"plot: {folder}: {'; '.join(rec.problems)}")
    row = rec.row
    return RunInfo(Path(folder), row.get("method") or Path(folder).parent.name, row.get("loss"), row.get("name"),
                   row.get("run_id"), row.get("dataset"), row.get("backbone"))


def group_runs(runs: Sequence[RunInfo]) -> list[Group]:
    """Runs grouped by (method, loss, config hash), sorted by label; labels made unique by the recipe name,
    then the config hash, where two groups would otherwise share one."""
    groups: dict[tuple[str, str], Group] = {}
    for run in runs:
        groups.setdefault((run.label, run.config), Group(run.label)).runs.append(run)
    out = sorted(groups.values(), key=lambda g: (g.label, g.runs[0].config))
    for suffix in (lambda g: g.runs[0].name, lambda g: g.runs[0].config):
        counts: dict[str, int] = {}
        for g in out:
            counts[g.label] = counts.get(g.label, 0) + 1
        for g in out:
            extra = suffix(g)
            if counts[g.label] > 1 and extra:
                g.label = f"{g.label} ({extra})"
    return out


# ------------------------------------------------------------------------------------------------ series


@dataclass(frozen=True)
class Series:
    """One group's line: ``mean[i]`` over the ``n[i]`` runs with a value at ``x[i]``, band ``lo[i]``..``hi[i]``;
    ``score``: the mean of a per-run summary number (occlusion AUC, mCA), or None."""

    label: str
    x: tuple[float, ...]
    mean: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    n: tuple[int, ...]
    runs: int
    score: float | None = None


def aggregate(label: str, per_run: Sequence[Mapping[float, float]], band: str = "minmax",
              scores: Sequence[float] = ()) -> Series:
    """The mean of ``per_run`` (one x -> value mapping per run) at every x any run has, with its seed band.

    ``band``: ``minmax`` (lowest and highest run) or ``std`` (mean ± sample standard deviation; 0 for one run).
    ``scores``: per-run summary numbers whose mean becomes ``Series.score``.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    xs = sorted(set().union(*per_run)) if per_run else []
    mean, lo, hi, n = [], [], [], []
    for x in xs:
        values = [r[x] for r in per_run if x in r]
        m = math.fsum(values) / len(values)
        if band == "minmax":
            low, high = min(values), max(values)
        else:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            low, high = m - sd, m + sd
        mean.append(m)
        lo.append(low)
        hi.append(high)
        n.append(len(values))
    score = math.fsum(scores) / len(scores) if scores else None
    return Series(label, tuple(xs), tuple(mean), tuple(lo), tuple(hi), tuple(n), len(per_run), score)


def _number(v: Any) -> float | None:
    """``v`` as a finite float, or None (null, NaN, inf, bool, text)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def metric_by_epoch(lines: Sequence[Mapping[str, Any]], key: str) -> dict[float, float]:
    """epoch -> value of ``key`` over metrics.jsonl lines (unevaluated epochs and unusable values left out)."""
    out: dict[float, float] = {}
    for line in lines:
        v = _number(line.get(key))
        if v is not None:
            out[float(line["epoch"])] = v
    return out


@dataclass(frozen=True)
class CurveData:
    """Learning curves: ``metric`` per epoch and ``train_loss`` per epoch, one :class:`Series` per group."""

    metric: str
    accuracy: list[Series]
    loss: list[Series]
    title: str


def _title(runs: Sequence[RunInfo]) -> str:
    parts = [", ".join(sorted({str(v) for v in values if v})) for values in
             ([r.dataset for r in runs], [r.backbone for r in runs])]
    return " · ".join(p for p in parts if p)


def curve_data(groups: Sequence[Group], metric: str = "top1", band: str = "minmax") -> CurveData:
    """Per group: ``metric`` and ``train_loss`` of every epoch in each run's metrics.jsonl, aggregated over seeds."""
    accuracy, loss = [], []
    for g in groups:
        acc_runs, loss_runs = [], []
        for run in g.runs:
            path = run.path / "metrics.jsonl"
            if not path.is_file():
                raise UserError(f"plot: {run.path} has no metrics.jsonl (written by `mixbench run RECIPE` as it "
                                "trains)")
            lines, _ = read_metrics(path)
            values = metric_by_epoch(lines, metric)
            if not values:
                keys = sorted({k for line in lines for k, v in line.items() if k != "epoch" and _number(v) is not None})
                raise UserError(f"plot: {run.path}/metrics.jsonl has no {metric!r} values; --metric takes one of: "
                                f"{', '.join(keys) or '(none: no epoch finished yet)'}")
            acc_runs.append(values)
            losses = metric_by_epoch(lines, "train_loss")
            if losses:
                loss_runs.append(losses)
        accuracy.append(aggregate(g.label, acc_runs, band))
        if loss_runs:
            loss.append(aggregate(g.label, loss_runs, band))
    return CurveData(metric, accuracy, loss, _title([r for g in groups for r in g.runs]))


_OLDEST = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


def latest_result(folder: Path, evaluator: str) -> dict[str, Any] | None:
    """The metrics of the newest readable ``evals/<evaluator>-*/result.json`` of a run (by ``created``), or None."""
    found = []
    for path in sorted((Path(folder) / "evals").glob(f"{evaluator}-*/result.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (isinstance(data, dict) and data.get("evaluator", evaluator) == evaluator
                and isinstance(data.get("metrics"), dict)):
            found.append((created_time(data.get("created")) or _OLDEST, str(path), data["metrics"]))
    return max(found, key=lambda r: (r[0], r[1]))[2] if found else None


def _need(folder: Path, evaluator: str) -> dict[str, Any]:
    metrics = latest_result(folder, evaluator)
    if metrics is None:
        raise UserError(f"plot: {folder} has no {evaluator} result (evals/{evaluator}-*/result.json); compute it "
                        f"with `mixbench evaluate {folder} --only {evaluator}`")
    return metrics


def occlusion_curve(metrics: Mapping[str, Any]) -> tuple[dict[float, float], float | None]:
    """(occluder side s -> top-1, AUC) from an occlusion result's metrics (``occlusion_top1@<s>``)."""
    curve = {}
    for key, v in metrics.items():
        if key.startswith("occlusion_top1@") and _number(v) is not None:
            try:
                curve[float(key.split("@", 1)[1])] = float(v)
            except ValueError:
                continue
    return curve, _number(metrics.get("occlusion_auc"))


def occlusion_data(groups: Sequence[Group], band: str = "minmax") -> list[Series]:
    """Per group: top-1 against occluder size (mean over seeds), ``score`` the mean AUC."""
    out = []
    for g in groups:
        curves, aucs = [], []
        for run in g.runs:
            curve, auc = occlusion_curve(_need(run.path, "occlusion"))
            if not curve:
                raise UserError(f"plot: {run.path}'s occlusion result has no occlusion_top1@<size> values; recompute "
                                f"it with `mixbench evaluate {run.path} --only occlusion --force`")
            curves.append(curve)
            if auc is not None:
                aucs.append(auc)
        out.append(aggregate(g.label, curves, band, aucs))
    return out


def corruption_table(metrics: Mapping[str, Any]) -> tuple[dict[str, dict[float, float]], float | None]:
    """(corruption -> severity -> top-1, mCA) from a corruptions result's metrics (``corruption_top1@<name>/<s>``);
    corruptions in the order the result lists them."""
    table: dict[str, dict[float, float]] = {}
    for key, v in metrics.items():
        if not key.startswith("corruption_top1@") or _number(v) is None:
            continue
        name, _, severity = key.split("@", 1)[1].rpartition("/")
        try:
            level = float(severity)
        except ValueError:
            continue
        table.setdefault(name, {})[level] = float(v)
    return table, _number(metrics.get("mca"))


MEAN_PANEL = "mean over corruptions"


@dataclass(frozen=True)
class CorruptionData:
    """Per corruption (and :data:`MEAN_PANEL`, their mean per severity), one :class:`Series` per group."""

    names: tuple[str, ...]
    panels: dict[str, list[Series]]


def corruption_data(groups: Sequence[Group], band: str = "minmax") -> CorruptionData:
    """Per group and corruption: top-1 against severity (mean over seeds); per group a mean-over-corruptions line
    (each run's mean over its corruptions at each severity); ``score`` the mean mCA."""
    names: dict[str, None] = {}
    per_group: list[tuple[str, list[dict[str, dict[float, float]]], list[float]]] = []
    for g in groups:
        tables, mcas = [], []
        for run in g.runs:
            table, mca = corruption_table(_need(run.path, "corruptions"))
            if not table:
                raise UserError(f"plot: {run.path}'s corruptions result has no corruption_top1@<name>/<severity> "
                                f"values; recompute it with `mixbench evaluate {run.path} --only corruptions --force`")
            names.update(dict.fromkeys(table))
            tables.append(table)
            if mca is not None:
                mcas.append(mca)
        per_group.append((g.label, tables, mcas))
    panels: dict[str, list[Series]] = {MEAN_PANEL: []}
    for name in names:
        panels[name] = [aggregate(label, [t[name] for t in tables if name in t], band, mcas)
                        for label, tables, mcas in per_group if any(name in t for t in tables)]
    for label, tables, mcas in per_group:
        means = []
        for t in tables:
            severities = sorted({s for curve in t.values() for s in curve})
            means.append({s: math.fsum(c[s] for c in t.values() if s in c) / sum(s in c for c in t.values())
                          for s in severities})
        panels[MEAN_PANEL].append(aggregate(label, means, band, mcas))
    return CorruptionData(tuple(names), panels)


@dataclass(frozen=True)
class ReliabilityBins:
    """One run's reliability diagram in numbers: per bin b = (b/n_bins, (b+1)/n_bins] the image count, mean
    confidence and accuracy (fractions; None for an empty bin), and ECE / MCE (%) over ``n`` images."""

    label: str
    n_bins: int
    count: tuple[float, ...]
    confidence: tuple[float | None, ...]
    accuracy: tuple[float | None, ...]
    ece: float
    mce: float
    n: int


def reliability_bins(folder: Path, label: str = "") -> ReliabilityBins:
    """The per-bin sums stored in ``folder/reliability.png`` (see :mod:`mixbench.evaluate.calibration`), as bins."""
    from PIL import Image

    path = Path(folder) / "reliability.png"
    if not path.is_file():
        raise UserError(f"plot: {folder} has no reliability.png; compute it with "
                        f"`mixbench evaluate {folder} --only calibration`")
    try:
        with Image.open(path) as img:
            text = getattr(img, "text", {}).get(RELIABILITY_KEY)
    except OSError:
        text = None
    if text is None:
        raise UserError(f"plot: {path} holds no per-bin data (drawn by an older mixbench, or not a PNG); redraw it "
                        f"with `mixbench evaluate {folder} --only calibration --force`")
    try:
        record = json.loads(text)
        count = tuple(float(v) for v in record["count"])
        conf = tuple(float(v) for v in record["confidence_sum"])
        correct = tuple(float(v) for v in record["correct_sum"])
        n = int(record["n"])
        if not len(count) == len(conf) == len(correct) > 0:
            raise ValueError("bins of different lengths")
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"plot: {path}'s per-bin data is damaged ({type(e).__name__}); redraw it with "
                        f"`mixbench evaluate {folder} --only calibration --force`") from None
    gaps = [abs(k - c) / m for m, c, k in zip(count, conf, correct, strict=True) if m]
    return ReliabilityBins(
        label, len(count), count,
        tuple(c / m if m else None for m, c in zip(count, conf, strict=True)),
        tuple(k / m if m else None for m, k in zip(count, correct, strict=True)),
        100.0 * sum(abs(k - c) for c, k in zip(conf, correct, strict=True)) / max(n, 1),
        100.0 * max(gaps, default=0.0), n)


def reliability_data(groups: Sequence[Group]) -> list[ReliabilityBins]:
    """One :class:`ReliabilityBins` per run, labelled by its group and seed, groups in order."""
    out = []
    for g in groups:
        for run in sorted(g.runs, key=lambda r: (r.seed is None, r.seed or 0, str(r.path))):
            seed = f" · seed {run.seed}" if run.seed is not None else ""
            out.append(reliability_bins(run.path, f"{g.label}{seed}"))
    return out


# ----------------------------------------------------------------------------------------------- drawing


def _figure_class() -> Any:
    """matplotlib's ``Figure`` (object API, no pyplot), or a one-sentence :class:`UserError` saying how to get it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return Figure


def require_matplotlib() -> None:
    """Fail early, with the install hint, when matplotlib is missing."""
    _figure_class()


def canvas_size(kind: str, panels: int = 1) -> tuple[int, int]:
    """The PNG's (width, height) in pixels for ``kind`` with ``panels`` diagrams (reliability: runs;
    corruptions: corruption types + the mean panel)."""
    if kind == "curves":
        w, h = CURVES_INCHES
    elif kind == "occlusion":
        w, h = OCCLUSION_INCHES
    elif kind == "reliability":
        cols = min(panels, RELIABILITY_COLUMNS)
        w, h = RELIABILITY_PANEL[0] * cols, RELIABILITY_PANEL[1] * -(-panels // cols)
    elif kind == "corruptions":
        cols = min(panels, CORRUPTION_COLUMNS)
        w, h = CORRUPTION_PANEL[0] * cols, CORRUPTION_PANEL[1] * -(-panels // cols) + CORRUPTION_LEGEND
    else:
        raise ValueError(f"unknown plot kind {kind!r}; valid: {', '.join(KINDS)}")
    return round(w * DPI), round(h * DPI)


def _new_figure(kind: str, panels: int = 1) -> Any:
    w, h = canvas_size(kind, panels)
    return _figure_class()(figsize=(w / DPI, h / DPI), dpi=DPI, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    """Render ``fig`` as PNG (its exact canvas size) and write it atomically to ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def _color(i: int) -> str:
    return f"C{i % 10}"


def _line(ax: Any, s: Series, i: int, label: str, marker: str | None = None) -> None:
    ax.plot(s.x, s.mean, color=_color(i), label=label, marker=marker, markersize=3)
    if s.runs > 1:
        ax.fill_between(s.x, s.lo, s.hi, color=_color(i), alpha=0.2, linewidth=0)


def _runs_note(s: Series) -> str:
    return f" (n={s.runs})" if s.runs > 1 else ""


def draw_curves(data: CurveData, path: Path, band: str = "minmax") -> Path:
    """Two panels: ``data.metric`` per epoch and train loss per epoch, mean line and seed band per group."""
    fig = _new_figure("curves")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for i, s in enumerate(data.accuracy):
        _line(ax_acc, s, i, s.label + _runs_note(s), marker="o" if len(s.x) < 30 else None)
    labels = [s.label for s in data.accuracy]
    for s in data.loss:
        _line(ax_loss, s, labels.index(s.label), s.label)
    pct = data.metric in ("top1", "top5") or data.metric.endswith("top1")
    ax_acc.set(xlabel="epoch", ylabel=f"{data.metric} (%)" if pct else data.metric, title=f"test {data.metric}")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="train loss")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(fontsize=8)
    band_text = "min-max over seeds" if band == "minmax" else "±1 std over seeds"
    fig.suptitle(f"{data.title}  (band: {band_text})" if data.title else f"band: {band_text}", fontsize=10)
    return _save(fig, path)


def draw_occlusion(series: Sequence[Series], path: Path) -> Path:
    """Top-1 against occluder side (fraction of the image side), one line + seed band per group, AUC in the legend."""
    fig = _new_figure("occlusion")
    ax = fig.subplots()
    for i, s in enumerate(series):
        auc = f", AUC {s.score:.1f}" if s.score is not None else ""
        _line(ax, s, i, f"{s.label}{_runs_note(s)}{auc}", marker="o")
    ax.set(xlabel="occluder side (fraction of the image side)", ylabel="top-1 (%)",
           title="occlusion robustness", xlim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def draw_corruptions(data: CorruptionData, path: Path) -> Path:
    """One panel per corruption (and the mean), top-1 against severity, one line + band per group; legend below."""
    titles = [MEAN_PANEL, *data.names]
    fig = _new_figure("corruptions", len(titles))
    cols = min(len(titles), CORRUPTION_COLUMNS)
    axes = fig.subplots(-(-len(titles) // cols), cols, sharey=True, squeeze=False).ravel()
    order = [s.label for s in data.panels[MEAN_PANEL]]
    for ax, title in zip(axes, titles, strict=False):
        for s in data.panels[title]:
            i = order.index(s.label)
            mca = f", mCA {s.score:.1f}" if s.score is not None else ""
            _line(ax, s, i, f"{s.label}{_runs_note(s)}{mca}", marker="o")
        ax.set_title(title.replace("_", " "), fontsize=9)
        ax.set_xticks([1, 2, 3, 4, 5])
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(titles):]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("top-1 (%)", fontsize=8)
    for ax in axes[:len(titles)][-cols:]:
        ax.set_xlabel("severity", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize=8)
    return _save(fig, path)


def draw_reliability(diagrams: Sequence[ReliabilityBins], path: Path) -> Path:
    """One reliability diagram per run: accuracy per confidence bin (bars), each bin's mean confidence (ticks),
    the diagonal of perfect calibration and the bin counts (a grey outline, scaled to the fullest bin); ECE and
    MCE in the title."""
    fig = _new_figure("reliability", len(diagrams))
    cols = min(len(diagrams), RELIABILITY_COLUMNS)
    axes = fig.subplots(-(-len(diagrams) // cols), cols, squeeze=False).ravel()
    for ax, d in zip(axes, diagrams, strict=False):
        width = 1.0 / d.n_bins
        lefts = [b * width for b in range(d.n_bins)]
        most = max(d.count, default=0.0) or 1.0
        ax.bar(lefts, [a or 0.0 for a in d.accuracy], width=width, align="edge", color="C0", edgecolor="white",
               linewidth=0.5, alpha=0.8, label="accuracy")
        ax.stairs([c / most for c in d.count], [*lefts, 1.0], color="0.35", linewidth=1, label="images (scaled)")
        shown = [(x + width / 2, c) for x, c in zip(lefts, d.confidence, strict=True) if c is not None]
        if shown:
            ax.scatter(*zip(*shown, strict=True), marker="_", s=60, color="C3", label="mean confidence", zorder=3)
        ax.plot([0, 1], [0, 1], color="C3", linewidth=1, linestyle="--")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", aspect="equal")
        ax.set_title(f"{d.label}\nECE {d.ece:.2f}%  MCE {d.mce:.2f}%  N={d.n}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(diagrams):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=6, loc="upper left", framealpha=0.9)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class PlotResult:
    """What ``plot`` wrote: the file, its kind, the runs and groups it shows, its pixel size."""

    path: Path
    kind: str
    runs: int
    groups: int
    size: tuple[int, int]


def plot(paths: Sequence[Path], kind: str, out: Path, *, metric: str = "top1", band: str = "minmax") -> PlotResult:
    """Draw ``kind`` for the runs in ``paths`` (run folders or folders holding runs) into the PNG ``out``."""
    if kind not in KINDS:
        raise UserError(f"plot: unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    if band not in BANDS:
        raise UserError(f"plot: unknown band {band!r}; valid: {', '.join(BANDS)}")
    if Path(out).suffix.lower() != ".png":
        raise UserError(f"plot: --out {out}: expected a .png file name")
    require_matplotlib()
    runs = [run_info(p) for p in resolve_runs(paths)]
    groups = group_runs(runs)
    if kind == "curves":
        path, panels = draw_curves(curve_data(groups, metric, band), out, band), 1
    elif kind == "occlusion":
        path, panels = draw_occlusion(occlusion_data(groups, band), out), 1
    elif kind == "corruptions":
        data = corruption_data(groups, band)
        path, panels = draw_corruptions(data, out), len(data.names) + 1
    else:
        diagrams = reliability_data(groups)
        path, panels = draw_reliability(diagrams, out), len(diagrams)
    return PlotResult(path, kind, len(runs), len(groups), canvas_size(kind, panels))


__all__ = ["KINDS", "BANDS", "RunInfo", "Group", "Series", "CurveData", "CorruptionData", "ReliabilityBins",
           "PlotResult", "resolve_runs", "run_info", "group_runs", "aggregate", "metric_by_epoch", "curve_data",
           "latest_result", "occlusion_curve", "occlusion_data", "corruption_table", "corruption_data",
           "reliability_bins", "reliability_data", "canvas_size", "require_matplotlib", "draw_curves",
           "draw_occlusion", "draw_corruptions", "draw_reliability", "plot"]
