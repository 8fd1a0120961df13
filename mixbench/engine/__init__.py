"""The one training engine: loop, optimiser, schedule, precision, EMA, checkpoints, progress."""

from mixbench.engine.trainer import Interrupted, TrainResult, fit, resolve_device

__all__ = ["fit", "resolve_device", "Interrupted", "TrainResult"]
