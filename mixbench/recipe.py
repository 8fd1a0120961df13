"""TOML recipe -> validated :class:`Recipe`.

Precedence: schema defaults < ``base`` files < the recipe < ``--set a.b=VALUE``. Tables merge
deeply, arrays replace, ``base`` and path values resolve relative to the file that names them
(relative to the working directory for ``--set``), and base cycles are reported. Validation
collects every problem before failing, each as one sentence naming the file, the key path and
what would be valid.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixbench.errors import RecipeError, did_you_mean
from mixbench.params import Param, check_table, resolve_paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TABLES = ("data", "model", "method", "loss", "train", "eval")
TOP_LEVEL = {"name", "seed", "base", *TABLES}

DATA_SCHEMA: dict[str, Param] = {
    "source": Param("str", "shapes", "data set: shapes, cifar10, cifar100, imagefolder, tiny-imagenet"),
    "root": Param("path", None, "folder (or .tar/.tar.gz for imagefolder) holding the data", optional=True),
    "download": Param("bool", False, "cifar only: download with torchvision when missing"),
    "cache_dir": Param("path", None, "uint8 tensor cache folder (default ~/.cache/mixbench)", optional=True),
    "image_size": Param("int", None, "resize/generate images at this side length", low=8, optional=True),
    "train_size": Param("int", None, "shapes: images to generate; others: class-balanced subset", low=1, optional=True),
    "test_size": Param("int", None, "shapes: images to generate; others: class-balanced subset", low=1, optional=True),
    "seed": Param("int", 0, "seed of the shapes generator and of subset choice", low=0),
    "augment": Param("str", "crop_flip", "training augmentation", choices=("crop_flip", "rrc_flip", "flip", "none")),
    "crop_padding": Param("int", 4, "padding of the random crop", low=0),
    "padding_mode": Param("str", "reflect", "padding of the random crop", choices=("reflect", "zeros")),
    "mean": Param("float3", None, "normalisation mean override (0..1 units)", optional=True),
    "std": Param("float3", None, "normalisation std override (0..1 units)", optional=True),
    "streaming": Param("bool", False, "imagefolder only: stream batches through a DataLoader"),
    "num_workers": Param("int", 4, "streaming only: DataLoader workers", low=0),
    "labels_per_class": Param("int", None, "semi-supervised: labelled images per class", low=1, optional=True),
    "num_labels": Param("int", None, "semi-supervised: labelled images in all, split evenly over classes",
                        low=1, optional=True),
    "unlabeled_ratio": Param("int", 7, "semi-supervised: unlabelled images per labelled image in a step", low=1),
}

MODEL_SCHEMA: dict[str, Param] = {
    "name": Param("str", "resnet18_cifar", "backbone name, or timm:<name>"),
    "width": Param("float", 1.0, "channel width multiplier", low=0, low_open=True, high=16),
    "weights": Param("path", None, "local weights file to start from", optional=True),
    "zero_init_residual": Param("bool", True, "zero the last BN of each residual block"),
    "drop_rate": Param("float", 0.0, "dropout rate where the backbone has dropout", low=0, high=1, high_open=True),
}

TRAIN_SCHEMA: dict[str, Param] = {
    "epochs": Param("int", 200, "training epochs", low=1),
    "batch_size": Param("int", 100, "global batch size (all devices together)", low=1),
    "optimizer": Param("str", "sgd", "optimiser", choices=("sgd", "adamw")),
    "lr": Param("float", 0.1, "peak learning rate", low=0, low_open=True),
    "momentum": Param("float", 0.9, "SGD momentum", low=0, high=1, high_open=True),
    "nesterov": Param("bool", False, "SGD Nesterov momentum"),
    "betas": Param("float_list", [0.9, 0.999], "AdamW betas"),
    "weight_decay": Param("float", 1e-4, "weight decay", low=0),
    "no_decay_norm_bias": Param("bool", False, "no weight decay on norm weights and biases"),
    "schedule": Param("str", "cosine", "learning-rate schedule", choices=("cosine", "step", "constant")),
    "min_lr": Param("float", 0.0, "cosine: final learning rate", low=0),
    "milestones": Param("int_list", [], "step: epochs at which lr is multiplied by gamma"),
    "gamma": Param("float", 0.1, "step: lr factor at each milestone", low=0, low_open=True),
    "warmup_epochs": Param("float", 0.0, "linear warm-up length in epochs", low=0),
    "warmup_start": Param("float", 1e-3, "warm-up starting lr as a fraction of lr", low=0, high=1),
    "precision": Param("str", "fp32", "numeric precision", choices=("fp32", "bf16", "fp16")),
    "channels_last": Param("bool", False, "channels_last memory format"),
    "compile": Param("bool", False, "torch.compile the model"),
    "ema": Param("bool", False, "keep an exponential moving average of the weights"),
    "ema_decay": Param("float", 0.999, "EMA decay per step", low=0, high=1, high_open=True),
    "grad_clip": Param("float", 0.0, "max gradient norm; 0 turns clipping off", low=0),
    "deterministic": Param("bool", False, "deterministic algorithms (slower)"),
    "sync_bn": Param("bool", False, "torchrun: BatchNorm statistics over the global batch, not each process's"),
    "log_every": Param("int", 50, "steps between log lines (one host sync each)", low=1),
    "checkpoint_every": Param("int", 1, "epochs between checkpoints", low=1),
    "stop_after": Param("int", None, "stop (resumable) after this many epochs", low=1, optional=True),
}

EVAL_SCHEMA: dict[str, Param] = {
    "every": Param("int", 1, "evaluate every N epochs (and always after the last)", low=1),
    "batch_size": Param("int", 500, "evaluation batch size", low=1),
    "ema": Param("bool", True, "also evaluate the EMA weights when train.ema is on"),
    "save_mixes": Param("int", 0, "save a PNG grid of mixed pairs every N epochs (0: never)", low=0),
}

# Keys that never change what a run computes: left out of the run id hash.
_NOT_HASHED = {("train", "stop_after"), ("train", "log_every"), ("eval", "batch_size"), ("eval", "save_mixes")}
# Keys added after run ids were first issued: hashed only when set away from their default, so that
# the run id of every earlier recipe stays what it was.
_HASHED_IF_SET = {("train", "sync_bn"): False}


@dataclass
class Recipe:
    """A fully resolved, validated recipe. Tables are plain dicts with every default filled."""

    name: str
    seed: int
    data: dict[str, Any]
    model: dict[str, Any]
    method: dict[str, Any]
    loss: dict[str, Any]
    train: dict[str, Any]
    eval: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "seed": self.seed}
        for table in TABLES:
            out[table] = dict(getattr(self, table))
        return out

    def to_toml(self) -> str:
        """The resolved recipe as TOML (``None`` values are left out: they mean 'default')."""
        return dumps_toml(self.as_dict())

    def config_hash(self) -> str:
        """Short hash of everything that changes results, except the seed."""
        d = self.as_dict()
        d.pop("seed")
        for table, key in _NOT_HASHED:
            d[table].pop(key, None)
        for (table, key), default in _HASHED_IF_SET.items():
            if d[table].get(key) == default:
                d[table].pop(key, None)
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:6]

    def run_id(self) -> str:
        return f"seed{self.seed}-{self.config_hash()}"


# ---------------------------------------------------------------- TOML writing


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(d: dict[str, Any]) -> str:
    """Write a two-level dict (top-level scalars, then one table per dict) as TOML."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if vv is not None]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- loading and merging


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError([f"{path}: recipe file not found"])
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise RecipeError([f"{path}: invalid TOML: {e}"]) from None
    except UnicodeDecodeError:
        raise RecipeError([f"{path}: not a UTF-8 text file"]) from None


def _merge(
    dst: dict[str, Any], src: dict[str, Any], origin: dict[str, str], label: str, prefix: str = ""
) -> None:
    """Deep-merge ``src`` into ``dst`` (tables merge, everything else replaces), noting origins."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origin, label, dotted + ".")
        else:
            dst[key] = _copy(value)
            origin[dotted] = label
            if isinstance(value, dict):
                for sub in value:
                    origin[f"{dotted}.{sub}"] = label


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def _load_chain(path: Path, stack: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """Load ``path`` with its ``base`` chain merged underneath. Returns (dict, origins)."""
    path = path.resolve()
    if path in stack:
        cycle = " -> ".join(str(p) for p in (*stack, path))
        raise RecipeError([f"{stack[-1]}: base recipes form a cycle: {cycle}"])
    raw = _read_toml(path)
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    base = raw.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise RecipeError([f"{path}: base: expected a path string, got {base!r}"])
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise RecipeError([f"{path}: base: file not found: {base_path}"])
        merged, origin = _load_chain(base_path, (*stack, path))
    _merge(merged, raw, origin, str(path))
    return merged, origin


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=VALUE``; VALUE is a TOML value, or a bare word taken as a string."""
    if "=" not in text:
        raise RecipeError([f"--set {text}: expected key.path=VALUE, e.g. --set train.lr=0.05"])
    key, _, raw = text.partition("=")
    keys = [k.strip() for k in key.strip().split(".")]
    if not all(keys):
        raise RecipeError([f"--set {text}: empty key in '{key}'"])
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        bare = raw.strip()
        if not bare or any(c in bare for c in "[]{}\"'=,"):
            raise RecipeError([f"--set {text}: '{raw}' is not a valid TOML value"]) from None
        value = bare
    return keys, value


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, merge, override and validate a recipe file. Raises :class:`RecipeError`."""
    path = Path(path)
    merged, origin = _load_chain(path, ())
    for text in overrides:
        keys, value = parse_override(text)
        node = merged
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                if k in node:
                    raise RecipeError([f"--set {text}: '{k}' is not a table"])
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
        origin[".".join(keys)] = "--set"
    return validate(merged, origin, default_name=path.stem)


# ---------------------------------------------------------------- validation


def _table_origin(origin: dict[str, str], table: str) -> dict[str, str]:
    prefix = table + "."
    return {k[len(prefix):]: v for k, v in origin.items() if k.startswith(prefix)}


def _registry_table(
    table: dict[str, Any], registry: Any, kind: str, where: str, origin: dict[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Validate a table whose ``name`` picks a registry entry that declares its own params."""
    name = table.get("name", "vanilla" if kind == "method" else "ce")
    src = origin.get("name", "recipe")
    if not isinstance(name, str):
        return {}, [f"{src}: {where}.name: expected a string, got {name!r}"]
    if name not in registry:
        valid = ", ".join(registry.names())
        return {}, [
            f"{src}: {where}.name: unknown {kind} '{name}'{did_you_mean(name, registry.names())}; "
            f"valid: {valid}"
        ]
    params: dict[str, Param] = registry.entry(name).params
    rest = {k: v for k, v in table.items() if k != "name"}
    values, problems = check_table(rest, params, where, origin)
    check = registry.entry(name).check
    if check is not None and not problems:
        problems = check(values, where, origin)
    resolve_paths(values, params, origin)
    return {"name": name, **values}, problems


def validate(merged: dict[str, Any], origin: dict[str, str], *, default_name: str = "recipe") -> Recipe:
    """Check a merged recipe dict; return a :class:`Recipe` or raise with every problem."""
    from mixbench.data import DATASETS
    from mixbench.losses import LOSSES
    from mixbench.methods import METHODS

    problems: list[str] = []
    for key in merged:
        if key not in TOP_LEVEL:
            problems.append(
                f"{origin.get(key, 'recipe')}: unknown top-level key '{key}'"
                f"{did_you_mean(key, TOP_LEVEL)}; valid: {', '.join(sorted(TOP_LEVEL))}"
            )
    for table in TABLES:
        if table in merged and not isinstance(merged[table], dict):
            problems.append(f"{origin.get(table, 'recipe')}: '{table}' must be a table ([{table}])")
            merged[table] = {}
    name = merged.get("name", default_name)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\") or name.startswith("."):
        problems.append(f"{origin.get('name', 'recipe')}: name: expected a plain folder name, got {name!r}")
    seed = merged.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems.append(f"{origin.get('seed', 'recipe')}: seed: expected an integer >= 0, got {seed!r}")

    tables: dict[str, dict[str, Any]] = {}
    for table, schema in (("data", DATA_SCHEMA), ("model", MODEL_SCHEMA), ("train", TRAIN_SCHEMA),
                          ("eval", EVAL_SCHEMA)):
        torigin = _table_origin(origin, table)
        values, probs = check_table(merged.get(table, {}), schema, f"[{table}]", torigin)
        resolve_paths(values, schema, torigin)
        tables[table] = values
        problems += probs
    for table, registry, kind in (("method", METHODS, "method"), ("loss", LOSSES, "loss")):
        torigin = _table_origin(origin, table)
        values, probs = _registry_table(merged.get(table, {}), registry, kind, f"[{table}]", torigin)
        tables[table] = values
        problems += probs

    problems += _cross_checks(tables, origin, DATASETS)
    problems += _batch_checks(tables, origin, METHODS)
    if problems:
        raise RecipeError(problems)
    return Recipe(name=name, seed=seed, **tables)


def _batch_checks(t: dict[str, dict[str, Any]], origin: dict[str, str], methods: Any) -> list[str]:
    """A method whose batch splits labelled from unlabelled images needs a labelled subset; others refuse one."""
    name = t["method"].get("name")
    if name not in methods:
        return []
    semisup = methods.get(name).batch.needs_label_split
    data = t["data"]
    labelled = data.get("labels_per_class") is not None or data.get("num_labels") is not None
    src = origin.get("method.name", "recipe")
    if semisup and not labelled:
        return [f"{src}: [method].name = '{name}' is semi-supervised and needs [data].labels_per_class "
                "or [data].num_labels (how many training images keep their labels)"]
    if labelled and not semisup:
        key = "labels_per_class" if data.get("labels_per_class") is not None else "num_labels"
        semi = ", ".join(e.name for e in methods if e.factory.batch.needs_label_split)
        return [f"{origin.get('data.' + key, 'recipe')}: [data].{key} applies only to semi-supervised methods "
                f"({semi}); '{name}' trains on every label"]
    return []


def _cross_checks(t: dict[str, dict[str, Any]], origin: dict[str, str], datasets: Any) -> list[str]:
    """Problems that involve more than one key."""
    out: list[str] = []
    data, model, train = t["data"], t["model"], t["train"]

    def src(key: str) -> str:
        return origin.get(key, "recipe")

    source = data.get("source")
    if source is not None and source not in datasets:
        out.append(
            f"{src('data.source')}: [data].source: unknown data set '{source}'"
            f"{did_you_mean(source, datasets.names())}; valid: {', '.join(datasets.names())}"
        )
    elif source not in (None, "shapes") and data.get("root") is None and not (
        data.get("download") and source in ("cifar10", "cifar100")
    ):
        out.append(f"{src('data.source')}: [data].root is required for source '{source}' "
                   "(the folder that holds it)")
    if data.get("streaming") and source != "imagefolder":
        out.append(f"{src('data.streaming')}: [data].streaming works only with source 'imagefolder'")
    if data.get("labels_per_class") is not None and data.get("num_labels") is not None:
        out.append(f"{src('data.num_labels')}: [data].labels_per_class and [data].num_labels are mutually "
                   "exclusive; give one of them")
    if data.get("download") and source not in ("cifar10", "cifar100"):
        out.append(f"{src('data.download')}: [data].download works only for cifar10 and cifar100")
    if train.get("schedule") == "step" and not train.get("milestones"):
        out.append(f"{src('train.schedule')}: [train].schedule = 'step' needs [train].milestones")
    epochs = train.get("epochs")
    if isinstance(epochs, int):
        bad = [m for m in train.get("milestones", []) if not 0 < m < epochs]
        if bad:
            out.append(f"{src('train.milestones')}: [train].milestones must lie in 1..{epochs - 1}, got {bad}")
        if train.get("warmup_epochs", 0) >= epochs:
            out.append(f"{src('train.warmup_epochs')}: [train].warmup_epochs must be < epochs ({epochs})")
        stop = train.get("stop_after")
        if stop is not None and stop > epochs:
            out.append(f"{src('train.stop_after')}: [train].stop_after must be <= epochs ({epochs})")
    if train.get("optimizer") == "adamw" and train.get("nesterov"):
        out.append(f"{src('train.nesterov')}: [train].nesterov applies to sgd only")
    betas = train.get("betas")
    if isinstance(betas, list) and (len(betas) != 2 or not all(0 <= b < 1 for b in betas)):
        out.append(f"{src('train.betas')}: [train].betas: expected 2 numbers in [0, 1), got {betas}")
    if train.get("min_lr", 0) > train.get("lr", math.inf):
        out.append(f"{src('train.min_lr')}: [train].min_lr must not exceed [train].lr")
    for key in ("mean", "std"):
        v = data.get(key)
        if v is not None and key == "std" and any(s <= 0 for s in v):
            out.append(f"{src('data.std')}: [data].std values must be > 0, got {v}")
    if model.get("name", "").startswith("timm:") and len(model["name"]) == 5:
        out.append(f"{src('model.name')}: [model].name 'timm:' needs a timm model name, e.g. timm:resnet18")
    return out
