"""No run is ever lost or stuck: staged overwrites, restarts without a checkpoint, truthful messages,
signals during setup, killed runs, stale temporaries, the run lock, torn metrics, file modes.

Where a real signal or kill is needed the run is a subprocess (``run_cli``) that registers the test
method ``signal_at`` first; every subprocess has a timeout, so a hang fails instead of blocking.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mixbench.cli import app
from mixbench.engine import Interrupted, fit
from mixbench.engine.progress import Reporter
from mixbench.errors import DivergedError, UserError
from mixbench.methods.supervised import Supervised
from mixbench.recipe import load_recipe
from mixbench.results import records
from mixbench.results.leaderboard import collect_runs
from mixbench.results.records import RunDir

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds any subprocess may take before the test fails


class SignalAt(Supervised):
    """Vanilla training that sends itself $SAFETY_SIGNAL (default SIGTERM) at global step $SAFETY_STEP."""

    def forward(self, batch):
        step = os.environ.get("SAFETY_STEP")
        if step is not None and self.global_step == int(step):
            os.kill(os.getpid(), getattr(signal, os.environ.get("SAFETY_SIGNAL", "SIGTERM")))
        return super().forward(batch)


class NanFrom(Supervised):
    """Vanilla training whose loss is NaN from global step $SAFETY_NAN_FROM on."""

    def forward(self, batch):
        out = super().forward(batch)
        if self.global_step >= int(os.environ.get("SAFETY_NAN_FROM", "0")):
            out["loss"] = out["loss"] * float("nan")
        return out


def main_with_test_methods() -> None:
    """``mixbench`` with ``signal_at`` registered; with $SAFETY_SLOW_SETUP, setup announces itself in that
    file and then hangs (in ``build_run``) until a signal comes."""
    from mixbench.engine import trainer
    from mixbench.methods import METHODS

    METHODS.register("signal_at")(SignalAt)
    marker = os.environ.get("SAFETY_SLOW_SETUP")
    if marker:
        def slow_build_run(*args, **kwargs):
            Path(marker).write_text("in setup")
            time.sleep(TIMEOUT)
            raise AssertionError("no signal came")

        trainer.build_run = slow_build_run
    app(sys.argv[1:], prog_name="mixbench")


def run_cli(*args, env: dict[str, str] | None = None, wait: bool = True):
    """``mixbench ARGS`` in a subprocess with the test methods registered (a Popen when not ``wait``)."""
    code = "from tests.test_run_safety import main_with_test_methods; main_with_test_methods()"
    cmd = [sys.executable, "-c", code, *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=TIMEOUT)


class Notes(Reporter):
    """A reporter that keeps the messages (notes, warnings) the engine gives the user."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


@pytest.fixture
def signal_at(register_method, tiny_recipe, monkeypatch):
    """A tiny ``signal_at`` recipe's path (4 steps per epoch); set $SAFETY_STEP to arm it."""
    register_method("signal_at", SignalAt)
    monkeypatch.delenv("SAFETY_STEP", raising=False)
    monkeypatch.delenv("SAFETY_SIGNAL", raising=False)
    return lambda **kw: tiny_recipe(method="signal_at", **kw)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def meta(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())


def lock_path(run: Path) -> Path:
    return run.with_name(f".{run.name}.lock")


def no_leftovers(run: Path) -> bool:
    """Neither a lock file nor a staging or aside folder is left next to the run folder."""
    return not lock_path(run).exists() and not list(run.parent.parent.glob(f".{run.parent.name}.*"))


# ---------------------------------------------------------------- 1. --overwrite keeps the old run until it is replaced


def test_an_overwrite_stopped_before_its_first_checkpoint_keeps_the_old_run(signal_at, tmp_path, monkeypatch):
    recipe = load_recipe(signal_at(epochs=2))
    old = fit(recipe, out_root=tmp_path, device=CPU).run_dir
    before = files(old)
    monkeypatch.setenv("SAFETY_STEP", "2")  # SIGTERM in epoch 1 of the new run
    with pytest.raises(Interrupted) as info:
        fit(recipe, out_root=tmp_path, device=CPU, overwrite=True)
    assert files(old) == before and no_leftovers(old)
    assert str(old) in info.value.note and "unchanged" in info.value.note


def test_a_killed_overwrite_keeps_the_old_run_and_compare_counts_it_once(signal_at, tmp_path):
    path = signal_at(epochs=2)
    old = fit(load_recipe(path), out_root=tmp_path, device=CPU).run_dir
    before = files(old)
    res = run_cli("run", path, "--out", tmp_path, "--device", "cpu", "--overwrite",
                  env={"SAFETY_STEP": "1", "SAFETY_SIGNAL": "SIGKILL"})
    assert res.returncode == -signal.SIGKILL, res.stdout + res.stderr
    assert files(old) == before
    runs = collect_runs([tmp_path])
    assert len(runs) == 1 and runs["status"].tolist() == ["completed"]
    again = fit(load_recipe(path), out_root=tmp_path, device=CPU, resume=True)  # the next start cleans up
    assert again.status == "completed" and no_leftovers(old)


def test_an_overwrite_replaces_the_old_run_at_its_first_checkpoint(signal_at, tmp_path, monkeypatch):
    recipe = load_recipe(signal_at(epochs=2))
    old = fit(recipe, out_root=tmp_path, device=CPU).run_dir
    monkeypatch.setenv("SAFETY_STEP", "6")  # SIGTERM in epoch 2, after the new run's first checkpoint
    with pytest.raises(Interrupted):
        fit(recipe, out_root=tmp_path, device=CPU, overwrite=True)
    assert meta(old)["status"] == "interrupted" and torch.load(old / "checkpoint.pt")["epoch"] == 1
    assert json.loads((old / "summary.json").read_text())["status"] == "interrupted"
    assert [json.loads(x)["epoch"] for x in (old / "metrics.jsonl").read_text().splitlines()] == [1]
    assert no_leftovers(old)


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_commit_swaps_the_staged_run_in(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(records, "exchange_paths", lambda a, b: False)
    old = RunDir.create(tmp_path, "r", "seed0-abc", resume=False, overwrite=False)
    old.write_summary({"old": True})
    new = RunDir.create(tmp_path, "r", "seed0-abc", resume=False, overwrite=True)
    assert new.staged and json.loads(old.summary_path.read_text()) == {"old": True}
    new.write_meta({"new": True})
    listed = {p.parent for name in ("meta.json", "summary.json") for p in tmp_path.rglob(name)}  # what compare finds
    assert listed == {old.path}  # the staged run is not among them
    new.commit()
    assert not new.staged and new.path == old.path and files(old.path) == {"meta.json": b'{\n  "new": true\n}\n'}
    assert no_leftovers(old.path)


def test_recover_completes_a_swap_cut_short_by_a_kill(tmp_path):
    from mixbench.results.records import recover, staging_path

    target = tmp_path / "r" / "seed0-abc"
    target.parent.mkdir()
    staged = RunDir.stage(target)  # the old run is gone (renamed aside), the new one has its checkpoint
    (staged.path / "checkpoint.pt").write_bytes(b"new")
    aside = tmp_path / ".r.seed0-abc.old"
    aside.mkdir()
    (aside / "summary.json").write_text("{}")
    recover(target)
    assert files(target) == {"checkpoint.pt": b"new"} and not aside.exists() and not staging_path(target).exists()


# ---------------------------------------------------------------- 2. --resume of a run without a checkpoint


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it_afresh(signal_at, tmp_path, monkeypatch):
    path = signal_at(epochs=1)
    monkeypatch.setenv("SAFETY_STEP", "1")
    r = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path), "--device", "cpu"])
    assert r.exit_code == 130 and "no checkpoint was written yet; --resume starts the run afresh" in r.output
    (run,) = (tmp_path / "tiny").iterdir()
    assert meta(run)["status"] == "interrupted" and not (run / "checkpoint.pt").exists()
    monkeypatch.delenv("SAFETY_STEP")
    r = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path), "--device", "cpu", "--resume"])
    assert r.exit_code == 0, r.output
    assert "has no checkpoint (it stopped before its first one): starting it afresh" in r.output
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [run.name] and meta(run)["status"] == "completed"


# ---------------------------------------------------------------- 3. divergence says what was kept


def test_divergence_says_whether_a_checkpoint_was_kept(register_method, tiny_recipe, tmp_path, monkeypatch):
    register_method("nan_from", NanFrom)
    path = tiny_recipe(method="nan_from", epochs=2)
    r = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "a"), "--device", "cpu"])
    assert r.exit_code == 3 and "diverged before its first checkpoint, so none was written" in r.output
    assert "last good checkpoint was kept" not in r.output
    monkeypatch.setenv("SAFETY_NAN_FROM", "4")  # epoch 2 goes bad
    with pytest.raises(DivergedError) as info:
        fit(load_recipe(path), out_root=tmp_path / "b", device=CPU)
    assert info.value.checkpoint_epoch == 1 and "checkpoint of epoch 1, the last good one, was kept" in info.value.note


# ---------------------------------------------------------------- 4. every exit path records a final status


def test_sigterm_during_setup_exits_130_and_records_interrupted(signal_at, tmp_path):
    marker = tmp_path / "in-setup"
    proc = run_cli("run", signal_at(), "--out", tmp_path / "out", "--device", "cpu", wait=False,
                   env={"SAFETY_SLOW_SETUP": str(marker)})
    try:
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()[0]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    (run,) = (tmp_path / "out" / "tiny").iterdir()
    assert meta(run)["status"] == "interrupted" and meta(run)["end_time"] and no_leftovers(run)


def test_a_failure_during_setup_records_failed(tiny_recipe, tmp_path, monkeypatch):
    from mixbench.engine import trainer

    def broken(*args, **kwargs):
        raise RuntimeError("model build broke")

    monkeypatch.setattr(trainer, "build_run", broken)
    recipe = load_recipe(tiny_recipe())
    with pytest.raises(RuntimeError):
        fit(recipe, out_root=tmp_path, device=CPU)
    run = tmp_path / "tiny" / recipe.run_id()
    assert meta(run)["status"] == "failed" and no_leftovers(run)


# ---------------------------------------------------------------- 5, 6. killed runs: stale status, stale temporaries


def test_a_killed_run_is_resumed_as_stale_and_a_live_one_is_refused(signal_at, tmp_path):
    path = signal_at(epochs=2)
    res = run_cli("run", path, "--out", tmp_path, "--device", "cpu",
                  env={"SAFETY_STEP": "6", "SAFETY_SIGNAL": "SIGKILL"})  # killed in epoch 2
    assert res.returncode == -signal.SIGKILL, res.stdout + res.stderr
    run = tmp_path / "tiny" / load_recipe(path).run_id()
    killed = meta(run)
    assert killed["status"] == "running" and killed["host"] == socket.gethostname() and killed["pid"] > 0
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "meta.json").write_text(json.dumps({**killed, "pid": sleeper.pid}))
        with pytest.raises(UserError, match=f"still being written by pid {sleeper.pid} on this host"):
            fit(load_recipe(path), out_root=tmp_path, device=CPU, resume=True)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=TIMEOUT)
    (run / "meta.json").write_text(json.dumps(killed))
    notes = Notes()
    done = fit(load_recipe(path), out_root=tmp_path, device=CPU, resume=True, reporter=notes)
    assert done.status == "completed" and meta(run)["pid"] == os.getpid()
    assert any(f"was stale: meta.json said running, but its process (pid {killed['pid']}) is gone" in m
               for m in notes.messages), notes.messages


def test_temporaries_of_killed_writes_are_removed_on_resume(tiny_recipe, tmp_path):
    path = tiny_recipe(epochs=2)
    half = fit(load_recipe(path, ["train.stop_after=1"]), out_root=tmp_path, device=CPU).run_dir
    torn = [half / ".checkpoint.pt.k1ll3d_x.tmp", half / ".metrics.jsonl.abcd1234.tmp"]
    for p in torn:
        p.write_bytes(b"")
    (half / "notes.tmp").write_text("mine")
    assert fit(load_recipe(path), out_root=tmp_path, device=CPU, resume=True).status == "completed"
    assert not any(p.exists() for p in torn) and (half / "notes.tmp").exists()


# ---------------------------------------------------------------- 7. one run per folder: a real lock

HOLD = """
import sys, time
from pathlib import Path
from mixbench.results.lock import RunLock
RunLock.acquire(Path(sys.argv[1]))
time.sleep(120)
"""


def test_a_second_run_into_the_same_folder_is_refused_naming_the_pid(tiny_recipe, tmp_path):
    path = tiny_recipe(epochs=1)
    run = tmp_path / "tiny" / load_recipe(path).run_id()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + TIMEOUT
        while f"{holder.pid} " not in (lock_path(run).read_text() if lock_path(run).exists() else ""):
            assert holder.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
            time.sleep(0.05)
        for extra in ([], ["--nproc", "2"], ["--resume"], ["--overwrite"]):
            r = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path), "--device", "cpu", *extra])
            assert r.exit_code == 2, r.output
            assert f"is in use by another mixbench run (pid {holder.pid} on host" in r.output
            assert "Traceback" not in r.output and not run.exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock with it
        holder.wait(timeout=TIMEOUT)
    r = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert no_leftovers(run)


def test_under_torchrun_every_rank_fails_cleanly_when_rank_0_is_refused(tiny_recipe, tmp_path):
    from mixbench.results.lock import RunLock

    path = tiny_recipe(epochs=1)
    run = tmp_path / "tiny" / load_recipe(path).run_id()
    lock = RunLock.acquire(run)  # this test process holds it: rank 0 of the run below is refused
    try:
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "-m", "mixbench", "run", str(path), "--out", str(tmp_path), "--device", "cpu"],
                             capture_output=True, text=True, timeout=TIMEOUT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        lock.release()
    output = res.stdout + res.stderr
    assert res.returncode != 0 and f"in use by another mixbench run (pid {os.getpid()}" in output
    assert output.count("error: ") == 1  # rank 0 says it once; rank 1 fails quietly
    assert not run.exists()


# ---------------------------------------------------------------- 8. damaged metrics.jsonl


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tiny_recipe, tmp_path):
    path = tiny_recipe(epochs=2)
    run = fit(load_recipe(path, ["train.stop_after=1"]), out_root=tmp_path, device=CPU).run_dir
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')
    notes = Notes()
    assert fit(load_recipe(path), out_root=tmp_path, device=CPU, resume=True, reporter=notes).status == "completed"
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert any("metrics.jsonl: line 2 is cut off" in m and m.startswith("warning:") for m in notes.messages)


def test_a_corrupt_middle_metrics_line_is_refused_in_one_sentence(tiny_recipe, tmp_path):
    path = tiny_recipe(epochs=3)
    run = fit(load_recipe(path, ["train.stop_after=2"]), out_root=tmp_path, device=CPU).run_dir
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(["{garbage", lines[1]]) + "\n")
    r = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path), "--device", "cpu", "--resume"])
    assert r.exit_code == 2 and f"{run / 'metrics.jsonl'}: line 1 is not an epoch record" in r.output
    assert "Traceback" not in r.output and no_leftovers(run)


# ---------------------------------------------------------------- 9. file modes; no torch for records


def test_run_files_follow_the_umask(tmp_path):
    code = ("import os, sys; os.umask(0o027)\n"
            "from mixbench.results.atomic import atomic_torch_save, atomic_write_json\n"
            "atomic_write_json(sys.argv[1] + '/a.json', {}); atomic_torch_save(sys.argv[1] + '/b.pt', {})\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=TIMEOUT, cwd=REPO)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {"a.json": 0o640, "b.pt": 0o640}
    from mixbench.results.atomic import file_mode

    umask = os.umask(0o022)
    os.umask(umask)
    assert file_mode() == 0o666 & ~umask


def test_reading_records_imports_no_torch():
    code = "import sys, mixbench.results.records; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=TIMEOUT).returncode == 0
