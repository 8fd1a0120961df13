"""Throughput of the self-supervised view augmentation (``mixbench.data.views.make_views``).

Per step: one uint8 batch [B, 3, S, S] held on the device, both views of a preset made from it
(its own draws per view, as ``ViewsLoader`` does), normalisation excluded. Reports images/s, where an
image is one source image with all of its views made (view-images/s = that × views). Run:

    python benchmarks/views_cpu.py                                    # asymmetric, batch 256, 32 px, CPU
    python benchmarks/views_cpu.py --preset symmetric --device cuda --steps 50
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from mixbench.data.views import PRESETS, make_views, resolve_views


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="asymmetric", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--views", type=int, default=2, help="views per image (> 2: multi-crop local views)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    specs = resolve_views(args.preset, n_views=args.views)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0)).to(device)
    for _ in range(args.warmup):
        for s in specs:
            make_views(x, s, gen)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        for s in specs:
            make_views(x, s, gen)
    sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    row = {"preset": args.preset, "views": len(specs), "batch": args.batch, "size": args.size,
           "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "step_ms": round(1000 * dt, 2),
           "images_per_s": round(args.batch / dt), "view_images_per_s": round(args.batch * len(specs) / dt)}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
