"""SaliencyMix (Uddin et al., ICLR 2021).

CutMix whose box is centred on the most salient pixel of the pasted image x[π]: λ ~ Beta(α, α)
gives the box side ratio √(1 − λ); the box is clipped and λ corrected to the kept area.
Saliency is a fine-grained centre-surround contrast computed on the device.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from mixbench.mixing.base import (
    LAM_MODE,
    MIXERS,
    PAIRING,
    Mixer,
    MixOutput,
    MixRNG,
    alpha_param,
    draw_pairing,
    masked_mix,
    sample_lambda,
    to_device,
)
from mixbench.mixing.cutmix import inside_box


def box_mean(img: torch.Tensor, r: int) -> torch.Tensor:
    """Mean of ``img`` [N, 1, H, W] over the (2r+1)² window clipped to the image, via integral images.

    With S the zero-led cumulative sum, a window sum is S[min(i+r+1, H)] − S[max(i−r, 0)] per axis;
    replicate-padding S by r turns both clamps into plain shifted slices.
    """
    h, w = img.shape[-2:]
    k = 2 * r + 1

    def window_sums(a: torch.Tensor) -> torch.Tensor:
        s = F.pad(F.pad(a, (1, 0, 1, 0)).cumsum(2).cumsum(3), (r, r, r, r), mode="replicate")
        s = s[:, :, k:k + h] - s[:, :, :h]
        return s[:, :, :, k:k + w] - s[:, :, :, :w]

    counts = window_sums(torch.ones(1, 1, h, w, device=img.device, dtype=img.dtype))
    return window_sums(img) / counts


def fine_grained_saliency(x: torch.Tensor, radii: tuple[int, ...] = (1, 2, 4, 8)) -> torch.Tensor:
    """[N, H, W] centre-surround saliency: Σ_r |I − mean_{(2r+1)²}(I)| of the intensity image I.

    A box-filter version of Montabone & Soto's fine-grained saliency (OpenCV's
    ``StaticSaliencyFineGrained``), batched on the device with integral images.
    """
    grey = x.float().mean(dim=1, keepdim=True)
    sal = torch.zeros_like(grey)
    for r in radii:
        if 2 * r + 1 > min(grey.shape[-2:]):
            break
        sal += (grey - box_mean(grey, r)).abs()
    return sal[:, 0]


@MIXERS.register()
class SaliencyMix(Mixer):
    """SaliencyMix: CutMix with the box centred on the pasted image's saliency peak."""

    name = "saliencymix"
    params = {"alpha": alpha_param(1.0), "lam_mode": LAM_MODE, "pairing": PAIRING}
    differs: ClassVar[str] = ("on-device box-filter centre-surround saliency instead of OpenCV's "
                              "StaticSaliencyFineGrained; a saliency peak per image (as the paper), "
                              "not one image's peak for the whole batch (openmixup)")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: MixRNG) -> MixOutput:
        n, _, h, w = x.shape
        ratio = torch.sqrt(1.0 - to_device(sample_lambda(rng, self.alpha, n, self.lam_mode), x.device))
        cut_h, cut_w = (h * ratio).long(), (w * ratio).long()
        index = draw_pairing(rng, n, x.device, self.pairing)
        peak = fine_grained_saliency(x).flatten(1).argmax(dim=1)[index]
        cy, cx = peak // w, peak % w
        y0, y1 = (cy - cut_h // 2).clamp(0, h), (cy + cut_h // 2).clamp(0, h)
        x0, x1 = (cx - cut_w // 2).clamp(0, w), (cx + cut_w // 2).clamp(0, w)
        return masked_mix(x, y, index, (~inside_box(y0, y1, x0, x1, h, w)).float())
