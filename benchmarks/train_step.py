"""Training-step throughput of a backbone with on-device data: eager vs compiled, fp32 vs bf16.

For each (compile, precision) it times
  full  = the engine's step: on-device batch (permutation, crop, flip, normalise) + mixing +
          forward + backward + optimiser step;
  core  = forward + backward + optimiser step on one fixed batch;
and reports images/s of ``full`` and the share of step time spent outside forward/backward
(``1 − core/full``). Run:  python benchmarks/train_step.py --device cuda --batch 256
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mixbench.data import DataConfig, build_loaders
from mixbench.engine.optim import LRSchedule, build_optimizer
from mixbench.evaluate import EvalContext
from mixbench.losses import MixedCE
from mixbench.methods import MethodContext, build_method
from mixbench.mixing import MixRNG
from mixbench.models import build_model
from mixbench.recipe import TRAIN_SCHEMA


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_supported(device: torch.device) -> bool:
    """Whether a bf16 row is measured on ``device`` (every CPU runs it, slowly where it has no native bf16)."""
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def bench_one(args, device: torch.device, compiled: bool, precision: str) -> dict:
    """One row: ``args`` as :func:`parse_args` returns them (backbone, width, method, batch, images, steps,
    warmup, channels_last are read)."""
    torch.manual_seed(0)
    if device.type == "cuda":  # this row's peak, not the largest of every row so far
        torch.cuda.reset_peak_memory_stats(device)
    gen = torch.Generator(device=device).manual_seed(0)
    train, _, info = build_loaders(
        DataConfig(source="shapes", train_size=args.images, test_size=100, image_size=32),
        device=device, batch_size=args.batch, eval_batch_size=256, generator=gen,
        channels_last=args.channels_last)
    model = build_model(args.backbone, 100, width=args.width).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compiled:
        model.compile()  # in place, as the engine does
    ctx = MethodContext(model=model, loss=MixedCE(), num_classes=100, device=device,
                        rng=MixRNG(0, device), epochs=1, steps_per_epoch=len(train))
    method = build_method(args.method, {}, ctx)
    cfg = {k: p.default for k, p in TRAIN_SCHEMA.items()} | {"epochs": 1}
    opt = build_optimizer(method.param_groups(), cfg)
    sched = LRSchedule(cfg, len(train))
    autocast = EvalContext(device, precision).autocast

    def train_step(x, y, step):
        sched.apply(opt, step)
        method.global_step = step
        with autocast():
            loss = method((x, y))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def batches():
        while True:
            yield from train

    it = batches()
    t_compile = time.perf_counter()
    for s in range(args.warmup):
        x, y = next(it)
        train_step(x, y, s)
    sync(device)
    warm_s = time.perf_counter() - t_compile

    t0 = time.perf_counter()
    for s in range(args.steps):
        x, y = next(it)
        train_step(x, y, s)
    sync(device)
    full = (time.perf_counter() - t0) / args.steps

    x, y = next(it)
    core_method = build_method("vanilla", {}, ctx)
    def core_step():
        with autocast():
            loss = core_method((x, y))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(2):
        core_step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        core_step()
    sync(device)
    core = (time.perf_counter() - t0) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"compiled": compiled, "precision": precision, "step_ms": full * 1e3,
            "images_per_s": args.batch / full, "core_ms": core * 1e3,
            "outside_fwd_bwd_share": max(0.0, 1 - core / full), "warmup_s": warm_s,
            "peak_memory_mb": peak}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default="resnet18_cifar")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--method", default="mixup")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--images", type=int, default=4096, help="images held on the device")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--compile", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    rows = []
    for mode in args.compile:
        for precision in args.precision:
            if precision == "bf16" and not bf16_supported(device):
                continue
            row = bench_one(args, device, mode == "compiled", precision)
            rows.append(row)
            print(f"{args.backbone} batch {args.batch} {mode:8s} {precision}: "
                  f"{row['images_per_s']:9.0f} img/s  step {row['step_ms']:.1f} ms  "
                  f"outside fwd/bwd {100 * row['outside_fwd_bwd_share']:.1f}%  "
                  f"(warm-up {row['warmup_s']:.1f} s)", flush=True)
    hw = hardware_name(device)
    if args.json:
        args.json.write_text(json.dumps({"device": hw, "torch": torch.__version__,
                                         "args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=2))
    print(f"device: {hw}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
