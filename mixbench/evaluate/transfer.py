"""Transfer: a checkpoint's backbone on another data set, with a fresh head for the target classes.

Two modes, both stored as ``RUN/evals/transfer-<protocol hash>/result.json`` of the run evaluated
(:mod:`mixbench.evaluate.store`; reused while protocol and checkpoint hash match, unless ``force``):

- ``linear``: the frozen backbone (eval mode) encodes the target's unaugmented images once (cached as
  ``RUN/evals/features-<hash>.pt``) and :class:`~mixbench.evaluate.linear.LinearProbe` trains one head per
  lr, the lr chosen on held-out training images; ``probe.*`` settings change lrs, epochs, batch, val_fraction.
- ``finetune``: a normal training run (:func:`mixbench.engine.fit`) of the packaged recipe
  ``transfer_finetune.toml`` (vanilla, SGD lr 0.01, cosine, 30 epochs, batch 100) plus ``--set`` overrides,
  starting from the checkpoint's backbone (``[model].weights`` = ``backbone.pt`` beside the result, the
  backbone alone, so the head is always fresh); the run record lives in
  ``RUN/evals/transfer-<hash>/.finetune/<name>/<run id>/`` (a hidden folder: ``compare`` does not list it as a
  run of its own) and an interrupted fine-tune continues where it stopped on the next call.

Target images are loaded at the checkpoint's image side (``image_size`` overrides it): Tiny-ImageNet and
imagefolder images are resized while decoding, CIFAR's 32x32 tensors by antialiased bilinear
interpolation, shapes are generated at that side. They are normalised with the **checkpoint's own**
mean/std, the input statistics its first layer was trained on (the protocol records them), not the target's.

``result.json``: ``protocol.mode`` (linear | finetune), ``protocol.data`` (the target source name),
``protocol.target`` (source, root, image_size, train_size, test_size, seed), ``protocol.image_size``,
``protocol.normalization`` (mean, std, from), then ``protocol.probe`` (linear) or ``protocol.finetune`` with
``protocol.finetune_hash`` (finetune); ``metrics.transfer_top1`` in both modes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mixbench.checkpoint import Checkpoint, read_checkpoint
from mixbench.errors import RecipeError, UserError
from mixbench.evaluate.features import FEATURES_PROTOCOL, data_table
from mixbench.evaluate.runner import DATA_KEYS, Encoded
from mixbench.evaluate.store import file_sha256, load_or_run, protocol_hash, result_path
from mixbench.params import Param, check_table, resolve_paths

MODES = ("linear", "finetune")
EVALUATOR = "transfer"
FINETUNE_RECIPE = Path(__file__).with_name("transfer_finetune.toml")
FINETUNE_DIR = ".finetune"  # hidden: `compare` lists runs, and a fine-tune is part of this evaluation
BACKBONE_FILE = "backbone.pt"
#: [data] keys that say which images are loaded (both modes); the others only shape fine-tuning.
TARGET_KEYS = ("source", "root", "download", "cache_dir", "image_size", "train_size", "test_size", "seed")
#: --set model.* keys a fine-tune may not change: the backbone is the checkpoint's.
FIXED_MODEL_KEYS = ("name", "width", "weights")
NORMALIZATION_FROM = "checkpoint"  # the backbone's own input statistics

PROBE_SCHEMA: dict[str, Param] = {
    "lrs": Param("float_list", [0.1, 0.3, 1.0], "learning rates of the linear heads (all train at once)"),
    "epochs": Param("int", 100, "epochs over the training features", low=1, high=100_000),
    "batch": Param("int", 256, "mini-batch of the linear heads", low=1, high=10_000_000),
    "val_fraction": Param("float", 0.1, "share of the training images held out to choose the lr",
                          low=0, high=1, low_open=True, high_open=True),
}


@dataclass
class Transferred:
    """A transfer evaluation: the stored result (``result.json`` plus ``reused`` and ``path``) and its context."""

    result: dict[str, Any]
    run_dir: Path
    mode: str
    data: str
    image_size: int
    finetune_run: Path | None = None
    features_reused: bool = False

    @property
    def metrics(self) -> dict[str, Any]:
        return self.result["metrics"]

    def describe(self) -> str:
        """Where the result lives and whether it was computed now."""
        if self.result["reused"]:
            return f"{self.run_dir} (reused the stored result)"
        extra = " from cached features" if self.features_reused else ""
        return f"{self.run_dir} (computed in {self.result['seconds']:.1f} s{extra})"


@dataclass
class _Sets:
    """``--set`` options sorted by where they go."""

    target: dict[str, Any]  # [data] keys of TARGET_KEYS
    probe: dict[str, Any]  # probe.* (linear)
    recipe: list[str]  # everything else, as given (finetune: passed to the recipe loader)


def _split_sets(sets: list[str], mode: str) -> _Sets:
    from mixbench.recipe import parse_override

    out = _Sets({}, {}, [])
    for text in sets:
        keys, value = parse_override(text)
        if keys[0] == "data" and len(keys) == 2 and keys[1] in TARGET_KEYS:
            out.target[keys[1]] = value
        elif keys[0] == "probe":
            if mode != "linear" or len(keys) != 2:
                raise UserError(f"--set {text}: probe.* settings ({', '.join(PROBE_SCHEMA)}) apply to --mode linear")
            out.probe[keys[1]] = value
        elif mode == "linear":
            raise UserError(f"--set {text}: transfer --mode linear takes data.{{{','.join(TARGET_KEYS)}}} and "
                            f"probe.{{{','.join(PROBE_SCHEMA)}}} settings; recipe keys apply to --mode finetune")
        elif keys[0] == "model" and len(keys) == 2 and keys[1] in FIXED_MODEL_KEYS:
            raise UserError(f"--set {text}: a transfer fine-tunes the checkpoint's own backbone; model.name, "
                            "model.width and model.weights come from the checkpoint")
        elif keys == ["train", "stop_after"]:
            raise UserError(f"--set {text}: a transfer fine-tune runs all its epochs; set train.epochs instead")
        else:
            out.recipe.append(text)
    return out


def _check(table: dict[str, Any], schema: dict[str, Param], where: str) -> dict[str, Any]:
    """Validate ``table`` against ``schema`` (defaults filled), every key named as coming from --set."""
    origin = {k: "--set" for k in table}
    values, problems = check_table(table, schema, where, origin)
    if problems:
        raise RecipeError(problems)
    resolve_paths(values, schema, origin)
    return values


def target_data(ckpt: Checkpoint, source: str, root: Path | None, image_size: int | None,
                sets: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The target's ``[data]`` loading keys (``TARGET_KEYS``, validated) and the side its images are loaded at.

    The side is ``image_size``, else the checkpoint's; the cache folder is the checkpoint recipe's. A source with
    a fixed native side loaded at that side keeps ``image_size`` unset, so it shares the training data cache.
    """
    from mixbench.data import DATASETS
    from mixbench.data.sources import LAYOUTS
    from mixbench.recipe import DATA_SCHEMA

    if source not in DATASETS:
        raise UserError(f"--data {source}: unknown data set; valid: {', '.join(DATASETS.names())}")
    table: dict[str, Any] = {"source": source, "image_size": image_size or int(ckpt.model_spec["image_size"])}
    if root is not None:
        table["root"] = str(root)
    cache_dir = data_table(ckpt).get("cache_dir")
    if cache_dir is not None:
        table["cache_dir"] = cache_dir
    table |= sets
    values = _check(table, {k: DATA_SCHEMA[k] for k in TARGET_KEYS}, "[data]")
    source = values["source"]
    if source not in DATASETS:
        raise UserError(f"--set data.source={source}: unknown data set; valid: {', '.join(DATASETS.names())}")
    download = values["download"] and source in ("cifar10", "cifar100")
    if source != "shapes" and values["root"] is None and not download:
        raise UserError(f"--root is required for --data {source} (the folder or archive that holds it)")
    if values["root"] is not None and not Path(values["root"]).exists() and not download:
        raise UserError(f"--root {values['root']}: no such file or folder")
    side = values["image_size"]
    layout = LAYOUTS.get(source)
    if layout is not None and side == layout.side:
        values["image_size"] = None
    return values, side


def _check_backbone(ckpt: Checkpoint) -> None:
    """Rebuild the checkpoint's backbone once, so a spec or weights that do not fit fail before any data is read."""
    from mixbench.models import model_problem

    spec = ckpt.model_spec
    problem = model_problem(str(spec.get("name")))
    if problem:
        raise UserError(f"{ckpt.path}: its backbone cannot be rebuilt: {problem}")
    ckpt.build_backbone()


def transfer(path: Path, *, data: str, root: Path | None = None, mode: str = "linear", image_size: int | None = None,
             sets: list[str] | None = None, force: bool = False, device: torch.device,
             batch: int = 500) -> Transferred:
    """Evaluate the backbone of ``path`` (a run folder or checkpoint) on data set ``data`` with a fresh head."""
    if mode not in MODES:
        raise UserError(f"--mode {mode}: valid: {', '.join(MODES)}")
    parts = _split_sets(list(sets or []), mode)
    ckpt = read_checkpoint(path, "transfer")
    _check_backbone(ckpt)
    target, side = target_data(ckpt, data, root, image_size, parts.target)
    if mode == "linear":
        return _linear(ckpt, target, side, _check(parts.probe, PROBE_SCHEMA, "probe"),
                       device=device, force=force, batch=batch)
    return _finetune(ckpt, target, side, parts.recipe, device=device, force=force)


def _base_protocol(mode: str, target: dict[str, Any], side: int, mean: Any, std: Any,
                   source: str = NORMALIZATION_FROM) -> dict[str, Any]:
    return {"mode": mode, "data": target["source"], "target": {k: target.get(k) for k in DATA_KEYS},
            "image_size": side, "normalization": {"mean": list(mean), "std": list(std), "from": source}}


def _linear(ckpt: Checkpoint, target: dict[str, Any], side: int, probe: dict[str, Any], *, device: torch.device,
            force: bool, batch: int) -> Transferred:
    from mixbench.evaluate.linear import LinearProbe

    lrs = list(dict.fromkeys(probe["lrs"]))
    if not lrs or any(lr <= 0 for lr in lrs):
        raise UserError(f"--set probe.lrs: expected positive learning rates, got {probe['lrs']}")
    enc = Encoded(ckpt, device, dict(target), batch, force, sha=file_sha256(ckpt.path),
                  data_key={k: target.get(k) for k in DATA_KEYS})
    norm = ckpt.normalization
    settings = {"lrs": lrs, "epochs": probe["epochs"], "batch": probe["batch"], "val_fraction": probe["val_fraction"],
                "momentum": 0.9, "weight_decay": 0.0, "schedule": "cosine", "standardize": True,
                "bn": "frozen (eval mode, running statistics)", "augment": "none"}
    protocol = _base_protocol("linear", target, side, norm["mean"], norm["std"]) | {
        "features": FEATURES_PROTOCOL, "probe": settings}
    probe_fn = LinearProbe(lrs, epochs=probe["epochs"], batch=probe["batch"], val_fraction=probe["val_fraction"])

    def compute() -> dict[str, float]:
        m = probe_fn(None, enc.features(), None)
        out = {"transfer_top1": m["linear_top1"], "transfer_lr": m["linear_lr"],
               "transfer_val_top1": m["linear_val_top1"]}
        return out | {f"transfer_top1@lr={lr:g}": m[f"linear_top1@lr={lr:g}"] for lr in lrs}

    result = load_or_run(enc.run_dir, EVALUATOR, protocol, compute, force=force, checkpoint_sha256=enc.sha)
    return Transferred(result, enc.run_dir, "linear", target["source"], side, features_reused=enc.features_reused)


def _setting(key: str, value: Any) -> str:
    """``key=VALUE`` with VALUE as TOML (JSON's strings, numbers, booleans and arrays are TOML too)."""
    return f"{key}={json.dumps(value)}"


def finetune_recipe(ckpt: Checkpoint, target: dict[str, Any], recipe_sets: list[str]) -> Any:
    """The fine-tuning :class:`~mixbench.recipe.Recipe`: packaged defaults < target data and the checkpoint's
    backbone spec and normalisation < ``recipe_sets``; ``[model].weights`` is filled in later."""
    from mixbench.recipe import load_recipe

    spec, norm = ckpt.model_spec, ckpt.normalization
    forced = [_setting(f"data.{k}", v) for k, v in target.items() if v is not None]
    forced += [_setting("data.mean", list(norm["mean"])), _setting("data.std", list(norm["std"])),
               _setting("model.name", spec["name"]), _setting("model.width", float(spec["width"])),
               _setting("model.zero_init_residual", bool(spec.get("zero_init_residual", True))),
               _setting("model.drop_rate", float(spec.get("drop_rate", 0.0)))]
    return load_recipe(FINETUNE_RECIPE, forced + recipe_sets)


def _finetune(ckpt: Checkpoint, target: dict[str, Any], side: int, recipe_sets: list[str], *, device: torch.device,
              force: bool) -> Transferred:
    from mixbench.engine import fit
    from mixbench.engine.stopping import Interrupted
    from mixbench.results.atomic import atomic_torch_save

    recipe = finetune_recipe(ckpt, target, recipe_sets)
    data = recipe.data
    ft = recipe.as_dict()
    ft.pop("data")
    ft["model"].pop("weights", None)
    ft["augment"] = {k: data[k] for k in ("augment", "crop_padding", "padding_mode")}
    given = [ckpt.normalization["mean"], ckpt.normalization["std"]]
    norm_from = NORMALIZATION_FROM if [list(data["mean"]), list(data["std"])] == [list(v) for v in given] else "--set"
    protocol = _base_protocol("finetune", data, side, data["mean"], data["std"], norm_from) | {
        "finetune": ft, "finetune_hash": protocol_hash(ft),
        "init": "checkpoint backbone, fresh linear head, every layer trained"}
    run_dir, sha = ckpt.path.parent, file_sha256(ckpt.path)
    folder = result_path(run_dir, EVALUATOR, protocol).parent
    recipe.model["weights"] = str(folder / BACKBONE_FILE)
    out_root = folder / FINETUNE_DIR
    run_path = out_root / recipe.name / recipe.run_id()

    def compute() -> dict[str, float]:
        atomic_torch_save(folder / BACKBONE_FILE, ckpt.backbone_state())  # the backbone alone: the head is fresh
        started = run_path.is_dir() and any(run_path.iterdir())
        try:
            res = fit(recipe, out_root=out_root, device=device, resume=started and not force,
                      overwrite=started and force, command_line=sys.argv)
        except Interrupted as e:  # the run's own hint (--resume) does not apply: the transfer command resumes it
            kept = (f"the fine-tune kept its epoch-{e.checkpoint_epoch} checkpoint" if e.checkpoint_epoch
                    else "the fine-tune wrote no checkpoint yet")
            raise Interrupted(f"{kept}; run the same transfer command again to continue", e.checkpoint_epoch) from None
        s = res.summary
        return {"transfer_top1": s.get("top1_last"), "transfer_top5": s.get("top5_last"),
                "finetune_wall_s": s.get("wall_time_s"), "finetune_images_per_s": s.get("images_per_s")}

    result = load_or_run(run_dir, EVALUATOR, protocol, compute, force=force, checkpoint_sha256=sha)
    return Transferred(result, run_dir, "finetune", data["source"], side, finetune_run=run_path)


__all__ = ["MODES", "FINETUNE_RECIPE", "PROBE_SCHEMA", "Transferred", "transfer", "target_data", "finetune_recipe"]
