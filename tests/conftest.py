"""Shared fixtures: tiny recipes that train in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MIXBENCH_CACHE", str(Path(__file__).resolve().parent / ".cache"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = """
name = "{name}"
seed = 0

[data]
source = "shapes"
train_size = {train_size}
test_size = 100
cache_dir = "{cache}"

[model]
name = "resnet18_cifar"
width = 0.125

[method]
name = "{method}"

[train]
epochs = {epochs}
batch_size = 50
lr = 0.05
log_every = 2

[eval]
batch_size = 100
"""


@pytest.fixture
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "mixbench-cache"


@pytest.fixture
def tiny_recipe(tmp_path: Path, cache_dir: Path):
    """Write a tiny shapes recipe and return its path; keyword arguments fill the template."""

    def make(name: str = "tiny", method: str = "vanilla", epochs: int = 2, train_size: int = 200,
             extra: str = "") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(TINY.format(name=name, method=method, epochs=epochs, train_size=train_size,
                                    cache=cache_dir) + extra)
        return path

    return make


@pytest.fixture
def register_method():
    """Register test methods (``Method`` subclasses) under a name for one test; removed afterwards."""
    from mixbench.methods import METHODS

    names: list[str] = []

    def register(name: str, cls):
        METHODS.register(name)(cls)
        names.append(name)
        return cls

    yield register
    for name in names:
        METHODS.remove(name)
