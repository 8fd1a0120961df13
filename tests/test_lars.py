"""``[train].optimizer = "lars"``: timm's Lars over a method's groups, biases, norms and fixed-lr groups neither
adapted nor decayed (solo-learn's exclude_bias_n_norm), one step against a hand computation of the trust ratio,
and the recipe keys (validated, and outside the run id at their defaults)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.optim import Lars
from torch import nn

from mixbench.engine.optim import LRSchedule, build_optimizer, lars_adapts
from mixbench.methods import METHODS, MethodContext
from mixbench.methods.base import ParamGroup
from mixbench.mixing.base import MixRNG
from mixbench.models import build_model
from mixbench.recipe import RecipeError, load_recipe, validate

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
CFG = {"optimizer": "lars", "lr": 0.5, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
       "no_decay_norm_bias": True, "lars_eta": 0.02, "lars_clip": True}


def test_groups_adapt_matrices_only_and_never_the_online_classifier():
    model = build_model("resnet10_cifar", 4, width=0.125, image_size=16)
    ctx = MethodContext(model=model, loss=None, num_classes=4, device=CPU, rng=MixRNG(0, CPU), epochs=1,
                        steps_per_epoch=1)
    method = METHODS.get("byol")(ctx, proj_hidden=16, proj_out=8, pred_hidden=16)
    opt = build_optimizer(method.param_groups(), CFG)
    assert isinstance(opt, Lars)
    names = [(g["name"], g["params"][0].ndim > 1) for g in opt.param_groups]
    assert names == [("backbone", True), ("backbone", False), ("projector", True), ("projector", False),
                     ("predictor", True), ("predictor", False), ("online_classifier", True),
                     ("online_classifier", False)]
    for g in opt.param_groups:
        matrices, classifier = g["params"][0].ndim > 1, g["name"] == "online_classifier"
        assert all((p.ndim > 1) == matrices for p in g["params"])
        assert lars_adapts(g) == (matrices and not classifier), g["name"]
        assert g["weight_decay"] == (1e-4 if matrices and not classifier else 0.0)
        assert (g["trust_coeff"], g["trust_clip"], g["momentum"]) == (0.02, True, 0.9)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(method.parameters())) - len(
        list(method.target.parameters()))  # everything trained, the momentum target excepted


def test_one_step_matches_the_trust_ratio_by_hand():
    """w' = w − lr·r·(g + λw), r = min(η‖w‖/(‖g‖ + λ‖w‖) / lr, 1) for the weight; b' = b − lr·g for the bias;
    the fixed-lr head: h' = h − lr_h·g (first step: the momentum buffer is the step itself)."""
    torch.manual_seed(0)
    layer, head = nn.Linear(3, 2), nn.Linear(2, 2)
    opt = build_optimizer([ParamGroup("layer", layer), ParamGroup("head", head, fixed_lr=0.1, weight_decay=0.0)], CFG)
    LRSchedule({"lr": 0.5, "min_lr": 0.0, "schedule": "constant", "epochs": 1, "warmup_epochs": 0,
                "warmup_start": 0.0, "milestones": [], "gamma": 0.1}, 1).apply(opt, 0)
    before = {n: p.detach().clone() for n, p in [("w", layer.weight), ("b", layer.bias), ("h", head.weight),
                                                  ("hb", head.bias)]}
    for p in (*layer.parameters(), *head.parameters()):
        p.grad = torch.randn_like(p)
    grads = {"w": layer.weight.grad.clone(), "b": layer.bias.grad.clone(), "h": head.weight.grad.clone(),
             "hb": head.bias.grad.clone()}
    opt.step()
    w, g, lr, wd, eta = before["w"], grads["w"], 0.5, 1e-4, 0.02
    ratio = eta * w.norm() / (g.norm() + wd * w.norm() + 1e-8)
    ratio = min(float(ratio) / lr, 1.0)
    assert ratio < 1  # the clip is not what decides here
    torch.testing.assert_close(layer.weight, w - lr * ratio * (g + wd * w))
    torch.testing.assert_close(layer.bias, before["b"] - lr * grads["b"])  # no adaptation, no decay
    torch.testing.assert_close(head.weight, before["h"] - 0.1 * grads["h"])  # the online classifier's fixed lr
    torch.testing.assert_close(head.bias, before["hb"] - 0.1 * grads["hb"])


def test_without_clip_the_ratio_scales_the_lr_as_lars_proper():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2, bias=False)
    opt = build_optimizer([ParamGroup("layer", layer)], {**CFG, "lars_clip": False, "weight_decay": 0.0})
    w = layer.weight.detach().clone()
    layer.weight.grad = g = torch.randn_like(w)
    opt.step()
    ratio = 0.02 * w.norm() / (g.norm() + 1e-8)  # weight decay 0 still adapts a matrix (solo-learn does)
    torch.testing.assert_close(layer.weight, w - 0.5 * ratio * g)


def test_lars_keys_are_validated_and_leave_existing_run_ids_alone(tmp_path):
    def problems(train: dict) -> str:
        with pytest.raises(RecipeError) as e:
            validate({"data": {"source": "shapes"}, "train": train},
                     {f"train.{k}": "r.toml" for k in train})
        return "\n".join(e.value.problems)

    assert "needs [train].no_decay_norm_bias = true" in problems({"optimizer": "lars"})
    assert "[train].lars_eta applies to optimizer = 'lars' only, not 'sgd'" in problems({"lars_eta": 0.01})
    resolved = {"optimizer": "sgd", "lars_eta": 0.02, "lars_clip": True}  # at their defaults, as a saved recipe
    assert validate({"data": {"source": "shapes"}, "train": resolved}, {f"train.{k}": "r.toml" for k in resolved})
    assert "[train].lars_clip applies to optimizer = 'lars' only, not 'adamw'" in problems(
        {"optimizer": "adamw", "lars_clip": False})
    assert "[train].lars_eta: expected a number > 0" in problems(
        {"optimizer": "lars", "no_decay_norm_bias": True, "lars_eta": 0})
    assert "[train].optimizer: expected one of 'sgd', 'adamw', 'lars'" in problems({"optimizer": "larc"})
    assert load_recipe(REPO / "recipes" / "quickstart.toml").run_id() == "seed0-89e5a4"  # as before the keys
    path = tmp_path / "r.toml"
    path.write_text('[train]\noptimizer = "lars"\nno_decay_norm_bias = true\n')
    base = load_recipe(path).run_id()
    assert load_recipe(path, ["train.lars_eta=0.02", "train.lars_clip=true"]).run_id() == base
    assert load_recipe(path, ["train.lars_eta=0.001"]).run_id() != base
