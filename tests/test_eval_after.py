"""``[eval] after = [...]``: evaluations of the finished run, stored as their commands store them, only after the
run is recorded, on rank 0 alone, and never able to damage the run record."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mixbench import cli
from mixbench.engine import Interrupted, fit
from mixbench.engine import trainer as trainer_mod
from mixbench.engine.distributed import DistInfo
from mixbench.engine.progress import Reporter
from mixbench.errors import UserError
from mixbench.evaluate import after as after_mod
from mixbench.evaluate.after import AFTER_NAMES, EVAL_BATCH, evaluate_after
from mixbench.evaluate.knn import DEFAULT_KS, DEFAULT_TEMPERATURES
from mixbench.evaluate.linear import DEFAULT_LRS
from mixbench.evaluate.runner import EVALUATE_NAMES
from mixbench.recipe import load_recipe
from mixbench.results.lock import RunLock

CPU = torch.device("cpu")


class Recorder(Reporter):
    """Keeps every message (the progress lines of the evaluations)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def after(*names: str) -> str:
    return f"after = {json.dumps(list(names))}\n"  # appended to the tiny recipe's [eval] table


def files(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run record (evaluations aside) and its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and "evals" not in p.parts}


def test_results_are_stored_as_the_commands_store_them(tiny_recipe, tmp_path):
    names = ("knn", "linear", "calibration", "occlusion", "fgsm")
    recipe = load_recipe(tiny_recipe(name="ea", epochs=1, train_size=100, extra=after(*names)))
    reporter = Recorder()
    result = fit(recipe, out_root=tmp_path / "r", device=CPU, reporter=reporter)
    assert result.status == "completed" and list(result.evals) == list(names)
    for name, stored in result.evals.items():
        path = Path(stored["path"])
        assert path.is_file() and path.parent.parent == result.run_dir / "evals" and not stored["reused"]
        assert json.loads(path.read_text())["evaluator"] == name
    # progress: a line as each starts and one with its headline metric and where it went
    assert reporter.lines[-11] == "training done; [eval].after: knn, linear, calibration, occlusion, fgsm"
    assert reporter.lines[-10] == "[eval].after 1/5: knn ..."
    assert reporter.lines[-9].startswith("[eval].after 1/5: knn: knn_top1 ") and "evals/knn-" in reporter.lines[-9]
    assert reporter.lines[-1].startswith("[eval].after 5/5: fgsm: fgsm_top1 ")
    # the same protocol hash: every later command finds the stored result
    runner, run = CliRunner(), str(result.run_dir)
    for args in (["knn", run], ["linear-eval", run], ["evaluate", run, "--only", "calibration,occlusion,fgsm"]):
        out = runner.invoke(cli.app, [*args, "--device", "cpu"])
        assert out.exit_code == 0, out.output
        assert out.output.count("reused the stored result") == (3 if args[0] == "evaluate" else 1), out.output
    assert sorted(p.name.split("-")[0] for p in (result.run_dir / "evals").glob("*-*/")) == sorted(names)
    # a second finish (--resume of the completed run) reuses every stored result
    again = fit(recipe, out_root=tmp_path / "r", device=CPU, resume=True, reporter=Recorder())
    assert all(r["reused"] for r in again.evals.values()) and list(again.evals) == list(names)


def test_the_default_protocols_are_those_of_the_commands():
    """What makes the hash the same: each evaluation runs with its command's defaults."""
    assert set(AFTER_NAMES) == {"linear", "knn", *EVALUATE_NAMES}

    def defaults(command) -> dict:
        return {k: p.default for k, p in inspect.signature(command).parameters.items()}

    ev, knn, lin = defaults(cli.evaluate), defaults(cli.knn), defaults(cli.linear_eval)
    assert ev["batch"] == EVAL_BATCH == knn["batch"]  # corruptions name their batch in the protocol
    assert [int(k) for k in knn["k"].split(",")] == list(DEFAULT_KS)
    assert [float(t) for t in knn["t"].split(",")] == list(DEFAULT_TEMPERATURES)
    assert knn["distance"].value == "cosine"
    assert [float(lr) for lr in lin["lr"].split(",")] == list(DEFAULT_LRS)
    assert (lin["epochs"], lin["batch"], lin["val_fraction"], lin["augment"].value) == (100, 256, 0.1, "none")


def test_evaluations_run_on_the_recorded_run_and_a_failure_leaves_it_whole(tiny_recipe, tmp_path, monkeypatch):
    path = tiny_recipe(name="ea", epochs=1, train_size=100, extra=after("knn"))
    seen: dict[str, object] = {}

    def interrupted(run_dir: Path, names, *, device, say):
        meta = json.loads((run_dir / "meta.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        RunLock.check_free(run_dir)  # the run's lock is released: the run is over
        seen.update(status=meta["status"], summary=summary["status"], names=list(names), device=device,
                    checkpoint=(run_dir / "checkpoint.pt").is_file(), before=files(run_dir))
        raise KeyboardInterrupt

    monkeypatch.setattr(after_mod, "evaluate_after", interrupted)
    with pytest.raises(Interrupted) as info:
        fit(load_recipe(path), out_root=tmp_path / "r", device=CPU, reporter=Recorder())
    assert seen["status"] == seen["summary"] == "completed" and seen["checkpoint"] and seen["names"] == ["knn"]
    assert seen["device"] == CPU
    note = info.value.note
    assert "the run completed and is recorded in" in note and "[eval].after" in note and "--resume" in note
    (run_dir,) = (tmp_path / "r" / "ea").iterdir()
    assert files(run_dir) == seen["before"]  # not a byte of the record changed

    def failing(kind: type[BaseException]):
        def fn(run_dir: Path, names, *, device, say):
            raise kind("no data here")
        return fn

    for kind, expected in ((UserError, UserError), (RuntimeError, RuntimeError)):
        monkeypatch.setattr(after_mod, "evaluate_after", failing(kind))
        reporter = Recorder()
        with pytest.raises(expected) as info:
            fit(load_recipe(path), out_root=tmp_path / "r", device=CPU, resume=True, reporter=reporter)
        assert "no data here" in str(info.value)
        said = str(info.value) if kind is UserError else reporter.lines[-1]
        assert "the run completed and is recorded in" in said and "[eval].after evaluation failed" in said
        assert json.loads((run_dir / "meta.json").read_text())["status"] == "completed"

    def terminated(run_dir: Path, names, *, device, say):  # SIGTERM, as a scheduler sends it
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(after_mod, "evaluate_after", terminated)
    with pytest.raises(Interrupted, match="were stopped"):
        fit(load_recipe(path), out_root=tmp_path / "r", device=CPU, resume=True, reporter=Recorder())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_no_evaluations_for_an_unfinished_run_another_rank_or_a_late_stop(tiny_recipe, tmp_path, monkeypatch):
    order: list[str] = []
    monkeypatch.setattr(after_mod, "evaluate_after", lambda run_dir, names, **kw: order.append("eval") or {})
    path = tiny_recipe(name="ea", epochs=2, train_size=100, extra=after("knn"))
    half = fit(load_recipe(path, ["train.stop_after=1"]), out_root=tmp_path / "r", device=CPU, reporter=Recorder())
    assert half.status == "interrupted" and half.evals == {} and order == []
    plain = fit(load_recipe(path, ["eval.after=[]", "train.epochs=1"]), out_root=tmp_path / "p", device=CPU,
                reporter=Recorder())
    assert plain.status == "completed" and plain.evals == {} and order == []

    # under torchrun every rank returns from training; only rank 0 evaluates, once the group is gone
    done = trainer_mod.TrainResult("completed", {}, tmp_path / "x")
    monkeypatch.setattr(trainer_mod, "_fit", lambda *a, **kw: order.append("fit") or done)
    monkeypatch.setattr(trainer_mod, "teardown", lambda dist, barrier: order.append("teardown"))
    for rank, expected in ((1, ["fit", "teardown"]), (0, ["fit", "teardown", "eval"])):
        monkeypatch.setattr(trainer_mod, "setup", lambda device_type, r=rank: DistInfo(r, 2, r, "gloo"))
        order.clear()
        fit(load_recipe(path), out_root=tmp_path / "d", device=CPU, reporter=Recorder())
        assert order == expected, rank

    with pytest.raises(Interrupted, match="did not run"):  # a Ctrl-C that came after the last step's check
        trainer_mod._evaluate_after(tmp_path, ["knn"], CPU, Recorder(), stopped=True)


def test_evaluate_after_refuses_unknown_names_and_does_nothing_for_none(tmp_path):
    with pytest.raises(ValueError, match="valid: linear, knn, calibration"):
        evaluate_after(tmp_path, ["knn", "fid"], device=CPU)
    assert evaluate_after(tmp_path / "no-run-here", [], device=CPU) == {}  # nothing opened


def test_cli_run_prints_progress_and_an_interrupted_evaluation_exits_130(tiny_recipe, tmp_path, monkeypatch):
    path = tiny_recipe(name="ea", epochs=1, train_size=100)
    runner = CliRunner()
    res = runner.invoke(cli.app, ["run", str(path), "--out", str(tmp_path / "r"), "--device", "cpu",
                                  "--set", 'eval.after=["knn"]'])
    assert res.exit_code == 0, res.output
    assert "[eval].after 1/1: knn ..." in res.output and "[eval].after 1/1: knn: knn_top1" in res.output
    assert res.output.rstrip().splitlines()[-1].startswith("completed: ea")
    monkeypatch.setattr(after_mod, "evaluate_after", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))
    res = runner.invoke(cli.app, ["run", str(path), "--out", str(tmp_path / "r"), "--device", "cpu", "--resume",
                                  "--set", 'eval.after=["knn"]'])
    assert res.exit_code == 130 and "the run completed and is recorded in" in res.output
    res = runner.invoke(cli.app, ["run", str(path), "--out", str(tmp_path / "r"), "--device", "cpu",
                                  "--set", 'eval.after=["knm"]'])
    assert res.exit_code == 2 and "[eval].after: unknown evaluator 'knm' (did you mean 'knn'?)" in res.output


def test_two_processes_evaluate_once_after_training(tiny_recipe, tmp_path):
    path = tiny_recipe(name="ea2", epochs=1, train_size=100, extra=after("knn"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, "-m", "mixbench", "run", str(path), "--device", "cpu", "--out",
                          str(tmp_path / "r"), "--nproc", "2"], capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("[eval].after 1/1: knn: knn_top1") == 1
    (run_dir,) = (tmp_path / "r" / "ea2").iterdir()
    (stored,) = (run_dir / "evals").glob("knn-*/result.json")
    assert json.loads((run_dir / "meta.json").read_text())["world_size"] == 2
    assert json.loads(stored.read_text())["metrics"]["knn_top1"] >= 0
