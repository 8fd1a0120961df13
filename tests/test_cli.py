"""The command line end to end: exit codes, messages, records, compare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixbench import __version__
from mixbench.cli import app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0 and __version__ in r.output


@pytest.mark.parametrize("what,expected", [
    ("methods", ["vanilla", "mixup", "cutmix"]),
    ("models", ["resnet18_cifar", "wrn28_8_cifar", "timm:<name>"]),
    ("datasets", ["shapes", "cifar10", "cifar100", "imagefolder", "tiny-imagenet"]),
    ("losses", ["ce", "soft_ce", "bce"]),
])
def test_list(cli, what, expected):
    r = cli("list", what)
    assert r.exit_code == 0
    names = [line.split()[0] for line in r.output.splitlines()]
    assert set(expected) <= set(names)
    assert all(len(line.split(None, 1)) == 2 for line in r.output.splitlines())  # every row has a doc


def test_list_recipes_shows_shipped_recipes(cli, monkeypatch):
    monkeypatch.chdir(REPO)
    r = cli("list", "recipes")
    assert r.exit_code == 0
    assert "quickstart.toml" in r.output and "cifar100_r18_mixup.toml" in r.output
    assert "_base" not in r.output


def test_every_shipped_recipe_validates(cli):
    recipes = sorted((REPO / "recipes").rglob("*.toml"))
    recipes = [p for p in recipes if "_base" not in p.parts]
    assert len(recipes) >= 7
    r = cli("validate", *recipes)
    assert r.exit_code == 0, r.output


def test_openmixup_cifar100_recipe_is_exact():
    from mixbench.recipe import load_recipe

    r = load_recipe(REPO / "recipes" / "cifar100_r18_mixup.toml")
    t = r.train
    assert (t["batch_size"], t["lr"], t["momentum"], t["weight_decay"], t["epochs"]) == (100, 0.1, 0.9, 1e-4, 200)
    assert (t["optimizer"], t["schedule"], t["min_lr"], t["nesterov"]) == ("sgd", "cosine", 0.0, False)
    assert (r.data["augment"], r.data["padding_mode"], r.data["crop_padding"]) == ("crop_flip", "reflect", 4)
    assert r.data["std"] == [0.2023, 0.1994, 0.201]
    assert r.method == {"name": "mixup", "alpha": 1.0, "lam_mode": "batch", "pairing": "permutation",
                        "prob": 1.0}
    assert load_recipe(REPO / "recipes" / "cifar100_r18_cutmix.toml").method["alpha"] == 0.2
    assert load_recipe(REPO / "recipes" / "cifar10_r18_vanilla.toml").data["source"] == "cifar10"


REFERENCE_ALPHA = {  # OpenMixup's CIFAR-100 / CIFAR-10 ResNet-18 tables (shared/spec/methods.md §8)
    "mixup": 1.0, "cutmix": 0.2, "manifoldmix": 2.0, "saliencymix": 0.2, "attentivemix": 2.0, "fmix": 0.2,
    "puzzlemix": 1.0, "gridmix": 0.2, "resizemix": 1.0, "smoothmix": None,
}


@pytest.mark.parametrize("dataset", ["cifar100", "cifar10"])
def test_one_recipe_per_mixer_with_the_reference_alpha(dataset):
    from mixbench.mixing import MIXERS
    from mixbench.recipe import load_recipe

    for entry in MIXERS:
        variant = "_random" if entry.name == "patchmix" else ""  # patchmix ships _random and _evolution
        r = load_recipe(REPO / "recipes" / f"{dataset}_r18_{entry.name}{variant}.toml")
        assert r.method["name"] == entry.name and r.data["source"] == dataset
        assert r.model["name"] == "resnet18_cifar" and r.train["batch_size"] == 100
        if entry.name in REFERENCE_ALPHA:
            assert r.method.get("alpha") == REFERENCE_ALPHA[entry.name]


def test_list_methods_says_how_each_mixer_differs_from_its_reference(cli):
    r = cli("list", "methods")
    line = next(x for x in r.output.splitlines() if x.startswith("puzzlemix"))
    assert "vs reference" in line and "pyGCO" in line


def test_bad_recipe_exit_2_one_line_per_problem_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nlr = "fast"\nepohcs = 2\n')
    p = subprocess.run([sys.executable, "-m", "mixbench.cli", "validate", str(bad)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") and str(bad) in line for line in lines)
    assert "Traceback" not in p.stderr + p.stdout


def test_bad_arguments_exit_2(cli, tiny_recipe):
    assert cli("run", tiny_recipe(), "--device", "tpu").exit_code == 2
    assert cli("list", "everything").exit_code == 2
    r = cli("run", tiny_recipe(), "--resume", "--overwrite")
    assert r.exit_code == 2 and "exclude each other" in r.output


def test_missing_data_is_a_user_error(cli, tmp_path):
    recipe = tmp_path / "c.toml"
    recipe.write_text('[data]\nsource = "cifar10"\nroot = "nowhere"\n')
    r = cli("run", recipe, "--out", tmp_path / "res", "--device", "cpu")
    assert r.exit_code == 2, r.output
    assert "cifar-10-batches-py" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").rglob("summary.json"))


def test_dry_run_prints_resolved_recipe(cli, tiny_recipe, tmp_path):
    r = cli("run", tiny_recipe(), "--dry-run", "--set", "train.lr=0.3", "--seed", "5", "--out", tmp_path)
    assert r.exit_code == 0
    assert "lr = 0.3" in r.output and "seed = 5" in r.output and "would write to" in r.output
    assert not any(tmp_path.rglob("meta.json"))


def test_run_refuse_resume_and_compare(cli, tiny_recipe, tmp_path):
    out = tmp_path / "res"
    for method in ("vanilla", "mixup"):
        r = cli("run", tiny_recipe(name=f"t_{method}", method=method, epochs=1), "--out", out,
                "--device", "cpu")
        assert r.exit_code == 0, r.output
        assert "completed" in r.output
    (run,) = (out / "t_mixup").iterdir()
    assert {p.name for p in run.iterdir()} >= {"recipe.toml", "meta.json", "metrics.jsonl",
                                                "summary.json", "checkpoint.pt"}
    before = (run / "summary.json").read_bytes()
    r = cli("run", tiny_recipe(name="t_mixup", method="mixup", epochs=1), "--out", out, "--device", "cpu")
    assert r.exit_code == 2 and "--resume or --overwrite" in r.output
    assert (run / "summary.json").read_bytes() == before

    r = cli("compare", out, "--format", "json")
    assert r.exit_code == 0, r.output
    text = r.output
    assert "mixup" in text and "vanilla" in text
    r = cli("compare", out, "--format", "csv")
    assert r.exit_code == 0 and "mixup" in r.output
    r = cli("compare", tmp_path / "empty")
    assert r.exit_code == 2


def test_cli_seed_changes_run_folder(cli, tiny_recipe, tmp_path):
    path = tiny_recipe(epochs=1)
    assert cli("run", path, "--out", tmp_path, "--seed", "1", "--device", "cpu").exit_code == 0
    assert cli("run", path, "--out", tmp_path, "--seed", "2", "--device", "cpu").exit_code == 0
    ids = sorted(p.name for p in (tmp_path / "tiny").iterdir())
    assert len(ids) == 2 and ids[0].startswith("seed1-") and ids[1].startswith("seed2-")
    meta = json.loads((tmp_path / "tiny" / ids[0] / "meta.json").read_text())
    assert meta["seed"] == 1


def test_divergence_exit_3_and_interrupt_exit_130(cli, tiny_recipe, tmp_path, register_method):
    from mixbench.engine import Interrupted
    from mixbench.methods.supervised import Supervised

    class NaNLoss(Supervised):
        def forward(self, batch):
            return {"loss": super().forward(batch)["loss"] * float("nan")}

    class Stop(Supervised):
        def forward(self, batch):
            raise Interrupted

    register_method("nan_loss", NaNLoss)
    register_method("stop", Stop)
    r = cli("run", tiny_recipe(epochs=1, method="nan_loss"), "--out", tmp_path / "a", "--device", "cpu")
    assert r.exit_code == 3 and "diverged" in r.output
    r = cli("run", tiny_recipe(epochs=1, method="stop"), "--out", tmp_path / "b", "--device", "cpu")
    assert r.exit_code == 130 and "--resume" in r.output
    (meta,) = (tmp_path / "b").rglob("meta.json")
    assert json.loads(meta.read_text())["status"] == "interrupted"
