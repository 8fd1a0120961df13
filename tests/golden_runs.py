"""Golden runs: tiny deterministic CPU trainings whose numbers must not move when the engine is reworked.

Each run trains shapes for 2 epochs with a tiny ResNet-18 and records every epoch's metrics
(times left out) and a SHA-256 of each trained module's final weights. ``python -m tests.golden_runs``
rewrites ``tests/golden/golden.json``; ``tests/test_golden.py`` reruns them and compares.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

GOLDEN_FILE = Path(__file__).resolve().parent / "golden" / "golden.json"
TIMING_KEYS = {"epoch_seconds", "images_per_s", "eval_seconds", "wall_time_s",
               "cpu_seconds", "threads"}  # machine facts, not training numbers

BASE = """
name = "{name}"
seed = 3
[data]
source = "shapes"
train_size = 200
test_size = 100
cache_dir = "{cache}"
{data}
[model]
name = "resnet18_cifar"
width = 0.125
[method]
name = "{method}"
{method_extra}
[loss]
name = "{loss}"
[train]
epochs = 2
batch_size = {batch}
lr = 0.05
deterministic = true
log_every = 100
{train}
[eval]
batch_size = 50
"""

SEMI = "labels_per_class = 3\nunlabeled_ratio = 2"
# name: (method, loss, [data] extra, [method] extra, [train] extra, batch size)
RUNS: dict[str, tuple[str, str, str, str, str, int]] = {
    "vanilla": ("vanilla", "ce", "", "", "", 50),
    "vanilla_ema": ("vanilla", "ce", "", "", "ema = true\nema_decay = 0.9", 50),
    "mixup": ("mixup", "ce", "", "", "", 50),
    "cutmix": ("cutmix", "ce", "", "", "", 50),
    "manifoldmix": ("manifoldmix", "ce", "", "", "", 50),
    "puzzlemix": ("puzzlemix", "ce", "", "", "", 50),
    "automix": ("automix", "ce", "", "", "", 50),
    "samix": ("samix", "ce", "", "", "", 50),
    "samixp": ("samixp", "ce", "", 'mixer_checkpoint = "{samix_run}"', "", 50),
    "patchmix": ("patchmix", "ce", "", "origin_weight = 0.5", "", 50),
    "fixmatch": ("fixmatch", "ce", SEMI, "threshold = 0.12", "", 10),
    "dmixmatch": ("dmixmatch", "dm", SEMI, "threshold = 0.12\nmix_threshold = 0.12", "", 10),
    "mixup_dm": ("mixup", "dm", "", "", "", 50),
}


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's tensors in key order (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


# where each version-1 module lives in the version-2 checkpoint's method state
V2_PREFIX = {"model": "model.", "head_one": "head_one.", "mix_block": "mix_block.",
             "momentum_encoder": "momentum_teacher.module.", "teacher": "teacher_ema.module.",
             "head_mix": "head_mix.", "origin_head": "origin_head."}


def trained_modules(run_dir: Path) -> dict[str, str]:
    """Hashes of the trained model and of each extra module, by their version-1 names.

    The golden file was recorded from version-1 checkpoints (``model``, ``extra[name]``, ``ema``);
    version 2 keeps the whole method's state under ``method``, so each module is found by its prefix.
    """
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    state = ckpt["method"]
    out = {}
    for name, prefix in V2_PREFIX.items():
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if name == "model" or sub:
            out[name] = state_hash(sub)
    if ckpt.get("ema") is not None:
        out["ema"] = state_hash({k.removeprefix("module."): v for k, v in ckpt["ema"].items()})
    return out


def run_one(name: str, work: Path, cache: Path, samix_run: Path | None = None) -> dict:
    from mixbench.engine import fit
    from mixbench.recipe import load_recipe

    method, loss, data, method_extra, train, batch = RUNS[name]
    text = BASE.format(name=name, cache=cache, data=data, method=method, loss=loss, batch=batch, train=train,
                       method_extra=method_extra.format(samix_run=samix_run))
    path = work / f"{name}.toml"
    path.write_text(text)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: reductions in one order on every machine
    try:
        result = fit(load_recipe(path), out_root=work / "results", device=torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    metrics = [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in metrics]
    return {"run_dir": str(result.run_dir), "metrics": metrics, "weights": trained_modules(result.run_dir)}


def run_all(work: Path, cache: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in RUNS:
        samix_run = Path(out["samix"]["run_dir"]) if name == "samixp" else None
        out[name] = run_one(name, work, cache, samix_run)
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(Path(tmp), Path(tmp) / "cache")
    for r in results.values():
        r.pop("run_dir")
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN_FILE}", file=sys.stderr)
