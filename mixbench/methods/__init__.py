"""The method registry: one entry per training method, one line each.

A method is an ``nn.Module`` that computes one training step; see :class:`mixbench.methods.base.Method`.
Each method file registers itself (``@METHODS.register(...)``); every registered mixer is also a
supervised method of the same name (``supervised.py``).
"""

from typing import Any

from mixbench.methods import automix, fixmatch, patchmix, samix, ssl, supervised  # noqa: F401  (they register)
from mixbench.methods.base import METHODS, Method, MethodContext, ParamGroup
from mixbench.methods.supervised import Supervised

__all__ = ["METHODS", "Method", "MethodContext", "ParamGroup", "Supervised", "build_method"]


def build_method(name: str, params: dict[str, Any], ctx: MethodContext) -> Method:
    """Instantiate the registered method ``name`` with validated ``params``."""
    return METHODS.get(name)(ctx, **params)
