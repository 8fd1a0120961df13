"""``mixbench sweep`` and ``mixbench suite``: expansion and manifest, skipping completed runs, a sweep killed
mid-way and rerun, a failing grid point, ``--jobs 2``, the SLURM launcher (submitit's local executor, never a
cluster), suites, and bad input (one sentence, exit code 2).

Real sweeps train tiny shapes recipes (200 images, ResNet-10 width 0.125, a few steps); where a signal is
needed the sweep is a subprocess. Every subprocess has a timeout, so a hang fails instead of blocking.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from mixbench.cli import app

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds a whole sweep subprocess may take (the machine may be shared)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

TINY = """
name = "{name}"
seed = 0

[data]
source = "shapes"
train_size = 200
test_size = 100
cache_dir = "{cache}"

[model]
name = "resnet10_cifar"
width = 0.125

[method]
name = "mixup"
alpha = 1.0

[train]
epochs = {epochs}
batch_size = 50
lr = 0.05
log_every = 2

[eval]
batch_size = 100
"""


def write_tiny(folder: Path, cache: Path, name: str = "tiny", epochs: int = 1) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY.format(name=name, epochs=epochs, cache=cache))
    return path


@pytest.fixture
def tiny(tmp_path, cache_dir):
    return lambda **kw: write_tiny(tmp_path, cache_dir, **kw)


def cli(*args: object, env: dict[str, str] | None = None):
    """``mixbench ARGS`` in this process (no signals needed)."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def sweep_process(*args: object, wait: bool = True):
    cmd = [sys.executable, "-m", "mixbench", "sweep", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def manifest(out: Path) -> dict:
    (path,) = out.glob("sweeps/*/manifest.json")
    return json.loads(path.read_text())


def one_sentence(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


def whole(run_dir: Path, epochs: int) -> None:
    """A completed run folder with everything in it and nothing half-written beside it."""
    summary = json.loads((run_dir / "summary.json").read_text())
    meta = json.loads((run_dir / "meta.json").read_text())
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == meta["status"] == "completed"
    assert summary["epochs_done"] == epochs and [m["epoch"] for m in lines] == list(range(1, epochs + 1))
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "recipe.toml").is_file()
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.parent.glob(".*"))  # no temporaries, locks


# ---------------------------------------------------------------- expansion and the manifest (nothing trains)


def test_expansion_is_recipes_times_grid_times_seeds(tiny, tmp_path):
    a, b = tiny(name="a"), tiny(name="b")
    r = cli(
        "sweep",
        a,
        b,
        "--seeds",
        "0,1",
        "--grid",
        "method.alpha=0.2,1.0",
        "--grid",
        "train.lr=0.05,0.1",
        "--out",
        tmp_path / "out",
        "--dry-run",
    )
    assert r.exit_code == 0, r.output
    assert "16 runs (2 recipe(s) x 4 grid point(s) x 2 seed(s)): 16 to start" in r.output
    rows = [line.split() for line in r.output.splitlines() if line.startswith("  ")]
    labels = [row[2] for row in rows]
    assert len(set(labels)) == 16
    assert all(label.split("/")[1].startswith("seed0-") for label in labels[:8])  # seeds outermost
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_a_grid_value_may_be_a_whole_table(tiny, tmp_path):
    """``method={name="vanilla"},{...}``: values split at top-level commas; an inline table replaces [method]."""
    r = cli(
        "sweep", tiny(), "--grid", 'method={name="vanilla"},{name="cutmix",alpha=1.0}', "--out", tmp_path, "--dry-run"
    )
    assert r.exit_code == 0 and "2 to start" in r.output, r.output


# ---------------------------------------------------------------- killed mid-way, rerun, skipped; --jobs 2


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory):
    """A 3-run sweep (--jobs 2, 3 epochs each) killed with SIGTERM once a run has written a checkpoint, then
    the same command again (continues), then once more (nothing to do)."""
    root = tmp_path_factory.mktemp("kill")
    recipe = write_tiny(root, root / "cache", epochs=3)
    out = root / "out"
    args = [recipe, "--seeds", "0,1,2", "--jobs", "2", "--out", out, "--device", "cpu"]
    proc = sweep_process(*args, wait=False)
    deadline = time.monotonic() + TIMEOUT
    while not list(out.glob("tiny/*/checkpoint.pt")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    killed_output, _ = proc.communicate(timeout=TIMEOUT)
    killed = SimpleNamespace(
        code=proc.returncode,
        output=killed_output,
        manifest=manifest(out),
        states={
            p.name: json.loads((p / "meta.json").read_text())["status"]
            for p in out.glob("tiny/*")
            if (p / "meta.json").is_file()
        },
    )
    rerun = sweep_process(*args)
    rerun_manifest = manifest(out)
    again = sweep_process(*args)
    return SimpleNamespace(
        out=out, killed=killed, rerun=rerun, rerun_manifest=rerun_manifest, again=again, again_manifest=manifest(out)
    )


def test_a_killed_sweep_stops_its_runs_cleanly(killed_and_rerun):
    k = killed_and_rerun.killed
    assert k.code == 130, k.output
    assert "stopping:" in k.output and "run the same command again to continue" in k.output
    assert "Traceback" not in k.output
    statuses = [r["status"] for r in k.manifest["runs"]]
    assert "completed" not in statuses or statuses.count("completed") < 3
    assert "pending" in statuses  # the third run never started
    assert set(k.states.values()) <= {"interrupted", "completed"}  # no run left 'running'
    assert "interrupted" in k.states.values()


def test_a_rerun_continues_and_completes_every_run(killed_and_rerun):
    r, out = killed_and_rerun.rerun, killed_and_rerun.out
    assert r.returncode == 0, r.stdout + r.stderr
    assert "to resume" in r.stdout and "[3/3]" in r.stdout
    runs = killed_and_rerun.rerun_manifest["runs"]
    assert [x["status"] for x in runs] == ["completed"] * 3
    for x in runs:
        whole(Path(x["run_dir"]), epochs=3)
    resumed = [x for x in runs if killed_and_rerun.killed.states.get(Path(x["run_dir"]).name) == "interrupted"]
    assert resumed and all("--resume" in Path(x["log"]).read_text().split("attempt 2:")[1] for x in resumed)
    r = CliRunner().invoke(app, ["compare", str(out)])
    assert r.exit_code == 0 and "mixup" in r.output, r.output


def test_jobs_2_runs_two_at_once_and_never_three(killed_and_rerun):
    runs = killed_and_rerun.rerun_manifest["runs"]
    spans = [(x["started"], x["ended"]) for x in runs]

    def overlap(a, b):
        return a[0] < b[1] and b[0] < a[1]

    assert any(overlap(spans[i], spans[j]) for i in range(3) for j in range(i + 1, 3))
    assert not (
        overlap(spans[0], spans[1])
        and overlap(spans[0], spans[2])
        and overlap(spans[1], spans[2])
        and max(s[0] for s in spans) < min(s[1] for s in spans)
    )
    assert killed_and_rerun.rerun_manifest["jobs"] == 2


def test_completed_runs_are_skipped(killed_and_rerun):
    a = killed_and_rerun.again
    assert a.returncode == 0, a.stdout + a.stderr
    assert "3 skip (completed)" in a.stdout
    before = {x["run_dir"]: x["attempts"] for x in killed_and_rerun.rerun_manifest["runs"]}
    assert {x["run_dir"]: x["attempts"] for x in killed_and_rerun.again_manifest["runs"]} == before


def test_the_manifest_lists_each_run(killed_and_rerun):
    m = killed_and_rerun.again_manifest
    assert m["kind"] == "mixbench-sweep" and m["launcher"] == "local" and m["counts"] == {"completed": 3}
    for i, x in enumerate(m["runs"]):
        assert x["index"] == i and x["seed"] == i and x["overrides"] == []
        assert x["recipe_path"].endswith("tiny.toml")
        assert x["run_dir"] == str(killed_and_rerun.out / "tiny" / x["run_id"]) and x["run_id"].startswith(f"seed{i}-")
    assert not list(killed_and_rerun.out.glob("sweeps/**/*.tmp"))


# ---------------------------------------------------------------- a failing run does not stop the others


def test_failing_points_are_listed_and_the_others_complete(tiny, tmp_path):
    """One point is invalid (alpha -1, refused before training), one fails when it starts (missing weights)."""
    grid_model = 'model={name="resnet10_cifar",width=0.125},{name="resnet10_cifar",width=0.125,weights="missing.pt"}'
    r = cli(
        "sweep",
        tiny(),
        "--grid",
        grid_model,
        "--grid",
        "method.alpha=0.2,-1",
        "--jobs",
        "2",
        "--out",
        tmp_path / "out",
        "--device",
        "cpu",
    )
    assert r.exit_code == 1, r.output
    assert "1 completed, 1 failed, 2 invalid" in r.output
    assert "not completed (3):" in r.output and "missing.pt not found" in r.output
    assert "[method].alpha: expected a number > 0" in r.output
    assert "Traceback" not in r.output
    runs = manifest(tmp_path / "out")["runs"]
    assert sorted(x["status"] for x in runs) == ["completed", "failed", "invalid", "invalid"]
    whole(Path(next(x["run_dir"] for x in runs if x["status"] == "completed")), epochs=1)


# ---------------------------------------------------------------- SLURM


def test_slurm_without_submitit_is_one_sentence(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    r = cli("sweep", tiny(), "--launcher", "slurm", "--out", tmp_path)
    assert r.exit_code == 2
    assert "pip install 'mixbench[slurm]'" in one_sentence(r.output)
    assert not (tmp_path / "sweeps").exists()


def test_slurm_array_through_submitit_and_the_sbatch_script(tiny, tmp_path, monkeypatch):
    """submitit's local executor stands in for SLURM; the sbatch script runs by hand (bash, a task id)."""
    pytest.importorskip("submitit")
    from mixbench.sweep.slurm import CLUSTER_ENV

    monkeypatch.setenv(CLUSTER_ENV, "local")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    r = cli(
        "sweep",
        tiny(),
        "--seeds",
        "0,1",
        "--launcher",
        "slurm",
        "--wait",
        "--slurm",
        "timeout_min=30",
        "--slurm",
        "slurm_partition=gpu",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.output
    assert "submitted 2 run(s)" in r.output and "2 completed" in r.output
    m = manifest(out)
    assert m["launcher"] == "slurm" and all(x["job_id"] for x in m["runs"])
    (script,) = out.glob("sweeps/*/slurm/array.sbatch")
    text = script.read_text()
    for line in ("#SBATCH --array=0-1", "#SBATCH --time=30", "#SBATCH --partition=gpu", "mixbench.sweep.worker"):
        assert line in text
    assert "gpus-per-node" not in text  # --device cpu
    for x in m["runs"]:
        whole(Path(x["run_dir"]), epochs=1)
    env = {**ENV, "SLURM_ARRAY_TASK_ID": "1"}  # by hand, as sbatch would run task 1: done already, so it ends at once
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0 and "already completed; nothing to do" in done.stdout, done.stdout + done.stderr
    bad = subprocess.run(
        ["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": "7"}, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert bad.returncode == 2 and "run index 7 is out of range; valid: 0..1" in bad.stderr, bad.stderr


# ---------------------------------------------------------------- suites


def test_suite_list_and_run_on_a_tiny_suite(tmp_path, cache_dir, monkeypatch):
    suites = tmp_path / "suites"
    suites.mkdir()
    write_tiny(suites, cache_dir)
    (suites / "tiny-suite.toml").write_text('description = "one tiny run"\nseeds = [0]\nrecipes = ["tiny.toml"]\n')
    env = {"MIXBENCH_SUITES": str(suites)}
    r = cli("suite", "list", env=env)
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if line.startswith("tiny-suite"))
    assert row.split()[1] == "1" and "GPU-h" in row and "one tiny run" in row
    assert "openmixup-cifar100-r18" in r.output and "dm-cifar100" in r.output
    out = tmp_path / "out"
    r = cli("suite", "run", "tiny-suite", "--out", out, "--device", "cpu", env=env)
    assert r.exit_code == 0, r.output
    assert f"table: mixbench compare {out} --reference" in r.output
    r = cli("compare", out, "--reference")
    assert r.exit_code == 0 and "mixup" in r.output, r.output
    r = cli("suite", "run", str(suites / "tiny-suite.toml"), "--out", out, "--dry-run")  # a suite by its path
    assert r.exit_code == 0 and "1 skip (completed)" in r.output, r.output


@pytest.mark.parametrize(
    "name, runs, dataset, epochs",
    [
        ("openmixup-cifar100-r18", 39, "cifar100", 200),
        ("openmixup-tiny-imagenet-r18", 39, "tiny-imagenet", 400),
        ("dm-cifar100", 45, "cifar100", 800),
    ],
)
def test_shipped_suites_plan_and_have_published_rows(name, runs, dataset, epochs, tmp_path):
    """Every recipe of a shipped suite is valid, and every plain method in it has a published reference row."""
    from mixbench.recipe import load_recipe
    from mixbench.results.leaderboard import reference_rows
    from mixbench.sweep.suites import find_suite

    r = cli("suite", "run", name, "--out", tmp_path, "--dry-run")
    assert r.exit_code == 0, r.output
    assert f"{runs} runs" in r.output and f"{runs} to start" in r.output
    published = {
        row["method"].removesuffix(" (published)") for row in reference_rows(dataset, "resnet18_cifar", epochs)
    }
    for path in find_suite(name).paths:
        recipe = load_recipe(path)
        assert (recipe.data["source"], recipe.train["epochs"]) == (dataset, epochs)
        if recipe.loss["name"] == "ce":
            assert recipe.method["name"] in published, path


# ---------------------------------------------------------------- bad input: one sentence, exit 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["suite", "run", "no-such-suite"], "unknown suite 'no-such-suite'; valid: "),
        (["sweep", "{tiny}", "--grid", "method.alpha"], "--grid method.alpha: expected key.path=VALUE1,VALUE2"),
        (["sweep", "{tiny}", "--grid", "method.alpha=0.2,,1"], "an empty value"),
        (["sweep", "{tiny}", "--grid", "method.nokey=1,2"], "unknown key [method].nokey"),
        (["sweep", "{tiny}", "--set", "train.nokey=1"], "unknown key [train].nokey"),
        (["sweep", "{tiny}", "--seeds", "0,x"], "--seeds 0,x: expected non-negative integers"),
        (["sweep", "no-such.toml"], "no-such.toml: recipe file not found"),
        (["sweep", "{tiny}", "--wait"], "--wait applies to --launcher slurm only"),
    ],
)
def test_bad_input_is_one_sentence(tiny, tmp_path, args, words):
    path = tiny()
    r = cli(*[a.replace("{tiny}", str(path)) for a in args], "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert words in one_sentence(r.output)
    assert not (tmp_path / "out").exists()


def test_a_bad_suite_file_is_one_sentence(tmp_path, monkeypatch):
    (tmp_path / "broken.toml").write_text('description = "x"\nrecipes = ["tiny.toml"]\nseed = [0]\n')
    r = cli("suite", "run", tmp_path / "broken.toml", "--dry-run")
    assert r.exit_code == 2
    assert "broken.toml: unknown key 'seed' (did you mean 'seeds'?)" in one_sentence(r.output)
