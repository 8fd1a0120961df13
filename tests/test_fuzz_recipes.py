"""Property-based fuzzing of recipes and ``--set`` values through the command line.

Hypothesis builds recipes from random subsets of the real keys (and unknown ones) with values of
random type: huge integers, NaN and infinite floats, long strings and strings with NUL, nested
tables and arrays, wrong types. Each goes through ``validate``, ``run --dry-run`` and, when
validation refuses it, ``run``. Whatever the input: the exit code is 0 or 2, no traceback is
printed, a refused recipe is refused by every command, and the results folder, which already holds
a finished run, keeps every byte. Deterministic (``derandomize``) and CI-sized: ``MAX_EXAMPLES``
examples of three commands each.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mixbench.cli import app
from mixbench.losses import LOSSES
from mixbench.methods import METHODS
from mixbench.recipe import DATA_SCHEMA, EVAL_SCHEMA, MODEL_SCHEMA, TRAIN_SCHEMA, load_recipe

MAX_EXAMPLES = 300  # 300 recipes, each through validate and run --dry-run (and run when refused)

SCHEMAS = {"data": DATA_SCHEMA, "model": MODEL_SCHEMA, "train": TRAIN_SCHEMA, "eval": EVAL_SCHEMA}
NAMES = {"data.source": ["shapes", "cifar10", "imagefolder", "tiny-imagenet", "shapez"],
         "model.name": ["resnet10_cifar", "resnet18_cifar", "wrn28_8_cifar", "timm:resnet18", "timm:nosuch",
                        "preactresnet18_cifar", "nosuch"]}

# ---------------------------------------------------------------- values

HUGE_INTS = st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -(2**63) - 1, 10**300])
WILD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300, 5e-324, 1e-300, -0.0])
WILD_STRINGS = st.sampled_from(["", "a" * 300, "x\x00y", "\x00", "../../etc", "~nouser/x", "/", ".", "..",
                                "é" * 120, "\n", "a/b", " ", "timm:", "\x7f", "[1, 2]"])
SCALARS = st.one_of(
    st.integers(-5, 40), HUGE_INTS, st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), WILD_FLOATS,
    st.booleans(), st.text(max_size=20), WILD_STRINGS,
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=12)


def plausible(param) -> st.SearchStrategy:
    """Values of the declared kind near its range (so that many recipes pass and reach the deeper checks)."""
    if param.choices is not None:
        return st.sampled_from(list(param.choices))
    lo = 0 if param.low is None else param.low
    if param.kind == "int":
        return st.integers(int(lo), int(lo) + 64)
    if param.kind == "float":
        hi = lo + 2 if param.high is None else param.high
        return st.floats(lo, hi, allow_nan=False)
    if param.kind == "bool":
        return st.booleans()
    if param.kind in ("int_list",):
        return st.lists(st.integers(0, 6), max_size=4)
    if param.kind in ("float_list", "float3"):
        return st.lists(st.floats(0, 1), min_size=0, max_size=4)
    if param.kind == "str_list":
        return st.lists(st.sampled_from(["mixup", "cutmix", "manifoldmix", "patchmix", "nosuch"]), max_size=3)
    if param.kind == "table":
        return st.dictionaries(st.sampled_from(["alpha", "layers", "grid", "prob", "nope"]), SCALARS, max_size=2)
    return st.text(max_size=12)


def value_for(param, key: str, wild: int) -> st.SearchStrategy:
    """A plausible value (often a known name), or with chance ``wild`` in 10 any value at all."""
    tame = st.one_of(st.sampled_from(NAMES[key]), plausible(param)) if key in NAMES else plausible(param)
    return st.integers(0, 9).flatmap(lambda roll: VALUES if roll < wild else tame)


@st.composite
def schema_table(draw, schema: dict, prefix: str, wild: int) -> dict:
    keys = draw(st.lists(st.sampled_from(sorted(schema)), unique=True, max_size=4))
    table = {k: draw(value_for(schema[k], f"{prefix}.{k}", wild)) for k in keys}
    if wild and draw(st.integers(0, 19)) < wild:
        table[draw(st.text(max_size=10))] = draw(VALUES)  # an unknown key
    return table


@st.composite
def registry_table(draw, registry, prefix: str, wild: int) -> dict:
    names = st.sampled_from(registry.names())
    name = draw(st.integers(0, 9).flatmap(lambda roll: st.one_of(st.text(max_size=10), HUGE_INTS) if roll < wild
                                          else names))
    table: dict = {"name": name}
    params = registry.entry(name).params if isinstance(name, str) and name in registry else {}
    if params:
        table |= draw(schema_table(params, prefix, wild))
    return table


@st.composite
def recipes(draw) -> dict:
    """A recipe with a wildness level: 0 (every value plausible) to 10 (anything anywhere)."""
    wild = draw(st.sampled_from([0, 0, 0, 1, 3, 10]))
    recipe: dict = {}
    for table, schema in SCHEMAS.items():
        if draw(st.integers(0, 2)) == 0:
            recipe[table] = draw(schema_table(schema, table, wild))
    if draw(st.booleans()):
        recipe["method"] = draw(registry_table(METHODS, "method", wild))
    if draw(st.integers(0, 3)) == 0:
        recipe["loss"] = draw(registry_table(LOSSES, "loss", wild))
    if draw(st.integers(0, 2)) == 0:
        recipe["name"] = draw(st.one_of(st.sampled_from(["fake", "r", "quick"]), WILD_STRINGS, VALUES)
                              if wild else st.sampled_from(["fake", "r", "quick"]))
    if draw(st.integers(0, 2)) == 0:
        recipe["seed"] = draw(st.one_of(st.integers(0, 10), HUGE_INTS, VALUES) if wild else st.integers(0, 10))
    if draw(st.integers(0, 4)) == 0:
        recipe["base"] = draw(st.one_of(st.sampled_from(["base.toml", "r.toml", "missing.toml"]), VALUES)
                              if wild else st.just("base.toml"))
    if wild and draw(st.integers(0, 9)) < wild:
        recipe[draw(st.text(max_size=10))] = draw(VALUES)
    return recipe


@st.composite
def overrides(draw) -> list[str]:
    """0 to 3 ``--set`` arguments: mostly a real key and a plausible value, sometimes anything."""
    out = []
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        table = draw(st.sampled_from(sorted(SCHEMAS)))
        key = draw(st.sampled_from(sorted(SCHEMAS[table])))
        if draw(st.integers(0, 2)):
            out.append(f"{table}.{key}={toml_value(draw(plausible(SCHEMAS[table][key])))}")
            continue
        path = draw(st.one_of(st.just(f"{table}.{key}"),
                              st.sampled_from(["seed", "name", "base", "method.name", "method.layers", "method.grid",
                                               "method.feature_stage", "data", "train.lr.x", "a..b", ""]),
                              st.text(max_size=12)))
        raw = draw(st.one_of(VALUES.map(toml_value), st.text(max_size=16), WILD_STRINGS))
        out.append(f"{path}={raw}" if draw(st.integers(0, 9)) else raw)  # sometimes no '=' at all
    return out


# ---------------------------------------------------------------- writing TOML

BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_str(s: str) -> str:
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F or c in '"\\' else c
                         for c in s) + '"'


def toml_key(k: str) -> str:
    return k if BARE.match(k) else toml_str(k)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def to_toml(recipe: dict) -> str:
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in recipe.items() if not isinstance(v, dict)]
    for k, v in recipe.items():
        if isinstance(v, dict):
            lines.append(f"[{toml_key(k)}]")
            lines += [f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the property


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path below ``root`` with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with a valid base recipe and a results folder holding finished runs (one at the run id
    of ``name = "fake"`` with every default, so that dry runs of such recipes meet an existing run)."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "base.toml").write_text('[data]\ntrain_size = 200\ntest_size = 50\n[train]\nepochs = 1\nbatch_size = 50\n')
    fake = root / "fake.toml"
    fake.write_text('name = "fake"\n')
    results = root / "results"
    for run_dir in (results / "fake" / load_recipe(fake).run_id(), results / "other" / "seed0-abcdef"):
        run_dir.mkdir(parents=True)
        (run_dir / "recipe.toml").write_text('name = "fake"\n')
        (run_dir / "meta.json").write_text(json.dumps({"status": "completed"}))
        (run_dir / "summary.json").write_text(json.dumps({"top1_last": 42.0}))
        (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "top1": 42.0}\n')
        (run_dir / "checkpoint.pt").write_bytes(bytes(range(256)))
    return root, results, snapshot(results)


def _no_crash(result, what: str) -> None:
    assert result.exit_code in (0, 2), f"{what}: exit {result.exit_code}\n{result.output}"
    lines = result.output.splitlines()  # (the input itself may be echoed inside an "error: ..." line)
    crashed = [x for x in lines if x.startswith(("Traceback (most recent call last)", "internal error:"))]
    assert not crashed, f"{what}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(recipe=recipes(), sets=overrides())
def test_no_recipe_crashes_or_touches_results(world, recipe, sets):
    root, results, before = world
    path = root / "r.toml"
    path.write_text(to_toml(recipe), encoding="utf-8")
    flags = [a for s in sets for a in ("--set", s)]
    runner = CliRunner()

    checked = runner.invoke(app, ["validate", str(path), *flags])
    _no_crash(checked, f"validate {to_toml(recipe)!r} {sets!r}")
    dry = runner.invoke(app, ["run", str(path), "--dry-run", "--out", str(results), *flags])
    _no_crash(dry, "run --dry-run")
    event(f"validate exit {checked.exit_code}, run --dry-run exit {dry.exit_code}")  # --hypothesis-show-statistics
    if checked.exit_code == 2:
        assert dry.exit_code == 2, dry.output  # what validate refuses, a run refuses
        ran = runner.invoke(app, ["run", str(path), "--out", str(results), "--device", "cpu", *flags])
        _no_crash(ran, "run")
        assert ran.exit_code == 2, ran.output
    assert snapshot(results) == before, "the results folder changed"
