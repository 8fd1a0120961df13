"""``mixbench linear-eval``: a checkpoint's frozen encoder, every lr at once, the result stored in the run."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from mixbench.checkpoint import read_checkpoint
from mixbench.cli import app
from mixbench.engine import fit
from mixbench.recipe import load_recipe


def test_linear_eval_stores_every_lr_and_reuses_its_result(tiny_recipe, tmp_path):
    result = fit(load_recipe(tiny_recipe(name="le", epochs=1, train_size=100)), out_root=tmp_path / "r",
                 device=torch.device("cpu"))
    before = read_checkpoint(result.run_dir).method_state
    runner = CliRunner()
    args = ["linear-eval", str(result.run_dir), "--lr", "0.1,1.0", "--epochs", "3", "--device", "cpu"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "lr 0.1" in first.output and "lr 1" in first.output and "held-out" in first.output
    (stored,) = (result.run_dir / "evals").glob("linear-*/result.json")
    record = json.loads(stored.read_text())
    assert record["evaluator"] == "linear" and record["protocol"]["lrs"] == [0.1, 1.0]
    assert record["protocol"]["bn"].startswith("frozen") and record["protocol"]["features"].startswith("pooled")
    m = record["metrics"]
    assert m["linear_lr"] in (0.1, 1.0) and m["linear_top1"] == m[f"linear_top1@lr={m['linear_lr']:g}"]
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "reused the stored result" in second.output
    after = read_checkpoint(result.run_dir).method_state  # the checkpoint is only read
    assert all(torch.equal(before[k], after[k]) for k in before)

    augmented = [*args, "--augment", "crop-flip"]  # another protocol: its own result, beside the first
    third = runner.invoke(app, augmented)
    assert third.exit_code == 0, third.output
    assert "randomly cropped (pad 4, reflect) and flipped" in third.output and "from cached features" in third.output
    records = {json.loads(p.read_text())["protocol"]["augment"]: json.loads(p.read_text())
               for p in (result.run_dir / "evals").glob("linear-*/result.json")}
    assert set(records) == {"none", "crop-flip"}
    aug = records["crop-flip"]
    assert (aug["protocol"]["crop_padding"], aug["protocol"]["padding_mode"]) == (4, "reflect")
    assert aug["protocol"]["lrs"] == [0.1, 1.0] and 0 <= aug["metrics"]["linear_top1"] <= 100
    assert records["none"] == record  # the unaugmented result stays as it was
    assert "reused the stored result" in runner.invoke(app, augmented).output
    after = read_checkpoint(result.run_dir).method_state
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_linear_eval_bad_input_is_one_sentence(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["linear-eval", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "Traceback" not in res.output and "linear-eval" in res.output
    res = runner.invoke(app, ["linear-eval", str(tmp_path), "--val-fraction", "1.5"])
    assert res.exit_code == 2 and "--val-fraction" in res.output
    res = runner.invoke(app, ["linear-eval", str(tmp_path), "--augment", "rrc"])
    assert res.exit_code == 2 and "--augment" in res.output and "crop-flip" in res.output
