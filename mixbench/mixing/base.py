"""The mixer contract shared by every sample-mixing policy.

A mixer maps ``(x, y, rng)`` to ``MixOutput(x̃, y_a, y_b, λ, index, mask, layer)`` where
``x̃ = M ⊙ x + (1 − M) ⊙ x[index]`` (``M = λ`` for Mixup), ``y_b = y[index]`` and ``λ`` is the
realised per-sample weight of the first source ``x`` / label ``y_a`` (shape ``[N]``). Spatial
mixers report ``λ = mean(M)``, the area actually kept, never the sampled value. The pairing
``index`` = π is a uniform permutation (π(i) = i possible), a derangement (π(i) ≠ i) or the
reversed batch π(i) = N − 1 − i (``pairing``, drawn on the device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mixbench.params import Param, RunFacts, show
from mixbench.registry import Registry

MIXERS = Registry("mixer")

LAM_MODE = Param("str", "batch", "one lambda per batch or per sample", choices=("batch", "sample"))
PAIRINGS = ("permutation", "derangement", "reverse")
PAIRING = Param("str", "permutation", "partner of each sample: a uniform permutation (a sample may draw itself, "
                "as openmixup), a derangement (never itself) or the reversed batch i <-> N-1-i (timm)",
                choices=PAIRINGS)


def alpha_param(default: float) -> Param:
    return Param("float", default, "Beta(alpha, alpha) concentration of lambda", low=0, low_open=True)


@dataclass
class MixOutput:
    """Mixed batch plus everything a loss needs.

    ``layer > 0`` means the mix happens at hidden stage ``layer`` of the backbone (ManifoldMix):
    ``x`` is then the clean batch and :func:`forward_mixed` mixes the hidden states.
    """

    x: torch.Tensor  # [N, C, H, W] mixed images
    y_a: torch.Tensor  # [N] labels of the first source
    y_b: torch.Tensor  # [N] labels of the second source (y[index])
    lam: torch.Tensor  # [N] float32, realised weight of the first source
    index: torch.Tensor  # [N] pairing: sample i is mixed with index[i]
    mask: torch.Tensor | None = None  # [N, 1, H, W] weight of the first source, spatial mixers only
    layer: int = 0  # backbone stage where the mix happens (0 = input)
    cells: torch.Tensor | None = None  # [N, g, g] bool grid pattern, 1 = cell from the first source (PatchMix)


def flip_index(n: int, device: torch.device) -> torch.Tensor:
    """π(i) = n − 1 − i, timm's and SDMP's pairing (the middle row of an odd batch is its own partner)."""
    return torch.arange(n - 1, -1, -1, device=device)


def derangement(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A random pairing π with π(i) ≠ i for every i (n ≥ 2), drawn on the device: one random n-cycle.

    With σ a uniform permutation, π(σ_j) = σ_{j+1 mod n}: each image's partner is uniform over the other
    images. n = 1 gives π = [0] (the only pairing there is), n = 0 an empty one; no host synchronisation.
    """
    sigma = torch.randperm(n, device=device, generator=generator)
    pi = torch.empty_like(sigma)
    pi[sigma] = sigma.roll(-1)
    return pi


class MixRNG:
    """The mixing generator: NumPy for host-side scalars (λ, boxes), torch for device draws.

    Host-side draws cost no device synchronisation; device draws (the pairing permutation,
    FMix spectra) use a ``torch.Generator`` on the batch's device. Both states go into
    checkpoints. Under torchrun every process draws the same host-side values (one λ per
    global batch) and its own device draws (``rank`` offsets the torch seed), so each process
    pairs the images of its own slice of the batch.
    """

    def __init__(self, seed: int, device: torch.device, rank: int = 0):
        self.np = np.random.Generator(np.random.PCG64(seed))
        self.torch = torch.Generator(device=device)
        self.torch.manual_seed(seed + 7919 * rank)

    def permutation(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randperm(n, device=device, generator=self.torch)

    def state_dict(self) -> dict[str, Any]:
        return {"np": self.np.bit_generator.state, "torch": self.torch.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.np.bit_generator.state = state["np"]
        self.torch.set_state(state["torch"])


def draw_pairing(rng: MixRNG, n: int, device: torch.device, mode: str = "permutation") -> torch.Tensor:
    """The pairing π [N] of a batch of ``n`` on ``device`` (see :data:`PAIRING`), without a host sync.

    ``permutation`` is ``rng.permutation`` (the draw every earlier run made; a pinned generator may
    override it), ``derangement`` draws one n-cycle from ``rng.torch``, ``reverse`` draws nothing.
    Under torchrun ``n`` is this process's slice: every pairing stays inside it (reverse flips the slice).
    """
    if mode == "permutation":
        return rng.permutation(n, device)
    if mode == "derangement":
        return derangement(n, rng.torch, device)
    if mode == "reverse":
        return flip_index(n, device)
    raise ValueError(f"unknown pairing {mode!r}; valid: {', '.join(PAIRINGS)}")


def sample_lambda(rng: MixRNG, alpha: float, n: int, mode: str) -> np.ndarray:
    """Draw λ ~ Beta(α, α): one value repeated ``n`` times (``batch``) or ``n`` values (``sample``)."""
    if mode == "batch":
        return np.full(n, rng.np.beta(alpha, alpha))
    return rng.np.beta(alpha, alpha, size=n)


def per_sample(values: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Repeat the first of host-drawn ``values`` ``n`` times in batch mode; keep them otherwise."""
    return np.repeat(values[:1], n) if mode == "batch" else values


def to_device(a: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Host array -> device tensor without a synchronising copy."""
    t = torch.from_numpy(np.ascontiguousarray(a)).to(dtype)
    return t.to(device, non_blocking=True)


def blend(x: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """x̃ = λ x + (1 − λ) x[index] with per-sample λ ``[N]`` (works for any rank ≥ 1)."""
    w = lam.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return torch.lerp(x[index], x, w)


def masked_mix(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
               source_a: torch.Tensor | None = None, source_b: torch.Tensor | None = None) -> MixOutput:
    """``x̃ = M ⊙ x + (1 − M) ⊙ x[index]`` with ``λ = mean(M)`` per sample.

    ``source_a`` / ``source_b`` replace ``x`` / ``x[index]`` when a mixer transforms an image
    first (ResizeMix shrinks the second, PuzzleMix moves blocks of both).
    """
    mask = mask.to(x.dtype)
    a = x if source_a is None else source_a
    b = x[index] if source_b is None else source_b
    mixed = torch.lerp(b, a, mask)
    n = x.shape[0]
    lam = mask.float().mean(dim=(1, 2, 3)).expand(n).contiguous()
    return MixOutput(mixed, y, y[index], lam, index, mask.expand(n, 1, *x.shape[2:]))


def box_paste(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, box: tuple[int, int, int, int],
              patch: torch.Tensor | None = None) -> MixOutput:
    """One host box (y0, y1, x0, x1) for the whole batch: x̃ = x outside it and ``patch`` inside
    (default: x[index] at the same place), λ = 1 − box area / HW.

    The same x̃, λ = mean(M) and M as :func:`masked_mix` with M = 1 outside the box, but a copy of the
    N·C·|box| pasted values instead of an N·C·H·W blend; M is one [1, 1, H, W] mask expanded to N.
    """
    n, _, h, w = x.shape
    y0, y1, x0, x1 = box
    mask = torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype)
    mask[..., y0:y1, x0:x1] = 0
    mixed = x.clone()
    if y1 > y0 and x1 > x0:
        mixed[:, :, y0:y1, x0:x1] = x[:, :, y0:y1, x0:x1][index] if patch is None else patch
    lam = mask.float().mean(dim=(1, 2, 3)).expand(n).contiguous()
    return MixOutput(mixed, y, y[index], lam, index, mask.expand(n, 1, h, w))


def identity_mix(x: torch.Tensor, y: torch.Tensor) -> MixOutput:
    """The 'not mixed' output: λ = 1, every sample paired with itself."""
    n = x.shape[0]
    return MixOutput(x, y, y, torch.ones(n, device=x.device), torch.arange(n, device=x.device))


def forward_mixed(model: nn.Module, mix: MixOutput) -> torch.Tensor:
    """Logits of a mixed batch: ``model(x̃)``, or a hidden-stage mix for ``layer > 0``."""
    if mix.layer == 0:
        return model(mix.x)

    def hook(k: int, h: torch.Tensor) -> torch.Tensor:
        return blend(h, mix.index, mix.lam) if k == mix.layer else h

    return model.head(model.forward_features(mix.x, hook))


def stage_problems(key: str, stages: list[int], where: str, origin: dict[str, str], facts: RunFacts | None, *,
                   what: str, low: int = 0) -> list[str]:
    """Problems of ``key`` naming residual stages ``stages`` of the run's backbone (``facts``): a timm
    backbone has no hidden-stage hooks, and a built-in one has stages 1..S (0 = the input where allowed)."""
    hidden = [k for k in stages if k > 0]
    if facts is None or not hidden:
        return []
    src, shown = origin.get(key, origin.get("name", "recipe")), show(stages if len(stages) != 1 else stages[0])
    if not facts.stage_hooks:
        return [f"{src}: {where}.{key} = {shown}: {facts.stages_text()} is a timm model, which cannot {what} "
                "at a hidden stage; use a built-in backbone (mixbench list models)"]
    n = facts.num_stages
    too_deep = [k for k in hidden if n is not None and k > n]
    if too_deep:
        return [f"{src}: {where}.{key} = {shown}: {facts.stages_text()} has {n} residual stages; "
                f"valid: {low}..{n}"]
    return []


def side_problem(key: str, value: int, where: str, origin: dict[str, str], facts: RunFacts | None,
                 what: str) -> list[str]:
    """``value`` (cells or pixels per side) must not exceed the image side, when it is known."""
    side = None if facts is None else facts.image_side
    if side is None or value <= side:
        return []
    return [f"{origin.get(key, origin.get('name', 'recipe'))}: {where}.{key} = {value} exceeds the {side}-pixel "
            f"image side ({what}); valid: 1..{side}"]


class Mixer:
    """Base class: subclasses declare ``params`` and implement ``__call__``.

    ``differs`` says, in one sentence, how the mixer differs from its reference implementation
    (shown by ``mixbench list methods``). Mixers that need the trained model (saliency, features,
    hidden stages) set ``needs_model`` and receive it through :meth:`bind` before the first batch.
    """

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    differs: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False

    def __init__(self, **values: Any):
        unknown = set(values) - set(self.params)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown parameters {sorted(unknown)}")
        for key, param in self.params.items():
            setattr(self, key, values.get(key, param.default))

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        """Problems that involve more than one parameter, or the run's model and images (``facts``,
        when known): each a sentence naming the file, the key and what is valid."""
        return []

    def bind(self, model: nn.Module, device: torch.device) -> None:
        """Receive the model being trained (only called when ``needs_model``)."""
        self.model = model

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        raise NotImplementedError  # abstract: every registered mixer overrides it

    def describe(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.params}

