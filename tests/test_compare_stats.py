"""``mixbench compare`` statistics, ranking and the paper layout (issue 13).

Every run folder here is hand-made with a known headline top-1 (summary.json's stored median), so the
mean, sample std, Student-t interval and Welch's p are checked against hand computations and scipy.
"""

from __future__ import annotations

import io
import json
import math
import statistics

import pandas as pd
import pytest
from typer.testing import CliRunner

from mixbench.cli import app
from mixbench.errors import UserError
from mixbench.results import leaderboard as lb
from mixbench.results.leaderboard import collect_runs, leaderboard, render, render_pivot, t_interval, welch_p

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (a printed table's 4.303)


def make_run(root, method, seed, top1, *, dataset="cifar100", backbone="resnet18_cifar", epochs=4, summary=None):
    """A complete hand-made run folder: summary.json (headline top-1 stored as the median of the last 1),
    meta.json, a metrics.jsonl covering every epoch and a stand-in checkpoint.pt; returns its path."""
    run_id = f"seed{seed}-{method[:6]:0<6}"
    d = root / f"{dataset}_{backbone}_{epochs}_{method}" / run_id
    d.mkdir(parents=True)
    s = {"schema": 1, "name": f"{dataset}_{method}", "run_id": run_id, "method": method, "dataset": dataset,
         "backbone": backbone, "loss": "ce", "epochs": epochs, "epochs_done": epochs, "status": "completed",
         "top1_median": top1, "median_window": 1, "top1_best": top1 + 1, "top1_last": top1,
         "wall_time_s": 60.0, "images_per_s": 100.0, "mixer_ms_per_step": 1.0} | (summary or {})
    (d / "summary.json").write_text(json.dumps(s))
    (d / "meta.json").write_text(json.dumps({"status": "completed", "method": method, "run_id": run_id}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "top1": top1}) + "\n"
                                             for e in range(1, epochs + 1)))
    (d / "checkpoint.pt").write_bytes(b"stand-in")
    return d


def make_eval(run, evaluator, metrics, *, digest="abc123", protocol=None, created="2024-05-01T10:00:00+00:00"):
    """``RUN/evals/<evaluator>-<digest>/result.json`` as mixbench.evaluate.store writes it."""
    d = run / "evals" / f"{evaluator}-{digest}"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({
        "evaluator": evaluator, "protocol": protocol or {"seed": 0}, "metrics": metrics,
        "checkpoint_sha256": "0" * 64, "seconds": 1.0, "created": created}))


VANILLA, MIXUP, CUTMIX = [76.0, 77.0, 78.0], [78.0, 79.0, 80.5], [79.0]


@pytest.fixture
def seeds(tmp_path):
    """cifar100: vanilla and mixup over three seeds, cutmix one; cifar10: vanilla and mixup one seed each."""
    for method, values in (("vanilla", VANILLA), ("mixup", MIXUP), ("cutmix", CUTMIX)):
        for seed, v in enumerate(values):
            make_run(tmp_path, method, seed, v)
    make_run(tmp_path, "vanilla", 0, 90.0, dataset="cifar10")
    make_run(tmp_path, "mixup", 0, 91.5, dataset="cifar10")
    return tmp_path


def _groups(root, capsys, **kw):
    groups = leaderboard(collect_runs([root]), **kw)
    assert not capsys.readouterr().err  # every hand-made run is clean: no warning
    return groups


def _group(groups, dataset="cifar100"):
    g = next(g for g in groups if g.dataset == dataset)
    return g, {r["method"]: r for r in g.rows}


def _cli(*args):
    return CliRunner().invoke(app, ["compare", *map(str, args)])


def _set_summary(run, **fields):
    path = run / "summary.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | fields))


# --- mean ± std, n, 95 % interval, Welch's p ------------------------------------------------------------------------

def test_mean_std_interval_and_welch_p_by_hand(seeds, capsys):
    g, rows = _group(_groups(seeds, capsys))
    mix, van, cut = rows["mixup"], rows["vanilla"], rows["cutmix"]
    assert [r["method"] for r in g.rows] == ["vanilla", "mixup", "cutmix"] and g.metric == "top1"
    assert mix["n"] == 3 and mix["top1"] == pytest.approx(statistics.mean(MIXUP))
    assert mix["top1_std"] == pytest.approx(statistics.stdev(MIXUP))
    half = T_975_DF2 * statistics.stdev(MIXUP) / math.sqrt(3)
    assert (mix["ci_low"], mix["ci_high"]) == pytest.approx((statistics.mean(MIXUP) - half,
                                                             statistics.mean(MIXUP) + half))
    assert (van["ci_low"], van["ci_high"]) == pytest.approx((77.0 - T_975_DF2 / math.sqrt(3),
                                                             77.0 + T_975_DF2 / math.sqrt(3)))
    # Welch by hand: t = Δ / sqrt(s1²/n1 + s2²/n2), Welch-Satterthwaite df, two-sided p from Student t
    from scipy import stats

    va, vb = statistics.variance(MIXUP) / 3, statistics.variance(VANILLA) / 3
    t = (statistics.mean(MIXUP) - statistics.mean(VANILLA)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    assert mix["p_vanilla"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert mix["p_vanilla"] == pytest.approx(stats.ttest_ind(MIXUP, VANILLA, equal_var=False).pvalue)
    assert mix["delta"] == pytest.approx(statistics.mean(MIXUP) - 77.0)
    assert van["p_vanilla"] is None and van["delta"] == 0.0  # the baseline itself
    assert cut["n"] == 1 and cut["ci_low"] is None and cut["p_vanilla"] is None  # one seed: no interval, no test
    table = render([g], "table")
    header = table.splitlines()[1]
    assert header.index("top-1 (median of last 1)") < header.index("95% CI") < header.index("p vs vanilla") \
        < header.index("Δ vanilla")
    line = next(x for x in table.splitlines() if x.startswith("mixup"))
    assert "79.17 ± 1.26" in line and f"[{mix['ci_low']:.2f}, {mix['ci_high']:.2f}]" in line and "0.083" in line
    assert table.splitlines()[-1].startswith("stats: 95% CI = mean ± t(0.975, n-1) * std / sqrt(n)")
    csv_rows = pd.read_csv(io.StringIO(render([g], "csv")))
    assert csv_rows["p_vanilla"].tolist()[1] == pytest.approx(mix["p_vanilla"])
    assert csv_rows["metric"].tolist() == ["top1"] * 3
    assert json.loads(render([g], "json"))[0]["rows"][1]["ci_high"] == pytest.approx(mix["ci_high"])


def test_no_p_without_two_vanilla_seeds(seeds, capsys):
    g, rows = _group(_groups(seeds, capsys), "cifar10")  # one seed each
    assert all(r["p_vanilla"] is None and r["ci_low"] is None for r in g.rows)
    header = render([g], "table").splitlines()[1]
    assert "95% CI" not in header and "p vs vanilla" not in header and "stats:" not in render([g], "table")
    g, rows = _group(_groups(seeds, capsys))
    assert rows["vanilla"]["ci_low"] is not None and rows["cutmix"]["p_vanilla"] is None


def test_interval_and_welch_edge_cases():
    assert t_interval([]) is None and t_interval([70.0]) is None
    assert t_interval([70.0, 72.0]) == pytest.approx((71.0 - 12.706204736, 71.0 + 12.706204736))  # std/√n = 1
    assert welch_p([1.0], [1.0, 2.0]) is None and welch_p([1.0, 2.0], [3.0]) is None
    assert welch_p([80.0, 80.0], [80.0, 80.0]) is None  # no variance and no difference: no p, no warning
    assert welch_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


# --- --metric: the ranking column ------------------------------------------------------------------------------------

def _with_evals(root):
    """The seeds fixture's cifar100 runs with linear results and ECE that rank the other way round from top-1."""
    runs = {(p.parent.name.split("_")[-1], int(p.name[4])): p for p in root.glob("cifar100_*/seed*")}
    for (method, seed), linear in {("vanilla", 0): 40.0, ("vanilla", 1): 41.0, ("vanilla", 2): 42.0,
                                   ("mixup", 0): 50.0, ("mixup", 1): 51.0, ("mixup", 2): 53.0,
                                   ("cutmix", 0): 60.0}.items():
        make_eval(runs[method, seed], "linear", {"linear_top1": linear})
    for (method, seed), ece in {("vanilla", 0): 5.0, ("vanilla", 1): 6.0, ("vanilla", 2): 7.0,
                                ("mixup", 0): 3.0, ("mixup", 1): 2.0, ("cutmix", 0): 2.8}.items():
        _set_summary(runs[method, seed], ece=ece)  # mixup seed 2 has no ECE
    return root


def test_metric_ranks_and_carries_the_statistics(seeds, capsys):
    _with_evals(seeds)
    g, rows = _group(_groups(seeds, capsys, metric="linear"))
    assert g.metric == "linear" and [r["method"] for r in g.rows] == ["vanilla", "cutmix", "mixup"]
    mix = rows["mixup"]
    assert mix["linear"] == pytest.approx(51.333333) and mix["linear_std"] == pytest.approx(1.527525)
    assert mix["linear_n"] == 3 and mix["delta"] == pytest.approx(51.333333 - 41.0)
    from scipy import stats

    assert mix["p_vanilla"] == pytest.approx(stats.ttest_ind([50.0, 51.0, 53.0], [40.0, 41.0, 42.0],
                                                             equal_var=False).pvalue)
    table = render([g], "table")
    header = table.splitlines()[1]
    assert header.split()[:4] == ["method", "n", "linear", "top-1"] and header.index("95% CI") < header.index(
        "top-1 (median of last 1)")
    assert "ranking: linear top-1, higher is better; 95% CI, p and Δ vanilla are of linear top-1" in table


def test_ece_ranks_ascending(seeds, capsys):
    _with_evals(seeds)
    groups = _groups(seeds, capsys, metric="ECE")  # names are case-insensitive
    g, rows = _group(groups)
    assert [r["method"] for r in g.rows] == ["vanilla", "mixup", "cutmix"]  # 2.50 before 2.80: lower is better
    assert rows["mixup"]["ece"] == pytest.approx(2.5) and rows["mixup"]["ece_n"] == 2  # only two runs have it
    assert rows["mixup"]["delta"] == pytest.approx(-3.5)
    line = next(x for x in render([g], "table").splitlines() if x.startswith("mixup"))
    assert "2.50 ± 0.71 (n=2)" in line  # the mean of 2 of the row's 3 runs, and it says so
    assert "ranking: ece, lower is better" in render([g], "table")
    other, _ = _group(groups, "cifar10")  # no ECE there: ranked by top-1, and the table says so
    assert other.metric == "top1" and other.notes == ["note: no run in this table has ece; rows are ranked by top-1"]
    assert [r["method"] for r in other.rows] == ["vanilla", "mixup"]


@pytest.mark.parametrize("args,phrase", [
    (["--metric", "accuracy"], "error: compare: unknown metric 'accuracy'; valid: top1, linear, knn, ece, mca, "
                               "occlusion, fgsm, transfer:<target data set> (e.g. transfer:tiny-imagenet)"),
    (["--metric", "transfer:"], "error: compare: unknown metric 'transfer:'"),
    (["--metric", "mca"], "error: compare: no completed run has a mca result to rank by; "
                          "metrics with values here: top1"),
    (["--pivot", "--format", "csv"], "error: compare: --pivot lays out table, markdown, latex output, not csv; "
                                     "use --format markdown or --format latex"),
])
def test_bad_metric_or_pivot_format_is_one_sentence_exit_2(seeds, args, phrase):
    r = _cli(seeds, *args)
    assert r.exit_code == 2 and r.stdout == "" and "Traceback" not in r.output
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(phrase)


def test_metric_name_is_checked_before_reading_runs():
    with pytest.raises(UserError, match="unknown metric 'top5'"):
        leaderboard(pd.DataFrame(), metric="top5")
    assert lb.check_metric(" Top-1 ") == "top1" and lb.check_metric("Transfer: stl10") == "transfer:stl10"


# --- evaluator columns: transfer:<data>, mCA, occlusion area, FGSM ---------------------------------------------------

def _robust(root):
    """vanilla and mixup, two seeds each, with corruption, occlusion, FGSM and transfer results."""
    v = [make_run(root, "vanilla", s, 70.0 + s, dataset="shapes") for s in range(2)]
    m = [make_run(root, "mixup", s, 72.0 + s, dataset="shapes") for s in range(2)]
    for runs, mca, area, fgsm in ((v, 50.0, 40.0, 20.0), (m, 56.0, 45.0, 25.0)):
        for i, run in enumerate(runs):
            make_eval(run, "corruptions", {"mca": mca + i, "corruption_top1@noise/1": 60.0})
            make_eval(run, "occlusion", {"occlusion_auc": area + i, "occlusion_top1@0.5": 30.0})
            make_eval(run, "fgsm", {"fgsm_top1": fgsm + i, "fgsm_clean_top1": 70.0})
    tiny = {"data": "tiny-imagenet", "mode": "linear", "epochs": 100}
    make_eval(v[0], "transfer", {"transfer_top1": 30.0}, digest="t1", protocol=tiny)
    make_eval(v[1], "transfer", {"transfer_top1": 32.0}, digest="t1", protocol=tiny)
    make_eval(m[0], "transfer", {"transfer_top1": 99.0}, digest="t0", protocol=tiny,
              created="2024-01-01T00:00:00+00:00")  # older: the newer result below counts
    make_eval(m[0], "transfer", {"transfer_top1": 36.0}, digest="t2", protocol=tiny | {"mode": "finetune"})
    make_eval(m[1], "transfer", {"transfer_top1": 38.0}, digest="t2", protocol=tiny | {"mode": "finetune"})
    make_eval(m[1], "transfer", {"transfer_top1": 61.0}, digest="c1", protocol={"data": "cifar10"})  # no mode
    return v, m


def test_robustness_and_transfer_columns_from_result_files(tmp_path, capsys):
    _robust(tmp_path)
    g, rows = _group(_groups(tmp_path, capsys), "shapes")
    mix, van = rows["mixup"], rows["vanilla"]
    assert (mix["mca"], mix["occlusion"], mix["fgsm"]) == (56.5, 45.5, 25.5)
    assert mix["transfer:tiny-imagenet"] == 37.0 and van["transfer:tiny-imagenet"] == 31.0
    assert mix["transfer:cifar10"] == 61.0 and van["transfer:cifar10"] is None
    assert g.notes == ["note: transfer:cifar10: transfer_top1 on cifar10, mode ?",
                       "note: transfer:tiny-imagenet: transfer_top1 on tiny-imagenet, modes differ: "
                       "finetune (mixup); linear (vanilla)"]
    table = render([g], "table")
    header = table.splitlines()[1]
    order = ["Δ vanilla", "transfer:cifar10", "transfer:tiny-imagenet", "mCA", "occlusion area", "FGSM top-1",
             "wall (min)"]
    assert [header.index(h) for h in order] == sorted(header.index(h) for h in order)
    assert "37.00" in table and "56.50" in table and "45.50" in table and "25.50" in table
    assert all(note in table for note in g.notes)
    assert pd.read_csv(io.StringIO(render([g], "csv")))["transfer:tiny-imagenet"].tolist() == [31.0, 37.0]
    r = _cli(tmp_path, "--metric", "transfer:tiny-imagenet", "--format", "json")
    assert r.exit_code == 0 and r.stderr == ""
    group = json.loads(r.stdout)[0]
    assert group["metric"] == "transfer:tiny-imagenet"
    assert group["rows"][1]["transfer:tiny-imagenet_n"] == 2 and group["rows"][1]["delta"] == 6.0
    r = _cli(tmp_path, "--metric", "transfer:tiny-imagenet")
    header = r.stdout.splitlines()[1]
    assert r.exit_code == 0 and header.split()[:3] == ["method", "n", "transfer:tiny-imagenet"]
    assert header.count("transfer:tiny-imagenet") == 1 and "_std" not in header and "_n " not in header
    assert "37.00 ± 1.41" in r.stdout and "ranking: transfer:tiny-imagenet, higher is better" in r.stdout
    make_run(tmp_path, "vanilla", 0, 80.0, dataset="cifar10")  # a table without transfer results comes first
    r = _cli(tmp_path, "--metric", "transfer:tiny-imagenet", "--pivot", "-f", "markdown")
    assert r.exit_code == 0 and r.stdout.startswith("### transfer:tiny-imagenet, by data set and backbone")
    assert "| mixup    | -                                     | **37.00** ± 1.41" in r.stdout
    r = _cli(tmp_path, "--metric", "transfer:imagenet")
    assert r.exit_code == 2 and "metrics with values here: top1, transfer:cifar10, transfer:tiny-imagenet, mca, " \
        "occlusion, fgsm" in r.stderr
    r = _cli(tmp_path, "--metric", "occlusion")
    assert r.exit_code == 0 and "ranking: occlusion area, higher is better" in r.stdout


@pytest.mark.parametrize("record,phrase", [
    ({"evaluator": "transfer", "protocol": {"mode": "linear"}, "metrics": {"transfer_top1": 30.0}},
     "evals/transfer-bad/result.json has protocol data None (NoneType), not a target data set name, not averaged"),
    ({"evaluator": "transfer", "protocol": "tiny-imagenet", "metrics": {"transfer_top1": 30.0}},
     "evals/transfer-bad/result.json has no protocol object, not a target data set name, not averaged"),
    ({"evaluator": "transfer", "protocol": {"data": "stl10"}, "metrics": {"top1": 30.0}},
     "evals/transfer-bad/result.json has no transfer_top1, transfer:stl10 not averaged"),
    ({"evaluator": "transfer", "protocol": {"data": "stl10"}, "metrics": {"transfer_top1": 130.0}},
     "evals/transfer-bad/result.json's transfer_top1 is 130.0, above 100 %, not averaged"),
    ({"evaluator": "corruptions", "protocol": {}, "metrics": {"mca": float("nan")}},
     "evals/corruptions-bad/result.json's mca is NaN, not averaged"),
])
def test_bad_transfer_and_robustness_results_are_warned_and_left_out(tmp_path, capsys, record, phrase):
    run = make_run(tmp_path, "mixup", 0, 70.0)
    make_run(tmp_path, "mixup", 1, 72.0)
    d = run / "evals" / f"{record['evaluator']}-bad"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(record))
    groups = leaderboard(collect_runs([tmp_path]))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].endswith(f"{run.name}: {phrase}")
    row = groups[0].rows[0]
    assert row["n"] == 2 and not any(k.startswith("transfer:") or k == "mca" for k in row)


# --- --pivot: OpenMixup's layout -------------------------------------------------------------------------------------

PIVOT_MARKDOWN = """\
### top-1 (median of last 1), by data set and backbone
| method            | cifar10 · resnet18_cifar · 4 epochs   | cifar100 · resnet18_cifar · 4 epochs   |
|-------------------|---------------------------------------|----------------------------------------|
| vanilla           | 90.00                                 | 77.00 ± 1.00                           |
| mixup             | **91.50**                             | **79.17** ± 1.26                       |
| mixup (published) | -                                     | 78.52                                  |
| cutmix            | -                                     | 79.00                                  |
| samix (published) | -                                     | 81.21                                  |

cells: mean ± std over seeds where n >= 2, else one run's value; bold: best measured value per column; \
(published): OpenMixup's numbers, never marked"""

PIVOT_LATEX = r"""% top-1 (median of last 1), by data set and backbone
\begin{tabular}{lcc}
\toprule
method & cifar10, resnet18\_cifar, 4 epochs & cifar100, resnet18\_cifar, 4 epochs \\
\midrule
vanilla & 90.00 & 77.00 $\pm$ 1.00 \\
mixup & \textbf{91.50} & \textbf{79.17} $\pm$ 1.26 \\
mixup (published) & - & 78.52 \\
cutmix & - & 79.00 \\
samix (published) & - & 81.21 \\
\bottomrule
\end{tabular}
% cells: mean ± std over seeds where n >= 2, else one run's value; bold: best measured value per column; """ \
    "(published): OpenMixup's numbers, never marked"


@pytest.fixture
def published(seeds, tmp_path_factory, monkeypatch):
    """The seeds fixture plus two published rows for its cifar100 table (a method run here and one not)."""
    ref = tmp_path_factory.mktemp("ref") / "reference.csv"
    ref.write_text("dataset,backbone,epochs,method,alpha,top1,note\n"
                   "cifar100,resnet18_cifar,4,mixup,1,78.52,median of last 10\n"
                   "cifar100,resnet18_cifar,4,samix,2,81.21,median of last 10\n")
    monkeypatch.setattr(lb, "REFERENCE_CSV", ref)
    return seeds


def test_pivot_markdown_and_latex_exactly(published):
    """Methods down, tables across; mean ± std where n >= 2; the best measured value bold; published rows under
    their method (never bold, though samix's 81.21 is the highest number in its column)."""
    for fmt, expected in (("markdown", PIVOT_MARKDOWN), ("latex", PIVOT_LATEX)):
        r = _cli(published, "--pivot", "--reference", "--format", fmt)
        assert r.exit_code == 0 and r.stderr == "", r.output
        assert r.stdout == expected + "\n"


def test_pivot_terminal_table_marks_the_best_with_a_star(published):
    r = _cli(published, "--pivot", "--reference")
    lines = r.stdout.splitlines()
    assert r.exit_code == 0 and lines[0] == "top-1 (median of last 1), by data set and backbone"
    assert lines[4].split() == ["mixup", "91.50", "*", "79.17", "±", "1.26", "*"]
    assert lines[-1].startswith("cells: mean ± std over seeds where n >= 2, else one run's value; *: best")


def test_pivot_by_ece_bolds_the_lowest_and_carries_notes(seeds, capsys):
    _with_evals(seeds)
    groups = _groups(seeds, capsys, metric="ece")
    text = render_pivot(groups, "markdown", metric="ece")
    assert text.splitlines()[0] == "### ece, by data set and backbone"
    rows = {x.split("|")[1].strip(): [c.strip() for c in x.split("|")[2:4]] for x in text.splitlines()[3:6]}
    assert rows == {"vanilla": ["-", "6.00 ± 1.00"], "mixup": ["-", "**2.50** ± 0.71"], "cutmix": ["-", "2.80"]}
    assert "note: cifar10 · resnet18_cifar · 4 epochs: no run in this table has ece; rows are ranked by top-1" \
        in text
    latex = render_pivot(groups, "latex", metric="ece")
    assert "mixup & - & \\textbf{2.50} $\\pm$ 0.71 \\\\" in latex
    assert "% note: cifar10 · resnet18_cifar · 4 epochs: no run in this table has ece" in latex


def test_pivot_escapes_and_needs_two_values_for_a_best(tmp_path, capsys):
    make_run(tmp_path, "mixup", 0, 70.0, dataset="my_data&co")
    groups = _groups(tmp_path, capsys)
    latex = render_pivot(groups, "latex")
    assert "method & my\\_data\\&co, resnet18\\_cifar, 4 epochs \\\\" in latex
    assert "mixup & 70.00 \\\\" in latex and "textbf" not in latex.split("midrule")[1]  # one value: nothing to beat
    assert lb.latex_escape("a\\b_{c}~^%$#") == r"a\textbackslash{}b\_\{c\}\textasciitilde{}\textasciicircum{}\%\$\#"
    with pytest.raises(UserError, match="--pivot lays out table, markdown, latex output, not json"):
        render_pivot(groups, "json")


def test_plain_compare_cli_still_warns_about_unfinished_runs(seeds):
    """Traceability: runs that are not averaged still get their warning line, with --metric and --pivot too."""
    make_run(seeds, "mixup", 7, 10.0, summary={"status": "interrupted", "epochs_done": 2})
    for args in ([], ["--pivot", "-f", "markdown"], ["--metric", "top-1"]):
        r = _cli(seeds, *args)
        assert r.exit_code == 0
        seed7 = [x for x in r.stderr.splitlines() if "seed7" in x]
        assert len(seed7) == 1 and seed7[0].startswith("warning: ")
        assert seed7[0].endswith("status interrupted after 2 of 4 epochs, not averaged")
    assert "1 interrupted" in _cli(seeds).stdout
