"""Recipe loading, inheritance, overrides and every class of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixbench.errors import RecipeError
from mixbench.recipe import load_recipe, parse_override


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems_of(path: Path, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value.problems


def test_defaults_fill_every_table(tmp_path):
    r = load_recipe(write(tmp_path / "r.toml", 'name = "r"\n'))
    assert r.name == "r" and r.seed == 0
    assert r.data["source"] == "shapes" and r.data["augment"] == "crop_flip"
    assert r.model["name"] == "resnet18_cifar" and r.method == {"name": "vanilla"}
    assert r.loss == {"name": "ce", "label_smoothing": 0.0}
    assert r.train["batch_size"] == 100 and r.train["optimizer"] == "sgd"


def test_name_defaults_to_file_stem(tmp_path):
    assert load_recipe(write(tmp_path / "my_run.toml", "seed = 3\n")).name == "my_run"


def test_base_inheritance_merges_tables_and_replaces_arrays(tmp_path):
    write(tmp_path / "_base" / "b.toml", """
[data]
source = "cifar10"
root = "../data"
[train]
epochs = 10
lr = 0.2
milestones = [3, 6]
schedule = "step"
""")
    r = load_recipe(write(tmp_path / "child.toml", """
base = "_base/b.toml"
name = "child"
[train]
lr = 0.05
milestones = [5]
"""))
    assert r.train["epochs"] == 10  # from base
    assert r.train["lr"] == 0.05  # child wins
    assert r.train["milestones"] == [5]  # arrays replace, not append
    assert r.data["source"] == "cifar10"
    # path resolved relative to the file that named it (_base/), not the child
    assert r.data["root"] == str((tmp_path / "data").resolve())


def test_multi_level_base_and_set_precedence(tmp_path):
    write(tmp_path / "a.toml", "[train]\nepochs = 5\nlr = 0.3\nweight_decay = 0.01\n")
    write(tmp_path / "b.toml", 'base = "a.toml"\n[train]\nlr = 0.2\n')
    c = write(tmp_path / "c.toml", 'base = "b.toml"\n[train]\nweight_decay = 0.02\n')
    r = load_recipe(c, ["train.epochs=7"])
    assert (r.train["epochs"], r.train["lr"], r.train["weight_decay"]) == (7, 0.2, 0.02)


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path / "a.toml", 'base = "b.toml"\n')
    b = write(tmp_path / "b.toml", 'base = "a.toml"\n')
    (problem,) = problems_of(b)
    assert "cycle" in problem and "a.toml" in problem and "b.toml" in problem


def test_missing_base_names_the_file(tmp_path):
    (problem,) = problems_of(write(tmp_path / "r.toml", 'base = "nope.toml"\n'))
    assert "r.toml" in problem and "nope.toml" in problem


def test_set_overrides_parse_toml_values():
    assert parse_override("train.lr=0.5") == (["train", "lr"], 0.5)
    assert parse_override("train.milestones=[1, 2]") == (["train", "milestones"], [1, 2])
    assert parse_override("method.name=mixup") == (["method", "name"], "mixup")
    assert parse_override('model.name="timm:resnet18"') == (["model", "name"], "timm:resnet18")
    assert parse_override("train.ema=true") == (["train", "ema"], True)
    with pytest.raises(RecipeError):
        parse_override("train.lr")
    with pytest.raises(RecipeError):
        parse_override("train.lr=[1,")


def test_set_path_resolves_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = load_recipe(write(tmp_path / "sub" / "r.toml", ""), ["model.weights=w.pt"])
    assert r.model["weights"] == str((tmp_path / "w.pt").resolve())


def test_all_problems_reported_at_once_with_file_key_and_valid_values(tmp_path):
    path = write(tmp_path / "bad.toml", """
name = "bad"
[train]
lr = -1
epocs = 3
precision = "fp8"
batch_size = "big"
[model]
widht = 2
[data]
source = "shapez"
""")
    probs = problems_of(path)
    text = "\n".join(probs)
    assert len(probs) == 6, probs
    assert all(str(path) in p for p in probs)
    assert "[train].lr: expected a number > 0, got -1" in text
    assert "unknown key [train].epocs (did you mean 'epochs'?)" in text
    assert "[train].precision" in text and "'bf16'" in text
    assert "[train].batch_size: expected an integer" in text
    assert "unknown key [model].widht (did you mean 'width'?)" in text
    assert "unknown data set 'shapez' (did you mean 'shapes'?)" in text


def test_unknown_top_level_and_method(tmp_path):
    probs = problems_of(write(tmp_path / "r.toml", 'trian = 1\n[method]\nname = "mixpu"\n'))
    text = "\n".join(probs)
    assert "unknown top-level key 'trian' (did you mean 'train'?)" in text
    assert "unknown method 'mixpu' (did you mean 'mixup'?)" in text


def test_method_params_are_validated_per_method(tmp_path):
    # alpha means nothing to vanilla: a recipe error, not silently ignored
    (p,) = problems_of(write(tmp_path / "a.toml", '[method]\nname = "vanilla"\nalpha = 1.0\n'))
    assert "unknown key [method].alpha" in p
    (p,) = problems_of(write(tmp_path / "b.toml", '[method]\nname = "mixup"\nalpha = 0\n'))
    assert "[method].alpha: expected a number > 0" in p
    (p,) = problems_of(write(tmp_path / "c.toml", '[method]\nname = "cutmix"\nlam_mode = "pixel"\n'))
    assert "one of 'batch', 'sample'" in p
    r = load_recipe(write(tmp_path / "d.toml", '[method]\nname = "cutmix"\nalpha = 1\n'))
    assert r.method == {"name": "cutmix", "alpha": 1.0, "lam_mode": "batch", "pairing": "permutation",
                        "prob": 1.0}


def test_incompatible_combinations(tmp_path):
    probs = problems_of(write(tmp_path / "r.toml", """
[data]
source = "cifar10"
streaming = true
[train]
epochs = 10
schedule = "step"
warmup_epochs = 10
optimizer = "adamw"
nesterov = true
"""))
    text = "\n".join(probs)
    assert "[data].root is required for source 'cifar10'" in text
    assert "streaming works only with source 'imagefolder'" in text
    assert "'step' needs [train].milestones" in text
    assert "warmup_epochs must be < epochs" in text
    assert "nesterov applies to sgd only" in text


def test_wrong_table_type_and_bad_name(tmp_path):
    probs = problems_of(write(tmp_path / "r.toml", 'name = "a/b"\ntrain = 3\n'))
    assert any("'train' must be a table" in p for p in probs)
    assert any("name: expected a plain folder name" in p for p in probs)


def test_invalid_toml_and_missing_file(tmp_path):
    (p,) = problems_of(write(tmp_path / "r.toml", "[train\nlr=1"))
    assert "invalid TOML" in p and "r.toml" in p
    (p,) = problems_of(tmp_path / "absent.toml")
    assert "not found" in p


def test_set_errors_name_set(tmp_path):
    (p,) = problems_of(write(tmp_path / "r.toml", ""), ["train.lr=abc"])
    assert p.startswith("--set: [train].lr")


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(write(tmp_path / "r.toml", """
name = "rt"
seed = 4
[method]
name = "mixup"
alpha = 0.4
[data]
mean = [0.5, 0.5, 0.5]
[train]
milestones = []
"""))
    saved = write(tmp_path / "saved" / "recipe.toml", r.to_toml())
    again = load_recipe(saved)
    assert again.as_dict() == r.as_dict()
    assert again.run_id() == r.run_id()


def test_run_id_tracks_config_but_not_bookkeeping(tmp_path):
    path = write(tmp_path / "r.toml", "")
    base = load_recipe(path).run_id()
    assert load_recipe(path, ["train.stop_after=3"]).run_id() == base
    assert load_recipe(path, ["train.log_every=7"]).run_id() == base
    assert load_recipe(path, ["train.lr=0.3"]).run_id() != base
    assert load_recipe(path, ["seed=1"]).run_id().startswith("seed1-")


def test_eval_after_names_evaluators_and_is_checked(tmp_path):
    r = load_recipe(write(tmp_path / "r.toml", '[eval]\nafter = ["linear", "knn", "corruptions"]\n'))
    assert r.eval["after"] == ["linear", "knn", "corruptions"]
    assert load_recipe(write(tmp_path / "d.toml", "")).eval["after"] == []
    path = write(tmp_path / "bad.toml", '[eval]\nafter = ["knn", "lineer"]\n')
    (p,) = problems_of(path)
    assert p == (f"{path}: [eval].after: unknown evaluator 'lineer' (did you mean 'linear'?); valid: linear, knn, "
                 "calibration, occlusion, fgsm, corruptions")
    (p,) = problems_of(write(tmp_path / "two.toml", '[eval]\nafter = ["fid", "ssim", "fid"]\n'))
    assert "unknown evaluators 'fid', 'ssim'; valid: linear, knn" in p
    (p,) = problems_of(write(tmp_path / "s.toml", ""), ['eval.after=["top5"]'])
    assert p.startswith("--set: [eval].after: unknown evaluator 'top5'")
    (p,) = problems_of(write(tmp_path / "t.toml", '[eval]\nafter = "knn"\n'))
    assert "[eval].after: expected a list of strings, got 'knn'" in p


def test_eval_after_leaves_the_run_id_alone(tmp_path):
    """It changes nothing a run trains, so it is outside the hash: adding evaluations finds the same run."""
    path = write(tmp_path / "r.toml", "")
    base = load_recipe(path).run_id()
    assert load_recipe(path, ['eval.after=["knn", "linear"]']).run_id() == base
    assert load_recipe(path, ["eval.after=[]"]).run_id() == base
    quickstart = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.toml"
    assert load_recipe(quickstart).run_id() == "seed0-89e5a4"  # the id it had before the key existed (README)
