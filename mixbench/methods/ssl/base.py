"""What every self-supervised method shares: N views, an online linear classifier, monitors.

A self-supervised method is a :class:`~mixbench.methods.base.Method` whose batch is N augmented views
of the same images (``ViewsBatch``, built from ``[method].views`` and ``[method].view_overrides``).
Besides its own loss it trains the online linear classifier ``h(sg(f(x_1)))`` on detached features of
the first view, ``L = L_ssl + CE(h(sg(f(x_1))), y)``, at its own fixed lr (solo-learn's protocol):
no gradient reaches the backbone, so the run's ``top1`` is the online linear top-1 of a frozen-feature
probe. Per step it logs ``embed_std``, the mean over dimensions of the per-dimension std of the
L2-normalised embeddings (≈ 1/√d when healthy, → 0 when the embeddings collapse), and every
``knn_every`` epochs a weighted kNN monitor on unaugmented training features (``knn_top1``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.data.batches import BatchSpec, ViewsBatch
from mixbench.data.gpu_loader import Views
from mixbench.methods.base import Method, MethodContext, ParamGroup
from mixbench.params import Param, RunFacts

SSL_PARAMS: dict[str, Param] = {
    "views": Param("str", "asymmetric", "view augmentation preset (solo-learn's CIFAR views)",
                   choices=("asymmetric", "symmetric")),
    "view_overrides": Param("table", {}, "per-view changes to the preset: view_overrides.<k>.<field> = value "
                                         "(k counts views from 0; fields as in `mixbench list views`)"),
    "classifier_lr": Param("float", 0.1, "fixed lr of the online linear classifier on detached features",
                           low=0, low_open=True),
    "knn_every": Param("int", 0, "kNN monitor every this many epochs (and at the end); 0: off", low=0),
    "knn_k": Param("int", 200, "neighbours of the kNN monitor", low=1),
    "knn_t": Param("float", 0.1, "temperature of the kNN monitor's exp(s/T) vote", low=0, low_open=True),
}


def momentum_problems(cls: type[Method], values: dict[str, Any], where: str, origin: dict[str, str]) -> list[str]:
    """τ grows from ``momentum`` to ``momentum_end``: a smaller end is a recipe error (methods that declare both)."""
    if "momentum" not in cls.params or "momentum_end" not in cls.params:
        return []
    start = values.get("momentum", cls.params["momentum"].default)
    end = values.get("momentum_end", cls.params["momentum_end"].default)
    if isinstance(start, float) and isinstance(end, float) and end < start:
        src = origin.get("momentum_end", origin.get("momentum", "recipe"))
        return [f"{src}: {where}.momentum_end = {end:g} is below momentum = {start:g}; τ grows from momentum "
                "to momentum_end (use momentum_end >= momentum)"]
    return []


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of std_i(ẑ_i), ẑ = z/‖z‖ (SimSiam's collapse signal; ≈ 1/√d healthy, 0 collapsed)."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


class SelfSupervised(Method):
    """Base of the self-supervised methods (see the module docstring).

    Subclasses build their heads in ``__init__`` (after ``super().__init__``), list the modules the
    optimiser trains in :meth:`ssl_modules`, and implement :meth:`ssl_loss` on the views' tensors,
    returning ``{"loss": L_ssl, ..., "embedding": z}`` where ``z`` feeds the collapse signal.
    """

    params: ClassVar[dict[str, Param]] = SSL_PARAMS
    n_views: ClassVar[int] = 2  # views per image the method consumes (multi-crop methods override)
    reported: ClassVar[str] = "online linear classifier on detached backbone features (solo-learn protocol)"

    def __init__(self, ctx: MethodContext, **values: Any):
        super().__init__(ctx, **values)
        self.backbone = self.model.backbone
        self.feature_dim = self.backbone.num_features

    # ----------------------------------------------------------------- the batch

    @classmethod
    def view_specs(cls, values: dict[str, Any]) -> tuple:
        """The ViewSpecs of ``[method].views`` with ``[method].view_overrides`` applied."""
        from mixbench.data.views import resolve_views

        preset = values.get("views", cls.params["views"].default)
        overrides = values.get("view_overrides", cls.params["view_overrides"].default)
        return tuple(resolve_views(preset, overrides, n_views=cls.n_views))

    @classmethod
    def batch_spec(cls, values: dict[str, Any]) -> BatchSpec:
        return ViewsBatch(cls.view_specs(values))

    @classmethod
    def check(cls, values: dict[str, Any], where: str, origin: dict[str, str],
              facts: RunFacts | None = None) -> list[str]:
        from mixbench.data.views import view_problems

        preset = values.get("views", cls.params["views"].default)
        overrides = values.get("view_overrides", cls.params["view_overrides"].default)
        src = origin.get("view_overrides", origin.get("views", "recipe"))
        out = [f"{src}: {where}.view_overrides: {p}" for p in view_problems(preset, overrides, n_views=cls.n_views)]
        return out + momentum_problems(cls, values, where, origin)

    # ----------------------------------------------------------------- the step

    def ssl_modules(self) -> dict[str, nn.Module]:
        """Named modules the optimiser trains on the schedule (the backbone and the method's heads)."""
        return {"backbone": self.backbone}

    def ssl_loss(self, views: tuple[torch.Tensor, ...], feats0: torch.Tensor) -> dict[str, torch.Tensor]:
        """The method's loss on the views; ``feats0`` = f(views[0]) (pooled backbone features, with graph)."""
        raise NotImplementedError

    def forward(self, batch: Views) -> dict[str, torch.Tensor]:
        views, y = batch
        feats0 = self.backbone(views[0]).flatten(1)
        out = self.ssl_loss(tuple(views), feats0)
        z = out.pop("embedding")
        online = F.cross_entropy(self.model.head(feats0.detach()), y)
        out["loss_ssl"] = out["loss"].detach()
        out["loss_online"] = online.detach()
        out["embed_std"] = embedding_std(z)
        out["loss"] = out["loss"] + online
        return out

    # ----------------------------------------------------------------- the engine's view of it

    def param_groups(self) -> list[ParamGroup]:
        groups = [ParamGroup(name, module) for name, module in self.ssl_modules().items()]
        groups.append(ParamGroup("online_classifier", self.model.head, fixed_lr=self.classifier_lr,
                                 weight_decay=0.0))
        return groups

    def encoder(self) -> nn.Module:
        return self.backbone

    def monitor(self, epoch: int, last: bool, data: Any) -> dict[str, float]:
        """Every ``knn_every`` epochs (and at the end): weighted kNN top-1 of the unaugmented features."""
        if not self.knn_every or not (last or epoch % self.knn_every == 0):
            return {}
        from mixbench.evaluate.features import extract_features
        from mixbench.evaluate.knn import KNNAccuracy

        knn = KNNAccuracy([self.knn_k], [self.knn_t])
        kw = {"batch": 500, "device": data.train_x.device}
        train_f = extract_features(self.backbone, data.train_x, data.mean, data.std, **kw)
        test_f = extract_features(self.backbone, data.test_x, data.mean, data.std, **kw)
        return {"knn_top1": knn.metrics(train_f, data.train_y, test_f, data.test_y, len(data.classes))["knn_top1"]}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["top1"] = self.reported
        if self.knn_every:
            out["knn_monitor"] = (f"weighted kNN top-1 every {self.knn_every} epochs and at the end: k={self.knn_k}, "
                                  f"T={self.knn_t:g}, cosine on L2-normalised pooled backbone features, "
                                  "unaugmented train and test images, vote Σ exp(s/T)")
        return out


__all__ = ["SSL_PARAMS", "SelfSupervised", "embedding_std", "momentum_problems"]
