"""``mixbench plot``: exact series from hand-written run folders; real PNGs from tiny real runs."""

from __future__ import annotations

import builtins
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mixbench import plots
from mixbench.cli import app
from mixbench.errors import UserError
from mixbench.evaluate import EvalContext, calibration_counts, reliability_diagram
from mixbench.evaluate.calibration import RELIABILITY_KEY
from mixbench.plots import (
    MEAN_PANEL,
    Series,
    aggregate,
    canvas_size,
    corruption_data,
    corruption_table,
    curve_data,
    group_runs,
    latest_result,
    metric_by_epoch,
    occlusion_curve,
    occlusion_data,
    reliability_bins,
    resolve_runs,
    run_info,
)
from tests.conftest import TINY

# ------------------------------------------------------------------------------ hand-written run folders


def make_run(root: Path, name: str, method: str, seed: int, config: str = "abc123", *, loss: str = "ce",
             metrics: list[dict] | None = None, evals: dict[str, list[dict]] | None = None) -> Path:
    """A run folder as mixbench writes one: summary.json, metrics.jsonl and evals/<evaluator>-<hash>/result.json."""
    run = root / name / f"seed{seed}-{config}"
    run.mkdir(parents=True)
    summary = {"name": name, "run_id": f"seed{seed}-{config}", "method": method, "dataset": "shapes",
               "backbone": "resnet18_cifar", "loss": loss, "epochs": 3, "epochs_done": 3, "status": "completed"}
    (run / "summary.json").write_text(json.dumps(summary))
    if metrics is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    for evaluator, results in (evals or {}).items():
        for i, result in enumerate(results):
            folder = run / "evals" / f"{evaluator}-{i:012d}"
            folder.mkdir(parents=True)
            (folder / "result.json").write_text(json.dumps({"evaluator": evaluator, **result}))
    return run


def lines(top1: list[float | None], loss: list[float]) -> list[dict]:
    return [{"epoch": e, "train_loss": lo, "top1": t, "top5": 90.0}
            for e, (t, lo) in enumerate(zip(top1, loss, strict=True), 1)]


def groups_of(*paths: Path):
    return group_runs([run_info(p) for p in paths])


def test_aggregate_minmax_and_std_exactly():
    runs = [{1.0: 10.0, 2.0: 20.0}, {1.0: 14.0, 2.0: 26.0, 3.0: 30.0}]
    s = aggregate("m", runs, "minmax", scores=[1.0, 2.0])
    assert s == Series("m", (1.0, 2.0, 3.0), (12.0, 23.0, 30.0), (10.0, 20.0, 30.0), (14.0, 26.0, 30.0),
                       (2, 2, 1), 2, 1.5)
    sd = aggregate("m", runs, "std")
    assert sd.lo[0] == 12.0 - statistics.stdev([10.0, 14.0]) and sd.hi[1] == 23.0 + statistics.stdev([20.0, 26.0])
    assert (sd.lo[2], sd.hi[2], sd.score) == (30.0, 30.0, None)  # one run: no spread
    assert aggregate("m", [], "std") == Series("m", (), (), (), (), (), 0, None)
    with pytest.raises(ValueError, match="band"):
        aggregate("m", runs, "iqr")


def test_metric_by_epoch_drops_unevaluated_and_bad_values():
    got = metric_by_epoch([{"epoch": 1, "top1": None}, {"epoch": 2, "top1": 5}, {"epoch": 3, "top1": float("nan")},
                           {"epoch": 4, "top1": True}, {"epoch": 5, "top1": "7"}, {"epoch": 6, "top1": 7.5}], "top1")
    assert got == {2.0: 5.0, 6.0: 7.5}


def test_groups_by_method_loss_and_config_with_unique_labels(tmp_path):
    a0 = make_run(tmp_path, "r", "mixup", 0)
    a1 = make_run(tmp_path, "r", "mixup", 1)
    b = make_run(tmp_path, "r2", "mixup", 0, config="def456")  # same method, another config: another line
    c = make_run(tmp_path, "r3", "mixup", 0, config="999999", loss="dm")
    d = make_run(tmp_path, "v", "vanilla", 0, config="777777")
    groups = groups_of(a0, b, a1, c, d)
    assert [g.label for g in groups] == ["mixup (r)", "mixup (r2)", "mixup + dm", "vanilla"]
    assert [len(g.runs) for g in groups] == [2, 1, 1, 1]
    info = run_info(a1)
    assert (info.seed, info.config, info.label, info.dataset) == (1, "abc123", "mixup", "shapes")
    same = groups_of(make_run(tmp_path / "x", "r", "mixup", 0, config="aaaaaa"),
                     make_run(tmp_path / "y", "r", "mixup", 0, config="bbbbbb"))
    assert [g.label for g in same] == ["mixup (r) (aaaaaa)", "mixup (r) (bbbbbb)"]  # same name: the hash decides


def test_resolve_runs_expands_folders_and_refuses_non_runs(tmp_path):
    a = make_run(tmp_path / "res", "r", "mixup", 0)
    b = make_run(tmp_path / "res", "r", "mixup", 1)
    assert resolve_runs([tmp_path / "res", a]) == [a, b]  # each once, the folder searched below
    with pytest.raises(UserError, match="is not a folder"):
        resolve_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds none .*mixbench run RECIPE"):
        resolve_runs([tmp_path / "empty"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text(json.dumps({"method": 3, "status": "completed"}))
    with pytest.raises(UserError, match="not a string"):
        run_info(tmp_path / "bad")


def test_curve_data_means_and_bands_exactly(tmp_path):
    v0 = make_run(tmp_path, "v", "vanilla", 0, metrics=lines([10.0, None, 30.0], [2.0, 1.5, 1.0]))
    v1 = make_run(tmp_path, "v", "vanilla", 1, metrics=lines([20.0, 25.0, 40.0], [2.2, 1.7, 1.2]))
    m0 = make_run(tmp_path, "m", "mixup", 0, config="fff000", metrics=lines([5.0, 6.0], [2.5, 2.4]))
    data = curve_data(groups_of(v0, v1, m0), "top1", "minmax")
    mix, van = data.accuracy
    assert (mix.label, mix.x, mix.mean, mix.runs) == ("mixup", (1.0, 2.0), (5.0, 6.0), 1)
    assert van == Series("vanilla", (1.0, 2.0, 3.0), (15.0, 25.0, 35.0), (10.0, 25.0, 30.0), (20.0, 25.0, 40.0),
                         (2, 1, 2), 2)
    assert data.loss[1].mean == (2.1, 1.6, 1.1) and data.loss[1].lo == (2.0, 1.5, 1.0)
    assert data.metric == "top1" and data.title == "shapes · resnet18_cifar"
    top5 = curve_data(groups_of(v0), "top5")
    assert top5.accuracy[0].mean == (90.0, 90.0, 90.0)


def test_curve_data_names_the_missing_metric_and_file(tmp_path):
    v0 = make_run(tmp_path, "v", "vanilla", 0, metrics=lines([10.0], [2.0]))
    with pytest.raises(UserError, match=r"no 'top9' values; --metric takes one of: top1, top5, train_loss"):
        curve_data(groups_of(v0), "top9")
    bare = make_run(tmp_path, "b", "vanilla", 0, config="bbb111")
    with pytest.raises(UserError, match=f"{bare} has no metrics.jsonl .*mixbench run RECIPE"):
        curve_data(groups_of(bare))


def occ(values: dict[float, float], auc: float, created: str) -> dict:
    return {"created": created, "metrics": {**{f"occlusion_top1@{s:g}": a for s, a in values.items()},
                                            "occlusion_auc": auc}}


def test_occlusion_series_newest_result_and_mean_auc(tmp_path):
    a = make_run(tmp_path, "v", "vanilla", 0, evals={"occlusion": [
        occ({0.0: 1.0, 0.5: 1.0}, 1.0, "2024-01-02T00:00:00+00:00"),  # older: ignored
        occ({0.0: 90.0, 0.5: 50.0}, 70.0, "2024-03-01T00:00:00+00:00")]})
    b = make_run(tmp_path, "v", "vanilla", 1, evals={"occlusion": [occ({0.0: 80.0, 0.5: 40.0}, 60.0, "2024-01-01")]})
    assert latest_result(a, "occlusion")["occlusion_auc"] == 70.0
    assert occlusion_curve({"occlusion_top1@0.1": 5, "occlusion_top1@x": 1, "occlusion_auc": None}) == ({0.1: 5.0},
                                                                                                        None)
    (s,) = occlusion_data(groups_of(a, b))
    assert s == Series("vanilla", (0.0, 0.5), (85.0, 45.0), (80.0, 40.0), (90.0, 50.0), (2, 2), 2, 65.0)
    none = make_run(tmp_path, "n", "mixup", 0, config="ccc222")
    with pytest.raises(UserError) as e:
        occlusion_data(groups_of(none))
    assert str(e.value) == (f"plot: {none} has no occlusion result (evals/occlusion-*/result.json); compute it with "
                            f"`mixbench evaluate {none} --only occlusion`")
    empty = make_run(tmp_path, "e", "mixup", 0, config="ddd333", evals={"occlusion": [{"metrics": {"x": 1}}]})
    with pytest.raises(UserError, match="--only occlusion --force"):
        occlusion_data(groups_of(empty))


def test_latest_result_skips_unreadable_and_foreign_files(tmp_path):
    run = make_run(tmp_path, "v", "vanilla", 0, evals={"occlusion": [occ({0.0: 9.0}, 9.0, "2024-01-01")]})
    bad = run / "evals" / "occlusion-zzzzzzzzzzzz"
    bad.mkdir()
    (bad / "result.json").write_text("{not json")
    other = run / "evals" / "occlusion-yyyyyyyyyyyy"
    other.mkdir()
    (other / "result.json").write_text(json.dumps({"evaluator": "fgsm", "metrics": {}, "created": "2030-01-01"}))
    assert latest_result(run, "occlusion")["occlusion_top1@0"] == 9.0
    assert latest_result(run, "corruptions") is None


def corr(table: dict[str, dict[int, float]], mca: float) -> dict:
    return {"created": "2024-01-01T00:00:00", "metrics": {
        "mca": mca, **{f"corruption_top1@{n}/{s}": v for n, row in table.items() for s, v in row.items()}}}


def test_corruption_panels_and_mean_exactly(tmp_path):
    a = make_run(tmp_path, "v", "vanilla", 0, evals={"corruptions": [corr(
        {"gaussian_noise": {1: 80.0, 2: 60.0}, "contrast": {1: 70.0, 2: 50.0}}, 65.0)]})
    b = make_run(tmp_path, "v", "vanilla", 1, evals={"corruptions": [corr(
        {"gaussian_noise": {1: 90.0, 2: 70.0}, "contrast": {1: 60.0, 2: 40.0}}, 65.0)]})
    m = make_run(tmp_path, "m", "mixup", 0, config="eee444", evals={"corruptions": [corr(
        {"gaussian_noise": {1: 50.0, 2: 50.0}}, 50.0)]})
    table, mca = corruption_table(corr({"a_b": {3: 1.0}}, 2.0)["metrics"] | {"corruption_top1@x/y": 3})
    assert (table, mca) == ({"a_b": {3.0: 1.0}}, 2.0)
    data = corruption_data(groups_of(a, b, m))
    assert data.names == ("gaussian_noise", "contrast")  # as the result lists them
    mix, van = data.panels["gaussian_noise"]
    assert van == Series("vanilla", (1.0, 2.0), (85.0, 65.0), (80.0, 60.0), (90.0, 70.0), (2, 2), 2, 65.0)
    assert mix.mean == (50.0, 50.0) and mix.score == 50.0
    assert [s.label for s in data.panels["contrast"]] == ["vanilla"]  # mixup's result lacks contrast
    mean_mix, mean_van = data.panels[MEAN_PANEL]
    assert mean_van.mean == (75.0, 55.0) and mean_van.lo == (75.0, 55.0) and mean_van.hi == (75.0, 55.0)
    assert mean_mix.mean == (50.0, 50.0)
    with pytest.raises(UserError, match="--only corruptions`"):
        corruption_data(groups_of(make_run(tmp_path, "n", "mixup", 0, config="fff555")))
    empty = make_run(tmp_path, "e", "mixup", 0, config="aaa666", evals={"corruptions": [{"metrics": {"mca": 1}}]})
    with pytest.raises(UserError, match="--only corruptions --force"):
        corruption_data(groups_of(empty))


def test_reliability_bins_round_trip_the_stored_sums(tmp_path):
    assert plots.RELIABILITY_KEY == RELIABILITY_KEY
    torch.manual_seed(0)
    z, y = torch.randn(200, 5) * 3, torch.randint(0, 5, (200,))
    stats = calibration_counts(torch.nn.Identity(), [(z, y)], EvalContext(torch.device("cpu")))
    run = make_run(tmp_path, "v", "vanilla", 0)
    reliability_diagram(stats, run / "reliability.png", "title")
    bins = reliability_bins(run, "vanilla")
    assert bins.count == stats.count and bins.n == stats.n == 200 and bins.n_bins == 15
    assert list(bins.accuracy) == stats.bin_accuracy()
    assert list(bins.confidence) == [c / n if n else None for c, n in zip(stats.confidence, stats.count, strict=True)]
    assert bins.ece == stats.ece and bins.mce == stats.mce
    assert sum(bins.count) == 200 and any(c is None for c in bins.confidence)
    (one,) = plots.reliability_data(groups_of(run))
    assert one.label == "vanilla · seed 0"


def test_reliability_bins_missing_old_or_damaged(tmp_path):
    run = make_run(tmp_path, "v", "vanilla", 0)
    with pytest.raises(UserError) as e:
        reliability_bins(run)
    assert str(e.value) == (f"plot: {run} has no reliability.png; compute it with "
                            f"`mixbench evaluate {run} --only calibration`")
    Image.new("RGB", (10, 10), "white").save(run / "reliability.png")  # drawn before the bins were stored
    with pytest.raises(UserError, match="holds no per-bin data .*--only calibration --force"):
        reliability_bins(run)
    (run / "reliability.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="holds no per-bin data"):
        reliability_bins(run)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(RELIABILITY_KEY, json.dumps({"count": [1, 2], "confidence_sum": [0.5], "correct_sum": [1, 1],
                                               "n": 3}))
    Image.new("RGB", (10, 10)).save(run / "reliability.png", pnginfo=info)
    with pytest.raises(UserError, match="damaged"):
        reliability_bins(run)


def test_canvas_sizes():
    assert canvas_size("curves") == (1100, 420)
    assert canvas_size("occlusion") == (640, 440)
    assert canvas_size("reliability", 1) == (360, 380)
    assert canvas_size("reliability", 5) == (1440, 760)
    assert canvas_size("corruptions", 10) == (1300, 550)
    assert canvas_size("corruptions", 3) == (780, 320)
    with pytest.raises(ValueError, match="unknown plot kind"):
        canvas_size("pie")


# ----------------------------------------------------------------------------------------- tiny real runs


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> dict[str, Path]:
    """vanilla seeds 0 and 1 (occlusion evaluated; corruptions on seed 0) and mixup seed 0 (not evaluated), 2 epochs
    of 100 images each."""
    from mixbench.engine import fit
    from mixbench.recipe import load_recipe

    work = tmp_path_factory.mktemp("plot-runs")
    cache = tmp_path_factory.getbasetemp() / "mixbench-cache"
    runs = {}
    for method, seed in (("vanilla", 0), ("vanilla", 1), ("mixup", 0)):
        recipe = work / f"{method}.toml"
        recipe.write_text(TINY.format(name=method, method=method, epochs=2, train_size=100, cache=cache))
        result = fit(load_recipe(recipe, [f"seed={seed}"]), out_root=work / "res", device=torch.device("cpu"))
        runs[f"{method}{seed}"] = result.run_dir
    for which, only in (("vanilla0", "occlusion,corruptions"), ("vanilla1", "occlusion")):
        ok = CliRunner().invoke(app, ["evaluate", str(runs[which]), "--only", only, "--device", "cpu",
                                      "--batch", "100"])
        assert ok.exit_code == 0, ok.output
    runs["root"] = work / "res"
    return runs


def assert_png(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == size
        colors = img.convert("RGB").getcolors(1 << 20)
        assert len(colors) > 50  # lines, bands, text: not a blank canvas
        white = max(n for n, c in colors if c == (255, 255, 255))
        assert white < 0.97 * size[0] * size[1]


@pytest.mark.parametrize(("kind", "which", "size"), [
    ("curves", ["root"], (1100, 420)),
    ("reliability", ["root"], (1080, 380)),  # three runs, one diagram each
    ("occlusion", ["vanilla0", "vanilla1"], (640, 440)),
    ("corruptions", ["vanilla0"], (1300, 550)),  # nine corruptions + the mean
])
def test_plot_cli_writes_each_kind(real_runs, tmp_path, kind, which, size):
    out = tmp_path / "figs" / f"{kind}.png"
    result = CliRunner().invoke(app, ["plot", *[str(real_runs[w]) for w in which], "--kind", kind, "--out", str(out)])
    assert result.exit_code == 0, result.output
    groups = 2 if kind in ("curves", "reliability") else 1
    assert f"wrote {out} ({kind}: {len(which) if which != ['root'] else 3} run" in result.output
    assert f"in {groups} group{'s' if groups > 1 else ''}, {size[0]}x{size[1]} px)" in result.output
    assert_png(out, size)
    assert sorted(p.name for p in out.parent.iterdir()) == [f"{kind}.png"]  # written atomically, no temporary


def test_curves_of_real_runs_match_metrics_jsonl(real_runs):
    from mixbench.results.inspect import read_metrics

    data = curve_data(group_runs([run_info(p) for p in resolve_runs([real_runs["root"]])]), "top1", "std")
    assert [s.label for s in data.accuracy] == ["mixup", "vanilla"]
    v = [read_metrics(real_runs[f"vanilla{s}"] / "metrics.jsonl")[0] for s in (0, 1)]
    van = data.accuracy[1]
    assert van.x == (1.0, 2.0) and van.n == (2, 2)
    assert van.mean[1] == math.fsum([v[0][1]["top1"], v[1][1]["top1"]]) / 2


def test_plot_std_band_and_default_out(real_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["plot", str(real_runs["root"]), "--band", "std", "--metric", "top5"])
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "curves.png", (1100, 420))


def one_error_line(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text


def test_plot_cli_names_the_run_and_the_command_for_missing_results(real_runs, tmp_path):
    mixup = real_runs["mixup0"]
    runner = CliRunner()
    for kind, command in (("occlusion", "--only occlusion"), ("corruptions", "--only corruptions")):
        result = runner.invoke(app, ["plot", str(real_runs["root"]), "--kind", kind, "--out", str(tmp_path / "x.png")])
        one_error_line(result, str(mixup), f"mixbench evaluate {mixup} {command}")
    result = runner.invoke(app, ["plot", str(mixup), "--metric", "nosuch", "--out", str(tmp_path / "x.png")])
    one_error_line(result, "no 'nosuch' values", "top1")
    result = runner.invoke(app, ["plot", str(mixup), "--out", str(tmp_path / "x.jpg")])
    one_error_line(result, "expected a .png file name")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.jpg").exists()


def test_plot_without_matplotlib_says_how_to_install(real_runs, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = CliRunner().invoke(app, ["plot", str(real_runs["root"]), "--out", str(tmp_path / "c.png")])
    one_error_line(result, 'pip install "mixbench[plot]"', "matplotlib is not installed")
    assert not (tmp_path / "c.png").exists()


def test_plot_api_refuses_unknown_kind_and_band(tmp_path):
    with pytest.raises(UserError, match="unknown kind 'pie'"):
        plots.plot([tmp_path], "pie", tmp_path / "a.png")
    with pytest.raises(UserError, match="unknown band 'iqr'"):
        plots.plot([tmp_path], "curves", tmp_path / "a.png", band="iqr")
