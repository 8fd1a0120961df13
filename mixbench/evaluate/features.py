"""Frozen-backbone features for representation evaluation (kNN, linear probes).

A checkpoint's evaluation data is its recipe's ``[data]`` table (plus overrides), every training label
kept (a semi-supervised recipe's labelled subset settings are dropped), normalised with the
checkpoint's own ``normalization``. Features f(x) ∈ R^D are the backbone's pooled output for the
centre (unaugmented) image x̂ = (x − 255 μ) / (255 σ), in eval mode, without gradients.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import torch
from torch import nn

from mixbench.checkpoint import Checkpoint
from mixbench.data import DataConfig, load_image_data
from mixbench.data.gpu_loader import Normalize, model_input
from mixbench.errors import UserError
from mixbench.mixing.features import eval_mode

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SEMI_SUPERVISED_KEYS = ("labels_per_class", "num_labels", "unlabeled_ratio")
FEATURES_PROTOCOL = "pooled backbone, eval mode, unaugmented"


class EvalData(NamedTuple):
    """uint8 images [N, 3, H, W] and int64 labels [N] on the device, the normalisation and the class names."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]


def data_table(ckpt: Checkpoint, data_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint recipe's ``[data]`` table with ``data_overrides`` applied, semi-supervised keys dropped."""
    try:
        table = dict(tomllib.loads(ckpt.recipe).get("data", {}))
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{ckpt.path}: its recipe cannot be read ({type(e).__name__})") from None
    known = set(DataConfig.__dataclass_fields__)
    for key, value in (data_overrides or {}).items():
        if key not in known:
            raise UserError(f"--set data.{key}: not a [data] setting; valid: {', '.join(sorted(known))}")
        table[key] = value
    for key in SEMI_SUPERVISED_KEYS:  # kNN and probes use every training label
        table.pop(key, None)
    return {k: v for k, v in table.items() if k in known}


def eval_data(ckpt: Checkpoint, *, data_overrides: dict[str, Any] | None = None,
              device: torch.device) -> EvalData:
    """The checkpoint's training and test images (every label), on ``device``, with its normalisation."""
    data = load_image_data(DataConfig(**data_table(ckpt, data_overrides)))
    if data.train_x.shape[0] == 0 or data.test_x.shape[0] == 0:
        raise UserError(f"[data]: source '{data.name}' gave no training or test images")
    norm = ckpt.normalization
    return EvalData(data.train_x.to(device), data.train_y.to(device), data.test_x.to(device),
                    data.test_y.to(device), tuple(norm["mean"]), tuple(norm["std"]), list(data.classes))


@torch.no_grad()
def extract_features(backbone: nn.Module, images_u8: torch.Tensor, mean: tuple[float, ...] | list[float],
                     std: tuple[float, ...] | list[float], *, batch: int, device: torch.device) -> torch.Tensor:
    """float32 [N, D] pooled features of ``images_u8`` (uint8 [N, 3, H, W]), computed and kept on ``device``.

    Batches of ``batch`` images are moved, normalised and encoded on the device; no host sync happens here.
    """
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    normalize = Normalize(mean, std, device)
    chunks: list[torch.Tensor] = []
    with eval_mode(backbone):
        for start in range(0, images_u8.shape[0], batch):
            x = model_input(images_u8[start:start + batch].to(device, non_blocking=True), normalize, False)
            chunks.append(backbone(x).flatten(1).float())
    if not chunks:
        raise ValueError("no images to encode")
    return torch.cat(chunks)


__all__ = ["EvalData", "data_table", "eval_data", "extract_features", "FEATURES_PROTOCOL", "SEMI_SUPERVISED_KEYS"]
