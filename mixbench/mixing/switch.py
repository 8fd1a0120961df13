"""Switch: one of several mixers per batch, drawn with given probabilities (timm / SDMP habit).

With mixers (g_1..g_m) and probabilities (p_1..p_m), each batch is mixed by g_k with k ~ Cat(p);
each g_k keeps its own settings (``[method.<mixer>]`` tables) and reports its own realised λ.
``pairing`` is the pairing of every g_k whose table does not set its own.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from mixbench.errors import did_you_mean
from mixbench.mixing.base import MIXERS, PAIRING, Mixer, MixOutput, MixRNG
from mixbench.params import Param, RunFacts, call_check, check_table, resolve_paths, show


def switch_params() -> dict[str, Param]:
    """Switch's schema: the mixer list, their probabilities, and one settings table per mixer."""
    params = {
        "mixers": Param("str_list", ["mixup", "cutmix"], "mixers to choose from, one per batch"),
        "probs": Param("float_list", [], "their probabilities (normalised; default: equal)"),
        "pairing": PAIRING,
    }
    for entry in MIXERS:
        if entry.name != "switch":
            params[entry.name] = Param("table", {}, f"settings of {entry.name} when switched to")
    return params


def with_pairing(table: dict[str, Any], child: type[Mixer], pairing: Any) -> dict[str, Any]:
    """A child mixer's settings with the switch's ``pairing`` filled in where the table gives none."""
    return table if "pairing" in table or "pairing" not in child.params else {**table, "pairing": pairing}


@MIXERS.register()
class Switch(Mixer):
    """Switch: draw one of several mixers per batch with given probabilities."""

    name = "switch"
    params: dict[str, Param] = {}  # filled by mixbench.mixing once every mixer is registered

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        problems: list[str] = []
        names, probs = values.get("mixers", []), values.get("probs", [])
        src = origin.get("mixers", "recipe")
        valid = [e.name for e in MIXERS if e.name != "switch"]
        bad = [m for m in names if m not in valid]
        if not names or bad:
            hint = did_you_mean(bad[0], valid) if bad and len(bad[0]) < 100 else ""
            problems.append(f"{src}: {where}.mixers: expected names of mixers, got {show(names)}{hint}; "
                            f"valid: {', '.join(valid)}")
        if probs and (len(probs) != len(names) or any(p < 0 for p in probs) or not 0 < sum(probs) < math.inf):
            problems.append(f"{origin.get('probs', 'recipe')}: {where}.probs: expected {len(names)} "
                            f"numbers >= 0 with a positive, finite sum (one per mixer), got {show(probs)}")
        for name in valid:
            table = values.get(name) or {}
            if table and name not in names:
                problems.append(f"{origin.get(name, 'recipe')}: {where}.{name} gives settings for a mixer "
                                f"that {where}.mixers does not use")
                continue
            if name not in names:
                continue
            sub_origin = {k[len(name) + 1:]: v for k, v in origin.items() if k.startswith(name + ".")}
            child = MIXERS.get(name)
            table = with_pairing(table, child, values.get("pairing", PAIRING.default))
            filled, probs_ = check_table(table, child.params, f"{where}.{name}", sub_origin)
            problems += probs_ or call_check(child.check, filled, f"{where}.{name}", sub_origin, facts)
            resolve_paths(filled, child.params, sub_origin)
            values[name] = filled
        return problems

    def __init__(self, **values: Any):
        super().__init__(**values)
        self.children: list[Mixer] = [
            MIXERS.get(m)(**with_pairing(values.get(m) or {}, MIXERS.get(m), self.pairing)) for m in self.mixers]
        p = np.asarray(self.probs or [1.0] * len(self.mixers), dtype=np.float64)
        self.p = p / p.sum()
        self.needs_model = any(c.needs_model for c in self.children)

    def bind(self, model: nn.Module, device: torch.device) -> None:
        for child in self.children:
            if child.needs_model:
                child.bind(model, device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        k = int(rng.np.choice(len(self.children), p=self.p))
        return self.children[k](x, y, rng)

    def describe(self) -> dict[str, Any]:
        return {"mixers": list(self.mixers), "probs": self.p.tolist(), "pairing": self.pairing,
                **{m: c.describe() for m, c in zip(self.mixers, self.children, strict=True)}}
