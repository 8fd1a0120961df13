"""Sample-mixing policies: pure tensor functions of a batch and a random generator.

Every mixer returns a :class:`MixOutput` with the mixed images and all a loss needs.
"""

from mixbench.mixing.base import Mixer, MixOutput, MixRNG, sample_lambda
from mixbench.mixing.cutmix import CutMix
from mixbench.mixing.mixup import Mixup

__all__ = ["MixOutput", "Mixer", "MixRNG", "sample_lambda", "Mixup", "CutMix"]
