"""Decoupled Mixup losses (Liu et al., arXiv 2203.10761) and SAMix's η-balanced mixup loss.

Notation: logits z [N, K], p = softmax(z), mixed classes a = y_a (share λ) and b = y_b (share 1 − λ),
λ per sample; MCE = −λ log p_a − (1 − λ) log p_b.

``decoupled_log_softmax``: log φ_{a\\b}(z) = z_a − logsumexp_{k≠b} z_k, the softmax of a with the
other mixed class b removed from the normaliser (a == b: the plain log p_a, nothing to remove).

``dm`` (DM(CE), openmixup code form): L = MCE + w_a·(−log φ_{a\\b}) + w_b·(−log φ_{b\\a}) with
w_a = η·g(λ)·sel_a, w_b = η·g(1 − λ)·sel_b, g(t) = min(1, (t/lam_thr)^p) and g(0) = 0; ``mode`` picks
both classes, only the minority one (share < 0.5) or only the majority one (share > 0.5); at a tie
(λ = 0.5) under less/more each class gets half the selection (sel = ½). Same-class pairs: plain CE.
``compat = "openmixup"`` reproduces the reference instead (:func:`openmixup_weights`): no regulariser in a
batch whose λ is 0.5, and (w_a, w_b) swapped when the first mixed row has y_a > y_b.

``dm_bce`` (DM(BCE), two-hot targets): t = h(λ) e_a + h(1 − λ) e_b, h(t) = min(1, (t/ξ)^p), h(0) = 0,
same-class pairs get the one-hot target; L = Σ_k BCEWithLogits(z_k, t_k), mean over samples.

``eta_balanced`` (SAMix generator loss): L_local = −λ log(e^{z_a}/(e^{z_a}+e^{z_b})) − (1 − λ)
log(e^{z_b}/(e^{z_a}+e^{z_b})), L_global = −log(p_a + p_b), L_η = L_local + η·L_global; the identity
L_local + L_global = MCE is exact (a == b: local = 0, global = −log p_a).
Every loss computes in float32 and takes an optional per-sample ``weight`` w: mean_i(w_i ℓ_i).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbench.losses.mixed import LOSSES
from mixbench.losses.mixed import reduce as _reduce
from mixbench.params import Param

__all__ = [
    "DecoupledCE",
    "DecoupledBCE",
    "decoupled_log_softmax",
    "dm_weights",
    "openmixup_weights",
    "pow_scale",
    "two_hot_targets",
    "eta_balanced_terms",
    "eta_balanced",
]

TIE = 0.5  # the share that separates the minority ("less") from the majority ("more") class
REF_EPS = 1e-3  # openmixup's soft_mix_cross_entropy: a class is "mixed in" when its target exceeds this
COMPATS = ("mixbench", "openmixup")

LAM_POWER = Param("float", 1.0, "exponent p of the share weight min(1, (share/thr)^p); 0 = constant",
                  low=0)


def _per_sample(lam: torch.Tensor | float | None, n: int, device: torch.device) -> torch.Tensor:
    """λ as a float32 tensor [N] (a scalar or a one-element tensor is broadcast)."""
    if lam is None:
        raise ValueError("a mixed loss needs lam when y_b is given")
    lam = torch.as_tensor(lam, dtype=torch.float32, device=device).reshape(-1)
    return lam.expand(n) if lam.numel() == 1 else lam


def pow_scale(t: torch.Tensor, thr: float, power: float) -> torch.Tensor:
    """min(1, (t/thr)^power) elementwise, with 0 ↦ 0 also for power = 0 (no weight for an absent class)."""
    scaled = torch.clamp(t / thr, min=0.0).pow(power).clamp(max=1.0)
    return torch.where(t > 0, scaled, torch.zeros_like(scaled))


def decoupled_log_softmax(logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample log φ_{a\\b}(z) = z_a − logsumexp_{k≠b} z_k, float32 [N].

    Where a == b there is no other class to remove and the value is the ordinary log-softmax log p_a.
    """
    z = logits.float()
    a, b = a.view(-1, 1), b.view(-1, 1)
    drop = torch.zeros_like(z, dtype=torch.bool).scatter_(1, b, True) & (a != b)
    normaliser = torch.logsumexp(z.masked_fill(drop, float("-inf")), dim=1)
    return z.gather(1, a).squeeze(1) - normaliser


def dm_weights(lam: torch.Tensor, eta: float, mode: str = "both", lam_power: float = 1.0,
               lam_thr: float = 1.0, same: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Regulariser weights (w_a, w_b) [N] of DM(CE) for the class of y_a (share λ) and of y_b (1 − λ).

    w_a = η·g(λ)·sel_a, w_b = η·g(1 − λ)·sel_b. ``mode``: "both" → sel = 1; "less" → only the class
    whose share is below 0.5; "more" → only the class whose share is above 0.5; at exactly λ = 0.5
    (a tie, under "less" or "more") each class gets sel = ½, so the total weight matches the limit
    from either side and the loss stays symmetric in (a, λ) ↔ (b, 1 − λ). ``same`` marks y_a == y_b
    pairs, which get no regulariser.
    """
    lam = lam.float()
    if mode == "both":
        sel_a = sel_b = torch.ones_like(lam)
    elif mode in ("less", "more"):
        tie = (lam == TIE).float() * 0.5
        below, above = (lam < TIE).float(), (lam > TIE).float()
        sel_a, sel_b = (below, above) if mode == "less" else (above, below)
        sel_a, sel_b = sel_a + tie, sel_b + tie
    else:
        raise ValueError(f"unknown DM mode {mode!r}; valid: both, less, more")
    w_a = eta * pow_scale(lam, lam_thr, lam_power) * sel_a
    w_b = eta * pow_scale(1.0 - lam, lam_thr, lam_power) * sel_b
    if same is not None:
        keep = (~same).float()
        w_a, w_b = w_a * keep, w_b * keep
    return w_a, w_b


def openmixup_weights(w_a: torch.Tensor, w_b: torch.Tensor, lam: torch.Tensor, y_a: torch.Tensor,
                      y_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_a, w_b) [N] as openmixup applies them (``ClsMixupHead.loss`` + ``soft_mix_cross_entropy``).

    A row takes part when y_a ≠ y_b and both shares exceed 1e-3; the first such row r decides for the
    batch: no regulariser at all when λ_r = 1 − λ_r (λ = 0.5, in float32), and w_a ↔ w_b for every row
    when y_a[r] > y_b[r] (the weights are listed for (λ, 1 − λ) but applied in row r's class order).
    All on the device (no host sync); per-sample λ, which the reference cannot take, keeps each row's weights.
    """
    lam = lam.float()
    rest = 1.0 - lam
    part = (y_a != y_b) & (lam > REF_EPS) & (rest > REF_EPS)
    r = part.to(torch.uint8).argmax().view(1)  # the first participating row (row 0 when none: all weights are 0)
    swap = y_a.gather(0, r) > y_b.gather(0, r)
    keep = (part & (lam.gather(0, r) != rest.gather(0, r))).float()
    return torch.where(swap, w_b, w_a) * keep, torch.where(swap, w_a, w_b) * keep


@LOSSES.register("dm",
                 doc="Decoupled Mixup DM(CE): mixed CE + η-weighted decoupled-softmax regulariser per mixed class")
class DecoupledCE:
    """Decoupled Mixup DM(CE): mixed CE + η-weighted decoupled-softmax regulariser per mixed class.

    L = MCE + w_a·(−log φ_{a\\b}(z)) + w_b·(−log φ_{b\\a}(z)), weights from :func:`dm_weights`, mean
    over the batch. Classes are indexed directly by (y_a, y_b) with per-sample λ (λ = 0.5 included,
    which openmixup skips), and the weight of class y_a always uses λ (openmixup attaches it by
    class-index order). Defaults are openmixup's base DM config: η = 0.1, mode "both", p = 1,
    lam_thr = 1 (weights λ and 1 − λ). No label smoothing (openmixup's DM treats it specially).
    Unmixed batches (y_b None) get plain CE. ``compat = "openmixup"`` reproduces the reference's
    λ = 0.5 skip and class-order weights (:func:`openmixup_weights`), to reproduce published numbers.
    """

    differs = ("regulariser also at λ = 0.5 and the weight of class y_a always from λ (openmixup skips λ = 0.5 "
               "batches and attaches the weights in the first row's class-index order; compat = 'openmixup' "
               "reproduces both)")

    params = {
        "eta": Param("float", 0.1, "weight η of the decoupled regulariser (0 = mixed CE)", low=0),
        "mode": Param("str", "both", "which mixed class gets the regulariser: both, less (share < 0.5) "
                      "or more (share > 0.5)", choices=("both", "less", "more")),
        "lam_power": LAM_POWER,
        "lam_thr": Param("float", 1.0, "share threshold thr of the weight min(1, (share/thr)^p)",
                         low=0, high=1, low_open=True),
        "compat": Param("str", "mixbench", "mixbench: the intended DM; openmixup: the reference's behaviour "
                        "(no regulariser at λ = 0.5, weights in class-index order) to reproduce its numbers",
                        choices=COMPATS),
    }

    def __init__(self, eta: float = 0.1, mode: str = "both", lam_power: float = 1.0, lam_thr: float = 1.0,
                 compat: str = "mixbench"):
        if mode not in ("both", "less", "more"):
            raise ValueError(f"unknown DM mode {mode!r}; valid: both, less, more")
        if compat not in COMPATS:
            raise ValueError(f"unknown DM compat {compat!r}; valid: {', '.join(COMPATS)}")
        self.eta, self.mode, self.lam_power, self.lam_thr = eta, mode, lam_power, lam_thr
        self.compat = compat

    def per_sample(self, logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor,
                   lam: torch.Tensor | float) -> torch.Tensor:
        """The loss of each sample, float32 [N]."""
        z = logits.float()
        lam = _per_sample(lam, z.shape[0], z.device)
        logp = F.log_softmax(z, dim=1)
        lp_a = logp.gather(1, y_a.view(-1, 1)).squeeze(1)
        lp_b = logp.gather(1, y_b.view(-1, 1)).squeeze(1)
        loss = -(lam * lp_a + (1.0 - lam) * lp_b)
        if self.eta == 0:
            return loss
        w_a, w_b = dm_weights(lam, self.eta, self.mode, self.lam_power, self.lam_thr, same=y_a == y_b)
        if self.compat == "openmixup":
            w_a, w_b = openmixup_weights(w_a, w_b, lam, y_a, y_b)
        reg = -(w_a * decoupled_log_softmax(z, y_a, y_b) + w_b * decoupled_log_softmax(z, y_b, y_a))
        return loss + reg

    def __call__(self, logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor | None = None,
                 lam: torch.Tensor | float | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
        if y_b is None:
            return _reduce(F.cross_entropy(logits.float(), y_a, reduction="none"), weight)
        return _reduce(self.per_sample(logits, y_a, y_b, lam), weight)


def two_hot_targets(y_a: torch.Tensor, y_b: torch.Tensor | None, lam: torch.Tensor | float | None,
                    num_classes: int, xi: float = 0.5, lam_power: float = 1.0) -> torch.Tensor:
    """DM(BCE) targets t = h(λ) e_a + h(1 − λ) e_b, h(t) = min(1, (t/ξ)^p), h(0) = 0; [N, K] float32.

    Same-class pairs (and y_b None) get the one-hot target e_a (their sum is clipped to 1).
    """
    t = F.one_hot(y_a, num_classes).float()
    if y_b is None:
        return t
    lam = _per_sample(lam, y_a.shape[0], y_a.device).view(-1, 1)
    two_hot = t * pow_scale(lam, xi, lam_power) + F.one_hot(y_b, num_classes).float() * pow_scale(
        1.0 - lam, xi, lam_power)
    return torch.where((y_a == y_b).view(-1, 1), t, two_hot.clamp(max=1.0))


@LOSSES.register("dm_bce",
                 doc="Decoupled Mixup DM(BCE): BCE on thresholded two-hot targets h(λ) e_a + h(1 − λ) e_b")
class DecoupledBCE:
    """Decoupled Mixup DM(BCE): BCE on thresholded two-hot targets h(λ) e_a + h(1 − λ) e_b.

    h(t) = min(1, (t/ξ)^p), h(0) = 0: a class whose share reaches ξ counts as fully present.
    BCEWithLogits summed over classes, mean over samples. ``xi`` = 0.5 is a [mixbench] default
    (openmixup ships no two-hot DM config; with ξ = 0.5 the majority class always has target 1);
    ``lam_power`` p = 1. Same-class pairs and unmixed batches get one-hot targets.
    """

    params = {
        "xi": Param("float", 0.5, "share ξ at which a mixed class gets target 1: t = min(1, (share/ξ)^p)",
                    low=0, high=1, low_open=True),
        "lam_power": LAM_POWER,
    }

    def __init__(self, xi: float = 0.5, lam_power: float = 1.0):
        self.xi, self.lam_power = xi, lam_power

    def __call__(self, logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor | None = None,
                 lam: torch.Tensor | float | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
        z = logits.float()
        t = two_hot_targets(y_a, y_b, lam, z.shape[1], self.xi, self.lam_power)
        return _reduce(F.binary_cross_entropy_with_logits(z, t, reduction="none").sum(1), weight)


def eta_balanced_terms(logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                       lam: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_local, L_global), float32 [N] each, with L_local + L_global = MCE exactly.

    L_local = −λ log(e^{z_a}/(e^{z_a}+e^{z_b})) − (1 − λ) log(e^{z_b}/(e^{z_a}+e^{z_b})) (the two mixed
    classes against each other), L_global = −log(p_a + p_b) (the pair against all other classes).
    Where a == b: L_local = 0 and L_global = −log p_a.
    """
    z = logits.float()
    lam = _per_sample(lam, z.shape[0], z.device)
    z_a = z.gather(1, a.view(-1, 1)).squeeze(1)
    z_b = z.gather(1, b.view(-1, 1)).squeeze(1)
    pair = torch.where(a == b, z_a, torch.logaddexp(z_a, z_b))  # log(e^{z_a} + e^{z_b}), a counted once
    local = -(lam * (z_a - pair) + (1.0 - lam) * (z_b - pair))  # involves z_a and z_b only
    return local, torch.logsumexp(z, dim=1) - pair


def eta_balanced(logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor | float,
                 eta: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """SAMix's η-balanced mixup loss mean_i(L_local + η·L_global); η = 1 is mixed CE, η → 0 local only."""
    local, global_ = eta_balanced_terms(logits, a, b, lam)
    return _reduce(local + eta * global_, weight)
