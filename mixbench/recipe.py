"""TOML recipe -> validated :class:`Recipe`.

Precedence: schema defaults < ``base`` files < the recipe < ``--set a.b=VALUE``. Tables merge
deeply, arrays replace, ``base`` and path values resolve relative to the file that names them
(relative to the working directory for ``--set``), and base cycles are reported. Validation
collects every problem before failing, each as one sentence naming the file, the key path and
what would be valid.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbench.errors import RecipeError, did_you_mean
from mixbench.params import MAX_PATH_CHARS, Param, RunFacts, call_check, check_table, resolve_paths, show, show_key
from mixbench.recipe_names import resolve_recipe_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TABLES = ("data", "model", "method", "loss", "train", "eval")
TOP_LEVEL = {"name", "seed", "base", *TABLES}

# Upper limits (each named in its key's doc): what a run can take, so that validation refuses a recipe
# before it crashes or exhausts memory.
MAX_SEED = 2**63 - 1  # torch generators take 64 bits; mixbench adds small offsets (seed + 1, + 7919·rank, + epoch)
MAX_IMAGES = 10_000_000  # train_size, test_size, batch sizes, labelled images
MAX_IMAGE_SIZE = 1024
MAX_LR = 10.0
MAX_NAME_CHARS, MAX_NAME_BYTES = 100, 255  # a folder name: 255 bytes is the usual file-system limit
MAX_BASE_DEPTH = 16  # base chain: a recipe, its base, that one's base, ...
MAX_THREADS = 1024  # [train].threads
MAX_NESTING = 8  # tables in tables and arrays in arrays (a recipe needs 4: [method.mixup] alpha = [..])

DATA_SCHEMA: dict[str, Param] = {
    "source": Param("str", "shapes", "data set: shapes, cifar10, cifar100, imagefolder, tiny-imagenet"),
    "root": Param("path", None, "folder (or .tar/.tar.gz for imagefolder) holding the data", optional=True),
    "download": Param("bool", False, "cifar only: download with torchvision when missing"),
    "cache_dir": Param("path", None, "uint8 tensor cache folder (default ~/.cache/mixbench)", optional=True),
    "image_size": Param("int", None, "resize/generate images at this side length (at most 1024: the data set is held "
                        "as uint8 in memory and CIFAR-style backbones keep full resolution in their first stage)",
                        low=8, high=MAX_IMAGE_SIZE, optional=True),
    "train_size": Param("int", None, "shapes: images to generate; others: class-balanced subset (at most 10^7; "
                        "together with test_size and image_size, the set must fit this machine's memory)",
                        low=1, high=MAX_IMAGES, optional=True),
    "test_size": Param("int", None, "shapes: images to generate; others: class-balanced subset (at most 10^7)",
                       low=1, high=MAX_IMAGES, optional=True),
    "seed": Param("int", 0, "seed of the shapes generator and of subset choice (below 2^63: torch generators take "
                  "64 bits and mixbench adds offsets to seeds)", low=0, high=MAX_SEED),
    "augment": Param("str", "crop_flip", "training augmentation", choices=("crop_flip", "rrc_flip", "flip", "none")),
    "crop_padding": Param("int", 4, "padding of the random crop (smaller than the image side: reflect padding "
                          "cannot reach further)", low=0, high=MAX_IMAGE_SIZE - 1),
    "padding_mode": Param("str", "reflect", "padding of the random crop", choices=("reflect", "zeros")),
    "mean": Param("float3", None, "normalisation mean override (0..1 units)", optional=True),
    "std": Param("float3", None, "normalisation std override (0..1 units)", optional=True),
    "streaming": Param("bool", False, "imagefolder only: stream batches through a DataLoader"),
    "num_workers": Param("int", 4, "streaming only: DataLoader workers (at most 256)", low=0, high=256),
    "labels_per_class": Param("int", None, "semi-supervised: labelled images per class", low=1, high=MAX_IMAGES,
                              optional=True),
    "num_labels": Param("int", None, "semi-supervised: labelled images in all, split evenly over classes",
                        low=1, high=MAX_IMAGES, optional=True),
    "unlabeled_ratio": Param("int", 7, "semi-supervised: unlabelled images per labelled image in a step (at most "
                             "1000; a step needs unlabeled_ratio x batch_size training images)", low=1, high=1000),
}

MODEL_SCHEMA: dict[str, Param] = {
    "name": Param("str", "resnet18_cifar", "backbone name, or timm:<name>"),
    "width": Param("float", 1.0, "channel width multiplier", low=0, low_open=True, high=16),
    "weights": Param("path", None, "local weights file to start from", optional=True),
    "zero_init_residual": Param("bool", True, "zero the last BN of each residual block"),
    "drop_rate": Param("float", 0.0, "dropout rate where the backbone has dropout", low=0, high=1, high_open=True),
    "patch_size": Param("int", None, "timm vision transformers only: patch side in pixels (must divide the image "
                        "side; e.g. 4 at 32 px, 8 at 64 px); unset: the model's own", low=1, optional=True),
}

TRAIN_SCHEMA: dict[str, Param] = {
    "epochs": Param("int", 200, "training epochs", low=1),
    "batch_size": Param("int", 100, "global batch size (all devices together; at most the training images)",
                        low=1, high=MAX_IMAGES),
    "optimizer": Param("str", "sgd", "optimiser (lars: timm's LARS, biases and norms neither adapted nor decayed)",
                       choices=("sgd", "adamw", "lars")),
    "lr": Param("float", 0.1, "peak learning rate (at most 10: a larger step overflows float32 weights)",
                low=0, low_open=True, high=MAX_LR),
    "momentum": Param("float", 0.9, "SGD momentum", low=0, high=1, high_open=True),
    "nesterov": Param("bool", False, "SGD Nesterov momentum"),
    "betas": Param("float_list", [0.9, 0.999], "AdamW betas"),
    "weight_decay": Param("float", 1e-4, "weight decay (at most 1)", low=0, high=1),
    "no_decay_norm_bias": Param("bool", False, "no weight decay on norm weights and biases (required by lars)"),
    "lars_eta": Param("float", 0.02, "lars: trust coefficient η of the ratio η‖w‖/(‖g‖ + λ‖w‖) (solo-learn: 0.02)",
                      low=0, low_open=True, high=1),
    "lars_clip": Param("bool", True, "lars: clip the trust ratio to min(ratio/lr, 1) (LARC; solo-learn's clip_lr)"),
    "schedule": Param("str", "cosine", "learning-rate schedule", choices=("cosine", "step", "constant")),
    "min_lr": Param("float", 0.0, "cosine: final learning rate (at most lr)", low=0, high=MAX_LR),
    "milestones": Param("int_list", [], "step: epochs at which lr is multiplied by gamma"),
    "gamma": Param("float", 0.1, "step: lr factor at each milestone (at most 1: the lr never grows past lr)",
                   low=0, low_open=True, high=1),
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
    "threads": Param("int", None, "CPU threads of torch's intra-op pool for this run (torch.set_num_threads; at most "
                     f"{MAX_THREADS}); unset: torch's own choice, as before", low=1, high=MAX_THREADS, optional=True),
    "checkpoint_every": Param("int", 1, "epochs between checkpoints", low=1),
    "stop_after": Param("int", None, "stop (resumable) after this many epochs", low=1, optional=True),
}

EVAL_SCHEMA: dict[str, Param] = {
    "every": Param("int", 1, "evaluate every N epochs (and always after the last)", low=1),
    "batch_size": Param("int", 500, "evaluation batch size (at most 10^7)", low=1, high=MAX_IMAGES),
    "ema": Param("bool", True, "also evaluate the EMA weights when train.ema is on"),
    "save_mixes": Param("int", 0, "save a PNG grid of mixed pairs every N epochs (0: never)", low=0),
    "after": Param("str_list", [], "evaluators run on the finished run, stored in RUN/evals/ as their commands "
                   "store them: linear, knn, calibration, occlusion, fgsm, corruptions"),
}

# Keys that never change what a run computes: left out of the run id hash. ``[eval].after`` is one: the evaluations
# read the finished checkpoint and write only RUN/evals/ (each result keyed by its own protocol hash), so adding one
# to a recipe must find the same run, not train a new one.
_NOT_HASHED = {("train", "stop_after"), ("train", "log_every"), ("eval", "batch_size"), ("eval", "save_mixes"),
               ("eval", "after")}
# Keys added after run ids were first issued: hashed only when set away from their default, so that
# the run id of every earlier recipe stays what it was.
_HASHED_IF_SET = {("train", "sync_bn"): False, ("train", "lars_eta"): 0.02, ("train", "lars_clip"): True,
                  ("model", "patch_size"): None,
                  ("train", "threads"): None, ("method", "pairing"): "permutation", ("loss", "compat"): "mixbench"}
# ... and such keys of the mixers a [method] holds in sub-tables (switch's [method.<mixer>]).
_HASHED_IF_SET_NESTED = {("method", "pairing"): "permutation"}
# Methods (or mixers a switch lists) whose computation changed at unchanged keys: their revision joins the hash, so
# a new run never resumes or replaces a run of the old computation. puzzlemix 2: the seam cost on de-normalised
# pixels and the transport cost C/(t-1)^2, as OpenMixup (issue 14).
_REVISIONS = {"puzzlemix": 2}


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
    # How it was resolved (not part of the recipe, its TOML or its hash): tables that no file or --set touched,
    # and whether ``name`` was given (else it is the file name).
    defaults_only: tuple[str, ...] = field(default=(), compare=False)
    name_given: bool = field(default=True, compare=False)

    def essentials(self) -> str:
        """One line: data source, model, method, loss, epochs, batch (what a run trains)."""
        d, m, t = self.data, self.model, self.train
        size = f" {d['image_size']} px" if d.get("image_size") else ""
        return (f"data {d['source']}{size}, model {m['name']} (width {m['width']:g}), method {self.method['name']}, "
                f"loss {self.loss['name']}, {t['epochs']} epochs, batch {t['batch_size']}, seed {self.seed}")

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
        for (table, key), default in _HASHED_IF_SET_NESTED.items():
            d[table] = {k: {kk: vv for kk, vv in v.items() if kk != key or vv != default} if isinstance(v, dict)
                        else v for k, v in d[table].items()}
        used = {d["method"].get("name"), *(d["method"].get("mixers") or ())}
        revisions = {name: rev for name, rev in _REVISIONS.items() if name in used}
        if revisions:
            d["revisions"] = revisions
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


def _nesting(value: Any) -> int:
    """How deeply tables and arrays nest in ``value`` (a scalar: 0; counting stops past ``MAX_NESTING``),
    level by level rather than by recursion."""
    depth, level = 0, [value]
    while depth <= MAX_NESTING:
        containers = [v for v in level if isinstance(v, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [c for v in containers for c in (v.values() if isinstance(v, dict) else v)]
    return depth


def _toml_problem(e: Exception) -> str:
    """One sentence for what ``tomllib`` raised on a value it cannot hold."""
    if isinstance(e, RecursionError):
        return f"tables or arrays nest too deeply (at most {MAX_NESTING} levels)"
    text = str(e)
    if "integer string conversion" in text:  # Python's int-string limit: a number of more than 4300 digits
        return f"a number has too many digits ({sys.get_int_max_str_digits()} at most)"
    return f"invalid TOML: {text}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, ...
        is_file = False
    if not is_file:
        raise RecipeError([f"{path}: recipe file not found"])
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise RecipeError([f"{path}: invalid TOML: {e}"]) from None
    except UnicodeDecodeError:
        raise RecipeError([f"{path}: not a UTF-8 text file"]) from None
    except OSError as e:
        raise RecipeError([f"{path}: cannot read the recipe ({e.strerror or e})"]) from None
    except (ValueError, RecursionError) as e:
        raise RecipeError([f"{path}: {_toml_problem(e)}"]) from None
    if _nesting(data) > MAX_NESTING:
        raise RecipeError([f"{path}: tables or arrays nest more than {MAX_NESTING} levels deep; a recipe needs at "
                           "most 4 ([method.<mixer>] key = [...])"])
    return data


def _resolve(path: Path, what: str) -> Path:
    """``path.resolve()``, or a :class:`RecipeError` naming ``what`` (a symlink loop, a NUL, a too-long name)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError) as e:
        loop = isinstance(e, RuntimeError) or getattr(e, "errno", None) == errno.ELOOP  # Python 3.11 / 3.13
        reason = "a symlink loop" if loop else str(e)
        raise RecipeError([f"{what}: cannot resolve the path ({reason})"]) from None


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
            tables = [(dotted, value)]  # every key below a new table comes from the same file
            while tables:
                at, table = tables.pop()
                if isinstance(table, dict):
                    for sub, v in table.items():
                        origin[f"{at}.{sub}"] = label
                        tables.append((f"{at}.{sub}", v))


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def _load_chain(path: Path, stack: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """Load ``path`` with its ``base`` chain merged underneath. Returns (dict, origins)."""
    path = _resolve(path, f"{stack[-1]}: base" if stack else str(path))
    if path in stack:
        cycle = " -> ".join(str(p) for p in (*stack, path))
        raise RecipeError([f"{stack[-1]}: base recipes form a cycle: {cycle}"])
    if len(stack) >= MAX_BASE_DEPTH:
        raise RecipeError([f"{stack[-1]}: base: the chain of base recipes is more than {MAX_BASE_DEPTH} files "
                           f"long (from {stack[0]}); merge some of them"])
    raw = _read_toml(path)
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    base = raw.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base or "\x00" in base or len(base) > MAX_PATH_CHARS:
            raise RecipeError([f"{path}: base: expected the path of a recipe file (1 to {MAX_PATH_CHARS} "
                               f"characters, no NUL), got {show(base)}"])
        base_path = _resolve(path.parent / base, f"{path}: base")
        try:
            found = base_path.is_file()
        except (OSError, ValueError):
            found = False
        if not found:
            raise RecipeError([f"{path}: base: file not found: {base_path}"])
        merged, origin = _load_chain(base_path, (*stack, path))
    _merge(merged, raw, origin, str(path))
    return merged, origin


def _arg(text: str) -> str:
    """A ``--set`` argument for a message: as given when short and printable, else its cut-down repr."""
    return text if len(text) <= 100 and text.isprintable() else show(text, 100)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=VALUE``; VALUE is a TOML value, or a bare word taken as a string."""
    if "=" not in text:
        raise RecipeError([f"--set {_arg(text)}: expected key.path=VALUE, e.g. --set train.lr=0.05"])
    key, _, raw = text.partition("=")
    keys = [k.strip() for k in key.strip().split(".")]
    shown = _arg(text)
    if not all(keys):
        raise RecipeError([f"--set {shown}: empty key in {show(key, 60)}"])
    if len(keys) > MAX_NESTING:
        raise RecipeError([f"--set {shown}: a key path of {len(keys)} parts; a recipe nests at most "
                           f"{MAX_NESTING} levels"])
    if keys[0] == "base":
        raise RecipeError([f"--set {shown}: base cannot be set from the command line (it names the file a recipe "
                           "builds on and is read before any --set); write a recipe with base = \"...\" instead"])
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        bare = raw.strip()
        if not bare or any(c in bare for c in "[]{}\"'=,") or not bare.isprintable():
            raise RecipeError([f"--set {shown}: {show(raw, 100)} is not a valid TOML value"]) from None
        value = bare
    except (ValueError, RecursionError) as e:
        raise RecipeError([f"--set {shown}: {_toml_problem(e)}"]) from None
    if len(keys) + _nesting(value) > MAX_NESTING:
        raise RecipeError([f"--set {shown}: tables or arrays nest more than {MAX_NESTING} levels deep"])
    return keys, value


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, merge, override and validate a recipe file. Raises :class:`RecipeError`.

    A ``path`` that is not a file may name one as an alias or a bare recipe name (``mixbench.recipe_names``:
    ``recipes/samix_cifar100.toml`` is ``recipes/cifar100_r18_samix.toml``); one line on stderr says which.
    """
    parsed = [parse_override(text) for text in overrides]  # a bad --set is reported before the files are read
    path = resolve_recipe_path(path)
    merged, origin = _load_chain(path, ())
    for text, (keys, value) in zip(overrides, parsed, strict=True):
        node = merged
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                if k in node:
                    raise RecipeError([f"--set {_arg(text)}: '{show_key(k)}' is not a table"])
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
    table: dict[str, Any], registry: Any, kind: str, where: str, origin: dict[str, str],
    facts: RunFacts | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Validate a table whose ``name`` picks a registry entry that declares its own params."""
    name = table.get("name", "vanilla" if kind == "method" else "ce")
    src = origin.get("name", "recipe")
    if not isinstance(name, str):
        return {}, [f"{src}: {where}.name: expected a string, got {show(name)}"]
    if name not in registry:
        valid = ", ".join(registry.names())
        hint = did_you_mean(name, registry.names()) if len(name) < 100 else ""
        return {}, [f"{src}: {where}.name: unknown {kind} '{show_key(name)}'{hint}; valid: {valid}"]
    params: dict[str, Param] = registry.entry(name).params
    rest = {k: v for k, v in table.items() if k != "name"}
    values, problems = check_table(rest, params, where, origin)
    check = registry.entry(name).check
    if check is not None and not problems:
        problems = call_check(check, values, where, origin, facts)
    resolve_paths(values, params, origin)
    return {"name": name, **values}, problems


def _check_name(name: Any, src: str) -> list[str]:
    """``name`` becomes a folder: a short, printable name without path separators."""
    ok = (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name.isprintable()
          and not any(c in name for c in "/\\") and not name.startswith(".")
          and len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES)
    if ok:
        return []
    return [f"{src}: name: expected a plain folder name of 1 to {MAX_NAME_CHARS} printable characters (at most "
            f"{MAX_NAME_BYTES} bytes in UTF-8), without / or \\ and not starting with '.', got {show(name)}"]


def validate(merged: dict[str, Any], origin: dict[str, str], *, default_name: str = "recipe") -> Recipe:
    """Check a merged recipe dict; return a :class:`Recipe` or raise with every problem."""
    from mixbench.data import DATASETS
    from mixbench.losses import LOSSES
    from mixbench.methods import METHODS

    problems: list[str] = []
    for key in merged:
        if key not in TOP_LEVEL:
            hint = did_you_mean(key, TOP_LEVEL) if len(key) < 100 else ""
            problems.append(
                f"{origin.get(key, 'recipe')}: unknown top-level key '{show_key(key)}'"
                f"{hint}; valid: {', '.join(sorted(TOP_LEVEL))}"
            )
    for table in TABLES:
        if table in merged and not isinstance(merged[table], dict):
            problems.append(f"{origin.get(table, 'recipe')}: '{table}' must be a table ([{table}])")
            merged[table] = {}
    name = merged.get("name", default_name)
    problems += _check_name(name, origin.get("name", "recipe"))
    seed = merged.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        problems.append(f"{origin.get('seed', 'recipe')}: seed: expected an integer >= 0 and <= 2^63 - 1 "
                        f"(torch generators take 64 bits; mixbench adds offsets), got {show(seed)}")

    tables: dict[str, dict[str, Any]] = {}
    clean: set[str] = set()  # tables without problems: safe to reason about
    for table, schema in (("data", DATA_SCHEMA), ("model", MODEL_SCHEMA), ("train", TRAIN_SCHEMA),
                          ("eval", EVAL_SCHEMA)):
        torigin = _table_origin(origin, table)
        values, probs = check_table(merged.get(table, {}), schema, f"[{table}]", torigin)
        resolve_paths(values, schema, torigin)
        tables[table] = values
        problems += probs
        if not probs:
            clean.add(table)
    model_probs = _model_checks(tables["model"], origin) if "model" in clean else []
    problems += model_probs
    data_facts = _data_facts(tables["data"], DATASETS) if "data" in clean else None
    facts = _run_facts(tables["model"], origin, data_facts) if "model" in clean and not model_probs else None
    problems += _patch_checks(tables["model"], origin, facts) if facts is not None else []
    for table, registry, kind in (("method", METHODS, "method"), ("loss", LOSSES, "loss")):
        torigin = _table_origin(origin, table)
        values, probs = _registry_table(merged.get(table, {}), registry, kind, f"[{table}]", torigin, facts)
        tables[table] = values
        problems += probs
        if not probs:
            clean.add(table)

    problems += _cross_checks(tables, origin, DATASETS)
    problems += _eval_checks(tables["eval"], origin)
    problems += _batch_checks(tables, origin, METHODS)
    if {"data", "train", "method"} <= clean and data_facts is not None and not problems:
        problems += _data_checks(tables, origin, data_facts, METHODS, facts)
    if problems:
        raise RecipeError(problems)
    defaults_only = tuple(t for t in TABLES if not merged.get(t))
    return Recipe(name=name, seed=seed, **tables, defaults_only=defaults_only, name_given="name" in merged)


def _model_checks(model: dict[str, Any], origin: dict[str, str]) -> list[str]:
    """``[model].name`` names a registered backbone or a timm model (looked up, never built)."""
    from mixbench.models import model_problem

    problem = model_problem(model["name"])
    return [f"{origin.get('model.name', 'recipe')}: [model].name: {problem}"] if problem else []


def _data_facts(data: dict[str, Any], datasets: Any) -> Any:
    """Sizes the ``[data]`` table implies (``mixbench.data.sources.DataFacts``), or None for an unknown source."""
    from mixbench.data.sources import data_facts

    if data["source"] not in datasets:
        return None
    if data["streaming"]:  # streamed from class folders: nothing is held, only image_size is known
        from mixbench.data.sources import DataFacts

        return DataFacts(side=data["image_size"])
    return data_facts(data["source"], data["image_size"], data["train_size"], data["test_size"])


def _run_facts(model: dict[str, Any], origin: dict[str, str], data_facts: Any) -> RunFacts:
    """What the method's ``check`` may know: the backbone's stages (from its name) and the image side."""
    from mixbench.models import feature_side, num_stages

    name = model["name"]
    side = None if data_facts is None else data_facts.side
    return RunFacts(model=name, model_origin=origin.get("model.name", "defaults"), num_stages=num_stages(name),
                    stage_hooks=not name.startswith("timm:"), image_side=side,
                    feature_side=feature_side(name, side) if side is not None else None,
                    patch_size=model.get("patch_size"))


def _patch_checks(model: dict[str, Any], origin: dict[str, str], facts: RunFacts) -> list[str]:
    """``[model].patch_size``: only for a ``timm:`` transformer, and a divisor of the image side when known."""
    from mixbench.models.timm_bridge import patch_size_problem

    problem = patch_size_problem(model.get("patch_size"), facts.image_side, model["name"])
    return [f"{origin.get('model.patch_size', 'recipe')}: {problem}"] if problem else []


def _data_checks(t: dict[str, dict[str, Any]], origin: dict[str, str], facts: Any, methods: Any,
                 run: RunFacts | None) -> list[str]:
    """What the data set's known sizes decide: the crop, the memory it takes, whether a batch fits, and
    whether BatchNorm sees more than one value per channel at the backbone's smallest feature map."""
    from mixbench.data.sources import gib, memory_problem, train_class_counts

    data, train = t["data"], t["train"]
    out: list[str] = []

    def src(key: str) -> str:
        return origin.get(f"data.{key}", origin.get(f"train.{key}", "recipe"))

    side = facts.side
    if side is not None and data["augment"] == "crop_flip" and data["crop_padding"] >= side:
        out.append(f"{src('crop_padding')}: [data].crop_padding = {data['crop_padding']} must be smaller than the "
                   f"{side}-pixel image side (reflect padding cannot reach further); valid: 0..{side - 1}")
    if facts.work_bytes is not None:
        sized = [k for k in ("image_size", "train_size", "test_size") if f"data.{k}" in origin]
        what = (f"{'generating' if facts.work == 'generate' else 'decoding'} {facts.train + facts.test:,} "
                f"{data['source']} images of {side}x{side} ({gib(facts.data_bytes)} as uint8)")
        problem = memory_problem(facts.work_bytes, what)
        if problem:
            keys = "/".join(f"[data].{k}" for k in sized) or "[data]"
            out.append(f"{src(sized[0]) if sized else 'recipe'}: {keys}: {problem}; lower "
                       f"[data].train_size, test_size or image_size")
            return out
    batch, fside = train["batch_size"], None if run is None else run.feature_side
    if fside is not None and batch * fside * fside < 2:
        out.append(f"{src('batch_size')}: [train].batch_size = {batch}: {run.stages_text()} ends in a {fside}x{fside} "
                   f"feature map at {side} px and BatchNorm needs more than one value per channel in training; "
                   "use batch_size >= 2 or a larger [data].image_size")
    if facts.train is None:
        return out
    name = t["method"]["name"]
    n = facts.train
    where = f"the {n:,} training images of [data].source = '{data['source']}'"
    if not methods.get(name).batch.needs_label_split:
        if batch > n:
            out.append(f"{src('batch_size')}: [train].batch_size = {batch:,} is larger than {where}; "
                       f"valid: 1..{n:,}")
        return out
    mu = data["unlabeled_ratio"]
    if mu * batch > n:
        out.append(f"{src('batch_size')}: [train].batch_size: one semi-supervised step needs unlabeled_ratio x "
                   f"batch_size = {mu} x {batch:,} = {mu * batch:,} unlabelled images, more than {where}; lower "
                   "[train].batch_size or [data].unlabeled_ratio")
        return out
    counts = train_class_counts(data["source"], data["train_size"], data["test_size"], data["seed"])
    if counts is None:
        return out
    k, per, total = len(counts), data["labels_per_class"], data["num_labels"]
    if total is not None and total < k:
        return [f"{src('num_labels')}: [data].num_labels = {total:,} is fewer than the {k} classes; valid: "
                f"{k}..{sum(counts):,}"]
    need = [per] * k if per is not None else [total // k + (i < total % k) for i in range(k)]
    short = [c for c in range(k) if need[c] > counts[c]]
    if short:
        c = short[0]
        key = "labels_per_class" if per is not None else "num_labels"
        out.append(f"{src(key)}: [data].{key} = {(per if per is not None else total):,} needs {need[c]:,} labelled "
                   f"images of class {c}, which has only {counts[c]:,} among {where}")
    return out


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


def _eval_checks(ev: dict[str, Any], origin: dict[str, str]) -> list[str]:
    """``[eval].after`` names evaluators that run on a finished run (``mixbench.evaluate.after.AFTER_NAMES``)."""
    from mixbench.evaluate.after import AFTER_NAMES

    after = ev.get("after")
    if not isinstance(after, list):  # its type was already reported
        return []
    unknown = [name for name in dict.fromkeys(after) if name not in AFTER_NAMES]
    if not unknown:
        return []
    hint = did_you_mean(unknown[0], AFTER_NAMES) if len(unknown) == 1 and len(unknown[0]) < 100 else ""
    names = ", ".join(f"'{show_key(n)}'" for n in unknown)
    return [f"{origin.get('eval.after', 'recipe')}: [eval].after: unknown evaluator{'s' if len(unknown) > 1 else ''} "
            f"{names}{hint}; valid: {', '.join(AFTER_NAMES)}"]


def _cross_checks(t: dict[str, dict[str, Any]], origin: dict[str, str], datasets: Any) -> list[str]:
    """Problems that involve more than one key."""
    out: list[str] = []
    data, train = t["data"], t["train"]

    def src(key: str) -> str:
        return origin.get(key, "recipe")

    source = data.get("source")
    if source is not None and source not in datasets:
        hint = did_you_mean(source, datasets.names()) if len(source) < 100 else ""
        out.append(
            f"{src('data.source')}: [data].source: unknown data set '{show_key(source)}'"
            f"{hint}; valid: {', '.join(datasets.names())}"
        )
    elif source not in (None, "shapes") and data.get("root") is None and "data.root" not in origin and not (
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
            out.append(f"{src('train.milestones')}: [train].milestones must lie in 1..{epochs - 1}, got {show(bad)}")
        if train.get("warmup_epochs", 0) >= epochs:
            out.append(f"{src('train.warmup_epochs')}: [train].warmup_epochs must be < epochs ({epochs})")
        stop = train.get("stop_after")
        if stop is not None and stop > epochs:
            out.append(f"{src('train.stop_after')}: [train].stop_after must be <= epochs ({epochs})")
    if train.get("optimizer") == "adamw" and train.get("nesterov"):
        out.append(f"{src('train.nesterov')}: [train].nesterov applies to sgd only and to lars (its SGD part), "
                   "not adamw")
    if train.get("optimizer") == "lars" and train.get("no_decay_norm_bias") is False:
        out.append(f"{src('train.optimizer')}: [train].optimizer = 'lars' needs [train].no_decay_norm_bias = true "
                   "(LARS neither adapts nor decays biases and norm weights, solo-learn's exclude_bias_n_norm)")
    if train.get("optimizer") in ("sgd", "adamw"):  # a resolved recipe lists them at their defaults: fine
        for key in ("lars_eta", "lars_clip"):
            if f"train.{key}" in origin and train.get(key) != TRAIN_SCHEMA[key].default:
                out.append(f"{src(f'train.{key}')}: [train].{key} applies to optimizer = 'lars' only, "
                           f"not '{train.get('optimizer')}'")
    betas = train.get("betas")
    if isinstance(betas, list) and (len(betas) != 2 or not all(0 <= b < 1 for b in betas)):
        out.append(f"{src('train.betas')}: [train].betas: expected 2 numbers in [0, 1), got {show(betas)}")
    if train.get("min_lr", 0) > train.get("lr", math.inf):
        out.append(f"{src('train.min_lr')}: [train].min_lr must not exceed [train].lr")
    for key in ("mean", "std"):
        v = data.get(key)
        if v is not None and key == "std" and any(s <= 0 for s in v):
            out.append(f"{src('data.std')}: [data].std values must be > 0, got {v}")
    return out
