"""Atomic writes, run records, summaries and the leaderboard."""

from __future__ import annotations

import io
import json
import statistics

import pandas as pd
import pytest

from mixbench.errors import UserError
from mixbench.results.atomic import append_jsonl, atomic_torch_save, atomic_write_json
from mixbench.results.leaderboard import collect_runs, leaderboard, render
from mixbench.results.records import RunDir, summarize


class Unserialisable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def test_failed_writes_leave_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "s.json"
    atomic_write_json(path, {"a": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    ckpt = tmp_path / "c.pt"
    atomic_torch_save(ckpt, {"x": 1})
    ckpt_before = ckpt.read_bytes()
    with pytest.raises(RuntimeError):
        atomic_torch_save(ckpt, {"x": Unserialisable()})
    assert path.read_bytes() == before and ckpt.read_bytes() == ckpt_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "s.json"]


def test_json_nan_becomes_null_and_jsonl_appends(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"epoch": 1, "loss": float("nan")})
    append_jsonl(path, {"epoch": 2, "loss": 1.5})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == [{"epoch": 1, "loss": None}, {"epoch": 2, "loss": 1.5}]


def test_rundir_refuses_resumes_and_overwrites(tmp_path):
    run = RunDir.create(tmp_path, "r", "seed0-abc", resume=False, overwrite=False)
    run.write_meta({"status": "running"})
    run.append_metrics({"epoch": 1})
    run.append_metrics({"epoch": 2})
    run.truncate_metrics(1)
    assert run.read_metrics() == [{"epoch": 1}]
    with pytest.raises(UserError, match="--resume or --overwrite"):
        RunDir.create(tmp_path, "r", "seed0-abc", resume=False, overwrite=False)
    with pytest.raises(UserError, match="no checkpoint.pt"):
        RunDir.create(tmp_path, "r", "seed0-abc", resume=True, overwrite=False)
    assert run.read_meta() == {"status": "running"}
    fresh = RunDir.create(tmp_path, "r", "seed0-abc", resume=False, overwrite=True)
    assert list(fresh.path.iterdir()) == []
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["seed0-abc"]


def test_summarize_median_of_last_10_evaluated_epochs():
    metrics = [{"epoch": e, "top1": float(e) if e % 2 == 0 else None, "top5": 90.0 + e if e % 2 == 0 else None,
                "images_per_s": 100.0 * e} for e in range(1, 31)]
    s = summarize(metrics, status="completed", base={"name": "x"})
    evaluated = [float(e) for e in range(2, 31, 2)]  # 15 evaluated epochs
    assert s["top1_median_last10"] == statistics.median(evaluated[-10:]) == 21.0
    assert s["top1_best"] == 30.0 and s["top1_last"] == 30.0 and s["top5_last"] == 120.0
    assert s["epochs_done"] == 30 and s["images_per_s"] == pytest.approx(1550.0)
    assert s["name"] == "x" and s["status"] == "completed"


def write_run(root, method, seed, top1, status="completed", dataset="cifar100", epochs=200):
    d = root / f"{method}" / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({
        "schema": 1, "method": method, "dataset": dataset, "backbone": "resnet18_cifar", "epochs": epochs,
        "status": status, "top1_median_last10": top1, "top1_best": top1 + 1, "top1_last": top1 - 0.5,
        "wall_time_s": 600.0, "images_per_s": 1000.0 + seed, "mixer_ms_per_step": None}))


@pytest.fixture
def runs(tmp_path):
    for seed, (v, m, c) in enumerate([(76.0, 78.0, 79.0), (77.0, 79.0, 80.0), (78.0, 80.5, 79.5)]):
        write_run(tmp_path, "vanilla", seed, v)
        write_run(tmp_path, "mixup", seed, m)
        write_run(tmp_path, "cutmix", seed, c)
    write_run(tmp_path, "mixup", 9, 10.0, status="interrupted")
    write_run(tmp_path, "mixup", 5, 95.0, dataset="cifar10", epochs=400)
    bad = tmp_path / "broken" / "seed0"
    bad.mkdir(parents=True)
    (bad / "summary.json").write_text("{not json")
    return tmp_path


def test_leaderboard_statistics(runs):
    groups = leaderboard(collect_runs([runs]))
    g = next(g for g in groups if g.dataset == "cifar100")
    rows = {r["method"]: r for r in g.rows}
    assert g.rows[0]["method"] == "vanilla"
    mix = rows["mixup"]
    assert mix["n"] == 3 and "1 interrupted" in mix["other"]  # shown, not averaged in
    assert mix["top1"] == pytest.approx(statistics.mean([78.0, 79.0, 80.5]))
    assert mix["top1_std"] == pytest.approx(statistics.stdev([78.0, 79.0, 80.5]))
    assert mix["delta"] == pytest.approx(mix["top1"] - 77.0)
    assert mix["best"] == pytest.approx(mix["top1"] + 1) and mix["wall_min"] == pytest.approx(10.0)
    assert rows["vanilla"]["delta"] == pytest.approx(0.0)
    assert {(g.dataset, g.epochs) for g in groups} >= {("cifar10", 400), ("cifar100", 200)}
    assert any("unreadable" in r["other"] for g in groups for r in g.rows)


def test_render_formats_parse(runs):
    groups = leaderboard(collect_runs([runs]))
    assert "mixup" in pd.read_csv(io.StringIO(render(groups, "csv")))["method"].tolist()
    assert json.loads(render(groups, "json"))[0]["rows"]
    assert "| method" in render(groups, "markdown")
    assert "\\begin{tabular}" in render(groups, "latex")
    table = render(groups, "table")
    assert "cifar100 · resnet18_cifar · 200 epochs" in table and "±" in table
    with pytest.raises(UserError, match="valid: table"):
        render(groups, "html")


def test_reference_rows_are_published_numbers_and_not_counted(runs):
    groups = leaderboard(collect_runs([runs]), include_reference=True)
    g = next(g for g in groups if g.dataset == "cifar100")
    rows = {r["method"]: r for r in g.rows}
    assert rows["mixup (published)"]["top1"] == 78.52 and rows["mixup (published)"]["n"] == 0
    assert rows["vanilla (published)"]["top1"] == 76.42 and rows["samix (published)"]["top1"] == 81.21
    assert rows["mixup"]["delta"] == pytest.approx(rows["mixup"]["top1"] - 77.0)  # our vanilla, not theirs


def test_no_runs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no summary.json"):
        collect_runs([tmp_path])
    with pytest.raises(UserError, match="no such folder"):
        collect_runs([tmp_path / "missing"])


def _summary(root, folder, **fields):
    d = root / folder
    d.mkdir(parents=True)
    base = {"schema": 1, "dataset": "cifar100", "backbone": "resnet18_cifar", "epochs": 800, "status": "completed",
            "top1_best": 80.0, "top1_last": 80.0, "wall_time_s": 60.0, "images_per_s": 100.0}
    (d / "summary.json").write_text(json.dumps(base | fields))


def test_compare_keeps_losses_configs_label_budgets_and_momentum_apart(tmp_path):
    _summary(tmp_path, "a/seed0-aaaaaa", method="mixup", loss="ce", run_id="seed0-aaaaaa", name="mix",
             top1_median_last10=79.0)
    _summary(tmp_path, "a/seed1-aaaaaa", method="mixup", loss="ce", run_id="seed1-aaaaaa", name="mix",
             top1_median_last10=81.0)
    _summary(tmp_path, "b/seed0-bbbbbb", method="mixup", loss="dm", run_id="seed0-bbbbbb", name="mix_dm",
             top1_median_last10=82.0)
    _summary(tmp_path, "c/seed0-cccccc", method="mixup", loss="ce", run_id="seed0-cccccc", name="mix_a02",
             top1_median_last10=78.0)
    _summary(tmp_path, "d/seed0-dddddd", method="samix", loss="ce", run_id="seed0-dddddd", name="samix",
             top1_median_last10=83.0, momentum_top1_median_last10=82.5)
    _summary(tmp_path, "e/seed0-eeeeee", method="fixmatch", loss="ce", run_id="seed0-eeeeee", name="fm",
             top1_median_last10=60.0, labels=400)
    groups = leaderboard(collect_runs([tmp_path]))
    full = next(g for g in groups if g.labels is None)
    semi = next(g for g in groups if g.labels == 400)
    assert semi.title.endswith("800 epochs · 400 labels") and [r["method"] for r in semi.rows] == ["fixmatch"]
    rows = {r["method"]: r for r in full.rows}
    assert rows["mixup + dm"]["top1"] == 82.0
    assert rows["mixup [mix]"]["n"] == 2 and rows["mixup [mix]"]["top1"] == 80.0  # seeds share a row
    assert rows["mixup [mix_a02]"]["top1"] == 78.0  # another config of the same method does not
    assert rows["samix"]["momentum_top1"] == 82.5 and rows["samix"]["top1"] == 83.0
    text = render(groups, "markdown")
    assert "momentum enc. top-1" in text.split("400 labels")[0] and "82.50" in text
    assert "momentum enc. top-1" not in text.split("400 labels")[1]  # no learned mixer in that table
