"""MoCo v2+ (Chen, Fan, Girshick & He 2020; solo-learn's ``mocov2plus``): a momentum encoder and queues of keys.

q_v = ĥ(f(x_v)) online, k_v = ĥ_m(f_m(x_v)) momentum (no grad), all L2-normalised; with Q_v the queue of
past keys of view v, NCE(q, k, Q) = −log exp(q·k/T) / (exp(q·k/T) + Σ_{n∈Q} exp(q·n/T)), and
L = [NCE(q_1, k_2, Q_2) + NCE(q_2, k_1, Q_1)] / 2; then every process's k_v joins Q_v (FIFO) and
θ_m ← τ θ_m + (1 − τ) θ, τ from ``momentum`` to ``momentum_end`` on a cosine.

Defaults are solo-learn's CIFAR settings (``scripts/pretrain/cifar/mocov2plus.yaml``): projector
2048 → 256 (Linear-ReLU-Linear, no BatchNorm), T = 0.2, queues of 32,768 keys (MoCo v2's ImageNet paper
uses 65,536; solo-learn's CIFAR file 32,768, which is also 0.66 of CIFAR's 50,000 images), τ 0.99 → 0.999,
online classifier lr 0.3, and its "symmetric_weak" views: the symmetric preset with colour jitter
(0.4, 0.4, 0.4, 0.1). Queues: one per view, ``queue`` [2, K, d] and ``queue_ptr`` [1] (buffers, so the
state dict holds them and a resumed run continues exactly), initialised to random unit vectors; keys
are enqueued after the optimiser step (:meth:`MoCoV2.on_step_end`) with device-side index arithmetic
(no host sync), so the loss never reads a queue that changed under autograd.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.engine.momentum import MomentumTeacher
from mixbench.losses.ssl import gather_rows, similarity_logits
from mixbench.methods.base import METHODS, MethodContext
from mixbench.methods.ssl.base import SSL_PARAMS, SelfSupervised
from mixbench.methods.ssl.mocov3 import Projected
from mixbench.models.heads import MLPHead
from mixbench.params import Param

# solo-learn's symmetric_weak.yaml: the symmetric views with weaker colour jitter
WEAK_JITTER = {"all": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}}

MOCOV2_PARAMS: dict[str, Param] = {
    **SSL_PARAMS,
    "views": Param("str", "symmetric", "view augmentation preset (solo-learn's CIFAR views)",
                   choices=("asymmetric", "symmetric")),
    "view_overrides": Param("table", WEAK_JITTER, "per-view changes to the preset (default: solo-learn's "
                            "symmetric_weak, colour jitter 0.4, 0.4, 0.4, 0.1; a recipe's table replaces it)"),
    "classifier_lr": Param("float", 0.3, "fixed lr of the online linear classifier on detached features",
                           low=0, low_open=True),
    "proj_hidden": Param("int", 2048, "projector hidden width", low=1),
    "proj_out": Param("int", 256, "projector output (key) width", low=1),
    "temperature": Param("float", 0.2, "NCE temperature T", low=0, low_open=True),
    "queue_size": Param("int", 32768, "keys per view queue (negatives per query)", low=1, high=2**24),
    "momentum": Param("float", 0.99, "momentum-encoder τ at the start", low=0, high=1),
    "momentum_end": Param("float", 0.999, "τ at the end (cosine schedule)", low=0, high=1),
}


def queue_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """mean_i −log softmax([q̂_i·k̂_i, q̂_i·Q_1, ..., q̂_i·Q_K] / T)_0: MoCo's loss, positive first (float32).

    ``q`` [b, d] with graph, ``k`` [b, d] and ``queue`` [K, d] without; the batch's other keys are not negatives.
    """
    pos = (F.normalize(q.float(), dim=1) * F.normalize(k.float(), dim=1)).sum(1, keepdim=True) / temperature
    logits = torch.cat([pos, similarity_logits(q, queue, temperature)], dim=1)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """FIFO: write ``keys`` [V, B, d] into ``queue`` [V, K, d] at rows (ptr + j) mod K; ptr ← (ptr + B) mod K.

    With B > K only the last K keys are kept. Device-side: ``ptr`` is a long tensor [1], never read on the host.
    """
    size, batch = queue.shape[1], keys.shape[1]
    n = min(batch, size)
    rows = (ptr + (batch - n) + torch.arange(n, device=queue.device)) % size
    queue.index_copy_(1, rows, keys[:, batch - n:].to(queue.dtype))
    ptr.copy_((ptr + batch) % size)


@METHODS.register("mocov2", doc="MoCo v2+: momentum encoder + queues of negatives, symmetric loss (self-supervised)")
class MoCoV2(SelfSupervised):
    """MoCo v2+ (see the module docstring)."""

    params: ClassVar[dict[str, Param]] = MOCOV2_PARAMS
    differs: ClassVar[str] = ("no shuffling BN (solo-learn's CIFAR code has none either); keys join the queues "
                              "after the optimiser step instead of before the backward pass (the same keys, "
                              "the same order)")
    queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        projector = MLPHead(self.feature_dim, self.proj_hidden, self.proj_out, layers=2, hidden_norm=False)
        self.online = Projected(self.backbone, projector)
        self.momentum_encoder = MomentumTeacher(self.online, self.momentum, self.momentum_end,
                                                total_steps=ctx.total_steps, copy_buffers=False, train_mode=True)
        self.register_buffer("queue", F.normalize(torch.randn(2, self.queue_size, self.proj_out), dim=2))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._pending: torch.Tensor | None = None  # this step's gathered keys [2, B, d], enqueued after the step
        # every process enqueues the same gathered keys: DDP need not broadcast 2·K·d floats from rank 0 each step
        self._ddp_params_and_buffers_to_ignore = ["queue", "queue_ptr"]
        self.to(ctx.device)


    def ssl_modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "projector": self.online.projector}

    def ssl_loss(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor) -> dict[str, torch.Tensor]:
        z1 = self.online.projector(feats0)
        z2 = self.online(views[1])
        with torch.no_grad():
            k1, k2 = self.momentum_encoder(views[0]), self.momentum_encoder(views[1])
        loss = (queue_nce(z1, k2, self.queue[1], self.temperature)
                + queue_nce(z2, k1, self.queue[0], self.temperature)) / 2
        keys = torch.stack([F.normalize(gather_rows(k.detach().float())[0], dim=1) for k in (k1, k2)])
        self._pending = keys
        return {"loss": loss, "embedding": z1}

    def on_step_end(self, step: int) -> None:
        self.momentum_encoder.update(self.online, step)
        if self._pending is not None:
            enqueue(self.queue, self.queue_ptr, self._pending)
            self._pending = None


__all__ = ["MoCoV2", "MOCOV2_PARAMS", "queue_nce", "enqueue"]
