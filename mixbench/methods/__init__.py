"""The method registry: one entry per training method, one line each.

A method owns one training step; see :class:`mixbench.methods.base.Method`. Every registered
mixer is also a supervised method of the same name.
"""

from mixbench.methods.base import METHODS, Method, MethodContext
from mixbench.methods.supervised import Supervised, register_mixer
from mixbench.mixing import MIXERS

METHODS.register("vanilla", doc="plain supervised training, no mixing", params={})(Supervised)
for _entry in MIXERS:
    register_mixer(_entry.name, _entry.factory)

__all__ = ["METHODS", "Method", "MethodContext", "Supervised", "build_method"]


def build_method(name: str, params: dict, ctx: MethodContext) -> Method:
    """Instantiate the registered method ``name`` with validated ``params``."""
    return METHODS.get(name)(ctx, **params)
