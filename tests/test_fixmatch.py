"""FixMatch and DMixMatch (spec 3.b): pseudo-labels, threshold, EMA teacher, the mixup head, a tiny run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mixbench.data.semisup import SemiBatch
from mixbench.engine import fit
from mixbench.errors import RecipeError
from mixbench.losses import LOSSES
from mixbench.methods import METHODS, MethodContext, build_method
from mixbench.methods.fixmatch import pseudo_labels
from mixbench.mixing.base import MixRNG
from mixbench.models import build_model
from mixbench.recipe import load_recipe

SEMI = ["data.labels_per_class=4", "data.unlabeled_ratio=3", "train.batch_size=8"]


def make(name: str, loss: str = "ce", **params):
    torch.manual_seed(0)
    model = build_model("resnet10_cifar", 4, width=0.125)
    ctx = MethodContext(model=model, loss=LOSSES.get(loss)(), num_classes=4, device=torch.device("cpu"),
                        rng=MixRNG(0, torch.device("cpu")), epochs=1, steps_per_epoch=10)
    values = {k: p.default for k, p in METHODS.entry(name).params.items()} | params
    return build_method(name, values, ctx)


def semi_batch(b: int = 4, mu: int = 2):
    g = torch.Generator().manual_seed(0)
    x_l, u_w = torch.randn(b, 3, 16, 16, generator=g), torch.randn(mu * b, 3, 16, 16, generator=g)
    u_s = u_w + 0.5 * torch.randn(mu * b, 3, 16, 16, generator=g)
    return x_l, torch.randint(0, 4, (b,), generator=g), u_w, u_s, torch.randint(0, 4, (mu * b,), generator=g)


def test_pseudo_labels_threshold_by_hand():
    p = torch.tensor([[0.96, 0.02, 0.02], [0.5, 0.4, 0.1], [0.03, 0.02, 0.95]])
    label, mask, conf = pseudo_labels(p.log(), 0.95)
    assert label.tolist() == [0, 0, 2]
    assert mask.tolist() == [1.0, 0.0, 1.0]
    torch.testing.assert_close(conf, torch.tensor([0.96, 0.5, 0.95]))


def test_unlabelled_loss_follows_the_threshold():
    batch = semi_batch()
    none = make("fixmatch", threshold=1.0 + 1e-6)(SemiBatch(*batch))
    assert none["loss_unsup"].item() == 0.0 and none["mask_rate"].item() == 0.0
    every = make("fixmatch", threshold=0.0)(SemiBatch(*batch))
    assert every["mask_rate"].item() == 1.0 and every["loss_unsup"].item() > 0
    m = make("fixmatch", threshold=0.0)
    with torch.no_grad():
        m.teacher.eval()
        conf = torch.softmax(m.teacher(batch[2]), 1).max(1).values
    tau = conf.median().item()
    half = make("fixmatch", threshold=tau)(SemiBatch(*batch))
    assert half["mask_rate"].item() == pytest.approx((conf >= tau).float().mean().item())
    # the supervised term is CE on the labelled images alone
    assert every["loss"].item() == pytest.approx(every["loss_sup"].item() + every["loss_unsup"].item(), rel=1e-6)


def test_pseudo_labels_come_from_the_teacher_and_it_is_the_evaluated_model():
    m = make("fixmatch", threshold=0.0)
    assert m.classifiers() == {"": m.teacher, "student": m.model}
    with torch.no_grad():
        for p in m.teacher.parameters():
            p.zero_()  # a teacher with all-zero weights predicts class 0 with p = 1/K everywhere
    x_l, y_l, u_w, u_s, u_y = semi_batch()
    out = m(SemiBatch(x_l, y_l, u_w, u_s, torch.zeros_like(u_y)))
    assert out["pseudo_acc"].item() == 1.0  # every pseudo-label is class 0


def test_teacher_ema_and_buffers():
    m = make("fixmatch", teacher_momentum=0.75, teacher_momentum_end=0.75)
    t0 = [p.clone() for p in m.teacher.parameters()]
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(4.0)
        for b in m.model.buffers():
            if b.dtype.is_floating_point:
                b.add_(1.0)
    m.on_step_end(1)
    for t, p0 in zip(m.teacher.parameters(), t0, strict=True):
        torch.testing.assert_close(t, p0 + 1.0)  # 0.75·θ + 0.25·(θ + 4)
    for bt, bs in zip(m.teacher.buffers(), m.model.buffers(), strict=True):
        torch.testing.assert_close(bt, bs)


def test_dmixmatch_lambda_bias_ramp_and_detach():
    m = make("dmixmatch", loss="dm")
    lams = [m._lam() for _ in range(200)]
    assert min(lams) >= 0.5
    m.global_step = 0
    assert m.lu_weight() == 0.0
    m.global_step = 5
    assert m.lu_weight() == pytest.approx(0.5)
    m.global_step = 10
    assert m.lu_weight() == pytest.approx(1.0)
    x_l, y_l, *_ = semi_batch()
    lam = torch.full((4,), 0.7)
    backbone = list(m.model.backbone.parameters())
    # a negligible weight keeps the backbone out of the graph; the mixup head still learns
    loss = m._mix_loss(x_l, y_l, y_l.flip(0), lam, 1e-4)
    grads = torch.autograd.grad(loss, backbone + list(m.head_mix.parameters()), allow_unused=True)
    assert all(g is None for g in grads[:len(backbone)]) and grads[-1] is not None
    loss = m._mix_loss(x_l, y_l, y_l.flip(0), lam, 1.0)
    assert torch.autograd.grad(loss, backbone[0])[0].abs().sum() > 0


def test_dmixmatch_low_confidence_pairs_carry_no_weight():
    m = make("dmixmatch", loss="dm")
    x_l, y_l, *_ = semi_batch()
    lam = torch.full((4,), 0.7)
    zero = m._mix_loss(x_l, y_l, y_l.flip(0), lam, 1.0, sample_weight=torch.zeros(4))
    assert zero.item() == 0.0
    full = m._mix_loss(x_l, y_l, y_l.flip(0), lam, 1.0, sample_weight=torch.ones(4))
    with torch.no_grad():
        logits = m.head_mix(m.model.forward_features(x_l))
    torch.testing.assert_close(full, m.ctx.loss(logits, y_l, y_l.flip(0), lam))


def test_dmixmatch_step_trains_both_heads_but_the_ce_head_never_sees_mixes():
    m = make("dmixmatch", loss="dm", threshold=0.0, mix_threshold=0.0, mix_lu_ramp="constant")
    out = m(SemiBatch(*semi_batch()))
    assert out["loss_ll"].item() > 0 and out["loss_lu"].item() > 0
    assert torch.autograd.grad(out["loss"], m.head_mix.weight)[0].abs().sum() > 0


def _recipe(tiny_recipe, name, method, sets):
    return load_recipe(tiny_recipe(name=name, method=method, epochs=1, train_size=100), sets)


@pytest.mark.parametrize("method,loss", [("fixmatch", "ce"), ("dmixmatch", "dm")])
def test_tiny_semisupervised_run(method, loss, tiny_recipe, tmp_path):
    recipe = _recipe(tiny_recipe, f"semi-{method}", method, [*SEMI, f"loss.name={loss}"])
    result = fit(recipe, out_root=tmp_path / "results", device=torch.device("cpu"))
    s = json.loads((result.run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["method"] == method
    assert 0 <= s["top1_last"] <= 100 and 0 <= s["student_top1_last"] <= 100
    assert s["labels"] == 40  # 4 per class, 10 shapes classes: compare groups runs by label budget
    terms = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])["terms"]
    assert 0 <= terms["mask_rate"] <= 1 and "loss_unsup" in terms
    ckpt = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    assert any(k.startswith("teacher_ema.module.") for k in ckpt["method"])
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["train_loss"] > 0


def test_semisupervised_recipes_need_labels_and_supervised_ones_refuse_them(tiny_recipe):
    with pytest.raises(RecipeError, match="labels_per_class"):
        _recipe(tiny_recipe, "nolabels", "fixmatch", ["train.batch_size=8"])
    with pytest.raises(RecipeError, match="semi-supervised"):
        _recipe(tiny_recipe, "sup", "mixup", ["data.labels_per_class=4"])


def test_fixmatch_supervised_part_equals_ce_on_labelled():
    m = make("fixmatch", threshold=1.5)
    x_l, y_l, u_w, u_s, u_y = semi_batch()
    out = m(SemiBatch(x_l, y_l, u_w, u_s, u_y))
    logits = m.model(torch.cat([x_l, u_s]))
    torch.testing.assert_close(out["loss_sup"], F.cross_entropy(logits[:4], y_l))
