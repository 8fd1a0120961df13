"""Process-group facts the engine needs; single-process today, torchrun-shaped for tomorrow.

``batch_size`` in a recipe is the global batch; each process takes ``global / world_size``.
Only rank 0 writes run records and reports progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mixbench.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def per_device_batch(self, global_batch: int) -> int:
        if global_batch % self.world_size:
            raise UserError(f"[train].batch_size = {global_batch} does not divide over "
                            f"{self.world_size} processes")
        return global_batch // self.world_size

    @classmethod
    def from_env(cls) -> DistInfo:
        info = cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))
        if info.world_size > 1:
            raise UserError("multi-process training (torchrun) is not supported yet; "
                            "run mixbench run without torchrun")
        return info
