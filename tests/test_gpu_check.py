"""benchmarks/gpu_check.py: the budget planner, the reports, and the CPU mode end to end within a tiny budget (on a
synthetic CIFAR-10 archive in the real archive's layout), including a check that is killed midway."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BUDGET_S = 25.0
MARGIN_S = 10.0  # interpreter start, the last report write, a child's teardown on a busy machine


def load_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cifar_archive(root: Path, train: int = 30, test: int = 10) -> Path:
    """A CIFAR-10-shaped cifar10-jpeg.tar.gz: train/<class>/NNNN.jpg and test/<class>/NNNN.jpg, 32x32 JPEG q75."""
    rng = np.random.default_rng(0)
    tree = root / "tree"
    for split, n in (("train", train), ("test", test)):
        for c, name in enumerate(CLASSES):
            folder = tree / split / name
            folder.mkdir(parents=True)
            for k in range(n):
                arr = np.clip(rng.normal(20 * c + 30, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{k:04d}.jpg", format="JPEG", quality=75)
    archive = root / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=split)
    return archive


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MIXBENCH_CACHE": str(tmp_path / "cache")}
    return subprocess.Popen(
        ["bash", str(SCRIPT), "--device", "cpu", "--out", str(tmp_path / "out"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def reports(out: Path) -> tuple[dict, str]:
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_cpu_mode_stays_within_its_budget_and_reports_every_stage(tmp_path):
    archive = cifar_archive(tmp_path)
    t = time.monotonic()
    proc = start(tmp_path, "--budget-s", str(BUDGET_S), "--cifar10", str(archive))
    output, _ = proc.communicate(timeout=BUDGET_S + 60)
    wall = time.monotonic() - t
    assert wall <= BUDGET_S + MARGIN_S, output
    rep, md = reports(tmp_path / "out")
    assert proc.returncode == 0, output + md
    assert rep["status"] == "complete" and rep["budget_s"] == BUDGET_S and rep["elapsed_s"] <= BUDGET_S
    assert rep["device"] == "cpu" and rep["size"] == "tiny" and rep["data"]["source"] == "imagefolder"
    env = rep["environment"]
    assert env["status"] == "ran" and env["torch"] and env["cpu_count"] and env["mixbench"]
    assert set(rep["stages"]) == {"train_step", "mixers", "methods", "cifar10", "ssl"}
    for name, stage in rep["stages"].items():
        status = stage["status"]
        assert status == "ran" or status.startswith(("partial", "skipped: budget")), (name, status)
        if status != "skipped: budget":
            assert stage["used_s"] <= stage["allotted_s"] + 5, (name, stage)  # + a stop's grace
        assert stage["expected_s"] > 0 and stage["min_s"] > 0
    ts = rep["stages"]["train_step"]
    if ts["status"] != "skipped: budget":
        assert len(ts["cells"]) == 16
        for cell in ts["cells"]:
            assert cell["status"] == "ran" or cell["status"].startswith(("skipped", "stopped")), cell
    for heading in (
        "## Environment",
        "## Budget plan",
        "## Train step",
        "## Mixer cost",
        "## Method cost",
        "## Short CIFAR-10 runs",
        "## Short SSL run",
    ):
        assert heading in md
    for name in rep["stages"]:
        assert f"| {name} | {rep['stages'][name]['status']} |" in md


def test_a_killed_check_leaves_parseable_partial_reports(tmp_path):
    proc = start(tmp_path, "--budget-s", "60", "--cifar10", "shapes", "--stages", "train_step,cifar10")
    out = tmp_path / "out"
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:  # wait until the check is inside a stage, then stop it
        if (out / "gpu_check.json").exists() and any(
            s.get("status") == "running" for s in reports(out)[0]["stages"].values()
        ):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, output
    rep, md = reports(out)
    assert rep["status"].startswith("stopped by SIGTERM")
    assert any(s["status"] == "stopped: the check got SIGTERM" for s in rep["stages"].values()), rep["stages"]
    assert rep["stages"]["mixers"]["status"] == "skipped: not asked (--stages)"
    assert "stopped by SIGTERM" in md
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_cells_are_the_whole_grid_most_informative_first():
    gc = load_module()
    cells = gc.train_step_cells([256, 512])
    keys = {(c["batch"], c["precision"], c["channels_last"], c["mode"]) for c in cells}
    assert len(cells) == len(keys) == 16
    assert cells[0] == {"batch": 256, "precision": "fp32", "channels_last": False, "mode": "eager"}
    assert cells[2] == {"batch": 512, "precision": "bf16", "channels_last": True, "mode": "compiled"}


def test_cell_estimates_learn_from_measured_cells():
    gc = load_module()
    est = gc.CellEstimator(gc.PRIORS["cpu"], steps=2, warmup=1)
    eager = {"batch": 32, "precision": "fp32", "channels_last": False, "mode": "eager"}
    compiled = dict(eager, mode="compiled")
    assert est.estimate(compiled) > est.estimate(eager) + gc.PRIORS["cpu"]["compile"]
    est.update(eager, {"step_ms": 100.0, "warmup_s": 0.1}, wall=0.8)
    assert est.estimate(eager) == pytest.approx(1.2 * (0.8 - 0.6 - 0.1 + 0.6 + 0.1), rel=1e-6)
    est.update(compiled, {"step_ms": 100.0, "warmup_s": 20.1}, wall=21.0)
    assert est.compile == pytest.approx(20.0)


def test_planner_skips_what_the_time_left_cannot_cover(tmp_path):
    gc = load_module()
    check = gc.Check(
        gc.parse_args(["--budget-s", "100", "--device", "cpu", "--cifar10", "shapes", "--out", str(tmp_path)])
    )
    check.size = "tiny"
    check.calibrate(gc.PRIORS["cpu"]["proc_start"])
    later = ["mixers", "methods", "cifar10", "ssl"]
    share = check.allot("train_step", later)
    assert share == pytest.approx(check.left() * 0.30 / 1.0, rel=0.01)
    check.deadline = gc.elapsed() + 1.0  # one second left: nothing fits
    assert check.allot("ssl", []) is None
    # a small epoch count when the time is short, capped at max_epochs when it is long
    p = gc.PROFILES["tiny"]["cifar10"]
    assert check.plan_runs(1e6, list(gc.CIFAR_METHODS), p) == (p["train_size"], p["max_epochs"])
    assert check.plan_runs(1.0, list(gc.CIFAR_METHODS), p) == (p["min_train"], 1)


def test_rejects_a_bad_budget_and_unknown_stages():
    gc = load_module()
    with pytest.raises(SystemExit):
        gc.parse_args(["--budget-s", "0"])
    with pytest.raises(SystemExit):
        gc.parse_args(["--stages", "train_step,nope"])


def test_run_records_and_every_report_section_render(tmp_path):
    """The parent's side of each stage without the children: a run's epochs read from metrics.jsonl (also from a
    staging folder), and a report with rows in every stage rendered as Markdown."""
    gc = load_module()
    run = tmp_path / "runs" / ".x.seed0-abc.staging"
    run.mkdir(parents=True)
    lines = [
        {
            "epoch": 1,
            "train_loss": 2.0,
            "top1": 30.0,
            "epoch_seconds": 4.0,
            "images_per_s": 100.0,
            "eval_seconds": 1.0,
            "knn_top1": 25.0,
        },
        {"epoch": 2, "train_loss": 1.5, "top1": 40.0, "epoch_seconds": 6.0, "images_per_s": 200.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines) + '{"epoch": 3, "tr')
    r = {}
    gc.Check.read_run(tmp_path / "runs", r)
    assert r["epochs_done"] == 2 and r["top1_last"] == 40.0 and r["top1_best"] == 40.0
    assert r["images_per_s"] == 150.0 and r["train_s"] == 10.0 and r["eval_s"] == 1.0 and r["knn_top1_last"] == 25.0

    check = gc.Check(
        gc.parse_args(["--budget-s", "60", "--device", "cpu", "--cifar10", "shapes", "--out", str(tmp_path / "out")])
    )
    rep = check.report
    rep["environment"] = {"status": "ran", "torch": "2.x", "gpu": "H100", "gpu_memory_gib": 79.6, "git": None}
    cell = {"batch": 256, "precision": "fp32", "channels_last": False, "mode": "eager"}
    st = rep["stages"]
    st["train_step"] |= {
        "status": "ran",
        "cells": [
            {
                "cell": cell,
                "label": gc.cell_label(cell),
                "status": "ran",
                "images_per_s": 1e4,
                "step_ms": 25.6,
                "outside_fwd_bwd_share": 0.1,
                "warmup_s": 2.0,
            }
        ],
    }
    st["mixers"] |= {
        "status": "ran",
        "train_step_ms": 25.0,
        "rows": [
            {
                "mixer": "mixup",
                "status": "ran",
                "ms_per_batch": 0.1,
                "overhead_pct": 0.4,
                "target_pct": 3.0,
                "within_target": True,
            }
        ],
    }
    st["methods"] |= {
        "status": "ran",
        "rows": [{"method": "vanilla", "status": "ran", "step_ms": 30.0, "x_vanilla": 1.0, "peak_memory_mb": 900.0}],
    }
    st["cifar10"] |= {
        "status": "partial",
        "plan": {"train_size": 50000, "epochs": 3, "vanilla_ips_estimate": 8e3, "estimate_from": "prior"},
        "runs": {"vanilla": {"status": "ran", **r, "epochs": 2}, "samix": {"status": "skipped: budget"}},
    }
    st["ssl"] |= {"status": "ran", "run": {"status": "ran", **r, "epochs": 2, "train_size": 50000}}
    check.write()
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| batch 256 fp32 contiguous eager | ran | 10000 |" in md
    assert "| mixup | ran | 0.10 | 0.40 |" in md and "| vanilla | ran | 30.0 | 1.00 | 900 |" in md
    assert "| vanilla | ran | 2 / 2 | 40.0 | 40.0 | 150 |" in md and "| samix | skipped: budget |" in md
    assert "| ran | 2 / 2 | 50000 | 25.0 | 40.0 | 150 |" in md
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text())["stages"]["cifar10"]["status"] == "partial"
