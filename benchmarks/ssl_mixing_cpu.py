"""MoCo v3 against + SDMP, + naive mixing and + SAMix on the CPU (shapes): step cost and a few epochs' accuracy.

Cost: each method is assembled from ``recipes/ssl/shapes_<method>.toml`` exactly as ``mixbench run`` does
(``build_run``: loader, views, heads, LARS); one timed step = forward + backward + optimiser step + momentum update
on view batches drawn in advance (view generation is the same for all four and not timed). The methods are timed
round-robin (``--rounds`` rounds of ``--steps``
steps each, after ``--warmup`` steps), so a busy machine slows all of them alike; a method's step time is the median
over its rounds, img/s = source images per step / step time (each image has two views), and the relative cost is
step time / MoCo v3's step time, both in wall time and in this process's CPU time (``time.process_time``, all
threads), which a machine shared with other processes inflates far less than wall time.
Accuracy: ``mixbench run`` of the same recipes for ``--epochs`` on
``--train-size`` images, reporting the online linear top-1 (the run's top1) and the kNN monitor's top-1.

    python benchmarks/ssl_mixing_cpu.py --out /tmp/ssl_mixing [--epochs 4] [--train-size 2000] [--skip-accuracy]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mixbench.engine.build import build_run
from mixbench.engine.distributed import DistInfo
from mixbench.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("mocov3", "mocov3_sdmp", "mocov3_mix", "mocov3_samix")


def time_steps(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median step time and img/s per method, timed round-robin on pre-drawn batches."""
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    runs, batches = {}, {}
    for name in METHODS:
        sets = [f"data.train_size={args.train_size}", f"data.cache_dir={json.dumps(str(args.out / 'cache'))}"]
        recipe = load_recipe(ROOT / "recipes" / "ssl" / f"shapes_{name}.toml", sets)
        run = build_run(recipe, device, DistInfo())
        it = iter(run.train_loader)
        runs[name] = run
        batches[name] = [next(it) for _ in range(min(len(run.train_loader), args.warmup + args.steps))]

    def step(name: str, batch) -> None:
        run = runs[name]
        out = run.method(batch)
        run.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        run.optimizer.step()
        run.method.on_step_end(run.method.global_step + 1)
        run.method.global_step += 1

    per_round: dict[str, list[float]] = {name: [] for name in METHODS}
    cpu_round: dict[str, list[float]] = {name: [] for name in METHODS}
    for name in METHODS:
        for b in batches[name][:args.warmup]:
            step(name, b)
    for _ in range(args.rounds):
        for name in METHODS:
            timed = batches[name][args.warmup:args.warmup + args.steps]
            t0, c0 = time.perf_counter(), time.process_time()
            for b in timed:
                step(name, b)
            per_round[name].append((time.perf_counter() - t0) / len(timed))
            cpu_round[name].append((time.process_time() - c0) / len(timed))
    wall = {name: statistics.median(t) for name, t in per_round.items()}
    cpu = {name: statistics.median(t) for name, t in cpu_round.items()}
    images = runs["mocov3"].recipe.train["batch_size"]
    return {name: {"step_s": wall[name], "img_per_s": images / wall[name], "relative_cost": wall[name] / wall["mocov3"],
                   "cpu_step_s": cpu[name], "cpu_relative_cost": cpu[name] / cpu["mocov3"],
                   "rounds_s": per_round[name], "cpu_rounds_s": cpu_round[name]} for name in METHODS}


def accuracy(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """``mixbench run`` each shapes recipe; online linear top-1, kNN top-1 and the run's own img/s."""
    out = {}
    for name in METHODS:
        cmd = [sys.executable, "-m", "mixbench", "run", str(ROOT / "recipes" / "ssl" / f"shapes_{name}.toml"),
               "--out", str(args.out / "runs"), "--device", "cpu", "--overwrite",
               "--set", f"train.epochs={args.epochs}", "--set", f"data.train_size={args.train_size}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(cmd, check=True, env=env)
        summary = json.loads(next((args.out / "runs" / f"shapes_{name}").glob("*/summary.json")).read_text())
        rows = [json.loads(line) for line in
                (next((args.out / "runs" / f"shapes_{name}").glob("*/metrics.jsonl")).read_text().splitlines())]
        out[name] = {"top1_last": summary["top1_last"], "knn_top1_last": rows[-1].get("knn_top1"),
                     "run_images_per_s": summary.get("images_per_s"), "wall_time_s": summary.get("wall_time_s")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per method per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (1 on a machine shared with other processes: idle OpenMP threads spin)")
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"torch": torch.__version__, "threads": args.threads, "cost": time_steps(args)}
    for name, r in result["cost"].items():
        print(f"{name:14s} step {r['step_s']:.3f} s  {r['img_per_s']:.1f} img/s  x{r['relative_cost']:.2f}  "
              f"cpu {r['cpu_step_s']:.3f} s  x{r['cpu_relative_cost']:.2f}", flush=True)
    if not args.skip_accuracy:
        result["accuracy"] = accuracy(args)
        for name, r in result["accuracy"].items():
            print(f"{name:14s} online linear top-1 {r['top1_last']:.1f}  kNN top-1 {r['knn_top1_last']}")
    (args.out / "ssl_mixing_cpu.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
