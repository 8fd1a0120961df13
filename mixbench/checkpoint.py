"""The one checkpoint reader and writer's format: a ``checkpoint.pt`` that describes itself.

Version 2 holds, besides the training state, how to rebuild what was trained (as nanoGPT's
checkpoint carries its ``model_args``): the model spec (backbone name, width, image size, number
of classes, ...), the data normalisation, the resolved recipe, and the key prefixes under which
the method's state holds the encoder used for representation evaluation and the reported
classifier. So ``read_checkpoint(path).build_backbone()`` needs nothing else. Version-1 files
(no spec) are migrated from the ``recipe.toml`` beside them for reading weights; they cannot be
resumed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixbench.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CHECKPOINT_KIND = "mixbench-checkpoint"
CHECKPOINT_VERSION = 2


def load_file(path: Path, where: str) -> Any:
    """``torch.load`` (weights only, to the CPU) of a file a user named; a clear error otherwise."""
    if not path.is_file():
        raise UserError(f"{where}: {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"{where}: cannot read {path} ({type(e).__name__}); it is not a complete "
                        "mixbench checkpoint") from None


def module_prefix(root: nn.Module, target: nn.Module) -> str:
    """The state-dict key prefix of ``target`` inside ``root`` (``""`` when it is ``root``)."""
    for name, module in root.named_modules(remove_duplicate=False):
        if module is target:
            return f"{name}." if name else ""
    raise ValueError("the module is not part of the method")


@dataclass
class Checkpoint:
    """A checkpoint as read from disk; ``data`` is the raw dictionary (version 2 layout)."""

    path: Path
    data: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.data["version"])

    @property
    def model_spec(self) -> dict[str, Any]:
        return self.data["model_spec"]

    @property
    def normalization(self) -> dict[str, list[float]]:
        return self.data["normalization"]

    @property
    def recipe(self) -> str:
        """The resolved recipe as TOML text."""
        return self.data["recipe"]

    @property
    def method_state(self) -> dict[str, torch.Tensor]:
        return self.data["method"]

    def _sub_state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in self.method_state.items() if k.startswith(prefix)}

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The encoder that representation evaluation uses (``Method.encoder()``)."""
        return self._sub_state(self.data["encoder_prefix"])

    def classifier_state(self) -> dict[str, torch.Tensor]:
        """The classifier reported as the run's ``top1`` (backbone + head)."""
        return self._sub_state(self.data["classifier_prefix"])

    def build_classifier(self) -> nn.Module:
        """The reported classifier, rebuilt from the spec and loaded, frozen, in eval mode."""
        from mixbench.models import build_model

        spec = self.model_spec
        model = build_model(spec["name"], spec["num_classes"], width=spec["width"], image_size=spec["image_size"],
                            zero_init_residual=spec.get("zero_init_residual", True),
                            drop_rate=spec.get("drop_rate", 0.0), patch_size=spec.get("patch_size"))
        self._load(model, self.classifier_state(), "classifier")
        return model.requires_grad_(False).eval()

    def build_backbone(self) -> nn.Module:
        """The encoder alone, rebuilt from the spec and loaded, frozen, in eval mode."""
        from mixbench.models import build_backbone

        spec = self.model_spec
        backbone = build_backbone(spec["name"], width=spec["width"], image_size=spec["image_size"],
                                  zero_init_residual=spec.get("zero_init_residual", True),
                                  drop_rate=spec.get("drop_rate", 0.0), patch_size=spec.get("patch_size"))
        self._load(backbone, self.backbone_state(), "encoder")
        return backbone.requires_grad_(False).eval()

    def _load(self, module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{self.path}: the {what} weights do not fit the model spec "
                            f"{self.model_spec.get('name')} ({first})") from None


def checkpoint_file(path: Path) -> Path:
    """``path`` itself, or the ``checkpoint.pt`` inside a run folder."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def read_checkpoint(path: str | Path, where: str = "checkpoint") -> Checkpoint:
    """Read a run folder's (or a file's) checkpoint; version 1 is migrated, anything else refused."""
    file = checkpoint_file(Path(path))
    data = load_file(file, where)
    if isinstance(data, dict) and data.get("kind") == CHECKPOINT_KIND:
        if data.get("version") == CHECKPOINT_VERSION:
            return Checkpoint(file, data)
        raise UserError(f"{where}: {file} is a mixbench checkpoint of version {data.get('version')}, which this "
                        f"mixbench (version {CHECKPOINT_VERSION}) cannot read; upgrade mixbench")
    if isinstance(data, dict) and data.get("version") == 1 and isinstance(data.get("model"), dict):
        return Checkpoint(file, _migrate_v1(file, data, where))
    raise UserError(f"{where}: {file} is not a mixbench checkpoint")


def _migrate_v1(file: Path, data: dict[str, Any], where: str) -> dict[str, Any]:
    """A version-1 checkpoint in the version-2 layout, its spec taken from the ``recipe.toml`` beside it.

    Version 1 saved the trained classifier as ``model`` and the method's other modules under ``extra``;
    the classifier is both the encoder and the reported classifier here. Not resumable (no method state).
    """
    from mixbench.data import DATASETS

    recipe_path = file.parent / "recipe.toml"
    if not recipe_path.is_file():
        raise UserError(f"{where}: {file} is a version-1 mixbench checkpoint, which does not describe its model, "
                        "and no recipe.toml lies beside it; retrain with this mixbench")
    recipe = tomllib.loads(recipe_path.read_text(encoding="utf-8"))
    model_cfg, data_cfg = recipe.get("model", {}), recipe.get("data", {})
    source = data_cfg.get("source", "shapes")
    meta = DATASETS.entry(source).meta if source in DATASETS else {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    state = data["model"]
    return {
        "kind": CHECKPOINT_KIND, "version": 1, "migrated_from": 1,
        "model_spec": {"name": model_cfg.get("name", "resnet18_cifar"), "width": model_cfg.get("width", 1.0),
                       "image_size": data_cfg.get("image_size") or (64 if source == "tiny-imagenet" else 32),
                       "num_classes": int(state["head.weight"].shape[0]),
                       "zero_init_residual": model_cfg.get("zero_init_residual", True),
                       "drop_rate": model_cfg.get("drop_rate", 0.0), "dataset": source},
        "normalization": {"mean": list(data_cfg.get("mean") or meta["mean"]),
                          "std": list(data_cfg.get("std") or meta["std"])},
        "recipe": recipe_path.read_text(encoding="utf-8"),
        "method": {f"model.{k}": v for k, v in state.items()},
        "encoder_prefix": "model.backbone.", "classifier_prefix": "model.",
        "epoch": data.get("epoch"), "step": data.get("step"),
    }


__all__ = ["Checkpoint", "read_checkpoint", "load_file", "module_prefix", "checkpoint_file",
           "CHECKPOINT_KIND", "CHECKPOINT_VERSION"]
