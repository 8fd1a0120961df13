"""Sample-mixing policies: batched tensor functions of a batch and a random generator.

Every mixer returns a :class:`MixOutput` with the mixed images and all a loss needs. A new
mixer is one file whose class carries ``@MIXERS.register()``, and one import below.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixbench.mixing.attentivemix import AttentiveMix
from mixbench.mixing.base import MIXERS, Mixer, MixOutput, MixRNG, forward_mixed, identity_mix, sample_lambda
from mixbench.mixing.cutmix import CutMix
from mixbench.mixing.fmix import FMix
from mixbench.mixing.gridmix import GridMix
from mixbench.mixing.manifoldmix import ManifoldMix
from mixbench.mixing.mixup import Mixup
from mixbench.mixing.patchmix import PatchMix
from mixbench.mixing.puzzlemix import PuzzleMix
from mixbench.mixing.resizemix import ResizeMix
from mixbench.mixing.saliencymix import SaliencyMix
from mixbench.mixing.samixp import SAMixP
from mixbench.mixing.smoothmix import SmoothMix
from mixbench.mixing.switch import Switch, switch_params

Switch.params = switch_params()  # every mixer module above has registered its mixer by now

# Mixers that need a file (a pre-trained Mixer): not in MIXERS, whose entries all build from defaults.
FILE_MIXERS: dict[str, type[Mixer]] = {"samixp": SAMixP}


def build_mixer(name: str, params: dict[str, Any] | None = None, *, model: nn.Module | None = None,
                device: torch.device | None = None) -> Mixer:
    """A ready mixer: validated ``params`` (defaults filled), bound to ``model`` when it needs one."""
    from mixbench.errors import RecipeError
    from mixbench.params import check_table

    cls = FILE_MIXERS[name] if name in FILE_MIXERS else MIXERS.get(name)
    values, problems = check_table(dict(params or {}), cls.params, "[method]", {})
    problems = problems or cls.check(values, "[method]", {})
    if problems:
        raise RecipeError(problems)
    mixer = cls(**values)
    if mixer.needs_model:
        if model is None:
            raise ValueError(f"mixer '{name}' needs a model")
        mixer.bind(model, device or next(model.parameters()).device)
    return mixer


__all__ = ["MIXERS", "MixOutput", "Mixer", "MixRNG", "sample_lambda", "forward_mixed", "identity_mix",
           "build_mixer", "Mixup", "CutMix", "ManifoldMix", "FMix", "SaliencyMix", "SmoothMix", "GridMix",
           "ResizeMix", "AttentiveMix", "PuzzleMix", "Switch", "SAMixP", "PatchMix", "FILE_MIXERS"]
