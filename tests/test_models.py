"""Backbones: shapes, parameter counts, stage hooks, zero-init, timm bridge, weights files."""

from __future__ import annotations

import pytest
import torch

from mixbench.errors import UserError
from mixbench.models import MODELS, build_model

X = torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("name,width,feat,stages,fmap", [
    ("resnet10_cifar", 0.25, 128, 4, 4), ("resnet18_cifar", 0.125, 64, 4, 4),
    ("resnet34_cifar", 0.125, 64, 4, 4), ("resnet50_cifar", 0.125, 256, 4, 4),
    ("resnext50_32x4d_cifar", 0.125, 256, 4, 4), ("preactresnet18_cifar", 0.125, 64, 4, 4),
    ("wrn28_8_cifar", 0.125, 64, 3, 8),
])
def test_output_shapes(name, width, feat, stages, fmap):
    m = build_model(name, 7, width=width).eval()
    assert m(X).shape == (2, 7)
    assert m.backbone(X).shape == (2, feat) and m.backbone.num_features == feat
    assert m.backbone.forward_map(X).shape[2:] == (fmap, fmap)
    assert m.backbone.num_stages == stages and m.backbone.supports_stage_hook


def test_resnet18_cifar_parameter_count():
    m = build_model("resnet18_cifar", 100)
    assert sum(p.numel() for p in m.parameters()) == 11_220_132  # ~11.2 M, as the CIFAR literature


def test_every_registered_model_builds_tiny():
    for entry in MODELS:
        assert build_model(entry.name, 3, width=0.125)(X).shape == (2, 3), entry.name


def test_stage_hook_called_per_stage_and_its_output_used():
    m = build_model("resnet18_cifar", 5, width=0.125).eval()
    seen = []

    def record(k, h):
        seen.append((k, tuple(h.shape)))
        return h

    base = m.forward_features(X, record)
    assert [k for k, _ in seen] == [0, 1, 2, 3, 4]
    assert [s[2] for _, s in seen] == [32, 32, 16, 8, 4]
    torch.testing.assert_close(base, m.backbone(X))
    zeroed = m.forward_features(X, lambda k, h: torch.zeros_like(h) if k == 2 else h)
    assert not torch.allclose(zeroed, base)


def test_zero_init_residual_makes_blocks_start_as_shortcuts():
    m = build_model("resnet18_cifar", 5, width=0.125)
    blocks = [b for stage in m.backbone.stages for b in stage]
    assert all(torch.all(b.last_bn().weight == 0) for b in blocks)
    m2 = build_model("resnet18_cifar", 5, width=0.125, zero_init_residual=False)
    assert all(torch.all(b.last_bn().weight == 1) for stage in m2.backbone.stages for b in stage)


def test_timm_cnn_and_vit_offline():
    m = build_model("timm:resnet18", 4, image_size=32).eval()
    assert m(X).shape == (2, 4) and m.backbone.num_features == 512
    vit = build_model("timm:vit_tiny_patch16_224", 3, image_size=32).eval()
    assert vit(X).shape == (2, 3) and vit.backbone.num_features == 192


def test_unknown_names_suggest():
    with pytest.raises(UserError, match="did you mean 'resnet18_cifar'"):
        build_model("resnet18_cifra", 10)
    with pytest.raises(UserError, match="unknown timm model 'resnet181'"):
        build_model("timm:resnet181", 10)


def test_hook_on_timm_model_is_a_user_error():
    m = build_model("timm:resnet18", 4)
    with pytest.raises(UserError, match="hidden-stage mixing"):
        m.forward_features(X, lambda k, h: h)


@pytest.mark.parametrize("form", ["classifier", "checkpoint", "backbone"])
def test_weights_round_trip(tmp_path, form):
    src = build_model("resnet18_cifar", 6, width=0.125).eval()
    state = {"classifier": src.state_dict(), "checkpoint": {"model": src.state_dict(), "epoch": 3},
             "backbone": src.backbone.state_dict()}[form]
    path = tmp_path / "w.pt"
    torch.save(state, path)
    dst = build_model("resnet18_cifar", 6, width=0.125, weights=str(path)).eval()
    torch.testing.assert_close(dst.backbone(X), src.backbone(X))
    if form != "backbone":
        torch.testing.assert_close(dst(X), src(X))


def test_weights_of_another_architecture_rejected(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(build_model("wrn28_8_cifar", 6, width=0.125).state_dict(), path)
    with pytest.raises(UserError, match="other.pt does not fit"):
        build_model("resnet18_cifar", 6, width=0.125, weights=str(path))
    with pytest.raises(UserError, match="not found"):
        build_model("resnet18_cifar", 6, weights=str(tmp_path / "missing.pt"))
