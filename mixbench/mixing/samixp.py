"""SAMix^P: a Mixer pre-trained by SAMix (or AutoMix), frozen, used as an off-the-shelf mixing policy.

``mixer.pt`` (written by every AutoMix/SAMix run) holds the Mixer and the momentum backbone whose
stage features it reads. Per batch: ``z = f_k^{(l)}(x)`` (frozen, eval mode, no grad),
``λ ~ Beta(α, α)``, ``S₀ = 1 − M(z, z[π], λ)``, ``x̃ = S₀ ⊙ x + (1 − S₀) ⊙ x[π]``; λ within
``lam_margin`` of 0 or 1 falls back to plain Mixup. Labels use the sampled λ, as in SAMix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from mixbench.errors import UserError
from mixbench.mixing.base import (
    LAM_MODE,
    PAIRING,
    Mixer,
    MixOutput,
    MixRNG,
    alpha_param,
    draw_pairing,
    sample_lambda,
    to_device,
)
from mixbench.mixing.learned import MixBlock, stage_features, truncate_backbone
from mixbench.params import Param


def load_mixer_file(path: str | Path) -> tuple[torch.nn.Module, MixBlock, int, dict[str, Any]]:
    """(frozen encoder backbone, frozen Mixer, feature stage, encoder spec) from a ``mixer.pt``
    or the run folder holding it."""
    from mixbench.checkpoint import load_file
    from mixbench.models import build_backbone

    path = Path(path)
    where = "[method].mixer_checkpoint"
    file = path / "mixer.pt" if path.is_dir() else path
    if path.is_dir() and not file.is_file():  # a recipe's results folder: use its single run
        found = sorted(path.glob("*/mixer.pt"))
        if len(found) > 1:
            raise UserError(f"{where}: {path} holds {len(found)} runs with a mixer.pt "
                            f"({', '.join(p.parent.name for p in found)}); name one run folder")
        file = found[0] if found else file
    if not file.is_file():
        raise UserError(f"{where}: {file} not found; give a run folder of an automix or samix run "
                        "or its mixer.pt")
    obj = load_file(file, where)
    if not isinstance(obj, dict) or obj.get("kind") != "mixbench-mixer":
        raise UserError(f"{where}: {file} is not a mixbench mixer.pt (written by automix or samix runs)")
    spec = obj["encoder_spec"]
    try:
        encoder = build_backbone(spec["name"], width=spec["width"], image_size=spec["image_size"],
                                 patch_size=spec.get("patch_size"))
        encoder = truncate_backbone(encoder, int(obj["feature_stage"]))
        encoder.load_state_dict(obj["encoder"])
        block = MixBlock(**obj["mixer_config"])
        block.load_state_dict(obj["mixer"])
    except Exception as e:  # a file from an incompatible version
        raise UserError(f"{where}: {file} does not rebuild ({type(e).__name__}: {e})") from None
    for module in (encoder, block):
        module.requires_grad_(False).eval()
    return encoder, block, int(obj["feature_stage"]), spec


class SAMixP(Mixer):
    """SAMix^P: a pre-trained, frozen SAMix/AutoMix Mixer loaded from an earlier run's mixer.pt."""

    name: ClassVar[str] = "samixp"
    params: ClassVar[dict[str, Param]] = {
        "mixer_checkpoint": Param("path", doc="run folder (or mixer.pt) of an automix or samix run"),
        "alpha": alpha_param(2.0),
        "lam_mode": LAM_MODE,
        "pairing": PAIRING,
        "lam_margin": Param("float", 0.08, "λ this close to 0 or 1 uses plain Mixup", low=0, high=0.5,
                            high_open=True),
        "clean_loss": Param("bool", False, "also train on the clean batch (CE), as SAMix does"),
    }
    differs: ClassVar[str] = "not implemented in the reference (openmixup raises NotImplementedError)"

    def __init__(self, **values: Any):
        super().__init__(**values)
        self.encoder, self.block, self.feature_stage, self.source = load_mixer_file(self.mixer_checkpoint)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n = x.shape[0]
        if next(self.block.parameters()).device != x.device:
            self.encoder.to(x.device)
            self.block.to(x.device)
        lam_np = sample_lambda(rng, self.alpha, n, self.lam_mode)
        lam = to_device(lam_np, x.device)
        index = draw_pairing(rng, n, x.device, self.pairing)
        if self.lam_mode == "batch" and min(lam_np[0], 1 - lam_np[0]) <= self.lam_margin:
            s0 = lam.view(n, 1, 1, 1).expand(n, 1, *x.shape[-2:])  # plain Mixup, no Mixer call
        else:
            with torch.no_grad():
                z = stage_features(self.encoder, x, self.feature_stage)
                s0 = 1.0 - self.block(z, z[index], lam, x.shape[-2:])
                near_edge = (torch.minimum(lam, 1 - lam) <= self.lam_margin).view(n, 1, 1, 1)
                s0 = torch.where(near_edge, lam.view(n, 1, 1, 1), s0)
        s0 = s0.to(x.dtype)
        return MixOutput(torch.lerp(x[index], x, s0), y, y[index], lam, index, s0)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": {k: self.source.get(k) for k in ("name", "width", "dataset")}}
