"""``build_run``: everything one training run needs, assembled once from a :class:`Recipe`.

Data (on the device, in the batch the method declares, this process's slice of every global
batch), the model, the loss, the method (an ``nn.Module`` owning every module it trains or keeps,
wrapped in DistributedDataParallel under torchrun), the optimiser over the method's parameter
groups, the schedule, the gradient scaler, the weight EMA and the random generators. The random
draws happen in a fixed order so that a seed fixes the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mixbench.checkpoint import module_prefix
from mixbench.data import DataConfig, DataInfo, build_loaders
from mixbench.engine.distributed import DistInfo, convert_sync_batchnorm
from mixbench.engine.momentum import MomentumTeacher
from mixbench.engine.optim import LRSchedule, build_optimizer
from mixbench.engine.seeding import seed_everything
from mixbench.errors import UserError
from mixbench.losses import LOSSES
from mixbench.methods import METHODS, Method, MethodContext
from mixbench.mixing.base import MixRNG
from mixbench.models import build_model
from mixbench.recipe import Recipe


@dataclass
class Run:
    """The assembled parts of one training run (see the module docstring)."""

    recipe: Recipe
    device: torch.device
    dist: DistInfo
    info: DataInfo
    train_loader: Any
    test_loader: Any
    method: Method  # the module that owns every trained part
    step_module: nn.Module  # what the loop calls: the method, or DDP around it
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    ema: MomentumTeacher | None  # [train].ema: a weight EMA of the classifier
    loader_gen: torch.Generator
    mix_rng: MixRNG
    model_spec: dict[str, Any]

    @property
    def method_name(self) -> str:
        return self.recipe.method["name"]

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def images_per_step(self) -> int:
        """Images one optimiser step trains on, all processes together."""
        return self.train_loader.images_per_step

    def essentials(self) -> str:
        """One line saying what this run trains, for the first lines of its log (defaults made visible)."""
        r, t, info = self.recipe, self.recipe.train, self.info
        procs = f"; {t['batch_size'] // self.dist.world_size} × {self.dist.world_size} processes" \
            if self.dist.enabled else ""
        return (f"{r.name}: {info.name} ({info.train_len} train / {info.test_len} test images, "
                f"{info.image_size[0]} px, {info.num_classes} classes) · {r.model['name']} width {r.model['width']} · "
                f"{self.method_name} · loss {r.loss['name']} · {t['epochs']} epochs × {self.steps_per_epoch} steps · "
                f"batch {t['batch_size']}{procs} · {t['optimizer']} lr {t['lr']} {t['schedule']} · "
                f"{t['precision']} · {self.device} · seed {r.seed}")

    def checkpoint_header(self) -> dict[str, Any]:
        """What makes ``checkpoint.pt`` self-describing: spec, normalisation, recipe, key prefixes."""
        classifier = self.method.reported_classifier()
        return {"model_spec": dict(self.model_spec),
                "normalization": {"mean": list(self.info.mean), "std": list(self.info.std)},
                "classes": list(self.info.classes), "recipe": self.recipe.to_toml(), "method_name": self.method_name,
                "encoder_prefix": module_prefix(self.method, self.method.encoder()),
                "classifier_prefix": module_prefix(self.method, classifier)}


def check_batch_layout(recipe: Recipe, world_size: int) -> None:
    """The global batch must divide over the processes, into even slices for a mixing method."""
    batch_size = recipe.train["batch_size"]
    per_rank = DistInfo(world_size=world_size).per_device_batch(batch_size)
    if world_size > 1 and METHODS.get(recipe.method["name"]).mixes and per_rank % 2:
        raise UserError(f"[train].batch_size = {batch_size} over {world_size} processes gives {per_rank} images "
                        "per process, an odd number: a mixing method pairs images within each process's batch; "
                        f"use a multiple of {2 * world_size}")


def build_run(recipe: Recipe, device: torch.device, dist: DistInfo) -> Run:
    """Assemble data, model, method, optimiser and schedule for ``recipe`` on ``device``."""
    tcfg = recipe.train
    seed_everything(recipe.seed, tcfg["deterministic"])
    loader_gen = torch.Generator(device=device)
    loader_gen.manual_seed(recipe.seed)  # the same on every rank: one permutation, sliced per rank
    mix_rng = MixRNG(recipe.seed + 1, device, rank=dist.rank)

    method_cls = METHODS.get(recipe.method["name"])
    batch_size = tcfg["batch_size"]
    params = {k: v for k, v in recipe.method.items() if k != "name"}
    check_batch_layout(recipe, dist.world_size)
    train_loader, test_loader, info = build_loaders(
        DataConfig(**recipe.data), device=device, batch_size=batch_size, eval_batch_size=recipe.eval["batch_size"],
        generator=loader_gen, channels_last=tcfg["channels_last"], batch=method_cls.batch_spec(params),
        rank=dist.rank, world_size=dist.world_size)
    if len(train_loader) == 0:
        raise UserError(f"[train].batch_size = {batch_size} is larger than the {info.train_len} training images; "
                        "lower it")

    mcfg = recipe.model
    model = build_model(mcfg["name"], info.num_classes, width=mcfg["width"], image_size=info.image_size[0],
                        weights=mcfg["weights"], zero_init_residual=mcfg["zero_init_residual"],
                        drop_rate=mcfg["drop_rate"], patch_size=mcfg.get("patch_size"))
    model = model.to(device, memory_format=torch.channels_last if tcfg["channels_last"] else torch.preserve_format)
    if tcfg["compile"]:
        model.compile()  # in place: the state dict keeps its keys
    lcfg = dict(recipe.loss)
    loss_fn = LOSSES.get(lcfg.pop("name"))(**lcfg)
    model_spec = {"name": mcfg["name"], "width": mcfg["width"], "image_size": info.image_size[0],
                  "num_classes": info.num_classes, "zero_init_residual": mcfg["zero_init_residual"],
                  "drop_rate": mcfg["drop_rate"], "dataset": recipe.data["source"],
                  "mean": list(info.mean), "std": list(info.std)}
    if mcfg.get("patch_size") is not None:  # a timm ViT's patch side (absent otherwise: older specs stay as they were)
        model_spec["patch_size"] = mcfg["patch_size"]
    ctx = MethodContext(model=model, loss=loss_fn, num_classes=info.num_classes, device=device, rng=mix_rng,
                        epochs=tcfg["epochs"], steps_per_epoch=len(train_loader), model_spec=model_spec)
    method = method_cls(ctx, **params)
    step_module: nn.Module = method
    if dist.enabled:
        if tcfg["sync_bn"]:
            method = convert_sync_batchnorm(method, device)
        step_module = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=method.may_skip_params)
    optimizer = build_optimizer(method.param_groups(), tcfg)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg["precision"] == "fp16")
    ema = MomentumTeacher(method.model, tcfg["ema_decay"]) if tcfg["ema"] else None
    return Run(recipe, device, dist, info, train_loader, test_loader, method, step_module, optimizer,
               LRSchedule(tcfg, len(train_loader)), scaler, ema, loader_gen, mix_rng, model_spec)
