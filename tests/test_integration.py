"""One real-data run: a tiny network, one epoch, a subset of the shared CIFAR-10 JPEG archive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixbench.cli import app

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="shared CIFAR-10 JPEG archive not present")
def test_one_epoch_on_real_cifar10_beats_chance(tmp_path):
    from typer.testing import CliRunner

    recipe = tmp_path / "cifar_tiny.toml"
    recipe.write_text(f"""
name = "cifar_tiny"
[data]
source = "imagefolder"
root = "{SHARED_CIFAR}"
train_size = 5000
test_size = 1000
cache_dir = "{tmp_path / 'cache'}"
mean = [0.4914, 0.4822, 0.4465]
std = [0.2023, 0.1994, 0.201]
[model]
name = "resnet10_cifar"
width = 0.25
[train]
epochs = 1
batch_size = 64
lr = 0.05
nesterov = true
weight_decay = 5e-4
log_every = 20
""")
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "res"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (summary,) = (tmp_path / "res" / "cifar_tiny").glob("*/summary.json")
    s = json.loads(summary.read_text())
    assert s["status"] == "completed" and s["dataset"] == "imagefolder"
    assert s["top1_last"] > 20.0, s  # chance is 10 %
