"""Recipe names: the design card's ``<method>_<dataset>.toml`` resolves to the shipped
``<dataset>_r18_<method>.toml``, bare names find mixbench's recipes, and a missing recipe is one sentence
with a did-you-mean and exit code 2 (nothing trains here: ``run --dry-run`` at most)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixbench.cli import app
from mixbench.errors import RecipeError
from mixbench.recipe import load_recipe
from mixbench.recipe_names import aliases, card_name, resolve_recipe_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def _resolve(path, notes=None):
    return resolve_recipe_path(path, note=(notes.append if notes is not None else None))


def test_the_card_command_resolves_with_one_note(in_repo):
    notes: list[str] = []
    assert _resolve("recipes/samix_cifar100.toml", notes) == Path("recipes/cifar100_r18_samix.toml")
    assert notes == [
        "note: recipes/samix_cifar100.toml is not a file; using recipes/cifar100_r18_samix.toml "
        "(<method>_<dataset>.toml is an alias of <dataset>_r18_<method>.toml)"
    ]


def test_an_existing_path_is_used_as_given_without_a_note(in_repo):
    notes: list[str] = []
    assert _resolve("recipes/cifar100_r18_samix.toml", notes) == Path("recipes/cifar100_r18_samix.toml")
    assert notes == []


def test_every_shipped_r18_recipe_has_its_alias():
    """The rule is computed from the files: every <dataset>_r18_<method>.toml, in every recipes folder."""
    folders = [REPO / "recipes", *(d for d in (REPO / "recipes").iterdir() if d.is_dir() and d.name != "_base")]
    shipped = [p for folder in folders for p in folder.glob("*_r18_*.toml")]
    assert len(shipped) > 40
    for path in shipped:
        alias = card_name(path)
        assert aliases(path.parent)[alias] == path
        assert _resolve(path.parent / alias) == path
    assert card_name(Path("tiny_imagenet_r18_patchmix_random.toml")) == "patchmix_random_tiny_imagenet.toml"
    assert card_name(Path("quickstart.toml")) is None


@pytest.mark.parametrize(
    "name, found",
    [
        ("samix_cifar100", "recipes/cifar100_r18_samix.toml"),  # no folder, no extension
        ("samix_cifar100.toml", "recipes/cifar100_r18_samix.toml"),
        ("cifar100_r18_samix", "recipes/cifar100_r18_samix.toml"),  # a shipped recipe's own name
        ("quickstart", "recipes/quickstart.toml"),
        ("mocov3_cifar10", "recipes/ssl/cifar10_r18_mocov3.toml"),  # the top level first, then the subfolders
        ("recipes/ssl/mocov3_cifar10.toml", "recipes/ssl/cifar10_r18_mocov3.toml"),
        ("vanilla_tiny_imagenet", "recipes/tiny_imagenet_r18_vanilla.toml"),
    ],
)
def test_bare_names_and_subfolders(in_repo, name, found):
    assert _resolve(name) == Path(found)


def test_the_checkout_recipes_from_another_folder(tmp_path, monkeypatch):
    """Run from elsewhere, ``recipes/<alias>`` finds the recipes/ beside the installed package (this checkout)."""
    monkeypatch.chdir(tmp_path)
    assert _resolve("recipes/samix_cifar100.toml").resolve() == REPO / "recipes" / "cifar100_r18_samix.toml"
    assert _resolve("samix_cifar100").resolve() == REPO / "recipes" / "cifar100_r18_samix.toml"


def test_aliases_in_a_folder_of_ones_own_and_ambiguous_names(tmp_path):
    (tmp_path / "shapes_r18_mixup.toml").write_text("")
    (tmp_path / "a_r18_b_c.toml").write_text("")  # alias b_c_a.toml
    (tmp_path / "a_b_r18_b.toml").write_text("")  # alias b_a_b.toml
    (tmp_path / "b_r18_b_a.toml").write_text("")  # alias b_a_b.toml too: claimed twice, never guessed
    assert aliases(tmp_path) == {
        "mixup_shapes.toml": tmp_path / "shapes_r18_mixup.toml",
        "b_c_a.toml": tmp_path / "a_r18_b_c.toml",
    }
    assert _resolve(tmp_path / "mixup_shapes.toml") == tmp_path / "shapes_r18_mixup.toml"
    with pytest.raises(RecipeError, match="recipe file not found"):
        _resolve(tmp_path / "b_a_b.toml")


def test_a_name_two_subfolders_fit_is_refused(tmp_path, monkeypatch):
    for sub in ("one", "two"):
        (tmp_path / "recipes" / sub).mkdir(parents=True)
        (tmp_path / "recipes" / sub / "toy_r18_zzmix.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as e:
        _resolve("zzmix_toy")
    (problem,) = e.value.problems
    assert problem.startswith("zzmix_toy: recipe file not found, and 2 recipes fit the name: ")
    assert "recipes/one/toy_r18_zzmix.toml" in problem and problem.endswith("name one of them with its folder")


def test_a_missing_recipe_is_one_sentence_with_a_did_you_mean(in_repo):
    with pytest.raises(RecipeError) as e:
        _resolve("recipes/samix_cifr100.toml")
    (problem,) = e.value.problems
    assert problem.startswith(
        "recipes/samix_cifr100.toml: recipe file not found (did you mean "
        "'recipes/samix_cifar100.toml' (alias of cifar100_r18_samix.toml)"
    )
    assert "valid: a recipe file, a shipped recipe's name or its <method>_<dataset> alias" in problem
    assert "\n" not in problem
    with pytest.raises(RecipeError, match=r"did you mean 'recipes/cifar100_r18_mixup.toml'"):
        _resolve("recipes/cifar100_r18_mixpu.toml")
    with pytest.raises(RecipeError, match=r"^zzzz: recipe file not found; valid: "):
        _resolve("zzzz")


def test_load_recipe_takes_the_alias_and_the_real_name(in_repo, capsys):
    r = load_recipe("recipes/samix_cifar100.toml")
    assert r.name == "cifar100_r18_samix" and r.method["name"] == "samix"  # the same run folder as the file's
    assert capsys.readouterr().err.startswith("note: recipes/samix_cifar100.toml is not a file; using ")


def test_cli_run_bad_path_exits_2_with_did_you_mean(in_repo, tmp_path):
    r = CliRunner().invoke(app, ["run", "recipes/samix_cifr100.toml", "--out", str(tmp_path), "--dry-run"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: recipes/samix_cifr100.toml: recipe file not found (did you mean 'recipes/samix_cifar100.toml'"
    )


def test_cli_run_card_command_dry_run(in_repo, tmp_path):
    """``mixbench run recipes/samix_cifar100.toml`` exactly as the card writes it (``--dry-run``: nothing trains)."""
    r = CliRunner().invoke(
        app, ["run", "recipes/samix_cifar100.toml", "--out", str(tmp_path), "--dry-run", "--device", "cpu"]
    )
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines() == [
        "note: recipes/samix_cifar100.toml is not a file; using "
        "recipes/cifar100_r18_samix.toml (<method>_<dataset>.toml is an alias of "
        "<dataset>_r18_<method>.toml)"
    ]
    assert 'name = "cifar100_r18_samix"' in r.stdout
    assert f"# would write to {tmp_path / 'cifar100_r18_samix'}" in r.stdout
