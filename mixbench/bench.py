"""``mixbench bench mixers``: each mixer's time per batch beside one training step of a backbone.

All measurements run in one process on one device with the same random batch: first one SGD
training step of the backbone (forward, backward, update) at the batch size, then every mixer's
call on that batch. Overhead = mixer time / training-step time. Targets (issue 3): every static
mixer ≤ 3 % of a ResNet-18 CIFAR step at batch 256, puzzlemix ≤ 50 %.
"""

from __future__ import annotations

import platform
from typing import Any

import torch
import torch.nn.functional as F

from mixbench.mixing import MIXERS, MixRNG, build_mixer
from mixbench.mixing.cost import time_ms
from mixbench.models import build_model
from mixbench.results.records import device_name

# static mixers: 3 % of a step; the mixers that run the network themselves: 50 %
TARGET_PCT = {"puzzlemix": 50.0, "attentivemix": 50.0}


def target_pct(name: str) -> float:
    return TARGET_PCT.get(name, 3.0)


def bench_mixers(device: torch.device, *, batch: int = 256, backbone: str = "resnet18_cifar",
                 width: float = 1.0, image_size: int = 32, num_classes: int = 100,
                 names: list[str] | None = None, repeats: int = 5, progress=None) -> dict[str, Any]:
    """Measure and return the result record (see the module docstring)."""
    torch.manual_seed(0)
    model = build_model(backbone, num_classes, width=width, image_size=image_size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)

    def train_step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    step_ms = time_ms(train_step, device, repeats=repeats)
    rows = []
    for name in names or [e.name for e in MIXERS if e.name != "switch"]:
        if progress:
            progress(name)
        mixer = build_mixer(name, {}, model=model, device=device)
        rng = MixRNG(0, device)
        ms = time_ms(lambda m=mixer, r=rng: m(x, y, r), device, repeats=repeats)
        pct = 100.0 * ms / step_ms
        rows.append({"mixer": name, "ms_per_batch": ms, "overhead_pct": pct, "target_pct": target_pct(name),
                     "within_target": pct <= target_pct(name)})
    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "batch": batch, "backbone": backbone, "width": width,
            "image_size": image_size, "num_classes": num_classes, "repeats": repeats,
            "train_step_ms": step_ms, "mixers": rows}


def format_table(result: dict[str, Any]) -> str:
    from tabulate import tabulate

    rows = [[r["mixer"], f"{r['ms_per_batch']:.2f}", f"{r['overhead_pct']:.2f}", f"{r['target_pct']:g}",
             "yes" if r["within_target"] else "NO"] for r in result["mixers"]]
    head = (f"{result['backbone']} (width {result['width']:g}) training step at batch {result['batch']}: "
            f"{result['train_step_ms']:.1f} ms on {result['device']}")
    return head + "\n" + tabulate(rows, headers=["mixer", "ms/batch", "% of step", "target %", "within"])
