"""PuzzleMix and GridMix statistics before and after issue 14's fixes, on one fixed batch.

The batch: 256 shapes images at 32 px (normalised with the data's mean/std), seed 0. PuzzleMix looks
through an untrained ``resnet18_cifar`` (width 0.125, torch seed 0). "Before" is the earlier formulas
with the same random draws: the seam cost on normalised images and the transport distance scaled to
max 1 (the same as t_eps / 2 with the reference's C/(t−1)²). GridMix "before" is ``grid = "centred"``;
"reference" is the port of openmixup's ``rand_grid`` in ``tests/test_puzzlemix_gridmix_reference.py``,
wrap-around bug included, on the draws of ``grid = "openmixup"``. Usage::

    python benchmarks/mixer_stats.py [--batches 8] [--grid-batches 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mixbench.data import DataConfig, load_image_data  # noqa: E402
from mixbench.mixing import MixRNG, build_mixer  # noqa: E402
from mixbench.mixing import puzzlemix as pz  # noqa: E402
from mixbench.models import build_model  # noqa: E402
from tests.test_puzzlemix_gridmix_reference import ref_rand_grid  # noqa: E402


def fixed_batch(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Any]:
    data = load_image_data(DataConfig(source="shapes", train_size=max(n, 256), test_size=64))
    pick = torch.randperm(data.train_x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    return (data.train_x[pick].float() / 255 - mean) / std, data.train_y[pick], data


def puzzlemix_stats(x: torch.Tensor, y: torch.Tensor, data: Any, before: bool, batches: int) -> dict[str, float]:
    """Realised λ and mask statistics over ``batches`` mixer calls (seeds 0..batches−1)."""
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", len(data.classes), width=0.125)
    mixer = build_mixer("puzzlemix", {"t_eps": 0.4} if before else {}, model=model)
    mixer.set_normalization(data.mean, data.std)
    if before:
        mixer.pixels = lambda images: images.float()  # the seam cost on normalised images
    seen: list[dict[str, torch.Tensor]] = []
    solve = pz.solve_mask

    def spy(unary: torch.Tensor, w_v: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
        labels = solve(unary, w_v, w_h)
        seen.append({"w": torch.cat([w_v.flatten(1), w_h.flatten(1)], 1), "labels": labels})
        return labels

    plan = pz.transport_plan
    moved: list[torch.Tensor] = []

    def plan_spy(keep: torch.Tensor, sal: torch.Tensor, t_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        dest, moves = plan(keep, sal, t_eps)
        own = torch.arange(dest.shape[1], device=dest.device)
        moved.append((moves & (dest != own)).float().mean())  # blocks carried to another place
        return dest, moves

    pz.solve_mask, pz.transport_plan = spy, plan_spy
    try:
        lams = [mixer(x, y, MixRNG(seed, x.device)).lam for seed in range(batches)]
    finally:
        pz.solve_mask, pz.transport_plan = solve, plan
    lam = torch.cat(lams)
    half, zero, seam, gamma_d = [], [], [], []
    for s in seen:
        labels, b = s["labels"], s["labels"].shape[-1]
        half.append((labels == 1).float().mean())
        zero.append((labels == 0).float().mean())
        cuts = torch.cat(
            [(labels[:, 1:] != labels[:, :-1]).flatten(1), (labels[:, :, 1:] != labels[:, :, :-1]).flatten(1)], 1
        )
        seam.append(cuts.float().mean())
        base = mixer.beta / (16 * b)
        gamma_d.append((s["w"] / base - 1).mean())  # w = β'(1 + γ d): the data term relative to the label term
    return {
        "lam_mean": lam.mean().item(),
        "lam_std": lam.std().item(),
        "blocks_half": torch.stack(half).mean().item(),
        "blocks_from_pair": torch.stack(zero).mean().item(),
        "cut_edges": torch.stack(seam).mean().item(),
        "gamma_d": torch.stack(gamma_d).mean().item(),
        "moved": torch.stack(moved).mean().item(),
    }


def gridmix_stats(alpha: float, batches: int, n: int = 256) -> dict[str, dict[str, float]]:
    """Realised λ (overall and where sampled λ < 0.2) of each grid, over ``batches`` × ``n`` draws."""
    x, y = torch.zeros(n, 3, 32, 32), torch.zeros(n, dtype=torch.int64)
    out: dict[str, list[np.ndarray]] = {"centred": [], "openmixup": [], "reference": [], "sampled": []}
    for seed in range(batches):
        for grid in ("centred", "openmixup"):
            mix = build_mixer("gridmix", {"alpha": alpha, "grid": grid, "lam_mode": "sample"})(
                x, y, MixRNG(seed, x.device)
            )
            out[grid].append(mix.lam.numpy())
        r = MixRNG(seed, x.device).np  # the draws of grid = "openmixup", in its order
        lam = r.beta(alpha, alpha, n)
        draws = (r.integers(2, 7, n), r.uniform(0.5, 1.0, n), r.uniform(0.5, 2.0, n), r.random(n), r.random(n))
        out["sampled"].append(lam)
        holes = [ref_rand_grid(lam[i], 32, int(draws[0][i]), *(d[i] for d in draws[1:])) for i in range(n)]
        out["reference"].append(1 - torch.stack(holes).mean(dim=(1, 2)).numpy())
    sampled = np.concatenate(out.pop("sampled"))
    low = sampled < 0.2
    return {
        k: {
            "mean": float(np.concatenate(v).mean()),
            "mean_lam<0.2": float(np.concatenate(v)[low].mean()),
            "n_low": int(low.sum()),
        }
        for k, v in out.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8, help="PuzzleMix calls on the fixed batch (seeds 0..)")
    parser.add_argument("--grid-batches", type=int, default=16, help="GridMix calls of 256 per-sample draws")
    parser.add_argument("--only", choices=("puzzlemix", "gridmix"), help="measure one mixer only")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.only != "gridmix":
        x, y, data = fixed_batch()
        print(f"PuzzleMix, {x.shape[0]} shapes images at 32 px, {args.batches} calls (seeds 0..{args.batches - 1}):")
        print(
            f"{'':8}{'λ mean':>8}{'λ std':>8}{'½ blocks':>10}{'x[π] blocks':>13}{'cut edges':>11}{'mean γd':>9}"
            f"{'moved':>7}"
        )
        for name, before in (("before", True), ("after", False)):
            s = puzzlemix_stats(x, y, data, before, args.batches)
            print(
                f"{name:8}{s['lam_mean']:8.3f}{s['lam_std']:8.3f}{s['blocks_half']:10.3f}"
                f"{s['blocks_from_pair']:13.3f}{s['cut_edges']:11.3f}{s['gamma_d']:9.3f}{s['moved']:7.3f}"
            )
    for alpha in (1.0, 0.2) if args.only != "puzzlemix" else ():
        g = gridmix_stats(alpha, args.grid_batches)
        print(
            f"\nGridMix α = {alpha}, {args.grid_batches * 256} per-sample draws "
            f"({g['openmixup']['n_low']} with sampled λ < 0.2): realised λ"
        )
        print(f"{'':34}{'mean':>7}{'mean, λ < 0.2':>15}")
        for key, label in (
            ("centred", "before (grid = 'centred')"),
            ("openmixup", "after (grid = 'openmixup')"),
            ("reference", "openmixup rand_grid (with wrap)"),
        ):
            print(f"{label:34}{g[key]['mean']:7.3f}{g[key]['mean_lam<0.2']:15.3f}")


if __name__ == "__main__":
    main()
