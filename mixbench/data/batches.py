"""What a training method's ``step`` consumes: one small frozen spec per kind of batch.

A method declares its spec and ``build_loaders(cfg, ..., batch=spec)`` returns the matching train
loader; recipe validation asks ``spec.needs_label_split`` instead of a method "scenario" string.

=======================  =====================================================  ====================
spec                     one step yields (per rank, b = B / world_size)        images_per_step
=======================  =====================================================  ====================
LabelledBatch()          ``(x, y)``: b augmented images and their labels        B
SemiSupervisedBatch()    ``SemiBatch``: b labelled + μ·b unlabelled (weak,      B·(1 + μ)
                         strong views)
ViewsBatch(views)        ``Views``: N views of the same b images, view k        B·N
                         augmented by ``views[k]`` (an ``Augment`` or a
                         ``ViewSpec``)
=======================  =====================================================  ====================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mixbench.data.gpu_loader import AUGMENT_KINDS, Augment, Views
from mixbench.data.views import ViewSpec


@dataclass(frozen=True)
class LabelledBatch:
    """Supervised ``(x, y)`` batches augmented by ``[data].augment``."""

    needs_label_split: ClassVar[bool] = False
    description: ClassVar[str] = "labelled (x, y)"


@dataclass(frozen=True)
class SemiSupervisedBatch:
    """FixMatch-style ``SemiBatch`` steps; needs ``[data].labels_per_class`` or ``[data].num_labels``.

    ``strong_ops`` RandAugment ops per image and a Cutout square of side ``cutout · min(H, W)``
    make the strong view (see ``mixbench.data.randaugment``).
    """

    needs_label_split: ClassVar[bool] = True
    description: ClassVar[str] = "semi-supervised"
    strong_ops: int = 2
    cutout: float = 0.5


@dataclass(frozen=True)
class ViewsBatch:
    """N augmented views of the same images per step (``Views``), view k augmented by ``views[k]``.

    ``[data].augment`` is not used: each view names its own :class:`Augment` (crop/flip kinds) or
    :class:`~mixbench.data.views.ViewSpec` (self-supervised views: crop, colour, blur, solarisation;
    views may differ in output size, as multi-crop's global and local crops do).
    """

    views: tuple[Augment | ViewSpec, ...]
    needs_label_split: ClassVar[bool] = False
    description: ClassVar[str] = "multi-view"

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(self.views))
        if not self.views:
            raise ValueError("ViewsBatch needs at least one view")
        for v in self.views:
            if isinstance(v, ViewSpec):
                if problems := v.problems():
                    raise ValueError(f"ViewsBatch view {v.describe()}: " + "; ".join(problems))
            elif not isinstance(v, Augment) or v.kind not in AUGMENT_KINDS:
                raise ValueError(f"ViewsBatch views must be ViewSpec or Augment with kind in {AUGMENT_KINDS}, "
                                 f"got {v!r}")

    @classmethod
    def from_kinds(cls, kinds: tuple[str, ...] | list[str], **augment_kw) -> ViewsBatch:
        """``ViewsBatch.from_kinds(("rrc_flip", "rrc_flip"))``: one ``Augment(kind, **augment_kw)`` per view."""
        return cls(tuple(Augment(kind, **augment_kw) for kind in kinds))


BatchSpec = LabelledBatch | SemiSupervisedBatch | ViewsBatch

__all__ = ["LabelledBatch", "SemiSupervisedBatch", "ViewsBatch", "BatchSpec", "Views"]
