"""The evaluations a recipe asks for at the end of training: ``[eval] after = ["linear", "knn", ...]``.

They run on the finished run, once it is completed and recorded (summary, final status, checkpoint, its lock
released), in one process (rank 0 of a torchrun job, after the process group is gone), each with the default
protocol of the command that runs it by hand: ``linear`` as ``mixbench linear-eval``, ``knn`` as ``mixbench
knn``, the others as ``mixbench evaluate --only NAME``. Results land in ``RUN/evals/<name>-<hash>/`` under the
same protocol hash, so a later command reuses them, and a result already stored is reused here. A failure or a
Ctrl-C in an evaluation leaves the run record as it was; every result stored before it stays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mixbench.evaluate.runner import EVALUATE_NAMES, Encoded, evaluate_checkpoint, open_checkpoint

AFTER_NAMES: tuple[str, ...] = ("linear", "knn", *EVALUATE_NAMES)
# Images per batch: the default --batch of `mixbench evaluate` and `knn`. The corruption protocol names its batch
# (noise draws depend on it), so the same batch is what lets a later command reuse these results.
EVAL_BATCH = 500
HEADLINE = {"linear": "linear_top1", "knn": "knn_top1", "calibration": "ece", "occlusion": "occlusion_auc",
            "fgsm": "fgsm_top1", "corruptions": "mca"}


def _knn(enc: Encoded) -> dict[str, Any]:
    """``mixbench knn RUN`` with its defaults (k 20, 200; T 0.07, 0.1; cosine)."""
    from mixbench.evaluate.knn import KNNAccuracy

    evaluator = KNNAccuracy(batch=EVAL_BATCH)

    def compute() -> dict[str, float]:
        f = enc.features()
        return evaluator.metrics(f["train_f"], f["train_y"], f["test_f"], f["test_y"], int(f["num_classes"]))

    return enc.run("knn", evaluator.settings(), compute)


def _linear(enc: Encoded) -> dict[str, Any]:
    """``mixbench linear-eval RUN`` with its defaults (lrs 0.1, 0.3, 1.0; 100 epochs; batch 256; no augmentation)."""
    from mixbench.evaluate.linear import linear_eval

    return linear_eval(enc)[1]


def evaluate_after(run_dir: Path, names: Sequence[str], *, device: torch.device,
                   say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run evaluators ``names`` (in order, each once) on the run in ``run_dir``; {name: stored result}.

    ``say`` receives one line as each starts and one with its headline metric and where it is stored.
    An unknown name raises ValueError (a recipe's ``[eval].after`` is validated before it trains).
    """
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in AFTER_NAMES]
    if unknown:
        raise ValueError(f"unknown evaluators {unknown}; valid: {', '.join(AFTER_NAMES)}")
    if not names:
        return {}
    enc = open_checkpoint(run_dir, "[eval].after", device=device, sets=[], batch=EVAL_BATCH, force=False)
    robust = evaluate_checkpoint(enc, [n for n in names if n in EVALUATE_NAMES], batch=EVAL_BATCH)
    results: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names, 1):
        say(f"[eval].after {i}/{len(names)}: {name} ...")
        if name == "linear":
            result = _linear(enc)
        elif name == "knn":
            result = _knn(enc)
        else:  # the generator yields in the order of ``names``; it loads the test set and classifier once
            _, result = next(robust)
        results[name] = result
        key = HEADLINE[name]
        value = result["metrics"].get(key)
        shown = f"{key} {value:.4g}" if isinstance(value, (int, float)) else "done"
        how = "stored result reused" if result["reused"] else f"{result['seconds']:.1f} s"
        say(f"[eval].after {i}/{len(names)}: {name}: {shown} ({how}) -> {result['path']}")
    robust.close()
    return results


__all__ = ["AFTER_NAMES", "EVAL_BATCH", "evaluate_after"]
