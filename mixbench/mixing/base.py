"""The mixer contract shared by every sample-mixing policy.

A mixer maps ``(x, y, rng)`` to ``MixOutput(x̃, y_a, y_b, λ, index, mask)`` where
``x̃ = M ⊙ x + (1 − M) ⊙ x[index]`` (``M = λ`` for Mixup), ``y_b = y[index]`` and ``λ`` is the
realised per-sample weight of the first source ``x`` / label ``y_a`` (shape ``[N]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from mixbench.params import Param

LAM_MODE = Param("str", "batch", "one lambda per batch or per sample", choices=("batch", "sample"))


@dataclass
class MixOutput:
    """Mixed batch plus everything a loss needs."""

    x: torch.Tensor  # [N, C, H, W] mixed images
    y_a: torch.Tensor  # [N] labels of the first source
    y_b: torch.Tensor  # [N] labels of the second source (y[index])
    lam: torch.Tensor  # [N] float32, realised weight of the first source
    index: torch.Tensor  # [N] pairing: sample i is mixed with index[i]
    mask: torch.Tensor | None = None  # [N, 1, H, W] weight of the first source, spatial mixers only


class MixRNG:
    """The mixing generator: NumPy for host-side scalars (λ, boxes), torch for device draws.

    Host-side draws cost no device synchronisation; device draws (the pairing permutation)
    use a ``torch.Generator`` on the batch's device. Both states go into checkpoints.
    """

    def __init__(self, seed: int, device: torch.device):
        self.np = np.random.Generator(np.random.PCG64(seed))
        self.torch = torch.Generator(device=device)
        self.torch.manual_seed(seed)

    def permutation(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randperm(n, device=device, generator=self.torch)

    def state_dict(self) -> dict[str, Any]:
        return {"np": self.np.bit_generator.state, "torch": self.torch.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.np.bit_generator.state = state["np"]
        self.torch.set_state(state["torch"])


def sample_lambda(rng: MixRNG, alpha: float, n: int, mode: str) -> np.ndarray:
    """Draw λ ~ Beta(α, α): one value repeated ``n`` times (``batch``) or ``n`` values (``sample``)."""
    if mode == "batch":
        return np.full(n, rng.np.beta(alpha, alpha))
    return rng.np.beta(alpha, alpha, size=n)


class Mixer:
    """Base class: subclasses declare ``params`` and implement ``__call__``."""

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        raise NotImplementedError  # abstract: every registered mixer overrides it

    def describe(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.params}
