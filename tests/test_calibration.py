"""Calibration: ECE / MCE / NLL against hand computations, the reliability diagram, the evaluator."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torch import nn

from mixbench.evaluate import EVALUATORS, Calibration, EvalContext, calibration_counts, reliability_diagram
from mixbench.models import build_model

CPU = EvalContext(torch.device("cpu"))


def two_class_logits(confidences: list[float], correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [logit(p), 0] (so the max softmax probability of class 0 is p); label 0 when correct, else 1."""
    z = torch.tensor([[math.log(p / (1 - p)), 0.0] for p in confidences])
    y = torch.tensor([0 if ok else 1 for ok in correct])
    return z, y


def stats_of(z: torch.Tensor, y: torch.Tensor):
    return calibration_counts(nn.Identity(), [(z, y)], CPU)


def test_hand_computed_ece_mce_nll():
    conf = [0.95, 0.97, 0.75, 0.62, 0.55]
    correct = [True, False, True, False, True]
    stats = stats_of(*two_class_logits(conf, correct))
    # bins (b/15, (b+1)/15]: 0.95, 0.97 -> 14 (0.933, 1]; 0.75 -> 11 (0.733, 0.8]; 0.62 -> 9 (0.6, 0.667];
    # 0.55 -> 8 (0.533, 0.6]
    expected_count = [0.0] * 15
    for b in (14, 14, 11, 9, 8):
        expected_count[b] += 1
    assert list(stats.count) == expected_count
    assert stats.n == 5
    # |acc_b - conf_b|: bin 14: |1/2 - 0.96| = 0.46 (2 images); 11: |1 - 0.75| = 0.25; 9: |0 - 0.62| = 0.62;
    # 8: |1 - 0.55| = 0.45  ->  ECE = (2·0.46 + 0.25 + 0.62 + 0.45) / 5 = 0.448, MCE = 0.62
    assert stats.ece == pytest.approx(44.8, abs=1e-4)
    assert stats.mce == pytest.approx(62.0, abs=1e-4)
    # NLL: -log p of the true class: p when correct, 1 - p when wrong
    nll = -(math.log(0.95) + math.log(0.03) + math.log(0.75) + math.log(0.38) + math.log(0.55)) / 5
    assert stats.nll == pytest.approx(nll, rel=1e-5)
    assert stats.metrics() == {"ece": stats.ece, "mce": stats.mce, "nll": stats.nll}


def test_mce_ignores_empty_bins_and_ten_classes():
    # one confident, correct image over 10 classes: logits [5, 0, ..., 0] -> p = e^5 / (e^5 + 9)
    z = torch.zeros(1, 10)
    z[0, 3] = 5.0
    stats = stats_of(z, torch.tensor([3]))
    p = math.exp(5) / (math.exp(5) + 9)
    assert stats.count[14] == 1 and sum(stats.count) == 1
    assert stats.ece == pytest.approx(100 * (1 - p), abs=1e-4)
    assert stats.mce == pytest.approx(100 * (1 - p), abs=1e-4)
    assert stats.nll == pytest.approx(-math.log(p), rel=1e-5)


def test_perfectly_calibrated_gives_zero_ece():
    # in each bin the fraction correct equals the confidence: 9/10 at 0.9, 3/4 at 0.75, 1/2 at 0.5 (a tie)
    conf = [0.9] * 10 + [0.75] * 4 + [0.5] * 2
    correct = [True] * 9 + [False] + [True] * 3 + [False] + [True, False]
    stats = stats_of(*two_class_logits(conf, correct))
    assert stats.n == 16
    assert stats.ece == pytest.approx(0.0, abs=1e-4)
    assert stats.mce == pytest.approx(0.0, abs=1e-4)


def test_empty_loader():
    stats = calibration_counts(nn.Identity(), [], CPU)
    assert stats.n == 0 and stats.metrics() == {"ece": 0.0, "mce": 0.0, "nll": 0.0}


def test_reliability_diagram_png(tmp_path):
    stats = stats_of(*two_class_logits([0.95, 0.97, 0.75, 0.62, 0.55], [True, False, True, False, True]))
    path = tmp_path / "plots" / "reliability.png"
    assert reliability_diagram(stats, path, "resnet10 / mixup") == path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (300, 300)
        assert len(img.convert("RGB").getcolors(1 << 16)) > 3  # bars, diagonal, text: not a blank canvas
    assert sorted(p.name for p in path.parent.iterdir()) == ["reliability.png"]  # no temporary left behind
    reliability_diagram(stats_of(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)), path, "empty")  # replaced
    with Image.open(path) as img:
        assert img.size == (300, 300)


class OneHead:
    def __init__(self, model: nn.Module):
        self.model = model

    def classifiers(self) -> dict[str, nn.Module]:
        return {"": self.model}


def test_evaluator_on_tiny_classifier_batch_split_invariant():
    torch.manual_seed(0)
    model = build_model("resnet10_cifar", 10, width=0.125)
    model.train()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    assert EVALUATORS.get("calibration") is Calibration
    evaluator = Calibration()
    assert evaluator.protocol == "15 equal-width confidence bins, max softmax probability, clean test set"
    one = evaluator(OneHead(model), [(x, y)], CPU)
    two = evaluator(OneHead(model), [(x[:4], y[:4]), (x[4:], y[4:])], CPU)
    assert model.training  # eval mode only for the pass
    assert set(one) == {"ece", "mce", "nll"}
    assert all(math.isfinite(v) for v in one.values())
    assert 0 <= one["ece"] <= one["mce"] + 1e-9 <= 100 and one["nll"] > 0  # ECE is a weighted mean of gaps
    assert one == two
    stats = calibration_counts(model, [(x, y)], CPU)
    assert stats.n == 6 and sum(stats.count) == 6
    with torch.no_grad():
        model.eval()
        expected_nll = nn.functional.cross_entropy(model(x), y).item()
    assert one["nll"] == pytest.approx(expected_nll, rel=1e-5)
