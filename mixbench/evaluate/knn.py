"""Weighted k-nearest-neighbour accuracy of frozen features (InstDisc / solo-learn / lightly protocol).

For a test feature f and training features g_j with labels y_j, s_j = f̂·ĝ_j (cosine, L2-normalised)
or s_j = −‖f − g_j‖ (euclidean); over the k most similar j (N_k), class c scores
Σ_{j∈N_k} exp(s_j / T)·[y_j = c] and the prediction is the top-scoring class.
Defaults: k ∈ {20, 200}, T ∈ {0.07, 0.1} (solo-learn k=20, T=0.07; InstDisc/lightly k=200, T=0.1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mixbench.evaluate.base import EVALUATORS, EvalContext, Evaluator
from mixbench.evaluate.features import FEATURES_PROTOCOL, EvalData, extract_features

DEFAULT_KS = (20, 200)
DEFAULT_TEMPERATURES = (0.07, 0.1)
DISTANCES = ("cosine", "euclidean")


@torch.no_grad()
def knn_predict(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, *, ks: list[int],
                temperatures: list[float], distance: str = "cosine", num_classes: int,
                chunk: int = 256) -> dict[tuple[int, float], torch.Tensor]:
    """Predicted labels (int64 [M], on the features' device) of every test feature for every (k, T).

    One similarity pass per chunk of ``chunk`` test rows and one top-max(k) selection serve every pair;
    votes Σ_{first k} exp(s/T)·onehot(y). Euclidean uses the same exp(s/T) weights with s = −‖f − g‖
    (solo-learn weights euclidean neighbours by 1/(d + ε) instead). The weights are computed as
    exp((s − s_max)/T), the same vote up to a positive per-row factor, so they never underflow to all zeros.
    k larger than the training set uses every training feature.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if not ks or not temperatures or min(ks) < 1 or min(temperatures) <= 0:
        raise ValueError("ks must be positive integers and temperatures positive numbers")
    n = train_f.shape[0]
    kmax = min(max(ks), n)
    train_f, test_f = train_f.float(), test_f.float()
    if distance == "cosine":
        train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    train_y = train_y.to(train_f.device)
    out: dict[tuple[int, float], list[torch.Tensor]] = {(k, t): [] for k in ks for t in temperatures}
    for start in range(0, test_f.shape[0], chunk):
        q = test_f[start:start + chunk]
        sim = q @ train_f.T if distance == "cosine" else -torch.cdist(q, train_f)
        top_sim, top_idx = sim.topk(kmax, dim=1)  # sorted, most similar first
        top_y = train_y[top_idx]
        shifted = top_sim - top_sim[:, :1]  # ≤ 0
        for t in temperatures:
            w = (shifted / t).exp()
            for k in ks:
                kk = min(k, kmax)
                votes = torch.zeros(q.shape[0], num_classes, device=q.device, dtype=w.dtype)
                votes.scatter_add_(1, top_y[:, :kk], w[:, :kk])
                out[(k, t)].append(votes.argmax(1))
    return {key: torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64, device=test_f.device)
            for key, parts in out.items()}


def metric_key(k: int, t: float) -> str:
    """``knn_top1@k=20,T=0.07``."""
    return f"knn_top1@k={k},T={t:g}"


@EVALUATORS.register("knn")
class KNNAccuracy(Evaluator):
    """Weighted kNN top-1 (%) of the frozen encoder's pooled features, for every (k, T) pair.

    Metrics: ``knn_top1@k=K,T=T`` per pair, and ``knn_top1`` = the first k with the first T (default k=20, T=0.07).
    """

    name = "knn"
    protocol = "weighted kNN top-1, k=[20, 200], T=[0.07, 0.1], cosine; features: " + FEATURES_PROTOCOL

    def __init__(self, ks: list[int] | tuple[int, ...] = DEFAULT_KS,
                 temperatures: list[float] | tuple[float, ...] = DEFAULT_TEMPERATURES, distance: str = "cosine",
                 batch: int = 500, chunk: int = 256):
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.ks, self.temperatures = [int(k) for k in ks], [float(t) for t in temperatures]
        self.distance, self.batch, self.chunk = distance, batch, chunk
        self.protocol = (f"weighted kNN top-1, k={self.ks}, T={self.temperatures}, {distance}; "  # type: ignore[misc]
                         f"features: {FEATURES_PROTOCOL}")

    def settings(self) -> dict[str, Any]:
        """Every setting that changes the metrics (the stored protocol, less the data)."""
        return {"k": self.ks, "T": self.temperatures, "distance": self.distance, "features": FEATURES_PROTOCOL,
                "weights": "exp((s - s_max)/T)", "similarity": "cosine of L2-normalised features"
                if self.distance == "cosine" else "-euclidean distance"}

    def metrics(self, train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                num_classes: int) -> dict[str, float]:
        """Top-1 (%) per (k, T) from features already extracted (one host sync)."""
        preds = knn_predict(train_f, train_y, test_f, ks=self.ks, temperatures=self.temperatures,
                            distance=self.distance, num_classes=num_classes, chunk=self.chunk)
        test_y = test_y.to(test_f.device)
        keys = list(preds)
        hits = torch.stack([(preds[key] == test_y).sum() for key in keys]).cpu().tolist()
        n = max(int(test_y.shape[0]), 1)
        out = {metric_key(k, t): 100.0 * h / n for (k, t), h in zip(keys, hits, strict=True)}
        return {"knn_top1": out[metric_key(self.ks[0], self.temperatures[0])], **out}

    def __call__(self, method: Any, data: EvalData, ctx: EvalContext) -> dict[str, float]:
        """``method``: a Method (its ``encoder()``) or a backbone; ``data``: :class:`EvalData`."""
        backbone = method.encoder() if hasattr(method, "encoder") else method
        kw = {"batch": self.batch, "device": ctx.device}
        train_f = extract_features(backbone, data.train_x, data.mean, data.std, **kw)
        test_f = extract_features(backbone, data.test_x, data.mean, data.std, **kw)
        return self.metrics(train_f, data.train_y, test_f, data.test_y, len(data.classes))


__all__ = ["KNNAccuracy", "knn_predict", "metric_key", "DEFAULT_KS", "DEFAULT_TEMPERATURES", "DISTANCES"]
