"""Valid-looking recipes that used to pass validation and then crash (or exhaust memory) in a run.

Each one must now be refused with exit code 2 and one sentence naming the key, by ``validate``,
``run --dry-run`` and ``run`` alike, before any results folder exists and without a traceback.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixbench.cli import app

HUGE_DIGITS = "1" * 5000  # beyond Python's 4300-digit int-string limit

# id: (recipe text, --set arguments, text the message must contain)
CASES: dict[str, tuple[str, list[str], str]] = {
    "crop_padding": ("[data]\ncrop_padding = 1000\n", [], "[data].crop_padding"),
    "crop_padding_equal_to_side": ("[data]\nimage_size = 16\ncrop_padding = 16\n", [], "[data].crop_padding"),
    "lr": ("[train]\nlr = 1e300\n", [], "[train].lr"),
    "name_300_chars": (f'name = "{"a" * 300}"\n', [], "name:"),
    "name_nul": ('name = "a\\u0000b"\n', [], "name:"),
    "data_seed_2_64": ("[data]\nseed = 18446744073709551616\n", [], "[data].seed"),
    "seed_2_64_minus_1": ("seed = 18446744073709551615\n", [], "seed:"),
    "train_size": ("[data]\ntrain_size = 9223372036854775807\n", [], "[data].train_size"),
    "test_size": ("[data]\ntest_size = 9223372036854775807\n", [], "[data].test_size"),
    "image_size": ("[data]\nimage_size = 100000\n", [], "[data].image_size"),
    "memory": ("[data]\ntrain_size = 10000000\nimage_size = 1024\n", [], "of memory"),
    "patchmix_grid": ('[method]\nname = "patchmix"\ngrid = 1000\n', [], "[method].grid"),
    "patchmix_grid_no_patch_loss": ('[method]\nname = "patchmix"\ngrid = 64\npatch_weight = 0\n', [],
                                    "[method].grid"),
    "patchmix_population": ('[method]\nname = "patchmix"\nsearch = "evolution"\npopulation = 100000\n', [],
                            "[method].population"),
    "patchmix_grid_1": ('[method]\nname = "patchmix"\ngrid = 1\n', [], "[method].grid"),
    "patchmix_auto_grid_at_8px": ('[data]\nimage_size = 8\n[method]\nname = "patchmix"\n', [], "[method].grid"),
    "patchmix_auto_grid_timm": ('[model]\nname = "timm:resnet18"\n[method]\nname = "patchmix"\n', [],
                                "[method].grid"),
    "batchnorm_batch_of_one": ("[data]\nimage_size = 8\n[train]\nbatch_size = 1\n", [], "[train].batch_size"),
    "unknown_model": ('[model]\nname = "resnet19_cifar"\n', [], "[model].name"),
    "unknown_timm_model": ('[model]\nname = "timm:resnet181"\n', [], "[model].name"),
    "manifoldmix_layers": ('[method]\nname = "manifoldmix"\nlayers = [99]\n', [], "[method].layers"),
    "manifoldmix_timm": ('[method]\nname = "manifoldmix"\n[model]\nname = "timm:resnet18"\n', [], "timm model"),
    "samix_feature_stage": ('[method]\nname = "samix"\nfeature_stage = 9\n', [], "[method].feature_stage"),
    "wrn_has_3_stages": ('[method]\nname = "automix"\nfeature_stage = 4\n[model]\nname = "wrn28_8_cifar"\n', [],
                         "[method].feature_stage"),
    "puzzlemix_timm": ('[method]\nname = "puzzlemix"\n[model]\nname = "timm:resnet18"\n', [],
                       "[method].saliency_stage"),
    "switch_child_layers": ('[method]\nname = "switch"\nmixers = ["mixup", "manifoldmix"]\n'
                            "[method.manifoldmix]\nlayers = [7]\n", [], "[method].manifoldmix.layers"),
    "batch_larger_than_data": ("[data]\ntrain_size = 100\n[train]\nbatch_size = 200\n", [], "[train].batch_size"),
    "labels_per_class": ('[method]\nname = "fixmatch"\n[data]\ntrain_size = 100\nlabels_per_class = 50\n'
                         "unlabeled_ratio = 1\n[train]\nbatch_size = 10\n", [], "[data].labels_per_class"),
    "deep_arrays": ("[train]\nlr = " + "[" * 3000 + "]" * 3000 + "\n", [], "nest"),
    "deep_tables": ("[" + ".".join(["a"] * 3000) + "]\nx = 1\n", [], "nest"),
    "deep_inline_tables": ("x = " + "{a = " * 2000 + "1" + "}" * 2000 + "\n", [], "nest"),
    "huge_number_in_file": (f"seed = {HUGE_DIGITS}\n", [], "digits"),
    "huge_number_in_set": ("", [f"seed={HUGE_DIGITS}"], "digits"),
    "deep_set_value": ("", ["train.lr=" + "[" * 3000 + "]" * 3000], "nest"),
    "set_base": ("", ["base=other.toml"], "base"),
    "nul_in_base": ('base = "a\\u0000b.toml"\n', [], "base"),
    "nul_in_path": ('[data]\nsource = "imagefolder"\nroot = "x\\u0000y"\n', [], "[data].root"),
    "lr_overflowing_int": ("[train]\nlr = " + "9" * 400 + "\n", [], "[train].lr"),
    "switch_probs_overflow": ('[method]\nname = "switch"\nprobs = [1e308, 1e308]\n', [], "[method].probs"),
}


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def _refused(result, key: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert errors and any(key in line for line in errors), result.output


def _check_all_commands(cli, recipe: Path, sets: list[str], key: str, out: Path) -> None:
    flags = [a for s in sets for a in ("--set", s)]
    _refused(cli("validate", recipe, *flags), key)
    _refused(cli("run", recipe, "--dry-run", "--out", out, *flags), key)
    _refused(cli("run", recipe, "--out", out, "--device", "cpu", *flags), key)
    assert not out.exists(), f"a results folder was created: {sorted(out.rglob('*'))}"


@pytest.mark.parametrize("case", list(CASES))
def test_refused_before_anything_runs(cli, tmp_path, case):
    text, sets, key = CASES[case]
    recipe = tmp_path / "r.toml"
    recipe.write_text(text, encoding="utf-8")
    _check_all_commands(cli, recipe, sets, key, tmp_path / "results")


def test_long_base_chain(cli, tmp_path):
    for i in range(40):
        (tmp_path / f"c{i}.toml").write_text(f'base = "c{i + 1}.toml"\n' if i < 39 else 'name = "end"\n')
    _check_all_commands(cli, tmp_path / "c0.toml", [], "base", tmp_path / "results")


def test_recipe_that_is_a_symlink_loop(cli, tmp_path):
    (tmp_path / "a.toml").symlink_to(tmp_path / "b.toml")
    (tmp_path / "b.toml").symlink_to(tmp_path / "a.toml")
    _check_all_commands(cli, tmp_path / "a.toml", [], "a.toml", tmp_path / "results")


def test_base_that_is_a_symlink_loop(cli, tmp_path):
    (tmp_path / "a.toml").symlink_to(tmp_path / "b.toml")
    (tmp_path / "b.toml").symlink_to(tmp_path / "a.toml")
    (tmp_path / "r.toml").write_text('base = "a.toml"\n')
    _check_all_commands(cli, tmp_path / "r.toml", [], "base", tmp_path / "results")


def _tar_gz_of_images(path: Path) -> bytes:
    import numpy as np
    from PIL import Image

    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for cls in ("a", "b"):
                for i in range(6):
                    buf = io.BytesIO()
                    Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(buf, "PNG")
                    member = tarfile.TarInfo(f"{split}/{cls}/{i}.png")
                    member.size = len(buf.getvalue())
                    tar.addfile(member, io.BytesIO(buf.getvalue()))
    return path.read_bytes()


@pytest.mark.parametrize("cut", [0.5, 0.02])
def test_corrupt_tar_gz_root_is_a_user_error_naming_the_file(cli, tmp_path, cut):
    """The archive is read only when the run loads its data: the loader's EOFError becomes one sentence."""
    whole = _tar_gz_of_images(tmp_path / "good.tar.gz")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(whole[: int(len(whole) * cut)])
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[data]\nsource = "imagefolder"\nroot = "bad.tar.gz"\ncache_dir = "{tmp_path / "cache"}"\n'
                      '[model]\nname = "resnet10_cifar"\nwidth = 0.125\n[train]\nepochs = 1\nbatch_size = 4\n')
    assert cli("validate", recipe).exit_code == 0  # nothing is read at validation
    out = tmp_path / "results"
    result = cli("run", recipe, "--out", out, "--device", "cpu")
    _refused(result, "[data].root")
    assert str(bad) in result.output and "corrupt" in result.output
    assert not [p for p in out.rglob("*") if p.is_file()], "a run record was written"


def test_validate_takes_set_like_run_and_prints_what_it_resolved_to(cli, tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    r = cli("validate", empty)
    assert r.exit_code == 0, r.output
    line = r.output.strip()
    assert line.startswith(f"ok: {empty}") and "data shapes" in line and "model resnet18_cifar" in line
    assert "method vanilla" in line and "200 epochs" in line and "batch 100" in line
    assert "all defaults: [data], [model], [method], [loss], [train], [eval]" in line
    assert "name from the file name" in line
    r = cli("validate", empty, "--set", "train.epochs=3", "--set", 'method.name="mixup"')
    assert r.exit_code == 0 and "3 epochs" in r.output and "method mixup" in r.output
    assert "[train]" not in r.output.split("all defaults:")[1] and "[method]" not in r.output.split("all defaults:")[1]
    _refused(cli("validate", empty, "--set", "train.lr=20"), "[train].lr")


def test_limits_leave_every_shipped_recipe_valid(cli):
    recipes = [p for p in sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.toml"))
               if "_base" not in p.parts]
    r = cli("validate", *recipes)
    assert r.exit_code == 0, r.output
    assert r.output.count("ok: ") == len(recipes)


def test_dry_run_checks_what_run_checks(cli, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[method]\nname = "mixup"\n[train]\nbatch_size = 50\n')
    _refused(cli("run", recipe, "--dry-run", "--nproc", "2", "--out", tmp_path / "res"), "[train].batch_size")
    ok = cli("run", recipe, "--dry-run", "--out", tmp_path / "res")
    assert ok.exit_code == 0, ok.output
    run_dir = Path(ok.output.strip().splitlines()[-1].split("would write to ")[1])
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text("{}")
    again = cli("run", recipe, "--dry-run", "--out", tmp_path / "res")
    assert again.exit_code == 2 and "already holds a run" in again.output
