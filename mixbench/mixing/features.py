"""Feature and saliency sources for mixers that look at the images through a network.

The source is the model being trained (default) or a frozen model loaded from an earlier run
(``features_from`` = a run folder or its ``checkpoint.pt``). Both are read in eval mode, so the
extra passes never touch BatchNorm statistics or parameter gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.errors import UserError
from mixbench.params import Param

FEATURES_FROM = Param("path", None, "run folder (or its checkpoint.pt) of a frozen feature model; "
                      "default: the model being trained", optional=True)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def load_feature_model(path: str | Path, device: torch.device) -> nn.Module:
    """A frozen Classifier rebuilt from a mixbench run folder or its ``checkpoint.pt`` (the checkpoint alone)."""
    from mixbench.checkpoint import read_checkpoint

    return read_checkpoint(path, "[method].features_from").build_classifier().to(device)


def resolve_source(features_from: str | None, model: nn.Module, device: torch.device) -> nn.Module:
    """The network a mixer should look through: a frozen checkpoint, or the trained model."""
    return load_feature_model(features_from, device) if features_from else model


@torch.no_grad()
def activation_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[N, h, w] channel-mean activation of the backbone's final feature map (eval mode)."""
    with eval_mode(model):
        fmap = model.backbone.forward_map(x)
    if fmap.dim() != 4:
        raise UserError("[method] this mixer needs a convolutional feature map; the backbone returns "
                        f"a tensor of shape {tuple(fmap.shape)}")
    return fmap.float().mean(dim=1)


def input_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, stage: int = 0) -> torch.Tensor:
    """[N, H, W] gradient saliency √(mean_c (∂CE/∂h)²) in eval mode, without weight gradients.

    ``stage = 0``: h = x, the input gradient of the reference. ``stage = k > 0``: h = the output of
    residual stage k (the prefix runs without autograd, the backward stops there), upsampled to
    the image size: a cheaper map at the stage's resolution.
    """
    if stage == 0:
        with eval_mode(model), torch.enable_grad():
            x_req = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model(x_req).float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_req)
        return grad.float().pow(2).mean(dim=1).sqrt()
    backbone = model.backbone
    if not getattr(backbone, "supports_stage_hook", False) or stage > backbone.num_stages:
        raise UserError(f"[method].saliency_stage = {stage}: this backbone has no residual stage {stage}; "
                        "use 0 (the input gradient)")
    with eval_mode(model):
        with torch.no_grad():
            h = backbone.stem(x)
            for block in backbone.stages[:stage]:
                h = block(h)
        with torch.enable_grad():
            h = h.detach().requires_grad_(True)
            out = h
            for block in backbone.stages[stage:]:
                out = block(out)
            logits = model.head(backbone.pool(backbone.final(out)))
            (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), h)
    sal = grad.float().pow(2).mean(dim=1, keepdim=True).sqrt()
    return F.interpolate(sal, size=x.shape[-2:], mode="nearest")[:, 0]
