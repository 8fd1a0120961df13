"""Linear probe on a frozen encoder's features, every learning rate trained at once.

A softmax head (W_l, b_l) per learning rate lr_l minimises mean cross-entropy CE(x W_l + b_l, y) with
SGD + momentum m: v <- m v + g + wd w, w <- w - lr_l(t) v, lr_l(t) = lr_l (1 + cos(pi t / T)) / 2 per step.
The lr is chosen on a class-balanced held-out part of the training features (never on the test set);
protocol as solo-learn / lightly / MoCo v3 (SGD, m 0.9, wd 0, cosine), lr 1.0 as OpenMixup's CIFAR default.

``augment = "none"`` trains on features extracted once; ``"crop-flip"`` recomputes the training batch's
features every step from randomly cropped and flipped images through the frozen backbone (eval mode, no
gradients), as the training augmentation crops, while the held-out and test features stay unaugmented.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixbench.data.gpu_loader import Normalize, crop_flip, model_input
from mixbench.evaluate.base import EVALUATORS, EvalContext, Evaluator
from mixbench.mixing.features import eval_mode

if TYPE_CHECKING:
    from mixbench.evaluate.runner import Encoded

DEFAULT_LRS: tuple[float, ...] = (0.1, 0.3, 1.0)
AUGMENTS = ("none", "crop-flip")


@dataclass
class ProbeResult:
    """Every lr's held-out and test top-1 (%), the lr chosen on held-out data and its test top-1."""

    lrs: list[float]
    chosen_lr: float
    val_top1: dict[float, float]
    test_top1: dict[float, float]
    test_top1_chosen: float
    epochs: int
    batch: int
    val_fraction: float
    standardize: bool = True
    #: (W [L, D, C], b [L, C]) of the heads, in the order of ``lrs``; only with ``return_weights=True``.
    weights: tuple[Tensor, Tensor] | None = field(default=None, repr=False, compare=False)


def heldout_split(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Class-balanced seeded split: indices (fit, held-out), round(fraction · n_c) of each class n_c held out.

    All on ``y``'s device, no per-sample loop: a seeded permutation, stably sorted by class, holds out
    the first k_c of every class.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    n = y.shape[0]
    g = torch.Generator(device=y.device).manual_seed(seed)
    perm = torch.randperm(n, generator=g, device=y.device)
    order = perm[torch.argsort(y[perm], stable=True)]  # grouped by class, random within a class
    ys = y[order]
    counts = torch.bincount(ys)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=y.device) - starts[ys]
    k = torch.floor(counts.double() * fraction + 0.5).long()
    held = rank < k[ys]
    if not bool(held.any()):  # tiny sets: hold out at least one sample
        held[0] = True
    return order[~held].sort().values, order[held].sort().values


class CropFlipFeatures:
    """Pooled features of randomly cropped and flipped training images through a frozen backbone, per batch.

    For rows idx: x' = flip(crop_p(x[idx])), offsets s ~ U{0..2p} per image (reflect- or zero-padded, as the
    training crop), a horizontal flip with probability ½, drawn from this object's own seeded generator on the
    images' device; f = backbone((x' − 255 μ) / (255 σ)) in eval mode without gradients (BatchNorm statistics used,
    never updated). Called once per step, so every epoch sees new draws.
    """

    def __init__(self, backbone: nn.Module, images_u8: Tensor, mean: tuple[float, ...] | list[float],
                 std: tuple[float, ...] | list[float], *, padding: int = 4, padding_mode: str = "reflect",
                 seed: int = 0):
        if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images_u8.dtype} {tuple(images_u8.shape)}")
        if not 0 <= padding < min(images_u8.shape[2:]):
            raise ValueError(f"crop padding must be in 0..{min(images_u8.shape[2:]) - 1}, got {padding}")
        if padding_mode not in ("reflect", "zeros"):
            raise ValueError(f"padding_mode must be 'reflect' or 'zeros', got {padding_mode!r}")
        self.backbone, self.images = backbone, images_u8
        self.padding, self.padding_mode = padding, padding_mode
        self.normalize = Normalize(mean, std, images_u8.device)
        self.generator = torch.Generator(device=images_u8.device).manual_seed(seed)

    @torch.no_grad()
    def __call__(self, idx: Tensor) -> Tensor:
        """float32 [len(idx), D] features of images ``idx``, each freshly cropped and flipped."""
        x = crop_flip(self.images[idx.to(self.images.device)], self.generator, self.padding, self.padding_mode)
        with eval_mode(self.backbone):
            return self.backbone(model_input(x, self.normalize, False)).flatten(1).float()


def train_heads(f: Tensor, y: Tensor, lrs: list[float], *, num_classes: int, epochs: int = 100, batch: int = 256,
                momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0,
                batch_features: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Train one linear head per lr, all at once; returns W [L, D, C] and b [L, C] (zero-initialised).

    Per step: one mini-batch (seeded order, shared by all heads), logits [L, B, C] = einsum(x, W) + b,
    loss = sum_l mean_i CE_l, one backward, then by hand v <- m v + g + wd w, w <- w - lr_l(t) v.
    ``batch_features(idx)``, when given, computes the batch's features x (e.g. of augmented images) in place of
    the rows f[idx]; every head still trains on the same x.
    """
    dev, dtype = f.device, torch.promote_types(f.dtype, torch.float32)
    x_all, n, L = f.to(dtype), f.shape[0], len(lrs)
    W = torch.zeros(L, f.shape[1], num_classes, device=dev, dtype=dtype, requires_grad=True)
    b = torch.zeros(L, num_classes, device=dev, dtype=dtype, requires_grad=True)
    vW, vb = torch.zeros_like(W), torch.zeros_like(b)
    base = torch.tensor(lrs, device=dev, dtype=dtype)
    steps_per_epoch = math.ceil(n / batch)
    total = epochs * steps_per_epoch
    g = torch.Generator(device=dev).manual_seed(seed)
    t = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g, device=dev)
        for s in range(steps_per_epoch):
            idx = perm[s * batch:(s + 1) * batch]
            xb = x_all[idx] if batch_features is None else batch_features(idx).to(dtype)
            yb = y[idx]
            logits = torch.einsum("bd,ldc->lbc", xb, W) + b[:, None, :]
            loss = F.cross_entropy(logits.reshape(-1, num_classes), yb.repeat(L), reduction="none")
            loss.view(L, -1).mean(1).sum().backward()
            lr_t = base * (0.5 * (1.0 + math.cos(math.pi * t / total)))
            with torch.no_grad():
                for p, v in ((W, vW), (b, vb)):
                    grad = p.grad if weight_decay == 0 else p.grad + weight_decay * p
                    v.mul_(momentum).add_(grad)
                    p.sub_(lr_t.view(-1, *[1] * (p.dim() - 1)) * v)
                    p.grad = None
            t += 1
    return W.detach(), b.detach()


@torch.no_grad()
def heads_top1(W: Tensor, b: Tensor, f: Tensor, y: Tensor, chunk: int = 8192) -> Tensor:
    """Top-1 (%) of every head on (f, y): a tensor [L] on the device (no host sync)."""
    hits = torch.zeros(W.shape[0], device=W.device, dtype=torch.float64)
    for i in range(0, f.shape[0], chunk):
        logits = torch.einsum("bd,ldc->lbc", f[i:i + chunk].to(W.dtype), W) + b[:, None, :]
        hits += (logits.argmax(-1) == y[i:i + chunk]).sum(1)
    return 100.0 * hits / max(f.shape[0], 1)


def linear_probe(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, *, num_classes: int,
                 lrs: list[float] | tuple[float, ...] = DEFAULT_LRS, epochs: int = 100, batch: int = 256,
                 momentum: float = 0.9, weight_decay: float = 0.0, val_fraction: float = 0.1, seed: int = 0,
                 standardize: bool = True, return_weights: bool = False,
                 train_features: Callable[[Tensor], Tensor] | None = None) -> ProbeResult:
    """Linear probe: train a head per lr on (1 - val_fraction) of the training features, choose the lr.

    The lr with the best held-out top-1 is chosen (ties: the smaller lr); ``test_top1_chosen`` is that
    head's test top-1 (same head, trained on the non-held-out part; the test set is never used to choose).
    With ``standardize`` every split is mapped x -> (x - mu) / sigma, mu and sigma per dimension of the
    training (non-held-out) part only. Inputs are not modified; everything stays on their device.
    ``train_features(idx)`` (e.g. :class:`CropFlipFeatures`) gives the features of training rows ``idx`` per
    step in place of ``train_f[idx]``; they are standardised with the same mu and sigma of the unaugmented
    ``train_f``, and held-out and test features stay ``train_f`` / ``test_f``.
    """
    lrs = [float(lr) for lr in lrs]
    if not lrs:
        raise ValueError("lrs must not be empty")
    fit_idx, val_idx = heldout_split(train_y, val_fraction, seed)
    dtype = torch.promote_types(train_f.dtype, torch.float32)
    fit_f, val_f, te_f = train_f[fit_idx].to(dtype), train_f[val_idx].to(dtype), test_f.to(dtype)
    mu = sigma = None
    if standardize:
        mu, sigma = fit_f.mean(0), fit_f.std(0).clamp_min(1e-6)
        fit_f, val_f, te_f = ((z - mu) / sigma for z in (fit_f, val_f, te_f))
    batch_features = None
    if train_features is not None:
        def batch_features(i: Tensor) -> Tensor:
            z = train_features(fit_idx[i]).to(dtype)
            return z if mu is None else (z - mu) / sigma
    W, b = train_heads(fit_f, train_y[fit_idx], lrs, num_classes=num_classes, epochs=epochs, batch=batch,
                       momentum=momentum, weight_decay=weight_decay, seed=seed, batch_features=batch_features)
    accs = torch.stack([heads_top1(W, b, val_f, train_y[val_idx]), heads_top1(W, b, te_f, test_y)])
    val, test = accs.tolist()  # the one host sync
    best = max(range(len(lrs)), key=lambda i: (val[i], -lrs[i]))  # best held-out top-1, ties: the smaller lr
    return ProbeResult(lrs=lrs, chosen_lr=lrs[best], val_top1=dict(zip(lrs, val, strict=True)),
                       test_top1=dict(zip(lrs, test, strict=True)),
                       test_top1_chosen=test[best], epochs=epochs, batch=batch, val_fraction=val_fraction,
                       standardize=standardize, weights=(W, b) if return_weights else None)


def _protocol(lrs: list[float] | tuple[float, ...], epochs: int, batch: int, val_fraction: float,
              standardize: bool, augment: str = "none", padding: int = 4, padding_mode: str = "reflect") -> str:
    images = ("pooled backbone features of unaugmented images" if augment == "none" else
              f"pooled backbone features; training batches of images randomly cropped (pad {padding}, "
              f"{padding_mode}) and flipped, encoded every step (held-out and test images unaugmented)")
    return (f"linear probe: frozen backbone in eval mode (BN running statistics, not updated), {images}; "
            f"SGD momentum 0.9, wd 0, cosine schedule, lrs {list(lrs)}, "
            f"{epochs} epochs, batch {batch}; lr chosen by top-1 on a class-balanced held-out {val_fraction:g} "
            f"of the training features (never the test set); features "
            f"{'standardised with the training mean/std' if standardize else 'not standardised'}")


@EVALUATORS.register("linear")
class LinearProbe(Evaluator):
    """Linear-probe top-1 on frozen features, the lr chosen on held-out training data (``linear_top1``)."""

    name = "linear"
    protocol = _protocol(DEFAULT_LRS, 100, 256, 0.1, True)

    def __init__(self, lrs: list[float] | tuple[float, ...] = DEFAULT_LRS, epochs: int = 100, batch: int = 256,
                 val_fraction: float = 0.1, seed: int = 0, standardize: bool = True, augment: str = "none",
                 crop_padding: int = 4, padding_mode: str = "reflect"):
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        self.lrs, self.epochs, self.batch = [float(lr) for lr in lrs], epochs, batch
        self.val_fraction, self.seed, self.standardize = val_fraction, seed, standardize
        self.augment, self.crop_padding, self.padding_mode = augment, crop_padding, padding_mode
        self.protocol = _protocol(self.lrs, epochs, batch, val_fraction, standardize,  # type: ignore[misc]
                                  augment, crop_padding, padding_mode)

    def settings(self) -> dict[str, Any]:
        """Every setting that changes the metrics: the stored protocol, less the data (``augment = "none"``
        keeps the keys it had before crop-flip existed, so earlier results keep their hash)."""
        out: dict[str, Any] = {"lrs": self.lrs, "epochs": self.epochs, "batch": self.batch,
                               "val_fraction": self.val_fraction, "momentum": 0.9, "weight_decay": 0.0,
                               "schedule": "cosine", "standardize": self.standardize,
                               "bn": "frozen (eval mode, running statistics)", "augment": self.augment}
        if self.seed != 0:
            out["seed"] = self.seed
        if self.augment != "none":
            out |= {"crop_padding": self.crop_padding, "padding_mode": self.padding_mode,
                    "augmented": "training batches only, re-encoded every step"}
        return out

    def __call__(self, method: Any, data: Any, ctx: EvalContext | None) -> dict[str, float]:
        """``data``: dict with train_f, train_y, test_f, test_y (features already extracted) and num_classes;
        for ``augment = "crop-flip"`` also train_x (uint8 training images, rows as train_f), mean and std, with
        ``method`` the frozen backbone (or a method, whose ``encoder()`` is used)."""
        train_features = None
        if self.augment == "crop-flip":
            backbone = method.encoder() if hasattr(method, "encoder") else method
            train_features = CropFlipFeatures(backbone, data["train_x"], data["mean"], data["std"],
                                              padding=self.crop_padding, padding_mode=self.padding_mode,
                                              seed=self.seed)
        r = linear_probe(data["train_f"], data["train_y"], data["test_f"], data["test_y"],
                         num_classes=int(data["num_classes"]), lrs=self.lrs, epochs=self.epochs, batch=self.batch,
                         val_fraction=self.val_fraction, seed=self.seed, standardize=self.standardize,
                         train_features=train_features)
        out = {"linear_top1": r.test_top1_chosen, "linear_lr": r.chosen_lr, "linear_val_top1": r.val_top1[r.chosen_lr]}
        out.update({f"linear_top1@lr={lr:g}": acc for lr, acc in r.test_top1.items()})
        return out


def _weights_bytes(module: nn.Module) -> list[bytes]:
    return [v.detach().cpu().numpy().tobytes() for v in module.state_dict().values()]


def linear_eval(enc: Encoded, *, lrs: list[float] | tuple[float, ...] = DEFAULT_LRS, epochs: int = 100,
                batch: int = 256, val_fraction: float = 0.1,
                augment: str = "none") -> tuple[LinearProbe, dict[str, Any]]:
    """The probe and its stored result on a checkpoint opened for evaluation (``mixbench linear-eval``,
    ``[eval].after``): reused while its settings and the checkpoint match, else computed and stored.

    crop-flip takes the padding of the run's own ``[data]`` crop and re-encodes the training images with the
    checkpoint's frozen backbone; its weights and BatchNorm buffers are checked to be unchanged afterwards.
    """
    from mixbench.data import DataConfig
    from mixbench.evaluate.features import data_table, eval_data

    cfg = DataConfig(**data_table(enc.ckpt, enc.overrides))
    probe = LinearProbe(lrs, epochs=epochs, batch=batch, val_fraction=val_fraction, augment=augment,
                        crop_padding=cfg.crop_padding, padding_mode=cfg.padding_mode)

    def compute() -> dict[str, float]:
        f: dict[str, Any] = dict(enc.features())
        ctx = EvalContext(enc.device)
        if augment == "none":
            return probe(None, f, ctx)
        data = eval_data(enc.ckpt, data_overrides=enc.overrides, device=enc.device)
        backbone = enc.ckpt.build_backbone().to(enc.device)
        before = _weights_bytes(backbone)
        out = probe(backbone, f | {"train_x": data.train_x, "mean": data.mean, "std": data.std}, ctx)
        if _weights_bytes(backbone) != before:  # frozen, eval mode: BatchNorm statistics must not move
            raise RuntimeError("the encoder's weights changed during the augmented linear probe")
        return out

    return probe, enc.run("linear", probe.settings(), compute)
