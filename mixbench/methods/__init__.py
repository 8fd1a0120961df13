"""The method registry: one entry per training method, one line each.

A method owns one training step; see :class:`mixbench.methods.base.Method`. Every registered
mixer is also a supervised method of the same name.
"""

from mixbench.methods.automix import AutoMix
from mixbench.methods.base import METHODS, Method, MethodContext
from mixbench.methods.fixmatch import DMixMatch, FixMatch
from mixbench.methods.patchmix import LOSS_PARAMS as PATCH_LOSS_PARAMS
from mixbench.methods.patchmix import PatchMixMethod
from mixbench.methods.samix import SAMix
from mixbench.methods.supervised import PROB, Supervised, register_mixer
from mixbench.mixing import FILE_MIXERS, MIXERS, PatchMix


def _register(name: str, cls: type[Method]) -> None:
    doc = (cls.__doc__ or name).strip().splitlines()[0]
    METHODS.register(name, doc=doc, params=cls.params, check=cls.check, differs=cls.differs)(cls)


METHODS.register("vanilla", doc="plain supervised training, no mixing", params={})(Supervised)
for _entry in MIXERS:
    if _entry.name != "patchmix":  # patchmix adds patch-level losses: its own method below
        register_mixer(_entry.name, _entry.factory)
METHODS.register("patchmix", doc=PatchMixMethod.__doc__.strip().splitlines()[0],
                 params={**PatchMix.params, "prob": PROB, **PATCH_LOSS_PARAMS}, check=PatchMix.check,
                 differs=PatchMix.differs, mixer=PatchMix)(PatchMixMethod)
_register("automix", AutoMix)
_register("samix", SAMix)
_register("fixmatch", FixMatch)
_register("dmixmatch", DMixMatch)
for _name, _cls in FILE_MIXERS.items():  # samixp: a frozen pre-trained Mixer loaded from a file
    register_mixer(_name, _cls)

__all__ = ["METHODS", "Method", "MethodContext", "Supervised", "build_method"]


def build_method(name: str, params: dict, ctx: MethodContext) -> Method:
    """Instantiate the registered method ``name`` with validated ``params``."""
    return METHODS.get(name)(ctx, **params)
