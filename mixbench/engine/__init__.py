"""The one training engine: assembly (``build_run``), the loop (``Trainer``), optimiser, schedule,
precision, momentum teachers, checkpoints, torchrun, progress.

``fit`` and friends load lazily, so that methods can use the engine's parts (``engine.momentum``)
without importing the trainer, which imports every method.
"""

from typing import Any

__all__ = ["fit", "resolve_device", "Interrupted", "TrainResult", "Trainer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mixbench.engine import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'mixbench.engine' has no attribute {name!r}")
