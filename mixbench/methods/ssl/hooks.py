"""What a self-supervised framework provides so that the mixing methods (naive mixing, SDMP, SAMix) plug into it.

A hooks class subclasses the framework and adds, each in a line or two:

- ``query(x)``: the online output compared with targets, with graph (MoCo v3, BYOL: q = g(h(f(x))));
  ``query_features(feats0)``: (q, z) of view 0 from its pooled backbone features (z feeds the collapse signal);
- ``targets(x, stage)``: the target network's embedding k = h_m(f_m(x)) without grad, and f_m's stage-``stage``
  feature map when ``stage > 0``; ``target_embed(x)``: k with graph to the input (the target's weights stay
  frozen: SAMix trains its Mixer through it); ``target_backbone``: f_m (its stages go into ``mixer.pt``);
- ``pair_layout(b)``: (number of key rows, this process's first row) the soft targets index;
  ``pair_loss(q, k, t)``: the framework's loss of queries against keys with soft targets t [b, n_keys]
  (t = None: the diagonal positives); ``clean_pass(views, feats0, stage)``: the framework's own loss plus the
  targets of both views (and their stage maps), so a mixing term reuses them;
- contrastive frameworks also: ``mixture_pair_loss(q, k, t)`` (−log Σ_j t_ij P_i(j)) and
  ``cross_view_logits(m, k_a, k_b, π)``: logits of m̂ with positives k_a,i and k_b,π(i) and the negatives, plus
  ``contrast_scale`` (MoCo v3's 2T).

``MoCoV3Hooks``, ``MoCoV2Hooks`` and ``BYOLHooks`` are these hooks for the three frameworks; a new framework
adds its own class here and then each mixing variant is one line (``class XMix(NaiveMix, XHooks)``).
``SimCLRHooks`` has no target network: it gives the hooks naive mixing uses (query, query_features, pair_layout,
pair_loss, clean_pass), its keys being view 2's projections with their gradient (i-Mix's N-pair form).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.losses.ssl import byol_loss, gather_rows, similarity_logits
from mixbench.methods.ssl.byol import BYOL
from mixbench.methods.ssl.mixing import key_layout, mixture_nce, soft_regression
from mixbench.methods.ssl.mocov2 import MoCoV2, queue_nce
from mixbench.methods.ssl.mocov3 import MoCoV3, Projected
from mixbench.methods.ssl.simclr import SimCLR, gather_with_grad, nt_xent

Targets = tuple[torch.Tensor, torch.Tensor | None]
CleanPass = tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...], tuple[torch.Tensor | None, ...]]


@torch.no_grad()
def projected_targets(encoder: Projected, x: torch.Tensor, stage: int = 0) -> Targets:
    """(h(f(x)), f's stage-``stage`` feature map or None) of a frozen ``Projected``, in one forward pass."""
    if stage <= 0:
        return encoder(x), None
    seen: dict[int, torch.Tensor] = {}

    def keep(k: int, h: torch.Tensor) -> torch.Tensor:
        if k == stage:
            seen[k] = h
        return h

    fmap = encoder.backbone.forward_map(x, keep)
    return encoder.projector(encoder.backbone.pool(fmap).flatten(1)), seen[stage]


def in_batch_cross_view_logits(m: torch.Tensor, keys_a: torch.Tensor, keys_b: torch.Tensor, index: torch.Tensor,
                               temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of m̂_i over every process's keys k̂_a (/T) with column π(i) replaced by m̂_i·k̂_b,π(i)/T.

    Positive a of row i is column i (k_a,i), positive b is column π(i) (k_b,π(i)); the replaced entry k_a,π(i)
    is the key of the very view pasted into the mix, so it is neither a positive nor a negative (no leak).
    """
    keys, offset = gather_rows(keys_a)
    logits = similarity_logits(m, keys, temperature)
    s_b = (F.normalize(m.float(), dim=1) * F.normalize(keys_b[index].float(), dim=1)).sum(1) / temperature
    rows = torch.arange(m.shape[0], device=m.device)
    col_a, col_b = rows + offset, index + offset
    return logits.scatter(1, col_b.view(-1, 1), s_b.view(-1, 1)), col_a, col_b


class _TargetHooks:
    """The hooks shared by frameworks with an online projector (and optional predictor) and an EMA target network
    named ``teacher_name``: queries q = g(h(f(x))) (h alone without a predictor), targets from the EMA copy."""

    teacher_name: ClassVar[str] = "momentum_encoder"

    def _teacher(self) -> nn.Module:
        return getattr(self, self.teacher_name)

    def _predict(self, z: torch.Tensor) -> torch.Tensor:
        predictor = getattr(self, "predictor", None)
        return z if predictor is None else predictor(z)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self._predict(self.online(x))

    def query_features(self, feats0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.online.projector(feats0)
        return self._predict(z), z

    def targets(self, x: torch.Tensor, stage: int = 0) -> Targets:
        return projected_targets(self._teacher().module, x, stage)

    def target_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._teacher()(x)

    @property
    def target_backbone(self) -> nn.Module:
        return self._teacher().module.backbone


class MoCoV3Hooks(_TargetHooks, MoCoV3):
    """MoCo v3 with the mixing hooks (see the module docstring): in-batch negatives, 2T·InfoNCE."""

    has_negatives: ClassVar[bool] = True

    def pair_layout(self, b: int) -> tuple[int, int]:
        return key_layout(b)

    def pair_loss(self, q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        return self.nce(q, k, targets)

    def mixture_pair_loss(self, q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 2 * self.temperature * mixture_nce(q, k, self.temperature, targets)

    @property
    def contrast_scale(self) -> float:
        return 2 * self.temperature

    def cross_view_logits(self, m: torch.Tensor, keys_a: torch.Tensor, keys_b: torch.Tensor, index: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return in_batch_cross_view_logits(m, keys_a, keys_b, index, self.temperature)

    def clean_pass(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor, stage: int = 0) -> CleanPass:
        """MoCo v3's loss 2T·[NCE(q_1, k_2) + NCE(q_2, k_1)] exactly as ``MoCoV3.ssl_loss``, keys, stage maps."""
        q1, z1 = self.query_features(feats0)
        q2 = self.query(views[1])
        (k1, f1), (k2, f2) = self.targets(views[0], stage), self.targets(views[1], stage)
        return {"loss": self.nce(q1, k2) + self.nce(q2, k1), "embedding": z1}, (k1, k2), (f1, f2)


class MoCoV2Hooks(_TargetHooks, MoCoV2):
    """MoCo v2+ with the mixing hooks: positives among the batch's keys, negatives from view 2's queue.

    A mixing term's keys are always view 2's (``clean_pass``'s ``keys[1]``), so its negatives are ``queue[1]``
    (past view-2 keys); with soft targets the batch's keys join the logits ahead of the queue (i-Mix's MoCo form).
    """

    has_negatives: ClassVar[bool] = True

    def pair_layout(self, b: int) -> tuple[int, int]:
        return key_layout(b)

    def _logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """[q̂ k̂ᵀ over every process's keys, q̂ Q_2ᵀ] / T."""
        return torch.cat([similarity_logits(q, gather_rows(k)[0], self.temperature),
                          similarity_logits(q, self.queue[1], self.temperature)], dim=1)

    def pair_loss(self, q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if targets is None:
            return queue_nce(q, k, self.queue[1], self.temperature)
        logp = F.log_softmax(self._logits(q, k), dim=1)[:, :targets.shape[1]]  # queue columns have target 0
        return -(targets * logp).sum(1).mean()

    def mixture_pair_loss(self, q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(self._logits(q, k), dim=1)[:, :targets.shape[1]]
        return -torch.logsumexp(logp + targets.float().log(), dim=1).mean()

    contrast_scale: ClassVar[float] = 1.0

    def cross_view_logits(self, m: torch.Tensor, keys_a: torch.Tensor, keys_b: torch.Tensor, index: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[m̂·k̂_a,i, m̂·k̂_b,π(i), m̂·Q_2] / T: positives in columns 0 and 1, past keys as negatives (spec 2.e)."""
        mn = F.normalize(m.float(), dim=1)
        s_a = (mn * F.normalize(keys_a.float(), dim=1)).sum(1, keepdim=True)
        s_b = (mn * F.normalize(keys_b[index].float(), dim=1)).sum(1, keepdim=True)
        logits = torch.cat([s_a / self.temperature, s_b / self.temperature,
                            similarity_logits(m, self.queue[1], self.temperature)], dim=1)
        zeros = torch.zeros(m.shape[0], dtype=torch.long, device=m.device)
        return logits, zeros, zeros + 1

    def clean_pass(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor, stage: int = 0) -> CleanPass:
        """MoCo v2's loss exactly as ``MoCoV2.ssl_loss`` (keys queued after the step), keys, stage maps."""
        z1, _ = self.query_features(feats0)
        z2 = self.query(views[1])
        (k1, f1), (k2, f2) = self.targets(views[0], stage), self.targets(views[1], stage)
        loss = (queue_nce(z1, k2, self.queue[1], self.temperature)
                + queue_nce(z2, k1, self.queue[0], self.temperature)) / 2
        self._pending = torch.stack([F.normalize(gather_rows(k.detach().float())[0], dim=1) for k in (k1, k2)])
        return {"loss": loss, "embedding": z1}, (k1, k2), (f1, f2)


class BYOLHooks(_TargetHooks, BYOL):
    """BYOL with the mixing hooks: no negatives; soft targets weight the regression Σ_j t_ij (2 − 2 cos(p_i, z_j))."""

    has_negatives: ClassVar[bool] = False
    teacher_name: ClassVar[str] = "target"

    def pair_layout(self, b: int) -> tuple[int, int]:
        return b, 0  # BYOL regresses to this process's targets only

    def pair_loss(self, q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        return byol_loss(q, k) if targets is None else soft_regression(q, k, targets)

    def clean_pass(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor, stage: int = 0) -> CleanPass:
        """BYOL's loss ℓ(p_1, z_2) + ℓ(p_2, z_1) exactly as ``BYOL.ssl_loss``, targets, stage maps."""
        p1, z1 = self.query_features(feats0)
        p2 = self.query(views[1])
        (t1, f1), (t2, f2) = self.targets(views[0], stage), self.targets(views[1], stage)
        return {"loss": byol_loss(p1, t2) + byol_loss(p2, t1), "embedding": z1}, (t1, t2), (f1, f2)


class SimCLRHooks(SimCLR):
    """SimCLR with the hooks naive mixing uses: q = h(f(x)) and keys z² = h(f(x²)) of the same network, with graph.

    ``pair_loss`` is InfoNCE at SimCLR's T over every process's keys gathered *with* their gradient (as NT-Xent's
    rows; i-Mix's N-pair form lets the keys learn too): −Σ_j t_ij log softmax_j(q̂_i·ẑ²_j/T), t = None: t_ij = δ_ij.
    No target network, so no stage maps (``clean_pass`` with ``stage > 0`` is refused): SDMP and SAMix need one.
    """

    has_negatives: ClassVar[bool] = True

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x).flatten(1))

    def query_features(self, feats0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(feats0)
        return z, z

    def pair_layout(self, b: int) -> tuple[int, int]:
        return key_layout(b)

    def pair_loss(self, q: torch.Tensor, k: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        keys, offset = gather_with_grad(k)
        logits = similarity_logits(q, keys, self.temperature)
        if targets is None:
            return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device) + offset)
        return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()

    def clean_pass(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor, stage: int = 0) -> CleanPass:
        """SimCLR's NT-Xent exactly as ``SimCLR.ssl_loss`` and the projections (z¹, z²) with graph as keys."""
        if stage > 0:
            raise ValueError("SimCLR has no target network: no stage feature maps for a learned mixer")
        z1, _ = self.query_features(feats0)
        z2 = self.query(views[1])
        return {"loss": nt_xent(z1, z2, self.temperature), "embedding": z1}, (z1, z2), (None, None)


__all__ = ["MoCoV3Hooks", "MoCoV2Hooks", "BYOLHooks", "SimCLRHooks", "projected_targets",
           "in_batch_cross_view_logits"]
