"""Self-supervised losses on embeddings: InfoNCE (hard or soft positives), BYOL's regression.

InfoNCE: with q̂, k̂ L2-normalised and P_i(j) = softmax_j(q̂_i·k̂_j / T) over the keys (all processes'
keys under torchrun), L = mean_i Σ_j t_ij (−log P_i(j)), t the one-hot of the positive (or soft targets
summing to one). BYOL: L = mean_i 2 − 2 p̂_i·ẑ_i.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's rows of ``t`` (no gradient), concatenated in rank order, and this rank's first row."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t, 0
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts), dist.get_rank() * t.shape[0]


def similarity_logits(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """q̂ k̂ᵀ / T in float32 (q: [b, d] with graph, k: [n, d]), also under autocast (bf16 logits / T lose digits)."""
    with torch.autocast(q.device.type, enabled=False):
        return F.normalize(q.float(), dim=1) @ F.normalize(k.float(), dim=1).T / temperature


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float, *, gather: bool = True,
             targets: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE of queries ``q`` against keys ``k``: row i's positive is key i (of this process's rows,
    offset into the gathered keys) unless ``targets`` [b, n_keys] gives soft targets summing to one."""
    keys, offset = gather_rows(k) if gather else (k, 0)
    logits = similarity_logits(q, keys, temperature)
    if targets is not None:
        return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 − 2 cos(p, sg(z)), averaged over the batch (BYOL / SimSiam regression)."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=-1)).mean()


__all__ = ["gather_rows", "similarity_logits", "info_nce", "byol_loss"]
