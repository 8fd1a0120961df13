"""Every mixer trains end to end on the shapes data and records its cost; the see/measure commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mixbench.cli import app
from mixbench.engine import fit
from mixbench.mixing import MIXERS
from mixbench.recipe import load_recipe

SWITCH = ['method.mixers=["mixup", "cutmix", "fmix"]', "method.probs=[0.4, 0.4, 0.2]"]


@pytest.mark.parametrize("name", [e.name for e in MIXERS])
def test_short_training_run_per_mixer(name, tiny_recipe, tmp_path):
    path = tiny_recipe(name=f"run-{name}", method=name, epochs=1, train_size=100)
    recipe = load_recipe(path, ["eval.save_mixes=1", *(SWITCH if name == "switch" else [])])
    result = fit(recipe, out_root=tmp_path / "results", device=torch.device("cpu"))
    s = json.loads((result.run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["method"] == name
    assert s["mixer_ms_per_step"] > 0 and s["mixer_overhead_pct"] > 0
    assert s["method_settings"]["prob"] == 1.0
    png = result.run_dir / "mixes" / "epoch0001.png"
    assert Image.open(png).size[0] > 4 * 32


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_visualize_writes_a_grid_png(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "grid.png"
    r = cli("visualize", "--method", "cutmix", "--n", "4", "--out", out, "--set", "alpha=0.5", "--device", "cpu")
    assert r.exit_code == 0, r.output
    img = Image.open(out)
    assert img.format == "PNG" and img.size[1] >= 4 * 96
    r = cli("visualize", "--method", "puzzlemix", "--n", "2", "--out", out, "--device", "cpu",
            "--backbone", "resnet10_cifar")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args,needle", [
    (["--method", "vanilla"], "not a mixer"),
    (["--method", "mixup", "--set", "alpha=-1"], "[method].alpha"),
    (["--method", "mixup", "--out", "grid.jpg"], "expected a .png"),
    (["--method", "mixup", "--dataset", "cifar10", "--root", "/nonexistent"], "/nonexistent"),
])
def test_visualize_user_errors_exit_2(cli, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    r = cli("visualize", *args, "--device", "cpu")
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output


def test_bench_mixers_writes_table_and_json(cli, tmp_path):
    out = tmp_path / "bench.json"
    r = cli("bench", "mixers", "--device", "cpu", "--batch", "16", "--width", "0.125", "--repeats", "1",
            "--only", "mixup", "--only", "puzzlemix", "--out", out)
    assert r.exit_code == 0, r.output
    assert "puzzlemix" in r.output and "% of step" in r.output
    data = json.loads(Path(out).read_text())
    assert [m["mixer"] for m in data["mixers"]] == ["mixup", "puzzlemix"]
    assert data["train_step_ms"] > 0 and all(m["ms_per_batch"] > 0 for m in data["mixers"])
    assert data["mixers"][0]["target_pct"] == 3 and data["mixers"][1]["target_pct"] == 50
    r = cli("bench", "mixers", "--only", "switch", "--device", "cpu")
    assert r.exit_code == 2 and "not a mixer" in r.output
