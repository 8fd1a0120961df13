"""1 process vs 2 processes (torchrun, gloo) on this machine's CPU: loss curves and images/s.

Trains the same recipe (shapes, ResNet-18 CIFAR, global batch 64) four ways: one process, two
processes, two processes with ``train.sync_bn``, and one process on one thread (the yardstick: how
far float-level differences alone carry the curve), and prints each epoch's train loss beside the
one-process curve with the largest relative difference, and the mean images/s (all processes
together). Run:  python benchmarks/ddp_cpu.py [--width 0.5] [--epochs 2] [--out /tmp/ddp_cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RECIPE = """
name = "ddp_cpu"
seed = 0
[data]
source = "shapes"
train_size = {train}
test_size = 500
[model]
name = "resnet18_cifar"
width = {width}
[method]
name = "vanilla"
[train]
epochs = {epochs}
batch_size = 64
lr = 0.1
log_every = 8
deterministic = true
[eval]
batch_size = 250
"""


def run(recipe: Path, out: Path, nproc: int, sets: list[str], threads: int | None = None) -> Path:
    cmd = [sys.executable, "-m", "mixbench", "run", str(recipe), "--device", "cpu", "--out", str(out),
           "--overwrite", *[a for s in sets for a in ("--set", s)]]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return next((out / "ddp_cpu").iterdir())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train", type=int, default=2048)
    p.add_argument("--out", type=Path, default=Path("/tmp/ddp_cpu"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    recipe = args.out / "ddp_cpu.toml"
    recipe.write_text(RECIPE.format(width=args.width, epochs=args.epochs, train=args.train))
    rows = {}
    for label, nproc, sets, threads in (("1 process", 1, [], None), ("2 processes", 2, [], None),
                                        ("2 processes + sync_bn", 2, ["train.sync_bn=true"], None),
                                        ("1 process, 1 thread", 1, [], 1)):
        folder = args.out / label.replace(" ", "_").replace("+", "p").replace(",", "")
        run_dir = run(recipe, folder, nproc, sets, threads)
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rows[label] = {"loss": [m["train_loss"] for m in lines], "top1": [m["top1"] for m in lines],
                       "images_per_s": sum(m["images_per_s"] for m in lines) / len(lines)}
    base = rows["1 process"]["loss"]
    print(f"shapes {args.train} images, ResNet-18 CIFAR width {args.width}, global batch 64, "
          f"{args.epochs} epochs, CPU ({os.cpu_count()} cores)")
    print(f"{'run':<24} {'img/s':>8} {'max |Δloss|/loss vs 1 process':>32}  loss per epoch; top-1")
    for label, r in rows.items():
        diff = max(abs(a - b) / abs(b) for a, b in zip(r["loss"], base, strict=True))
        print(f"{label:<24} {r['images_per_s']:8.0f} {diff:32.2e}  "
              f"{', '.join(f'{x:.5f}' for x in r['loss'])}; {', '.join(f'{x:.1f}' for x in r['top1'])}")


if __name__ == "__main__":
    main()
