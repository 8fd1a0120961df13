"""Backbones: CIFAR-style ResNets, PreActResNet, WRN, ResNeXt, and any timm model.

``build_model(name, num_classes)`` returns a :class:`Classifier` (backbone + linear head).
"""

from __future__ import annotations

from pathlib import Path

from mixbench.errors import UserError, did_you_mean
from mixbench.models.base import Backbone, Classifier
from mixbench.models.preact_resnet import preactresnet18, wrn28_8
from mixbench.models.resnet_cifar import BasicBlock, Bottleneck, resnet_backbone, resnext_groups
from mixbench.registry import Registry

MODELS = Registry("model")


RESNETS = {  # name: (block, blocks per stage, ResNeXt groups at full width, ResNeXt base width, doc)
    "resnet10_cifar": (BasicBlock, [1, 1, 1, 1], 1, 64,
                       "ResNet-10 (one basic block per stage), CIFAR stem: the small CPU backbone"),
    "resnet18_cifar": (BasicBlock, [2, 2, 2, 2], 1, 64,
                       "ResNet-18, CIFAR stem (3x3 stride 1, no max-pool), 512-d features"),
    "resnet34_cifar": (BasicBlock, [3, 4, 6, 3], 1, 64, "ResNet-34, CIFAR stem, 512-d features"),
    "resnet50_cifar": (Bottleneck, [3, 4, 6, 3], 1, 64, "ResNet-50 (bottleneck), CIFAR stem, 2048-d features"),
    "resnext50_32x4d_cifar": (Bottleneck, [3, 4, 6, 3], 32, 4, "ResNeXt-50 32x4d, CIFAR stem, 2048-d features"),
}


def _resnet_factory(block, depths, groups, base_width):
    def build(width=1.0, in_chans=3, zero_init_residual=True, **_):
        return resnet_backbone(block, depths, width=width, in_chans=in_chans,
                               groups=resnext_groups(width, groups), base_width=base_width,
                               zero_init_residual=zero_init_residual)
    return build


for _name, (_block, _depths, _groups, _base, _doc) in RESNETS.items():
    MODELS.register(_name, doc=_doc)(_resnet_factory(_block, _depths, _groups, _base))


@MODELS.register("preactresnet18_cifar", doc="pre-activation ResNet-18, CIFAR stem, 512-d features")
def preactresnet18_cifar(width=1.0, in_chans=3, drop_rate=0.0, **_):
    return preactresnet18(width, in_chans, drop_rate)


@MODELS.register("wrn28_8_cifar", doc="Wide ResNet-28-8 (pre-activation, dropout option), 512-d features")
def wrn28_8_cifar(width=1.0, in_chans=3, drop_rate=0.0, **_):
    return wrn28_8(width, in_chans, drop_rate)


# Strides of the residual stages of each built-in backbone (the stem keeps the resolution): what
# validation needs to know about a backbone without building it. A registered name missing here is
# simply not checked.
STAGE_STRIDES: dict[str, tuple[int, ...]] = {
    **{name: (1, 2, 2, 2) for name in RESNETS},
    "preactresnet18_cifar": (1, 2, 2, 2),
    "wrn28_8_cifar": (1, 2, 2),
}


def num_stages(name: str) -> int | None:
    """Residual stages of built-in backbone ``name`` (hidden-stage hooks 1..S), from the name alone;
    ``None`` for a ``timm:`` model (no hidden-stage hooks) or a name this table does not know."""
    strides = STAGE_STRIDES.get(name)
    return None if strides is None else len(strides)


def feature_side(name: str, image_side: int, stage: int | None = None) -> int | None:
    """Side of built-in backbone ``name``'s feature map after residual stage ``stage`` (default: the
    last) for ``image_side`` inputs: every stride-2 stage gives ⌈s / 2⌉ (3x3 conv, padding 1)."""
    strides = STAGE_STRIDES.get(name)
    if strides is None:
        return None
    side = image_side
    for stride in strides[: len(strides) if stage is None else stage]:
        side = -(-side // stride)
    return side


def model_problem(name: str) -> str | None:
    """Why ``name`` names no backbone (one sentence), or ``None``; timm names are looked up, not built."""
    if name.startswith("timm:"):
        timm_name = name[5:]
        if not timm_name:
            return "'timm:' needs a timm model name, e.g. timm:resnet18"
        import timm

        if timm.is_model(timm_name):
            return None
        hint = did_you_mean(timm_name, timm.list_models()) if len(timm_name) < 100 else ""
        return f"unknown timm model '{timm_name[:100]}'{hint}; see timm.list_models()"
    if name in MODELS:
        return None
    shown = name if len(name) <= 100 and name.isprintable() else repr(name[:100])
    return (f"unknown model '{shown}'{did_you_mean(name, MODELS.names()) if len(name) < 100 else ''}; valid: "
            f"{', '.join(MODELS.names())}, or timm:<name>")


def build_backbone(name: str, *, width: float = 1.0, in_chans: int = 3, image_size: int = 32,
                   zero_init_residual: bool = True, drop_rate: float = 0.0, patch_size: int | None = None) -> Backbone:
    """The backbone ``name``; ``patch_size`` (``[model].patch_size``) only for ``timm:`` vision transformers."""
    if name.startswith("timm:"):
        from mixbench.models.timm_bridge import timm_backbone

        return timm_backbone(name[5:], in_chans=in_chans, image_size=image_size, drop_rate=drop_rate,
                             patch_size=patch_size)
    if patch_size is not None:
        from mixbench.models.timm_bridge import patch_size_problem

        raise UserError(patch_size_problem(patch_size, image_size, name))
    return MODELS.get(name)(width=width, in_chans=in_chans, zero_init_residual=zero_init_residual,
                            drop_rate=drop_rate)


def build_model(name: str, num_classes: int, *, width: float = 1.0, in_chans: int = 3,
                image_size: int = 32, weights: str | None = None, zero_init_residual: bool = True,
                drop_rate: float = 0.0, patch_size: int | None = None) -> Classifier:
    """A :class:`Classifier` for ``name`` (a registered backbone or ``timm:<name>``)."""
    model = Classifier(build_backbone(name, width=width, in_chans=in_chans, image_size=image_size,
                                      zero_init_residual=zero_init_residual, drop_rate=drop_rate,
                                      patch_size=patch_size),
                       num_classes)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: Classifier, path: str | Path) -> None:
    """Load a backbone state_dict, a Classifier state_dict, or a mixbench checkpoint (its encoder and head).

    A ``.safetensors`` file is read as a state_dict; a ``mixbench export`` (either format) gives its backbone
    with mixbench's key names. The backbone must match exactly; the head is loaded only when its shape matches
    (a new number of classes keeps the fresh head).
    """
    from mixbench.checkpoint import CHECKPOINT_KIND, load_file, read_checkpoint
    from mixbench.export import EXPORT_KIND, read_export

    path = Path(path)
    if path.suffix == ".safetensors":
        state = read_export(path, "[model].weights").backbone_state()
    else:
        state = load_file(path, "[model].weights")
    if isinstance(state, dict) and state.get("kind") == EXPORT_KIND:  # mixbench export --format pt
        state = read_export(path, "[model].weights").backbone_state()
    elif isinstance(state, dict) and (state.get("kind") == CHECKPOINT_KIND or state.get("version") == 1):
        ckpt = read_checkpoint(path, "[model].weights")  # a mixbench run's checkpoint: its encoder and head
        head = {k: v for k, v in ckpt.classifier_state().items() if k.startswith("head.")}
        state = {**{f"backbone.{k}": v for k, v in ckpt.backbone_state().items()}, **head}
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):  # another tool's {"model": ...}
        state = state["model"]
    if not isinstance(state, dict):
        raise UserError(f"[model].weights: {path} does not hold a state_dict")
    if any(k.startswith("backbone.") for k in state):
        backbone_state = {k[9:]: v for k, v in state.items() if k.startswith("backbone.")}
        head_state = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
    else:
        backbone_state, head_state = state, {}
    own = model.backbone.state_dict()
    missing = sorted(set(own) - set(backbone_state))
    unexpected = sorted(set(backbone_state) - set(own))
    wrong = sorted(k for k in set(own) & set(backbone_state) if own[k].shape != backbone_state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}" for label, keys in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise UserError(f"[model].weights: {path} does not fit this backbone ({detail})")
    model.backbone.load_state_dict(backbone_state)
    own_head = model.head.state_dict()
    if head_state and all(k in head_state and head_state[k].shape == v.shape for k, v in own_head.items()):
        model.head.load_state_dict(head_state)


__all__ = ["MODELS", "Backbone", "Classifier", "build_model", "build_backbone", "load_weights", "num_stages",
           "feature_side", "model_problem", "STAGE_STRIDES"]
