"""Speed benchmarks: ``bench mixers`` (a mixer's call beside a training step) and ``bench methods``.

``bench mixers``: in one process on one device with the same random batch, first one SGD
training step of the backbone (forward, backward, update), then every mixer's call on that batch.
Overhead = mixer time / training-step time. Targets (issue 3): every static mixer ≤ 3 % of a
ResNet-18 CIFAR step at batch 256, puzzlemix ≤ 50 %.

``bench methods``: a whole training step of each method as the engine runs it (``method.step``,
backward, optimiser step, ``on_step_end``) relative to vanilla on the same backbone and batch, and
its peak memory: CUDA's peak allocation on a GPU; on a CPU each method runs in a fresh process
and the number is that process's peak resident memory. Targets (issue 4, on GPU): AutoMix and
SAMix ≤ 1.8× vanilla, SAMix^P ≤ 1.2×.
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
                 names: list[str] | None = None, repeats: int = 5, progress=None, on_row=None) -> dict[str, Any]:
    """Measure and return the result record (see the module docstring). ``progress(name)`` is called before
    each mixer, ``on_row(row)`` with each mixer's row as soon as it is measured (a row carries the training
    step's time as ``train_step_ms`` there only, for a caller that records rows as they come)."""
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
        if on_row:
            on_row(rows[-1] | {"train_step_ms": step_ms})
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


METHOD_TARGETS = {"automix": 1.8, "samix": 1.8, "samixp": 1.2}


def _method_step_cost(name: str, device_name_: str, batch: int, backbone: str, width: float, image_size: int,
                      num_classes: int, repeats: int, mixer_file: str | None) -> dict[str, Any]:
    """Time one method's full training step; runs in a child process on CPU (clean peak RSS)."""
    import resource

    from mixbench.losses import LOSSES
    from mixbench.methods import METHODS, MethodContext, build_method

    device = torch.device(device_name_)
    torch.manual_seed(0)
    model = build_model(backbone, num_classes, width=width, image_size=image_size).to(device)
    ctx = MethodContext(model=model, loss=LOSSES.get("ce")(), num_classes=num_classes, device=device,
                        rng=MixRNG(0, device), epochs=1, steps_per_epoch=1000,
                        model_spec={"name": backbone, "width": width, "image_size": image_size})
    params = {k: p.default for k, p in METHODS.entry(name).params.items()}
    if name == "samixp":
        params["mixer_checkpoint"] = mixer_file
    method = build_method(name, params, ctx)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    state = {"step": 0}

    def train_step() -> None:
        method.global_step = state["step"]
        loss = method((x, y))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["step"] += 1
        method.on_step_end(state["step"])

    method.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ms = time_ms(train_step, device, repeats=repeats)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": name, "step_ms": ms, "peak_memory_mb": peak}


def bench_methods(device: torch.device, *, batch: int = 100, backbone: str = "resnet18_cifar", width: float = 1.0,
                  image_size: int = 32, num_classes: int = 100, names: list[str] | None = None,
                  repeats: int = 5, progress=None, on_row=None) -> dict[str, Any]:
    """Step time and peak memory of each method relative to vanilla (see the module docstring).
    ``progress(name)`` is called before each method, ``on_row(row)`` with each method's row (step_ms,
    peak_memory_mb; vanilla's comes first) as soon as it is measured."""
    import concurrent.futures
    import multiprocessing
    import tempfile
    from pathlib import Path

    from mixbench.losses import LOSSES
    from mixbench.methods import MethodContext, build_method

    names = names or ["vanilla", "mixup", "automix", "samix", "samixp"]
    names = ["vanilla", *[n for n in names if n != "vanilla"]]
    with tempfile.TemporaryDirectory() as tmp:
        mixer_file = None
        if "samixp" in names:  # an (untrained) SAMix Mixer of this backbone: same cost as a trained one
            model = build_model(backbone, num_classes, width=width, image_size=image_size)
            ctx = MethodContext(model=model, loss=LOSSES.get("ce")(), num_classes=num_classes,
                                device=torch.device("cpu"), rng=MixRNG(0, torch.device("cpu")), epochs=1,
                                steps_per_epoch=1, model_spec={"name": backbone, "width": width,
                                                               "image_size": image_size})
            samix = build_method("samix", {}, ctx)
            mixer_file = str(Path(tmp) / "mixer.pt")
            torch.save(samix.export()["mixer.pt"], mixer_file)
        rows = []
        args = (str(device), batch, backbone, width, image_size, num_classes, repeats, mixer_file)
        for name in names:
            if progress:
                progress(name)
            if device.type == "cpu":  # a fresh process per method: its peak RSS is this method's alone
                ctx_mp = multiprocessing.get_context("spawn")
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx_mp) as pool:
                    rows.append(pool.submit(_method_step_cost, name, *args).result())
            else:
                rows.append(_method_step_cost(name, *args))
            if on_row:
                on_row(dict(rows[-1]))
    base = rows[0]["step_ms"]
    for r in rows:
        r["x_vanilla"] = r["step_ms"] / base
        r["target_x"] = METHOD_TARGETS.get(r["method"])
    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "batch": batch, "backbone": backbone, "width": width,
            "image_size": image_size, "num_classes": num_classes, "repeats": repeats,
            "memory": "CUDA peak allocated" if device.type == "cuda" else "peak RSS of a process per method",
            "methods": rows}


def format_methods_table(result: dict[str, Any]) -> str:
    from tabulate import tabulate

    rows = [[r["method"], f"{r['step_ms']:.1f}", f"{r['x_vanilla']:.2f}",
             "" if r["target_x"] is None else f"{r['target_x']:g}", f"{r['peak_memory_mb']:.0f}"]
            for r in result["methods"]]
    head = (f"{result['backbone']} (width {result['width']:g}) at batch {result['batch']} on {result['device']}; "
            f"memory: {result['memory']}")
    return head + "\n" + tabulate(rows, headers=["method", "ms/step", "x vanilla", "GPU target x", "peak MiB"])
