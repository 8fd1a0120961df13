"""``timm:`` vision transformers at CIFAR sizes: ``[model].patch_size``, img_size from the data, dynamic
image size for smaller crops, no download, validation of the key, run ids unchanged without it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch

from mixbench.errors import RecipeError, UserError
from mixbench.models import build_backbone, build_model
from mixbench.models.timm_bridge import patch_size_problem, timm_backbone
from mixbench.recipe import load_recipe

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3}


@pytest.mark.parametrize("name,width", [("vit_tiny_patch16_224", 192), ("vit_small_patch16_224", 384)])
def test_vit_at_32_px_with_4_pixel_patches(name, width):
    b = timm_backbone(name, image_size=32, patch_size=4, device="meta")  # shapes only: no memory, no init time
    vit = b.model
    assert vit.patch_embed.patch_size == (4, 4) and vit.patch_embed.grid_size == (8, 8)
    assert vit.pos_embed.shape == (1, 65, width) and b.num_features == width
    x = torch.empty(2, 3, 32, 32, device="meta")
    assert b.forward_map(x).shape == (2, 65, width) and b(x).shape == (2, width)


def test_build_model_takes_the_patch_size():
    m = build_model("timm:test_vit", 10, image_size=32, patch_size=4).eval()
    assert m.backbone.model.patch_embed.grid_size == (8, 8)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_64_px_with_8_pixel_patches_and_smaller_crops_resample_the_positions():
    b = timm_backbone("test_vit", image_size=64, patch_size=8, **TINY).eval()
    assert b.model.patch_embed.grid_size == (8, 8)
    assert b(torch.randn(2, 3, 64, 64)).shape == (2, 48)
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, 48)  # a local crop: 4x4 patches, positions resampled


def test_dynamic_size_changes_nothing_at_the_training_side():
    torch.manual_seed(0)
    dynamic = timm_backbone("test_vit", image_size=32, patch_size=4, **TINY).eval()
    static = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32, patch_size=4, **TINY).eval()
    static.load_state_dict(dynamic.model.state_dict())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(dynamic(x), static(x))


def test_never_downloads(monkeypatch):
    seen = {}
    real = timm.create_model

    def spy(name, **kwargs):
        seen.update(kwargs)
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    timm_backbone("test_vit", image_size=32, patch_size=4, pretrained=True, **TINY)
    assert seen["pretrained"] is False and seen["num_classes"] == 0 and seen["dynamic_img_size"] is True


def test_patch_size_problems():
    assert patch_size_problem(None, 32, "resnet18_cifar") is None
    assert patch_size_problem(4, 32, "timm:vit_tiny_patch16_224") is None
    assert patch_size_problem(4, None, "timm:vit_tiny_patch16_224") is None  # side unknown: checked when built
    msg = patch_size_problem(5, 32, "timm:vit_tiny_patch16_224")
    assert "[model].patch_size = 5" in msg and "valid: 1, 2, 4, 8, 16, 32" in msg
    assert "only to timm vision transformers" in patch_size_problem(4, 32, "resnet18_cifar")
    with pytest.raises(UserError, match="only to timm vision transformers"):
        build_backbone("resnet10_cifar", width=0.125, patch_size=4)
    with pytest.raises(UserError, match="takes no patch_size"):
        build_backbone("timm:resnet10t", image_size=32, patch_size=4)
    with pytest.raises(UserError, match="does not divide"):
        build_backbone("timm:test_vit", image_size=30, patch_size=4)


def _write(tmp_path: Path, model: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(f'name = "vit"\n[data]\nsource = "shapes"\ntrain_size = 200\ntest_size = 50\n'
                    f'[model]\n{model}\n[method]\nname = "dino"\n[train]\nepochs = 1\nbatch_size = 32\n')
    return path


def test_recipe_key_validated_and_run_ids_unchanged_without_it(tmp_path):
    plain = load_recipe(_write(tmp_path, 'name = "timm:vit_tiny_patch16_224"'))
    assert plain.model["patch_size"] is None and "patch_size" not in plain.to_toml()
    before_the_key = dataclasses.replace(plain, model={k: v for k, v in plain.model.items() if k != "patch_size"})
    assert before_the_key.config_hash() == plain.config_hash()  # earlier recipes keep their run ids
    set4 = load_recipe(_write(tmp_path, 'name = "timm:vit_tiny_patch16_224"\npatch_size = 4'))
    assert set4.model["patch_size"] == 4 and set4.config_hash() != plain.config_hash()
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, 'name = "timm:vit_tiny_patch16_224"\npatch_size = 5'))
    assert any("[model].patch_size = 5 does not divide the 32-pixel image side; valid: 1, 2, 4, 8, 16, 32" in p
               for p in err.value.problems)
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, 'name = "resnet10_cifar"\npatch_size = 4'))
    assert any("applies only to timm vision transformers" in p for p in err.value.problems)
