"""Suites: whole published tables as one sweep, shipped as small TOML manifests in ``mixbench/suites/``.

A suite file::

    description = "one line: what table it reproduces"
    reference = "where the published numbers are (optional)"
    seeds = [0, 1, 2]                  # optional; `suite run --seeds` overrides
    set = ["train.epochs=400"]         # optional --set overrides for every run
    recipes = ["cifar100_r18_vanilla.toml", "cifar100_r18_mixup.toml"]

Recipe paths are tried relative to the suite file, then to the ``recipes/`` folder (the working
directory's, else the one beside the installed package, as ``mixbench list recipes`` finds it). A
suite is named by its file name; ``mixbench suite run NAME`` looks in ``$MIXBENCH_SUITES`` (folders
separated by ``os.pathsep``), then in ``mixbench/suites/``; NAME may also be the path of a suite file.

The cost estimate is arithmetic, not a measurement: runs x epochs x training images x the method's
step cost relative to vanilla (:data:`METHOD_COST`, ratios measured on the CPU in
``benchmarks/README.md``) x (image side / 32)^2, at an assumed vanilla throughput.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbench.errors import RecipeError, UserError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"
SUITES_ENV = "MIXBENCH_SUITES"
KEYS = {
    "description": "a one-line string",
    "reference": "a string",
    "seeds": "a list of integers >= 0",
    "set": "a list of key.path=VALUE strings",
    "recipes": "a non-empty list of recipe paths",
}
# Training-step cost relative to vanilla (benchmarks/README.md: `bench methods` and `bench mixers`, ResNet-18 CIFAR,
# 2-core CPU): the learned mixers run two passes and a momentum encoder, PuzzleMix and AttentiveMix a saliency pass.
METHOD_COST = {"automix": 3.3, "samix": 2.9, "samixp": 1.1, "puzzlemix": 1.4, "attentivemix": 1.3}
DEFAULT_IMAGES_PER_S = 10_000.0  # assumed vanilla ResNet-18 throughput at 32 px on one GPU (not measured)


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    recipes: list[str]  # as the file names them
    paths: list[Path]  # resolved
    seeds: list[int] | None = None
    sets: list[str] = field(default_factory=list)
    reference: str | None = None


def suite_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(SUITES_ENV, "").split(os.pathsep) if p.strip()]
    return [*extra, SUITES_DIR]


def suite_files() -> dict[str, Path]:
    """name -> file of every findable suite (an earlier folder wins)."""
    found: dict[str, Path] = {}
    for folder in suite_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def _recipe_path(entry: str, suite_file: Path) -> Path | None:
    from mixbench.catalog import recipes_dir

    candidates = [Path(entry)] if Path(entry).is_absolute() else [suite_file.parent / entry]
    root = recipes_dir()
    if root is not None and not Path(entry).is_absolute():
        candidates.append(root / entry)
    return next((p.resolve() for p in candidates if p.is_file()), None)


def load_suite(path: Path, name: str | None = None) -> Suite:
    """Read and check a suite file; every problem is one sentence naming the file and the key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: invalid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the suite ({e})") from None
    for key in data:
        if key not in KEYS:
            raise UserError(f"{path}: unknown key '{key}'{did_you_mean(key, KEYS)}; valid: {', '.join(KEYS)}")

    def bad(key: str) -> UserError:
        return UserError(f"{path}: {key}: expected {KEYS[key]}, got {data[key]!r}"[:300])

    desc = data.get("description")
    if not isinstance(desc, str) or not desc.strip():
        raise UserError(f"{path}: description: expected {KEYS['description']} saying what the suite reproduces")
    recipes = data.get("recipes")
    if not isinstance(recipes, list) or not recipes or not all(isinstance(r, str) and r for r in recipes):
        raise UserError(f"{path}: recipes: expected {KEYS['recipes']}") if "recipes" not in data else bad("recipes")
    seeds = data.get("seeds")
    if seeds is not None and (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise bad("seeds")
    sets = data.get("set", [])
    if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
        raise bad("set")
    ref = data.get("reference")
    if ref is not None and not isinstance(ref, str):
        raise bad("reference")
    paths = []
    for entry in recipes:
        found = _recipe_path(entry, path)
        if found is None:
            raise UserError(f"{path}: recipes: '{entry}' is neither next to the suite nor in the recipes/ folder")
        paths.append(found)
    return Suite(
        name or path.stem,
        path,
        desc.strip(),
        list(recipes),
        paths,
        list(dict.fromkeys(seeds)) if seeds else None,
        list(sets),
        ref,
    )


def find_suite(name: str) -> Suite:
    """A suite by name (``$MIXBENCH_SUITES``, then the shipped ones) or by the path of its file."""
    files = suite_files()
    if name in files:
        return load_suite(files[name])
    path = Path(name)
    if path.suffix == ".toml" and path.is_file():
        return load_suite(path)
    valid = ", ".join(files) or "(none found)"
    raise UserError(
        f"unknown suite '{name}'{did_you_mean(name, files)}; valid: {valid} (or the path of a suite .toml file)"
    )


@dataclass
class Cost:
    runs: int
    image_steps: float  # vanilla-equivalent training images at 32 px
    problem: str | None = None  # why there is no estimate

    def hours(self, images_per_s: float) -> float:
        return self.image_steps / images_per_s / 3600


def estimate(suite: Suite, seeds: list[int] | None = None) -> Cost:
    """Vanilla-equivalent training images of the whole suite (see the module docstring)."""
    from mixbench.data.sources import data_facts
    from mixbench.recipe import load_recipe

    n_seeds = len(seeds or suite.seeds or [None])
    total, problem = 0.0, None
    for path in suite.paths:
        try:
            r = load_recipe(path, suite.sets)
        except RecipeError as e:
            problem = problem or e.problems[0]
            continue
        d = r.data
        facts = data_facts(d["source"], d["image_size"], d["train_size"], d["test_size"])
        if facts.train is None or facts.side is None:
            problem = problem or f"{path.name}: the size of data set '{d['source']}' is not known before reading it"
            continue
        cost = METHOD_COST.get(r.method["name"], 1.0) * (facts.side / 32) ** 2
        total += r.train["epochs"] * facts.train * cost * n_seeds
    return Cost(len(suite.paths) * n_seeds, total, problem)


def listing(images_per_s: float = DEFAULT_IMAGES_PER_S) -> list[dict[str, Any]]:
    """One row per findable suite: name, runs, cost, description (a broken suite file says what is wrong)."""
    rows = []
    for name, path in suite_files().items():
        try:
            suite = load_suite(path)
        except UserError as e:
            rows.append({"name": name, "runs": None, "cost": "-", "description": f"unusable: {e}"})
            continue
        cost = estimate(suite)
        text = f"~{cost.hours(images_per_s):,.1f} GPU-h" if cost.problem is None else f"? ({cost.problem})"[:60]
        rows.append(
            {
                "name": name,
                "runs": cost.runs,
                "cost": text,
                "image_steps": cost.image_steps,
                "description": suite.description,
                "path": str(path),
            }
        )
    return rows


def cost_note(images_per_s: float) -> str:
    ratios = ", ".join(f"{m} x{c:g}" for m, c in METHOD_COST.items())
    return (
        f"est. cost: runs x epochs x training images x the method's step cost relative to vanilla ({ratios}, "
        f"others x1; CPU-measured ratios, benchmarks/README.md) x (image side / 32)^2, at an assumed "
        f"{images_per_s:,.0f} img/s for vanilla ResNet-18 at 32 px on one GPU, not a measurement "
        f"(--images-per-s sets yours; `mixbench run` prints img/s)"
    )
