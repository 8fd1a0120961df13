"""The training loop, readable top to bottom.

``fit`` builds data, model, method, optimiser and schedule from a :class:`Recipe`, then for each
epoch: draws an on-device permutation, runs ``method.step`` per batch under autocast, steps the
optimiser, updates the EMA, and evaluates every ``eval.every`` epochs. The host synchronises only
every ``train.log_every`` steps and at epoch ends. Checkpoints are written atomically at epoch
boundaries; ``--resume`` restores every state (weights, optimiser, schedule step, scaler, EMA,
and all random generators) so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixbench.data import DataConfig, build_loaders, build_semisup_loaders
from mixbench.engine.distributed import DistInfo
from mixbench.engine.ema import EMA
from mixbench.engine.optim import LRSchedule, build_optimizer
from mixbench.engine.progress import Reporter, make_reporter
from mixbench.engine.seeding import global_rng_state, seed_everything, set_global_rng_state
from mixbench.errors import DivergedError, UserError
from mixbench.losses import LOSSES
from mixbench.methods import METHODS, MethodContext, build_method
from mixbench.mixing.base import MixRNG
from mixbench.mixing.cost import time_ms
from mixbench.models import build_model
from mixbench.recipe import Recipe
from mixbench.results.atomic import atomic_torch_save
from mixbench.results.records import RunDir, collect_meta, device_name, summarize, utc_now

CHECKPOINT_VERSION = 1


class Interrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM; the CLI exits with code 130."""


@dataclass
class TrainResult:
    status: str  # completed | interrupted (stop_after)
    summary: dict[str, Any]
    run_dir: Path


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; "
                        "use --device cpu or auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"--device '{name}' is not valid; use auto, cpu or cuda")
    return torch.device(name)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, precision: str) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) over ``loader``; one host sync at the end."""
    was_training = model.training
    model.eval()
    correct1 = torch.zeros((), device=device, dtype=torch.int64)
    correct5 = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for x, y in loader:
        with _autocast(device, precision):
            logits = model(x)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == y.unsqueeze(1)
        correct1 += hit[:, 0].sum()
        correct5 += hit.any(1).sum()
        seen += y.shape[0]
    model.train(was_training)
    c = torch.stack([correct1, correct5]).cpu().tolist()
    return 100.0 * c[0] / max(seen, 1), 100.0 * c[1] / max(seen, 1)


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps (no work in the handler)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def fit(
    recipe: Recipe,
    *,
    out_root: Path,
    device: torch.device,
    resume: bool = False,
    overwrite: bool = False,
    command_line: list[str] | None = None,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train ``recipe`` and write its run record below ``out_root``. See the module docstring."""
    dist = DistInfo.from_env()
    tcfg, ecfg = recipe.train, recipe.eval

    RunDir.check(out_root, recipe.name, recipe.run_id(), resume=resume, overwrite=overwrite)
    seed_everything(recipe.seed, tcfg["deterministic"])
    loader_gen = torch.Generator(device=device)
    loader_gen.manual_seed(recipe.seed)
    mix_rng = MixRNG(recipe.seed + 1, device)

    mparams = dict(recipe.method)
    method_name = mparams.pop("name")
    semisup = METHODS.get(method_name).scenario == "semisup"
    loader_kw = {"device": device, "batch_size": dist.per_device_batch(tcfg["batch_size"]),
                 "eval_batch_size": ecfg["batch_size"], "generator": loader_gen,
                 "channels_last": tcfg["channels_last"]}
    if semisup:
        train_loader, test_loader, info = build_semisup_loaders(DataConfig(**recipe.data), **loader_kw)
        images_per_step = tcfg["batch_size"] * (1 + recipe.data["unlabeled_ratio"])
    else:
        train_loader, test_loader, info = build_loaders(DataConfig(**recipe.data), **loader_kw, drop_last=True)
        images_per_step = tcfg["batch_size"]
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise UserError(f"[train].batch_size = {tcfg['batch_size']} is larger than the "
                        f"{info.train_len} training images; lower it")

    mcfg = recipe.model
    model = build_model(mcfg["name"], info.num_classes, width=mcfg["width"],
                        image_size=info.image_size[0], weights=mcfg["weights"],
                        zero_init_residual=mcfg["zero_init_residual"], drop_rate=mcfg["drop_rate"])
    model = model.to(device, memory_format=torch.channels_last if tcfg["channels_last"]
                     else torch.preserve_format)
    run_model = torch.compile(model) if tcfg["compile"] else model

    lcfg = dict(recipe.loss)
    loss_fn = LOSSES.get(lcfg.pop("name"))(**lcfg)
    model_spec = {"name": mcfg["name"], "width": mcfg["width"], "image_size": info.image_size[0],
                  "num_classes": info.num_classes, "dataset": recipe.data["source"],
                  "mean": list(info.mean), "std": list(info.std)}
    ctx = MethodContext(model=run_model, loss=loss_fn, num_classes=info.num_classes, device=device,
                        rng=mix_rng, epochs=tcfg["epochs"], steps_per_epoch=steps_per_epoch,
                        model_spec=model_spec)
    method = build_method(method_name, mparams, ctx)
    optimizer = build_optimizer(method.trainable(), tcfg)
    schedule = LRSchedule(tcfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if tcfg["precision"] == "fp16" else None
    ema = EMA(model, tcfg["ema_decay"]) if tcfg["ema"] else None
    n_params = sum(p.numel() for p in model.parameters())

    run = RunDir.create(out_root, recipe.name, recipe.run_id(), resume=resume, overwrite=overwrite)
    start_epoch, step, prior_wall = 0, 0, 0.0
    if resume:
        ckpt = _load_checkpoint(run.checkpoint_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for name, module in method.extra_modules().items():
            module.load_state_dict(ckpt["extra"][name])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        set_global_rng_state(ckpt["rng"]["global"])
        loader_gen.set_state(ckpt["rng"]["loader"])
        mix_rng.load_state_dict(ckpt["rng"]["mix"])
        start_epoch, step, prior_wall = ckpt["epoch"], ckpt["step"], ckpt["wall_time_s"]
        run.truncate_metrics(start_epoch)
        run.update_meta(status="running", resumed_at_epoch=start_epoch, end_time=None)
    else:
        run.write_recipe(recipe.to_toml())
        meta = collect_meta(command_line or sys.argv, recipe.seed, device)
        meta.update(recipe_name=recipe.name, run_id=recipe.run_id(), method=method_name)
        run.write_meta(meta)

    probe_x, probe_y = _probe_batch(test_loader, tcfg["batch_size"] // dist.world_size)
    mixes = method.mixes
    mixer_ms = None
    if mixes:
        probe_rng = MixRNG(recipe.seed + 7919, device)  # never the training stream
        with _autocast(device, tcfg["precision"]):
            mixer_ms = time_ms(lambda: method.mix_preview(probe_x, probe_y, probe_rng), device,
                               repeats=3, warmup=1)

    def save_mixes(epoch: int) -> None:
        from mixbench.visualize import save_mixes as write_grid

        x, y = probe_x[:8], probe_y[:8]
        mix = method.mix_preview(x, y, MixRNG(recipe.seed + epoch, device))
        write_grid(run.path / "mixes" / f"epoch{epoch:04d}.png", x, mix, info.mean, info.std, info.classes,
                   title=f"{method_name} after epoch {epoch}")

    base = {"schema": 1, "name": recipe.name, "run_id": recipe.run_id(), "method": method_name,
            "dataset": recipe.data["source"], "backbone": mcfg["name"], "loss": recipe.loss["name"],
            "epochs": tcfg["epochs"], "seed": recipe.seed, "device": device_name(device),
            "params": n_params, "mixer_ms_per_step": mixer_ms, "method_settings": method.describe(),
            "labels": info.train_len if semisup else None}

    def finish(status: str, wall: float) -> dict[str, Any]:
        summary = summarize(run.read_metrics(), status=status,
                            base={**base, "status": status, "wall_time_s": wall,
                                  "peak_memory_mb": _peak_memory_mb(device)})
        if mixer_ms is not None and summary.get("images_per_s"):
            step_ms = 1000.0 * images_per_step / summary["images_per_s"]
            summary["mixer_overhead_pct"] = 100.0 * mixer_ms / step_ms
        run.write_summary(summary)
        run.update_meta(status=status, end_time=utc_now())
        return summary

    def save_checkpoint(epoch: int, wall: float) -> None:
        atomic_torch_save(run.checkpoint_path, {
            "version": CHECKPOINT_VERSION, "epoch": epoch, "step": step, "wall_time_s": wall,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": {"step": step}, "scaler": scaler.state_dict() if scaler else None,
            "ema": ema.state_dict() if ema else None,
            "extra": {k: m.state_dict() for k, m in method.extra_modules().items()},
            "rng": {"global": global_rng_state(), "loader": loader_gen.get_state(),
                    "mix": mix_rng.state_dict()},
            "recipe_hash": recipe.config_hash(),
        })
        for file_name, obj in method.export().items():
            atomic_torch_save(run.path / file_name, obj)

    reporter = reporter or make_reporter(dist.is_main)
    epochs, stop_after = tcfg["epochs"], tcfg["stop_after"] or tcfg["epochs"]
    log_every, batch = tcfg["log_every"], images_per_step
    clip_params = [p for g in optimizer.param_groups for p in g["params"]]
    t_run = time.perf_counter()
    wall = prior_wall
    reporter.start(epochs, steps_per_epoch, start_epoch)
    method.begin(step)
    try:
        with _StopFlag() as stop:
            for epoch in range(start_epoch + 1, min(epochs, stop_after) + 1):
                model.train()
                t0 = time.perf_counter()
                loss_sum = torch.zeros((), device=device)
                term_sums: dict[str, torch.Tensor] = {}  # the method's other named scalars, summed on the device
                bad = torch.zeros((), device=device, dtype=torch.bool)
                t_log, s_log = t0, 0
                for i, batch_data in enumerate(train_loader, start=1):
                    lr = schedule.apply(optimizer, step)
                    with _autocast(device, tcfg["precision"]):
                        out = method.step(*batch_data)
                    loss = out["loss"]
                    for key, value in out.items():
                        if key != "loss" and value.dim() == 0:
                            term_sums[key] = term_sums.get(key, 0.0) + value.detach().float()
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        if tcfg["grad_clip"]:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(clip_params, tcfg["grad_clip"])
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        if tcfg["grad_clip"]:
                            torch.nn.utils.clip_grad_norm_(clip_params, tcfg["grad_clip"])
                        optimizer.step()
                    step += 1
                    method.after_step(step)
                    if ema is not None:
                        ema.update(model)
                    loss = loss.detach()
                    loss_sum += loss
                    bad |= ~torch.isfinite(loss)
                    if i % log_every == 0 or i == steps_per_epoch:
                        cur, is_bad = loss.item(), bool(bad)  # the one host sync per log_every steps
                        if is_bad:
                            raise DivergedError(f"non-finite loss in epoch {epoch}, step {i}")
                        now = time.perf_counter()
                        reporter.step(epoch, i, cur, lr, (i - s_log) * batch / max(now - t_log, 1e-9))
                        t_log, s_log = now, i
                    if stop.requested:
                        raise Interrupted
                train_s = time.perf_counter() - t0
                record: dict[str, Any] = {
                    "epoch": epoch, "train_loss": loss_sum.item() / steps_per_epoch, "lr": lr,
                    "top1": None, "top5": None, "epoch_seconds": train_s,
                    "images_per_s": steps_per_epoch * batch / train_s,
                }
                if term_sums:  # epoch means of e.g. mask_rate, pseudo_acc, loss_mixer: one sync per epoch
                    means = (torch.stack(list(term_sums.values())) / steps_per_epoch).tolist()
                    record["terms"] = dict(zip(term_sums, means, strict=True))
                if epoch % ecfg["every"] == 0 or epoch in (epochs, stop_after):
                    t_eval = time.perf_counter()
                    record["top1"], record["top5"] = evaluate(method.eval_model(), test_loader, device,
                                                              tcfg["precision"])
                    if ema is not None and ecfg["ema"]:
                        record["ema_top1"], record["ema_top5"] = evaluate(
                            ema.module, test_loader, device, tcfg["precision"])
                    for head, head_model in method.eval_models().items():
                        record[f"{head}_top1"], record[f"{head}_top5"] = evaluate(
                            head_model, test_loader, device, tcfg["precision"])
                    record["eval_seconds"] = time.perf_counter() - t_eval
                wall = prior_wall + time.perf_counter() - t_run
                record["wall_time_s"] = wall
                run.append_metrics(record)
                if mixes and ecfg["save_mixes"] and epoch % ecfg["save_mixes"] == 0:
                    save_mixes(epoch)
                if epoch % tcfg["checkpoint_every"] == 0 or epoch in (epochs, stop_after):
                    save_checkpoint(epoch, wall)
                reporter.epoch_end(record)
                if stop.requested:
                    raise Interrupted
    except DivergedError:
        reporter.close()
        finish("diverged", prior_wall + time.perf_counter() - t_run)
        raise
    except (Interrupted, KeyboardInterrupt):
        reporter.close()
        finish("interrupted", prior_wall + time.perf_counter() - t_run)
        raise Interrupted from None
    except BaseException:
        reporter.close()
        finish("failed", prior_wall + time.perf_counter() - t_run)
        raise
    reporter.close()
    status = "completed" if stop_after >= epochs else "interrupted"
    summary = finish(status, wall)
    return TrainResult(status, summary, run.path)


def _probe_batch(loader, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first test batch, repeated or cut to ``batch_size``: the fixed input of the mixer's
    cost probe and of the saved mix grids (it draws nothing from the training generators)."""
    x, y = next(iter(loader))
    reps = -(-batch_size // x.shape[0])
    return x.repeat(reps, 1, 1, 1)[:batch_size].contiguous(), y.repeat(reps)[:batch_size]


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no checkpoint to resume from; run without --resume") from None
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"{path}: cannot read the checkpoint ({type(e).__name__}); "
                        "run with --overwrite to start again") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path}: not a mixbench checkpoint of version {CHECKPOINT_VERSION}")
    return ckpt


__all__ = ["fit", "evaluate", "resolve_device", "Interrupted", "TrainResult"]
