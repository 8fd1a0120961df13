"""Occlusion and FGSM robustness of the reported classifier, and ``mixbench evaluate`` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mixbench.cli import app
from mixbench.engine import fit
from mixbench.evaluate.base import EvalContext, reported_classifier
from mixbench.evaluate.features import EvalData
from mixbench.evaluate.robustness import (
    FGSM,
    Occlusion,
    fgsm_perturb,
    occlusion_mask,
    occlusion_positions,
)
from mixbench.evaluate.topk import topk_accuracy
from mixbench.models import build_model
from mixbench.recipe import load_recipe

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CPU = EvalContext(torch.device("cpu"))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("resnet10_cifar", 10, width=0.125, zero_init_residual=False).eval()
    x = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8)
    y = torch.randint(0, 10, (24,))
    data = EvalData(x[:0], y[:0], x, y, MEAN, STD, [str(i) for i in range(10)])
    return model, data


def _clean_top1(model, data, batch=10):
    from mixbench.data.gpu_loader import Normalize

    norm = Normalize(data.mean, data.std, torch.device("cpu"))
    loader = [(norm(data.test_x[i:i + batch]), data.test_y[i:i + batch]) for i in range(0, len(data.test_y), batch)]
    return topk_accuracy(model, loader, CPU)[0]


def test_occluder_of_size_zero_is_clean_accuracy(setup):
    model, data = setup
    m = Occlusion(sizes=[0.0, 0.5], batch=10)(model, data, CPU)
    assert m["occlusion_top1@0"] == pytest.approx(_clean_top1(model, data))
    assert set(m) == {"occlusion_top1@0", "occlusion_top1@0.5", "occlusion_auc"}
    assert m["occlusion_auc"] == pytest.approx((m["occlusion_top1@0"] + m["occlusion_top1@0.5"]) / 2)
    default = Occlusion(batch=7)
    assert [f"occlusion_top1@{s:g}" for s in default.sizes][-1] == "occlusion_top1@0.9" and len(default.sizes) == 10


@pytest.mark.parametrize("s", [0.0, 0.1, 0.3, 0.5, 0.9])
def test_occlusion_mask_area_and_reproducible_positions(s):
    n, h = 50, 32
    u = occlusion_positions(n, seed=0, device=torch.device("cpu"))
    assert torch.equal(u, occlusion_positions(n, seed=0, device=torch.device("cpu")))
    side = round(s * h)
    mask = occlusion_mask(u, side, h, h)
    assert mask.shape == (n, 1, h, h) and mask.dtype == torch.bool
    assert (mask.flatten(1).sum(1) == side * side).all()
    assert torch.equal(mask, occlusion_mask(u, side, h, h))
    if 0 < side < h:  # positions vary between images
        assert len({tuple(m.nonzero()[0].tolist()) for m in mask}) > 1


def test_fgsm_eps_zero_is_clean_and_linf_is_eps(setup):
    model, data = setup
    m = FGSM(eps=[0.0], batch=10)(model, data, CPU)
    clean = _clean_top1(model, data)
    assert m["fgsm_top1@eps=0/255"] == pytest.approx(clean) == pytest.approx(m["fgsm_top1"])
    assert m["fgsm_clean_top1"] == pytest.approx(clean)
    from mixbench.data.gpu_loader import Normalize

    x = Normalize(MEAN, STD, torch.device("cpu"))(data.test_x[:8])
    std = torch.tensor(STD).view(1, 3, 1, 1)
    for eps in (1 / 255, 8 / 255):
        _, (adv,) = fgsm_perturb(model, x, data.test_y[:8], [eps], MEAN, STD, clamp=False)
        assert ((adv - x) * std).abs().amax().item() == pytest.approx(eps, rel=1e-4)
        _, (clamped,) = fgsm_perturb(model, x, data.test_y[:8], [eps], MEAN, STD)
        pixels = clamped * std + torch.tensor(MEAN).view(1, 3, 1, 1)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert all(p.grad is None for p in model.parameters())
    assert reported_classifier(model) is model


def test_evaluate_cli_stores_and_reuses(tiny_recipe, tmp_path):
    result = fit(load_recipe(tiny_recipe(name="rob", epochs=1, train_size=100)), out_root=tmp_path / "r",
                 device=torch.device("cpu"))
    run = result.run_dir
    runner = CliRunner()
    args = ["evaluate", str(run), "--device", "cpu", "--batch", "50"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    for name in ("calibration", "occlusion", "fgsm"):
        (stored,) = (run / "evals").glob(f"{name}-*/result.json")
        assert json.loads(stored.read_text())["evaluator"] == name
    occ = json.loads(next((run / "evals").glob("occlusion-*/result.json")).read_text())["metrics"]
    assert "occlusion_top1@0.1" in occ and "occlusion_auc" in occ
    assert (run / "reliability.png").is_file()
    assert "fgsm_top1@eps=1/255" in first.output and "ece" in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and second.output.count("reused the stored result") == 3, second.output
    bad = runner.invoke(app, ["evaluate", str(run), "--only", "bogus"])
    assert bad.exit_code == 2 and "bogus" in bad.output and "valid: calibration, occlusion, fgsm" in bad.output
    assert "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1
