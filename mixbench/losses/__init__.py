"""Classification losses over mixed labels, selected by ``[loss] name``."""

from mixbench.losses.mixed import BCE, LOSSES, MixedCE, SoftCE, mixed_targets

__all__ = ["LOSSES", "MixedCE", "SoftCE", "BCE", "mixed_targets"]
