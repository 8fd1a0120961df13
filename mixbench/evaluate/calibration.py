"""Calibration of a classifier on the clean test set: ECE, MCE, NLL and a reliability diagram.

With confidence c_i = max_k softmax(z_i)_k (float32), bins B_b = (b/15, (b+1)/15] for b = 0..14, acc_b / conf_b
the mean correctness / confidence of the n_b images in B_b and N = Σ_b n_b:
ECE = 100·Σ_b (n_b/N)·|acc_b − conf_b|,  MCE = 100·max_{b: n_b>0} |acc_b − conf_b|,  NLL = −(1/N)·Σ_i log p_i(y_i).

``reliability.png`` also carries the per-bin sums it was drawn from, as JSON in a PNG text chunk named
:data:`RELIABILITY_KEY` (:func:`reliability_record`), so ``mixbench plot --kind reliability`` redraws it
from the numbers; a PNG text chunk keeps the run folder's file list as it was.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo
from torch import nn

from mixbench.engine.distributed import all_reduce_sum
from mixbench.evaluate.base import EVALUATORS, EvalContext, Evaluator, reported_classifier
from mixbench.mixing.features import eval_mode
from mixbench.results.atomic import atomic_write_bytes

N_BINS = 15
RELIABILITY_KEY = "mixbench-reliability"  # PNG text chunk of reliability.png with the per-bin sums (JSON)
RELIABILITY_SCHEMA = 1


@dataclass(frozen=True)
class CalibrationStats:
    """Per-bin sums (host values, summed over processes) from which every calibration metric follows.

    ``count[b]``, ``confidence[b]``, ``correct[b]``: number of images, summed confidence and number of correct
    predictions in bin ``b`` = (b/n_bins, (b+1)/n_bins]; ``nll_sum``: summed cross-entropy; ``n``: images.
    """

    count: tuple[float, ...]
    confidence: tuple[float, ...]
    correct: tuple[float, ...]
    nll_sum: float
    n: int

    @property
    def n_bins(self) -> int:
        return len(self.count)

    def gaps(self) -> list[float | None]:
        """|acc_b − conf_b| per bin (a fraction), None for an empty bin."""
        rows = zip(self.count, self.confidence, self.correct, strict=True)
        return [abs(k - c) / n if n else None for n, c, k in rows]

    def bin_accuracy(self) -> list[float | None]:
        """acc_b per bin (a fraction), None for an empty bin."""
        return [k / n if n else None for n, k in zip(self.count, self.correct, strict=True)]

    @property
    def ece(self) -> float:
        """Expected calibration error (%); 0 when no image was seen."""
        return 100.0 * sum(abs(k - c) for c, k in zip(self.confidence, self.correct, strict=True)) / max(self.n, 1)

    @property
    def mce(self) -> float:
        """Maximum calibration error (%) over the non-empty bins; 0 when no image was seen."""
        return 100.0 * max((g for g in self.gaps() if g is not None), default=0.0)

    @property
    def nll(self) -> float:
        """Mean cross-entropy (nats); 0 when no image was seen."""
        return self.nll_sum / max(self.n, 1)

    def metrics(self) -> dict[str, float]:
        return {"ece": self.ece, "mce": self.mce, "nll": self.nll}


def _batch_sums(logits: torch.Tensor, y: torch.Tensor, n_bins: int) -> torch.Tensor:
    """[3·n_bins + 2] float64 on the logits' device: per-bin (count, confidence, correct), NLL sum, images."""
    logits = logits.float()
    conf, pred = logits.softmax(dim=1).max(dim=1)
    index = (conf * n_bins).ceil().long().clamp_(1, n_bins) - 1  # (b/n, (b+1)/n] -> b
    onehot = F.one_hot(index, n_bins).double()  # [B, n_bins]; a matmul keeps the sums deterministic on GPUs
    values = torch.stack([torch.ones_like(conf), conf, (pred == y).float()], dim=1).double()  # [B, 3]
    per_bin = onehot.T @ values  # [n_bins, 3]
    nll = F.cross_entropy(logits, y, reduction="none").double().sum()
    return torch.cat([per_bin.T.reshape(-1), nll.view(1), nll.new_tensor([float(y.shape[0])])])


@torch.no_grad()
def calibration_counts(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], ctx: EvalContext,
                       n_bins: int = N_BINS) -> CalibrationStats:
    """One pass of ``model`` (eval mode) over ``loader`` (this process's shard), summed over processes.

    Everything is accumulated on ``ctx.device`` in one packed float64 tensor, all-reduced once and read to the
    host once.
    """
    sums = torch.zeros(3 * n_bins + 2, device=ctx.device, dtype=torch.float64)
    with eval_mode(model):
        for x, y in loader:
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            with ctx.autocast():
                logits = model(x)
            sums += _batch_sums(logits, y, n_bins)
    host = all_reduce_sum(sums, ctx.dist).cpu().tolist()
    count, conf, correct = (tuple(host[i * n_bins:(i + 1) * n_bins]) for i in range(3))
    return CalibrationStats(count, conf, correct, host[3 * n_bins], int(round(host[3 * n_bins + 1])))


@EVALUATORS.register("calibration")
class Calibration(Evaluator):
    """ECE / MCE (%) and NLL of the method's first classifier on the clean test set."""

    name = "calibration"
    protocol = "15 equal-width confidence bins, max softmax probability, clean test set"

    def __call__(self, method: Any, data: Any, ctx: EvalContext) -> dict[str, float]:
        model = reported_classifier(method)
        return calibration_counts(model, data, ctx).metrics()


SIZE, LEFT, RIGHT, TOP, BOTTOM = 300, 40, 12, 46, 36


def render_reliability(stats: CalibrationStats, title: str) -> Image.Image:
    """The reliability diagram as a SIZE x SIZE RGB image."""
    img = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = LEFT, TOP, SIZE - RIGHT, SIZE - BOTTOM  # plot area; y grows downwards
    w, h = x1 - x0, y1 - y0

    def px(u: float, v: float) -> tuple[float, float]:
        return x0 + u * w, y1 - v * h

    most = max(stats.count, default=0) or 1
    for b, (n, acc) in enumerate(zip(stats.count, stats.bin_accuracy(), strict=True)):
        left, right = px(b / stats.n_bins, 0)[0], px((b + 1) / stats.n_bins, 0)[0]
        if n:  # faint histogram of the bin counts, scaled to the fullest bin
            draw.rectangle([left, px(0, n / most)[1], right, y1], fill=(225, 225, 235))
        if acc is not None and acc > 0:
            draw.rectangle([left, px(0, acc)[1], right, y1], fill=(70, 110, 200), outline=(30, 50, 120))
    draw.line([px(0, 0), px(1, 1)], fill=(200, 40, 40), width=2)  # perfect calibration
    draw.rectangle([x0, y0, x1, y1], outline="black")
    for t in (0.0, 0.5, 1.0):
        u, v = px(t, t)
        draw.line([(u, y1), (u, y1 + 3)], fill="black")
        draw.text((u - 8, y1 + 5), f"{t:.1f}", fill="black")
        draw.line([(x0 - 3, v), (x0, v)], fill="black")
        draw.text((x0 - 24, v - 5), f"{t:.1f}", fill="black")
    draw.text((x0 + w / 2 - 28, SIZE - 16), "confidence", fill="black")
    draw.text((2, y0 - 14), "accuracy", fill="black")
    draw.text((4, 3), title[:48], fill="black")
    draw.text((4, 16), f"ECE {stats.ece:.2f}%  MCE {stats.mce:.2f}%  N={stats.n}", fill="black")
    return img


def reliability_diagram(stats: CalibrationStats, path: Path, title: str) -> Path:
    """Write the reliability diagram (accuracy per bin against the diagonal, counts as a faint histogram,
    ECE in the title) as a PNG at ``path``, atomically (temporary file in the same folder, fsync, then
    ``os.replace``: :func:`mixbench.results.atomic.atomic_write_bytes`); parent folders are created.
    Returns ``path``."""
    path = Path(path)
    buf = io.BytesIO()
    info = PngInfo()
    info.add_text(RELIABILITY_KEY, json.dumps(reliability_record(stats, title)))
    render_reliability(stats, title).save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buf.getvalue())
    return path


def reliability_record(stats: CalibrationStats, title: str) -> dict[str, Any]:
    """What ``reliability.png`` stores in its :data:`RELIABILITY_KEY` text chunk: per-bin image counts, summed
    confidences and correct predictions (bin b = (b/n_bins, (b+1)/n_bins]), the NLL sum, the images, ECE / MCE (%)
    and the title; floats as JSON writes them (exact round trip)."""
    return {"schema": RELIABILITY_SCHEMA, "n_bins": stats.n_bins, "count": list(stats.count),
            "confidence_sum": list(stats.confidence), "correct_sum": list(stats.correct), "nll_sum": stats.nll_sum,
            "n": stats.n, "ece": stats.ece, "mce": stats.mce, "title": title}


__all__ = ["N_BINS", "RELIABILITY_KEY", "CalibrationStats", "reliability_record", "calibration_counts", "Calibration",
           "render_reliability", "reliability_diagram"]
