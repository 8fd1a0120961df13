"""DINO and DINO + SDMP: the loss, centre and temperature against direct computations, the frozen
prototypes of epoch 1, multi-crop views, a few CPU steps with a CIFAR ResNet and a tiny ViT, and SDMP's
pairing, shared ratio and soft targets by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixbench.data.gpu_loader import Views
from mixbench.data.shapes import generate
from mixbench.data.views import make_views
from mixbench.methods import METHODS, MethodContext
from mixbench.methods.ssl.dino import (
    batch_center,
    default_warmup_epochs,
    dino_cross_entropy,
    sharpen,
    teacher_temperature,
)
from mixbench.methods.ssl.dino_sdmp import sdmp_dino_targets
from mixbench.methods.ssl.mixing import flip_index, sdmp_lambda, shared_ratio
from mixbench.mixing.base import MixRNG
from mixbench.models import build_model
from mixbench.models.base import Classifier
from mixbench.models.heads import DINOHead
from mixbench.models.timm_bridge import timm_backbone
from mixbench.recipe import load_recipe

CPU = torch.device("cpu")
SMALL_HEAD = {"proj_hidden": 32, "proj_out": 16, "num_prototypes": 24}


def make_method(name: str = "dino", *, model=None, epochs: int = 4, steps_per_epoch: int = 2, seed: int = 0,
                **values):
    torch.manual_seed(seed)
    model = model if model is not None else build_model("resnet10_cifar", 10, width=0.125)
    ctx = MethodContext(model=model, loss=None, num_classes=10, device=CPU, rng=MixRNG(seed, CPU), epochs=epochs,
                        steps_per_epoch=steps_per_epoch)
    return METHODS.get(name)(ctx, **{**SMALL_HEAD, **values})


def random_views(b: int = 6, n_local: int = 0, side: int = 32, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(b, 3, side, side, generator=g) for _ in range(2)]
    xs += [torch.randn(b, 3, side // 2, side // 2, generator=g) for _ in range(n_local)]
    return Views(tuple(xs), torch.randint(0, 4, (b,), generator=g))


# ---------------------------------------------------------------- the loss, centre and temperature


def test_cross_entropy_is_the_mean_over_teacher_student_pairs_of_different_crops():
    g = torch.Generator().manual_seed(1)
    student = [torch.randn(3, 5, generator=g) for _ in range(4)]  # 2 global + 2 local crops
    teacher = torch.softmax(torch.randn(2, 3, 5, generator=g), dim=-1)
    terms = []
    for i in range(2):
        for j in range(4):
            if i != j:
                log_q = torch.log_softmax(student[j] / 0.1, dim=-1)
                terms.append(torch.stack([-(teacher[i, n] * log_q[n]).sum() for n in range(3)]).mean())
    torch.testing.assert_close(dino_cross_entropy(student, teacher, 0.1), torch.stack(terms).mean())
    assert len(terms) == 6


def test_centring_and_sharpening_and_the_centre_update():
    t = torch.tensor([[[1.0, 2.0, 0.0]], [[0.0, 1.0, 3.0]]])  # [2 crops, 1 row, K = 3]
    c = torch.tensor([[0.5, 0.5, 1.0]])
    expected = torch.exp((t - c) / 0.04) / torch.exp((t - c) / 0.04).sum(-1, keepdim=True)
    torch.testing.assert_close(sharpen(t, c, 0.04), expected)
    torch.testing.assert_close(batch_center(t), torch.tensor([[0.5, 1.5, 1.5]]))
    m = make_method(num_prototypes=3, center_momentum=0.9)
    m.center.copy_(c)
    m.update_center(t)
    torch.testing.assert_close(m.center, 0.9 * c + 0.1 * torch.tensor([[0.5, 1.5, 1.5]]))


def test_centre_is_a_buffer_updated_once_per_step_from_the_teacher():
    m = make_method()
    assert "center" in dict(m.named_buffers()) and not m.center.requires_grad
    batch = random_views()
    with torch.no_grad():
        t = torch.stack([m.teacher(v) for v in batch.views[:2]])
    m(batch)
    torch.testing.assert_close(m.center, 0.1 * t.mean(dim=(0, 1)).unsqueeze(0))


def test_teacher_temperature_schedule_by_hand():
    by_hand = [0.04, 0.04 + 0.03 / 4, 0.04 + 0.03 / 2, 0.04 + 0.03 * 3 / 4, 0.07, 0.07]
    for e, tau in enumerate(by_hand):
        assert teacher_temperature(e, 5, 0.04, 0.07) == pytest.approx(tau)
    assert teacher_temperature(0, 1, 0.04, 0.07) == 0.04 and teacher_temperature(1, 1, 0.04, 0.07) == 0.07
    assert teacher_temperature(0, 0, 0.04, 0.07) == 0.07
    assert [default_warmup_epochs(e) for e in (1000, 200, 10, 4)] == [50, 10, 1, 0]
    m = make_method(epochs=20, steps_per_epoch=3, warmup_teacher_temperature_epochs=3)
    temps = []
    for step in range(12):
        m.global_step = step
        temps.append(m.teacher_temp())
    assert temps == pytest.approx([0.04] * 3 + [0.055] * 3 + [0.07] * 6)
    assert make_method(epochs=40).temperature_warmup_epochs == 2  # 5 % of the run by default


# ---------------------------------------------------------------- the head and the frozen prototypes


def test_weight_norm_g_is_fixed_at_one_and_prototypes_are_unit_vectors():
    m = make_method()
    head = m.head
    assert not head.weight_g.requires_grad and torch.all(head.weight_g == 1)
    torch.testing.assert_close(head.prototypes().norm(dim=1), torch.ones(24))
    assert "weight_g" not in {n.split(".")[-1] for g in m.param_groups() for n, p in g.module.named_parameters()
                              if p.requires_grad}
    trainable = make_method(norm_last_layer=False)
    assert trainable.head.weight_g.requires_grad
    assert not any(isinstance(x, torch.nn.BatchNorm1d) for x in head.mlp)  # solo-learn's CIFAR head: no BN


def test_prototypes_get_no_gradient_in_epoch_one_and_train_after():
    m = make_method(steps_per_epoch=2, freeze_last_layer=1)
    assert m.may_skip_params
    params = [p for g in m.param_groups() for p in g.module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=1e-2)
    v0 = m.head.weight_v.detach().clone()
    w_mlp = m.head.mlp[0].weight.detach().clone()
    for step in range(2):  # epoch 1
        m.global_step = step
        opt.zero_grad(set_to_none=True)
        m(random_views(seed=step))["loss"].backward()
        assert m.head.weight_v.grad is None  # as solo-learn's p.grad = None: no decay, no momentum either
        opt.step()
        m.on_step_end(step + 1)
    assert torch.equal(m.head.weight_v, v0) and not torch.equal(m.head.mlp[0].weight, w_mlp)
    m.global_step = 2  # epoch 2
    opt.zero_grad(set_to_none=True)
    m(random_views(seed=2))["loss"].backward()
    assert m.head.weight_v.grad is not None and m.head.weight_v.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(m.head.weight_v, v0) and torch.all(m.head.weight_g == 1)


# ---------------------------------------------------------------- the teacher


def test_teacher_is_an_ema_of_backbone_and_head_in_train_mode():
    """θ_t ← τ θ_t + (1 − τ) θ_s over every student parameter (prototypes included), the teacher apart from
    the optimiser, its BatchNorm on batch statistics (solo-learn's teacher runs in train mode), its running
    statistics its own."""
    m = make_method(momentum=0.9, momentum_end=0.9, freeze_last_layer=0)
    student, teacher = dict(m.student.named_parameters()), dict(m.teacher.module.named_parameters())
    assert student.keys() == teacher.keys() and "projector.weight_v" in teacher and "projector.weight_g" in teacher
    assert not any(p.requires_grad for p in teacher.values())
    assert not {id(p) for p in teacher.values()} & {id(p) for p in student.values()}
    trained = {id(p) for g in m.param_groups() for p in g.module.parameters()}
    assert not trained & {id(p) for p in teacher.values()}
    m.eval()
    assert m.teacher.module.training and not m.backbone.training
    m.train()
    opt = torch.optim.SGD([p for g in m.param_groups() for p in g.module.parameters() if p.requires_grad], lr=0.5)
    before = {k: p.detach().clone() for k, p in teacher.items()}
    stats = {k: b.clone() for k, b in m.teacher.module.named_buffers()}
    opt.zero_grad(set_to_none=True)
    m(random_views())["loss"].backward()
    opt.step()
    m.on_step_end(1)
    for k, p in teacher.items():
        torch.testing.assert_close(p, 0.9 * before[k] + 0.1 * student[k].detach())
    moved = [k for k in teacher if not torch.equal(teacher[k], before[k])]
    assert "projector.weight_v" in moved and any(k.startswith("backbone.") for k in moved)
    teacher_stats = dict(m.teacher.module.named_buffers())
    running = [k for k in stats if k.endswith("running_mean")]
    assert running and all(not torch.equal(teacher_stats[k], stats[k]) for k in running)  # its own batches
    kept = {k: teacher_stats[k].clone() for k in running}
    for k, b in m.student.named_buffers():
        if k.endswith("running_mean"):
            b.fill_(7.0)
    m.on_step_end(2)  # the EMA leaves the teacher's running statistics alone
    assert all(torch.equal(teacher_stats[k], kept[k]) for k in running)


def test_shapes_recipe_keeps_batchnorm_in_the_head_and_a_sharp_teacher():
    """Why ``recipes/ssl/shapes_dino.toml`` needs BatchNorm in the head: without it the bottleneck u = MLP(h) of a
    fresh head (trunc-normal 0.02 weights) is tiny, ‖u‖ ≈ 0.06, next to what one plain-SGD step (LARS leaves biases
    alone) puts into its last bias, which then sets the direction of every û = u/‖u‖ (all embeddings collapse
    within a few steps); with BatchNorm ‖u‖ is O(1)."""
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "ssl" / "shapes_dino.toml")
    values = recipe.method
    assert values["use_bn_in_head"] and values["num_prototypes"] == 256
    assert values["teacher_temperature"] == values["warmup_teacher_temperature"] == 0.02
    torch.manual_seed(0)
    x, _ = generate(32, 32, seed=0)
    backbone = build_model("resnet10_cifar", 10, width=0.25).backbone
    with torch.no_grad():
        h = backbone((x.float() / 255 - 0.39) / 0.26).flatten(1)
        bare = DINOHead(h.shape[1], 512, 128, 256).mlp(h).norm(dim=1).mean()
        normed = DINOHead(h.shape[1], 512, 128, 256, use_bn=True).mlp(h).norm(dim=1).mean()
    assert bare < 0.2 < 1.0 < normed, (bare, normed)


# ---------------------------------------------------------------- multi-crop


def test_multicrop_views_and_keys():
    cls = METHODS.get("dino")
    specs = cls.view_specs({"num_local_crops": 3})
    assert len(specs) == 5 and [s.output_side(32, 32) for s in specs] == [32, 32, 16, 16, 16]
    assert [s.scale for s in specs] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 3
    assert specs[1].solarize_p == 0.2 and all(s.solarize_p == 0 for s in specs[2:])
    keyed = cls.view_specs({"num_local_crops": 2, "local_crop_size": 8, "local_crop_scale": [0.1, 0.3]})
    assert [(s.output_side(32, 32), s.scale) for s in keyed[2:]] == [(8, (0.1, 0.3))] * 2
    user = cls.view_specs({"num_local_crops": 1, "local_crop_size": 8, "view_overrides": {"local": {"size": 12}}})
    assert user[2].output_side(32, 32) == 12  # the user's own view_overrides.local wins over the keys
    assert len(cls.view_specs({})) == 2 and cls.view_specs({})[0].scale == (0.08, 1.0)  # solo-learn's CIFAR
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = [make_views(x, s, torch.Generator().manual_seed(0)) for s in specs]
    assert [tuple(v.shape) for v in out] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3


def test_teacher_sees_only_global_crops_and_the_student_all(monkeypatch):
    m = make_method(num_local_crops=3)
    seen_teacher, seen_backbone = [], []
    m.teacher.module.register_forward_pre_hook(lambda mod, args: seen_teacher.append(args[0].shape[-1]))
    m.backbone.register_forward_pre_hook(lambda mod, args: seen_backbone.append(tuple(args[0].shape)))
    batch = random_views(b=5, n_local=3)
    student, _ = m.student_logits(batch.views, m.backbone(batch.views[0]).flatten(1))
    assert len(student) == 5 and all(s.shape == (5, 24) for s in student)
    assert seen_backbone == [(5, 3, 32, 32), (5, 3, 32, 32), (15, 3, 16, 16)]  # the locals in one forward
    seen_teacher.clear()
    out = m(batch)
    assert seen_teacher == [32, 32]
    assert torch.isfinite(out["loss"]) and out["teacher_temp"].shape == ()


def test_local_crops_must_fit_the_vit_patches():
    from mixbench.params import RunFacts

    facts = RunFacts(model="timm:vit_tiny_patch16_224", image_side=40, patch_size=8)
    problems = METHODS.get("dino").check({"num_local_crops": 2}, "[method]", {}, facts)  # 20-pixel local crops
    assert len(problems) == 1 and "local_crop_size" in problems[0] and "multiples of 8" in problems[0]
    assert METHODS.get("dino").check({"num_local_crops": 2, "local_crop_size": 16}, "[method]", {}, facts) == []
    assert METHODS.get("dino").check({"local_crop_size": 20}, "[method]", {}, facts) == []  # no local crops
    bad = METHODS.get("dino").check({"local_crop_scale": [0.5, 0.1], "num_local_crops": 1, "local_crop_size": 8},
                                  "[method]", {}, facts)
    assert len(bad) == 1 and "local_crop_scale" in bad[0]


# ---------------------------------------------------------------- a few CPU steps


def _shapes_views(n: int, n_local: int, seed: int = 0) -> list[Views]:
    x, y = generate(n * 3, 32, seed=seed)
    specs = METHODS.get("dino").view_specs({"num_local_crops": n_local})
    g = torch.Generator().manual_seed(seed)
    batches = []
    for k in range(3):
        xb = x[k * n:(k + 1) * n]
        views = tuple((make_views(xb, s, g) / 255 - 0.5) / 0.25 for s in specs)
        batches.append(Views(views, y[k * n:(k + 1) * n]))
    return batches


def _train(m, batches, steps: int) -> list[float]:
    """``steps`` AdamW steps; returns per step KL(P_t ‖ P_s) = H(P_t, P_s) − H(P_t) of the DINO term, the part of
    the loss the student controls (H(P_t) moves with the centre: it first falls as the teacher sharpens on a
    near-constant output, then rises as the centre removes it, DINO's usual start)."""
    params = [p for g in m.param_groups() for p in g.module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    kl = []
    for step in range(steps):
        m.global_step = step
        out = m(batches[step % len(batches)])
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        m.on_step_end(step + 1)
        kl.append(float(out.get("loss_dino", out["loss_ssl"]) - out["teacher_entropy"]))
    return kl


@pytest.mark.parametrize("backbone", ["resnet", "vit"])
def test_a_few_cpu_steps_on_shapes_lower_the_loss(backbone):
    if backbone == "resnet":
        model = build_model("resnet10_cifar", 10, width=0.125)
    else:  # a test-sized timm ViT: 2 blocks of width 48, 4x4 patches at 32 px, local crops resample the positions
        model = Classifier(timm_backbone("test_vit", image_size=32, patch_size=4, depth=2, embed_dim=48,
                                         num_heads=3), 10)
    m = make_method(model=model, num_local_crops=2, freeze_last_layer=0, momentum=0.9, steps_per_epoch=4,
                    num_prototypes=64)
    kl = _train(m, _shapes_views(8, 2), 6)
    assert all(math.isfinite(v) and v >= -1e-4 for v in kl)
    assert sum(kl[-3:]) / 3 < 0.5 * sum(kl[:3]) / 3, kl


# ---------------------------------------------------------------- DINO + SDMP


def test_sdmp_pairing_shared_ratio_and_soft_targets_by_hand():
    lam = torch.tensor([0.3, 0.6, 0.8, 0.2])
    index = flip_index(4, CPU)
    assert index.tolist() == [3, 2, 1, 0]
    lam_c = shared_ratio(lam, lam, index)
    # λc_i = min(λ_i, 1 − λ_j) + min(1 − λ_i, λ_j), j = 3 − i
    torch.testing.assert_close(lam_c, torch.tensor([0.3 + 0.2, 0.2 + 0.4, 0.4 + 0.2, 0.2 + 0.3]))
    clean = torch.softmax(torch.randn(4, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    mixed = torch.softmax(torch.randn(4, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    source, mixture = sdmp_dino_targets(clean, mixed, lam, lam_c, index)
    torch.testing.assert_close(source[0], 0.3 * clean[0] + 0.7 * clean[3])
    torch.testing.assert_close(mixture[1], (mixed[1] + 0.6 * mixed[2]) / 1.6)
    torch.testing.assert_close(source.sum(-1), torch.ones(4))
    torch.testing.assert_close(mixture.sum(-1), torch.ones(4))
    # an odd batch: the middle row is its own partner, λ = 1 realised and λc = 1, targets its own
    index5 = flip_index(5, CPU)
    assert index5.tolist() == [4, 3, 2, 1, 0]
    lam5 = torch.tensor([0.3, 0.6, 1.0, 0.4, 0.7])
    lam_c5 = shared_ratio(lam5, lam5, index5)
    assert lam_c5[2] == 1 and lam_c5[0] == pytest.approx(min(0.3, 0.3) + min(0.7, 0.7))
    c5, m5 = (torch.softmax(torch.randn(5, 6, generator=torch.Generator().manual_seed(s)), dim=-1) for s in (2, 3))
    s5, x5 = sdmp_dino_targets(c5, m5, lam5, lam_c5, index5)
    torch.testing.assert_close(s5[2], c5[2])
    torch.testing.assert_close(x5[2], m5[2])
    torch.testing.assert_close(s5.sum(-1), torch.ones(5))


@pytest.mark.parametrize("b", [4, 5])
def test_sdmp_dino_loss_by_hand(b):
    """The whole SDMP-DINO step recomputed from the same draws: swap coin, λ, op (mixup: no other draw)."""
    m = make_method("dino_sdmp", mixers=["mixup"], freeze_last_layer=0)
    batch = random_views(b=b, seed=b)
    state = m.rng.state_dict()
    center = m.center.clone()
    out = m(batch)
    rng = MixRNG(0, CPU)
    rng.load_state_dict(state)
    swap = rng.np.random() < 0.5
    lam = torch.tensor(sdmp_lambda(rng, b), dtype=torch.float32)
    a, k = (1, 0) if swap else (0, 1)
    j = [b - 1 - i for i in range(b)]
    if b % 2:
        lam[b // 2] = 1.0
    x_s = torch.stack([lam[i] * batch.views[a][i] + (1 - lam[i]) * batch.views[a][j[i]] for i in range(b)])
    x_t = torch.stack([lam[i] * batch.views[k][i] + (1 - lam[i]) * batch.views[k][j[i]] for i in range(b)])
    with torch.no_grad():
        temp = m.teacher_temp()
        clean = sharpen(m.teacher(batch.views[k]), center, temp)
        mixed = sharpen(m.teacher(x_t), center, temp)
        log_s = F.log_softmax(m.head(m.backbone(x_s)) / 0.1, dim=-1)
        feats = [m.backbone(v) for v in batch.views[:2]]
        dino = dino_cross_entropy([m.head(f) for f in feats],
                                  torch.stack([sharpen(m.teacher(v), center, temp) for v in batch.views[:2]]), 0.1)
    src, mm = [], []
    for i in range(b):
        lc = min(lam[i], 1 - lam[j[i]]) + min(1 - lam[i], lam[j[i]]) if j[i] != i else torch.tensor(1.0)
        h = lambda p, i=i: -(p * log_s[i]).sum()  # noqa: E731
        src.append(lam[i] * h(clean[i]) + (1 - lam[i]) * h(clean[j[i]]))
        mm.append(h(mixed[i]) / (1 + lc) + lc * h(mixed[j[i]]) / (1 + lc))
    torch.testing.assert_close(out["loss_mix_source"], torch.stack(src).mean(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["loss_mix_mix"], torch.stack(mm).mean(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["loss_dino"], dino, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["loss_ssl"], out["loss_dino"] + out["loss_mix_source"] + out["loss_mix_mix"])


def test_sdmp_mixes_both_views_with_one_lambda_and_the_flip_partner():
    m = make_method("dino_sdmp", mixers=["cutmix"])
    a, b = random_views(b=6).views[:2]
    x1, x2 = m.mix_pair(a, b, MixRNG(3, CPU))
    assert x1.index.tolist() == [5, 4, 3, 2, 1, 0] and torch.equal(x1.index, x2.index)
    torch.testing.assert_close(x1.lam, x2.lam)  # same realised share: box sides depend on λ only
    assert not torch.equal(x1.mask, x2.mask)  # boxes placed independently
    assert torch.all((x1.lam > 0) & (x1.lam < 1))
    preview = m.mix_preview(a, torch.arange(6), MixRNG(0, CPU))
    assert preview.x.shape == a.shape and preview.y_b.tolist() == [5, 4, 3, 2, 1, 0]
    assert METHODS.get("dino_sdmp").mixes and "interpretation" in METHODS.get("dino_sdmp").differs
    problems = METHODS.get("dino_sdmp").check({"mixers": ["mixup", "puzzlemix"]}, "[method]", {}, None)
    assert len(problems) == 1 and "puzzlemix" in problems[0]


def test_sdmp_dino_step_trains():
    m = make_method("dino_sdmp", num_local_crops=1, freeze_last_layer=0, momentum=0.9, steps_per_epoch=4,
                    num_prototypes=64)
    kl = _train(m, _shapes_views(8, 1), 6)
    assert all(math.isfinite(v) and v >= -1e-4 for v in kl)
    assert sum(kl[-3:]) / 3 < 0.5 * sum(kl[:3]) / 3, kl
