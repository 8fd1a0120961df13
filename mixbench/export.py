"""``mixbench export``: a run's encoder as a backbone-only weight file that describes itself.

The encoder is the one representation evaluation uses (``Method.encoder()``: the online backbone of a
supervised run, what the method names for others), read from the checkpoint, rebuilt from its model spec
(:meth:`mixbench.checkpoint.Checkpoint.build_backbone`, which checks that the weights fit) and written with
its BatchNorm statistics; the classification head is left out. Two formats:

``safetensors`` (default)  the tensors plus string metadata; every metadata value is JSON text
                           (``json.loads`` gives it back with its type), and ``format = "pt"`` as the
                           Hugging Face convention asks.
``pt``                     ``torch.save({"kind": "mixbench-backbone", "metadata": {...}, "state_dict": {...}})``;
                           ``torch.load(path, weights_only=True)["state_dict"]`` is the plain state_dict.

Metadata (:func:`export_metadata`): architecture (the recipe's ``model.name``), ``timm_name``, width (None for
a timm model, which has no width multiplier), in_chans,
image_size, the normalisation mean/std, num_features, num_classes of the run's head (not exported), the class
names, zero_init_residual and drop_rate (what :func:`mixbench.models.build_backbone` takes), dataset, method,
recipe name, recipe hash (the config hash), run id, seed, epoch, the checkpoint's sha256, the mixbench / torch
(/ timm) versions, the number of parameters, ``key_prefix`` (what was taken off the keys) and
``timm_loadable`` with ``timm_note`` (how to load the file, or why timm cannot).

Who loads an export:

- ``[model].weights = "backbone.safetensors"`` (or the ``.pt``) in a recipe, through
  :func:`mixbench.models.load_weights` (the head stays fresh);
- :func:`read_export` / :meth:`Exported.build_backbone` (the read API: the backbone rebuilt, frozen, in eval
  mode, as :meth:`Checkpoint.build_backbone` gives it);
- for a ``timm:<name>`` backbone, timm itself: the keys are timm's own (the ``model.`` of mixbench's wrapper
  taken off), so ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH),
  num_classes=0)`` loads it without any download (transformers also want ``img_size=<image_size>``).

The built-in CIFAR backbones are not timm models (``timm_loadable: false``). ``resnet18_cifar`` at width 1 has
the layers of timm's ``resnet18`` except the stem (3x3 stride-1 convolution, no max-pool, against 7x7 stride 2
and a max-pool); ``timm.create_model(..., pretrained_cfg_overlay=dict(file=...))`` loads the weights into the
7x7 stem while it builds the model and fails there, and no keyword of timm's ResNet gives a 3x3 stride-1 stem.
By hand, swapping ``conv1`` for a 3x3 stride-1 convolution and ``maxpool`` for ``Identity`` after creating it,
then loading the keys renamed in order, gives the same features (a test holds this for width 1); at any other
width every channel count differs and timm's ResNet has no width multiplier.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixbench import __version__
from mixbench.checkpoint import Checkpoint, read_checkpoint
from mixbench.errors import UserError
from mixbench.results.atomic import atomic_torch_save, atomic_write_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXPORT_KIND = "mixbench-backbone"
EXPORT_SCHEMA = 1
FORMATS = {"safetensors": ".safetensors", "pt": ".pt"}
TIMM_PREFIX = "model."  # mixbench's TimmBackbone holds the timm model as ``self.model``


@dataclass
class Exported:
    """An export read back: the backbone's state_dict (the file's keys) and its metadata."""

    path: Path
    state: dict[str, torch.Tensor]
    metadata: dict[str, Any]

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The state_dict with mixbench's key names (``key_prefix`` put back)."""
        prefix = self.metadata.get("key_prefix") or ""
        return {f"{prefix}{k}": v for k, v in self.state.items()}

    def build_backbone(self) -> nn.Module:
        """The backbone rebuilt from the metadata and loaded, frozen, in eval mode."""
        from mixbench.models import build_backbone

        m = self.metadata
        try:
            backbone = build_backbone(m["architecture"], width=m["width"], in_chans=m["in_chans"],
                                      image_size=m["image_size"], zero_init_residual=m["zero_init_residual"],
                                      drop_rate=m["drop_rate"], patch_size=m.get("patch_size"))
        except KeyError as e:
            raise UserError(f"{self.path}: the export's metadata has no {e.args[0]!r}; re-export it") from None
        try:
            backbone.load_state_dict(self.backbone_state())
        except RuntimeError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{self.path}: the weights do not fit {m['architecture']} ({first})") from None
        return backbone.requires_grad_(False).eval()


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` wrote: the file, its format and size, the tensors and parameters in it, its metadata."""

    path: Path
    format: str
    bytes: int
    tensors: int
    parameters: int
    metadata: dict[str, Any]


def _recipe_fields(ckpt: Checkpoint) -> dict[str, Any]:
    """name and seed of the checkpoint's resolved recipe (None where it does not say)."""
    try:
        recipe = tomllib.loads(ckpt.recipe)
    except (tomllib.TOMLDecodeError, TypeError, KeyError):
        return {"name": None, "seed": None}
    seed = recipe.get("seed")
    return {"name": recipe.get("name"), "seed": seed if isinstance(seed, int) else None}


def timm_note(architecture: str, image_size: int, patch_size: int | None = None) -> tuple[bool, str]:
    """(whether ``timm.create_model`` loads the export, how to load it / why it cannot)."""
    if architecture.startswith("timm:"):
        name = architecture[5:]
        extra = f", patch_size={patch_size}" if patch_size is not None else ""
        return True, (f"timm.create_model('{name}', pretrained=True, pretrained_cfg_overlay=dict(file=PATH), "
                      f"num_classes=0) (transformers also img_size={image_size}{extra})")
    return False, (f"{architecture} is mixbench's own backbone, not a timm model: load it with [model].weights = "
                   "PATH in a recipe or mixbench.export.read_export(PATH).build_backbone(); timm.create_model "
                   "cannot (its ResNets have a 7x7 stride-2 stem and a max-pool where this has a 3x3 stride-1 stem, "
                   "and no width multiplier)")


def export_metadata(ckpt: Checkpoint, backbone: nn.Module, sha256: str) -> dict[str, Any]:
    """Everything an export says about itself (see the module docstring); JSON-able values."""
    spec, norm = ckpt.model_spec, ckpt.normalization
    architecture = str(spec["name"])
    recipe = _recipe_fields(ckpt)
    recipe_hash = ckpt.data.get("recipe_hash")
    loadable, note = timm_note(architecture, int(spec["image_size"]), spec.get("patch_size"))
    classes = ckpt.data.get("classes")
    meta: dict[str, Any] = {
        "kind": EXPORT_KIND, "schema": EXPORT_SCHEMA,
        "architecture": architecture,
        "timm_name": architecture[5:] if architecture.startswith("timm:") else None,
        "timm_loadable": loadable, "timm_note": note,
        "width": None if architecture.startswith("timm:") else float(spec.get("width", 1.0)),  # timm takes none
        "in_chans": int(spec.get("in_chans", 3)),
        "image_size": int(spec["image_size"]),
        "mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]],
        "num_features": int(backbone.num_features), "num_classes": int(spec["num_classes"]),
        "class_names": [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None,
        "zero_init_residual": bool(spec.get("zero_init_residual", True)),
        "drop_rate": float(spec.get("drop_rate", 0.0)),
        "patch_size": spec.get("patch_size"),  # a timm ViT's [model].patch_size, None: the model's own
        "dataset": spec.get("dataset"), "method": ckpt.data.get("method_name"),
        "recipe_name": recipe["name"], "recipe_hash": recipe_hash, "seed": recipe["seed"],
        "run_id": f"seed{recipe['seed']}-{recipe_hash}" if recipe["seed"] is not None and recipe_hash else None,
        "epoch": ckpt.data.get("epoch"), "encoder": ckpt.data.get("encoder_prefix"),
        "checkpoint_sha256": sha256,
        "key_prefix": TIMM_PREFIX if architecture.startswith("timm:") else "",
        "num_parameters": sum(p.numel() for p in backbone.parameters()),
        "mixbench_version": __version__, "torch_version": str(torch.__version__),
    }
    if architecture.startswith("timm:"):
        import timm

        meta["timm_version"] = str(timm.__version__)
    return meta


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def export_state(backbone: nn.Module, key_prefix: str) -> dict[str, torch.Tensor]:
    """The backbone's state_dict on the CPU, every tensor its own contiguous copy, ``key_prefix`` taken off."""
    out = {}
    for key, value in backbone.state_dict().items():
        if key_prefix and not key.startswith(key_prefix):
            raise ValueError(f"state_dict key {key!r} lacks the prefix {key_prefix!r}")
        out[key[len(key_prefix):]] = value.detach().to("cpu", copy=True).contiguous()
    return out


def default_path(ckpt: Checkpoint, fmt: str) -> Path:
    """``backbone.safetensors`` (or ``.pt``) beside the checkpoint, i.e. in its run folder."""
    return ckpt.path.parent / f"backbone{FORMATS[fmt]}"


def export_backbone(source: str | Path, *, fmt: str = "safetensors", out: str | Path | None = None) -> ExportResult:
    """Write the encoder of ``source`` (a run folder or checkpoint file) to ``out`` (default: :func:`default_path`)."""
    if fmt not in FORMATS:
        raise UserError(f"export: --format {fmt}: valid formats are {', '.join(FORMATS)}")
    if out is not None and (Path(out).suffix == ".safetensors") != (fmt == "safetensors"):
        raise UserError(f"export: --out {out}: a {fmt} file needs a name ending in "
                        f"{FORMATS[fmt] if fmt == 'safetensors' else 'anything but .safetensors (e.g. .pt)'}")
    ckpt = read_checkpoint(source, "export")
    path = Path(out) if out is not None else default_path(ckpt, fmt)
    if path.is_dir():
        raise UserError(f"export: --out {path} is a folder; give a file name such as "
                        f"{path / ('backbone' + FORMATS[fmt])}")
    backbone = ckpt.build_backbone()
    meta = export_metadata(ckpt, backbone, _sha256(ckpt.path))
    state = export_state(backbone, meta["key_prefix"])
    if fmt == "safetensors":
        from safetensors.torch import save

        text = {"format": "pt", **{k: json.dumps(v) for k, v in meta.items()}}
        atomic_write_bytes(path, save(state, metadata=text))
    else:
        atomic_torch_save(path, {"kind": EXPORT_KIND, "metadata": meta, "state_dict": state})
    return ExportResult(path, fmt, path.stat().st_size, len(state), int(meta["num_parameters"]), meta)


def read_export(path: str | Path, where: str = "export") -> Exported:
    """Read an export (either format) back: tensors on the CPU and the metadata with its types."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{where}: {path} not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                text = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except (SafetensorError, OSError) as e:
            raise UserError(f"{where}: cannot read {path} as safetensors ({type(e).__name__})") from None
        meta: dict[str, Any] = {}
        for key, value in text.items():
            if key == "format":
                continue
            try:
                meta[key] = json.loads(value)
            except ValueError:  # another tool's plain-text metadata
                meta[key] = value
        return Exported(path, state, meta)
    from mixbench.checkpoint import load_file

    data = load_file(path, where)
    if not (isinstance(data, dict) and data.get("kind") == EXPORT_KIND and isinstance(data.get("state_dict"), dict)):
        raise UserError(f"{where}: {path} is not a mixbench backbone export")
    return Exported(path, dict(data["state_dict"]), dict(data.get("metadata") or {}))


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units)."""
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


__all__ = ["EXPORT_KIND", "FORMATS", "Exported", "ExportResult", "export_backbone", "export_metadata",
           "export_state", "read_export", "timm_note", "default_path", "human_bytes"]
