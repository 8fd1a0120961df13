"""Multi-process training under torchrun (gloo, 2 processes on the CPU), launched as a user would:
``mixbench run RECIPE --nproc 2``. Each launch costs a few seconds, so the runs are shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mixbench.engine import fit
from mixbench.recipe import load_recipe

RECIPE = """
name = "{name}"
seed = 0
[data]
source = "shapes"
train_size = 200
test_size = 100
cache_dir = "{cache}"
[model]
name = "resnet18_cifar"
width = 0.125
[method]
name = "{method}"
[train]
epochs = {epochs}
batch_size = 20
lr = 0.05
log_every = 5
deterministic = true
sync_bn = true
[eval]
batch_size = 50
"""


def write_recipe(folder: Path, name: str, method: str = "vanilla", epochs: int = 2) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(RECIPE.format(name=name, method=method, epochs=epochs, cache=folder / "cache"))
    return path


def mixbench(*args, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "mixbench", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def method_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["method"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 1-process run, a 2-process run of the same global batch, and a 2-process run stopped and resumed."""
    tmp = tmp_path_factory.mktemp("ddp")
    path = write_recipe(tmp, "ddp")
    one = fit(load_recipe(path), out_root=tmp / "one", device=torch.device("cpu"))
    two = mixbench("run", path, "--device", "cpu", "--out", tmp / "two", "--nproc", 2)
    assert two.returncode == 0, two.stdout + two.stderr
    half = mixbench("run", path, "--device", "cpu", "--out", tmp / "resumed", "--nproc", 2,
                    "--set", "train.stop_after=1")
    assert half.returncode == 0, half.stdout + half.stderr
    resumed = mixbench("run", path, "--device", "cpu", "--out", tmp / "resumed", "--nproc", 2, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run_id = one.run_dir.name
    return {"one": one.run_dir, "two": tmp / "two" / "ddp" / run_id, "resumed": tmp / "resumed" / "ddp" / run_id,
            "two_output": two.stdout + two.stderr, "tmp": tmp, "recipe": path}


def test_two_processes_with_sync_bn_match_one_process(runs):
    a, b = metrics(runs["one"]), metrics(runs["two"])
    assert [m["epoch"] for m in b] == [1, 2]
    for ma, mb in zip(a, b, strict=True):
        assert mb["train_loss"] == pytest.approx(ma["train_loss"], rel=1e-5)
        assert mb["lr"] == ma["lr"]
        assert abs(mb["top1"] - ma["top1"]) <= 1.0  # a test image on an argmax tie may flip
    wa, wb = method_state(runs["one"]), method_state(runs["two"])
    assert wa.keys() == wb.keys()
    for k in wa:
        if wa[k].is_floating_point():
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)


def test_records_are_written_once_by_rank_0(runs):
    run = runs["two"]
    assert sorted(p.name for p in run.parent.iterdir()) == [run.name]  # one run folder
    assert len(metrics(run)) == 2
    assert runs["two_output"].count("completed: ddp") == 1  # only rank 0 prints its summary line
    meta = json.loads((run / "meta.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    for record in (meta, summary):
        assert record["world_size"] == 2 and record["backend"] == "gloo" and record["sync_bn"] is True
        assert record["global_batch"] == 20 and record["per_process_batch"] == 10
    assert meta["status"] == "completed" and summary["status"] == "completed"
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2 and ckpt["world_size"] == 2  # each rank's random state, for resume


def test_a_resumed_two_process_run_matches_an_uninterrupted_one(runs):
    a, b = metrics(runs["two"]), metrics(runs["resumed"])
    assert [m["epoch"] for m in b] == [1, 2]
    for ma, mb in zip(a, b, strict=True):
        assert (ma["train_loss"], ma["top1"]) == (mb["train_loss"], mb["top1"])
    wa, wb = method_state(runs["two"]), method_state(runs["resumed"])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((runs["resumed"] / "meta.json").read_text())["resumed_at_epoch"] == 1


def test_a_learned_mixer_trains_under_two_processes(runs):
    path = write_recipe(runs["tmp"], "ddp-samix", method="samix", epochs=1)
    res = mixbench("run", path, "--device", "cpu", "--out", runs["tmp"] / "samix", "--nproc", 2)
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = (runs["tmp"] / "samix" / "ddp-samix").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["mixing_pairs"] == "within each process's batch"
    assert 0 <= summary["momentum_top1_last"] <= 100 and (run / "mixer.pt").is_file()
    (m,) = metrics(run)
    assert m["terms"]["loss_mixer"] > 0


def test_batch_layout_errors_name_both_numbers(runs):
    res = mixbench("run", runs["recipe"], "--device", "cpu", "--out", runs["tmp"] / "bad", "--nproc", 3)
    assert res.returncode == 2 and "batch_size = 20 does not divide over 3 processes" in res.stderr
    assert "Traceback" not in res.stderr
    odd = write_recipe(runs["tmp"], "odd", method="mixup")
    res = mixbench("run", odd, "--device", "cpu", "--out", runs["tmp"] / "bad", "--nproc", 2,
                   "--set", "train.batch_size=18")
    assert res.returncode == 2 and "gives 9 images per process, an odd number" in res.stderr
    assert not (runs["tmp"] / "bad").exists()


def start_long_run(tmp: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """``mixbench run --nproc 2`` of a 200-epoch recipe in the background, once its first epoch is recorded."""
    path = write_recipe(tmp, name, epochs=200)
    out = tmp / f"{name}-out"
    proc = subprocess.Popen([sys.executable, "-m", "mixbench", "run", str(path), "--device", "cpu", "--out", str(out),
                             "--nproc", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list(out.glob(f"{name}/*/metrics.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(out.glob(f"{name}/*/metrics.jsonl")), "the run never finished an epoch"
    return proc, out


def test_sigterm_to_the_launcher_stops_every_rank_as_interrupted(runs):
    proc, out = start_long_run(runs["tmp"], "long")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    (run,) = (out / "long").iterdir()
    assert json.loads((run / "meta.json").read_text())["status"] == "interrupted"
    done = len(metrics(run))
    assert 1 <= done < 200 and torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] >= 1


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_a_rank_that_dies_ends_every_rank_and_the_run_is_marked_failed(runs):
    proc, out = start_long_run(runs["tmp"], "dies")
    workers = [w for launcher in _children(proc.pid) for w in _children(launcher)]
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGKILL)  # one worker dies without a word
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    (run,) = (out / "dies").iterdir()
    assert json.loads((run / "meta.json").read_text())["status"] == "failed", output
    assert all(not Path(f"/proc/{w}").exists() or "zombie" in Path(f"/proc/{w}/status").read_text()
               for w in workers)
