"""Classification losses over mixed labels, selected by ``[loss] name``."""

from mixbench.losses.decoupled import (
    DecoupledBCE,
    DecoupledCE,
    decoupled_log_softmax,
    dm_weights,
    eta_balanced,
    eta_balanced_terms,
    pow_scale,
    two_hot_targets,
)
from mixbench.losses.mixed import BCE, LOSSES, MixedCE, SoftCE, mixed_targets

__all__ = [
    "LOSSES", "MixedCE", "SoftCE", "BCE", "mixed_targets",
    "DecoupledCE", "DecoupledBCE", "decoupled_log_softmax", "dm_weights", "eta_balanced", "eta_balanced_terms",
    "pow_scale", "two_hot_targets",
]
