"""Mixing in self-supervised learning (issue 12): SDMP's pieces and step by hand (4- and 5-image batches, both loss
forms), naive mixing by hand, the realised λ of the boxes, mixer-list errors, SAMix without labels (gradient routing,
mask adjustment, η, no pairing leak), a few CPU steps each with a falling loss, shapes runs through the engine, and
an SSL run's mixer.pt driving SAMix^P."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from mixbench.cli import app
from mixbench.data.gpu_loader import Views
from mixbench.data.shapes import generate
from mixbench.engine import fit
from mixbench.engine.optim import build_optimizer
from mixbench.losses.decoupled import eta_balanced
from mixbench.losses.ssl import info_nce
from mixbench.methods import METHODS, MethodContext, build_method
from mixbench.methods.ssl import sdmp as sdmp_module
from mixbench.methods.ssl.base import SelfSupervised
from mixbench.methods.ssl.byol import BYOL
from mixbench.methods.ssl.hooks import BYOLHooks, MoCoV2Hooks, MoCoV3Hooks, in_batch_cross_view_logits
from mixbench.methods.ssl.mixing import (
    FlipMixing,
    derangement,
    flip_index,
    mixer_list_problems,
    mixture_nce,
    mixture_targets,
    sdmp_lambda,
    shared_ratio,
    soft_regression,
    source_targets,
)
from mixbench.methods.ssl.mocov2 import MoCoV2
from mixbench.methods.ssl.mocov3 import MoCoV3
from mixbench.methods.ssl.samix_ssl import two_positive_nce
from mixbench.mixing.base import MixOutput, MixRNG
from mixbench.mixing.learned import stage_features
from mixbench.mixing.samixp import SAMixP
from mixbench.models import build_model
from mixbench.recipe import load_recipe

CPU = torch.device("cpu")
HEADS = {"proj_hidden": 32, "proj_out": 16}
SPEC = {"name": "resnet10_cifar", "width": 0.125, "image_size": 16}


def make(name: str | type, steps: int = 10, **values) -> nn.Module:
    """A method (registered name or class) on ResNet-10 (width 0.125) for 16-pixel shapes, small heads."""
    torch.manual_seed(0)
    model = build_model("resnet10_cifar", 10, width=0.125, image_size=16)
    ctx = MethodContext(model=model, loss=None, num_classes=10, device=CPU, rng=MixRNG(0, CPU), epochs=1,
                        steps_per_epoch=steps, model_spec=dict(SPEC))
    cls = METHODS.get(name) if isinstance(name, str) else name
    extra = {k: v for k, v in {"pred_hidden": 32, "queue_size": 16}.items() if k in cls.params}
    return cls(ctx, **{**HEADS, **extra, **values})


def views(b: int = 8, seed: int = 1) -> Views:
    """Shapes images (16 px) as two 'views': the image and its mirror plus a little noise."""
    x, y = generate(b, 16, seed)
    x = (x.float() / 255 - 0.5) / 0.25
    g = torch.Generator().manual_seed(seed)
    return Views((x, x.flip(3) + 0.1 * torch.randn(x.shape, generator=g)), y)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


def _probs(q: torch.Tensor, k: torch.Tensor, t: float) -> list[list[float]]:
    """P_i(j) = exp(cos(q_i, k_j)/T) / Σ_l exp(cos(q_i, k_l)/T), by hand."""
    out = []
    for i in range(len(q)):
        e = [math.exp(_cos(q[i], k[j]) / t) for j in range(len(k))]
        out.append([v / sum(e) for v in e])
    return out


def _pair_loss(p: list[list[float]], w_self: list[float], w_partner: list[float], form: str) -> float:
    """mean_i of w·(−log P(i)) + w'·(−log P(j)) (weighted CE) or −log(w P(i) + w' P(j)) (mixture), j = n−1−i."""
    n, total = len(p), 0.0
    for i in range(n):
        j = n - 1 - i
        if form == "weighted_ce":
            total += -w_self[i] * math.log(p[i][i]) - w_partner[i] * math.log(p[i][j])
        else:
            total += -math.log(w_self[i] * p[i][i] + w_partner[i] * p[i][j])
    return total / n


# ------------------------------------------------------------------ SDMP pieces and step, by hand


@pytest.mark.parametrize("n", [4, 5])
def test_flip_pairing_lambda_and_shared_ratio_by_hand(n):
    assert flip_index(n, CPU).tolist() == list(range(n - 1, -1, -1))  # 5: the middle image is its own partner
    lam = sdmp_lambda(MixRNG(0, CPU), 10_000)
    assert lam.min() >= 0.1 and lam.max() <= 0.9 and abs(lam.mean() - 0.5) < 0.01  # 0.1 + 0.8·U(0, 1)
    lam_t = torch.tensor([0.2, 0.5, 0.7, 0.9, 0.4][:n])
    lc = shared_ratio(lam_t, lam_t, flip_index(n, CPU))
    expected = [min(lam_t[i], 1 - lam_t[n - 1 - i]) + min(1 - lam_t[i], lam_t[n - 1 - i]) for i in range(n)]
    if n == 5:
        expected[2] = 1.0  # self-paired: shares everything with itself
    torch.testing.assert_close(lc, torch.tensor(expected, dtype=torch.float32))
    if n == 4:  # (0.2, 0.9): 0.1 + 0.8; (0.5, 0.7): 0.3 + 0.5
        assert lc.tolist() == pytest.approx([0.9, 0.8, 0.8, 0.9])
    pair = torch.tensor([0.3, 0.7])  # λ_i + λ_j = 1: the two mixes hold the same content
    assert shared_ratio(pair, pair, flip_index(2, CPU)).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("n", [4, 5])
def test_soft_targets_by_hand_and_each_row_sums_to_one(n):
    idx = flip_index(n, CPU)
    lam = torch.tensor([0.2, 0.5, 0.7, 0.9, 1.0][:n])
    lc = shared_ratio(lam, lam, idx)
    t_ms, t_mm = source_targets(lam, idx, n), mixture_targets(lc, idx, n)
    for i in range(n):
        j = n - 1 - i
        want_ms, want_mm = torch.zeros(n), torch.zeros(n)
        want_ms[i] += lam[i]
        want_ms[j] += 1 - lam[i]
        want_mm[i] += 1 / (1 + lc[i])
        want_mm[j] += lc[i] / (1 + lc[i])
        torch.testing.assert_close(t_ms[i], want_ms)
        torch.testing.assert_close(t_mm[i], want_mm)
    torch.testing.assert_close(t_ms.sum(1), torch.ones(n))
    torch.testing.assert_close(t_mm.sum(1), torch.ones(n))
    if n == 5:  # the middle row is one-hot on itself in both
        assert t_ms[2].tolist() == [0, 0, 1, 0, 0] and t_mm[2].tolist() == pytest.approx([0, 0, 1, 0, 0])
    offset = source_targets(lam, idx, 3 * n, offset=n)  # another process's keys come first
    assert torch.equal(offset[:, n:2 * n], t_ms) and offset[:, :n].abs().sum() == 0 == offset[:, 2 * n:].abs().sum()


@pytest.mark.parametrize("form", ["weighted_ce", "mixture_likelihood"])
@pytest.mark.parametrize("n", [4, 5])
def test_both_loss_forms_by_hand_on_fixed_embeddings(n, form):
    g = torch.Generator().manual_seed(n)
    q, k = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    lam = torch.tensor([0.2, 0.5, 0.7, 0.9, 0.6][:n])
    t = source_targets(lam, flip_index(n, CPU), n)
    got = info_nce(q, k, 0.5, targets=t) if form == "weighted_ce" else mixture_nce(q, k, 0.5, t)
    want = _pair_loss(_probs(q, k, 0.5), lam.tolist(), (1 - lam).tolist(), form)
    assert float(got) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("form", ["weighted_ce", "mixture_likelihood"])
@pytest.mark.parametrize("n", [4, 5])
def test_sdmp_step_by_hand(n, form, monkeypatch):
    """L = 2T·[NCE(q_1, k_2) + ½ L_ms(q̃_2, k_1; λ) + ½ L_mm(q̃_2, k̃_1; λc)] with fixed embeddings and Mixup."""
    t = 0.5
    m = make("mocov3_sdmp", mixers=["mixup"], mix_loss=form, temperature=t)
    g = torch.Generator().manual_seed(10 + n)
    q1, q2m, k1, k2, k1m = (torch.randn(n, 3, generator=g) for _ in range(5))
    v = views(n)
    lam = np.array([0.2, 0.5, 0.7, 0.9, 0.6][:n])
    monkeypatch.setattr(sdmp_module, "sdmp_lambda", lambda rng, b: lam)
    monkeypatch.setattr(m, "query_features", lambda feats0: (q1, q1))
    monkeypatch.setattr(m, "query", lambda x: q2m)
    monkeypatch.setattr(m, "targets", lambda x, stage=0: (k1 if x is v.views[0] else k2 if x is v.views[1] else k1m,
                                                           None))
    out = m.ssl_loss(v.views, torch.zeros(n, 8))
    real = [1.0 if i == n - 1 - i else lam[i] for i in range(n)]  # Mixup keeps λ; the middle image keeps itself
    lc = [1.0 if i == n - 1 - i else min(real[i], 1 - real[n - 1 - i]) + min(1 - real[i], real[n - 1 - i])
          for i in range(n)]
    src = sum(-math.log(p[i]) for i, p in enumerate(_probs(q1, k2, t))) / n
    ms = _pair_loss(_probs(q2m, k1, t), real, [1 - r for r in real], form)
    mm = _pair_loss(_probs(q2m, k1m, t), [1 / (1 + c) for c in lc], [c / (1 + c) for c in lc], form)
    assert float(out["loss_source"]) == pytest.approx(2 * t * src, rel=1e-5)
    assert float(out["loss_mix_source"]) == pytest.approx(2 * t * ms, rel=1e-5)
    assert float(out["loss_mix_mix"]) == pytest.approx(2 * t * mm, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(2 * t * (src + ms / 2 + mm / 2), rel=1e-5)
    settings = m.describe()
    assert settings["mix_loss"] == form and "within each process's batch" in settings["sdmp_pairing"]


def test_sdmp_swaps_the_views_with_probability_half(monkeypatch):
    m = make("mocov3_sdmp")
    v = views(4)
    seen = []
    monkeypatch.setattr(SelfSupervised, "forward", lambda self, batch: seen.append(batch.views) or {})
    for _ in range(40):
        m(v)
    swapped = [torch.equal(a, v.views[1]) and torch.equal(b, v.views[0]) for a, b in seen]
    kept = [torch.equal(a, v.views[0]) and torch.equal(b, v.views[1]) for a, b in seen]
    assert all(s != k for s, k in zip(swapped, kept, strict=True)) and 8 <= sum(swapped) <= 32


def test_released_code_bug_is_not_ported_every_image_is_mixed():
    x = torch.randn(6, 3, 16, 16)
    mixing = FlipMixing(["mixup", "cutmix", "resizemix"])
    for op in mixing.names:
        out = mixing(op, x, np.full(6, 0.5), flip_index(6, CPU), MixRNG(0, CPU))
        assert all(not torch.equal(out.x[i], x[i]) for i in range(6)), op  # spec 4.g-1: v1m = v1 never again
        assert (out.lam < 1).all()


# ------------------------------------------------------------------ the mixing ops: realised λ = the kept share


@pytest.mark.parametrize("op", ["cutmix", "resizemix"])
def test_realised_lambda_is_the_kept_share_of_the_boxes(op):
    n, h, w = 7, 17, 13  # odd sides and an odd batch
    x = torch.rand(n, 3, h, w)
    lam = sdmp_lambda(MixRNG(3, CPU), n)
    idx = flip_index(n, CPU)
    out = FlipMixing([op])(op, x, lam, idx, MixRNG(4, CPU))
    kept = (out.x == x).all(dim=1).float().mean(dim=(1, 2))  # pixels still x_i (random floats: no ties)
    for i in range(n):
        if i == n // 2:
            assert out.lam[i] == 1  # self-paired middle image: all of it is x_i
            continue
        bh, bw = int(h * math.sqrt(1 - lam[i])), int(w * math.sqrt(1 - lam[i]))
        assert float(out.lam[i]) == pytest.approx(1 - bh * bw / (h * w)) == pytest.approx(float(kept[i]))
        assert float(out.mask[i].mean()) == pytest.approx(float(out.lam[i]))
        rows, cols = torch.nonzero(out.mask[i, 0] == 0, as_tuple=True)
        y0, x0 = int(rows.min()), int(cols.min())
        assert (int(rows.max()) - y0 + 1, int(cols.max()) - x0 + 1) == (bh, bw)  # the whole box, inside the image
        box = out.x[i, :, y0:y0 + bh, x0:x0 + bw]
        if op == "cutmix":  # the partner's co-located box
            want = x[n - 1 - i, :, y0:y0 + bh, x0:x0 + bw]
        else:  # the whole partner, resized bilinearly (align_corners=False) into the box
            want = F.interpolate(x[n - 1 - i][None], size=(bh, bw), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(box, want)
    again = FlipMixing([op])(op, x, lam, idx, MixRNG(5, CPU))  # same λ, independently placed boxes
    torch.testing.assert_close(again.lam, out.lam)
    assert not torch.equal(again.mask, out.mask)


def test_mixup_and_a_pinned_registered_mixer_keep_the_given_lambda_and_partner():
    n, x = 5, torch.rand(5, 3, 16, 16)
    lam = np.array([0.15, 0.3, 0.5, 0.7, 0.85])
    idx = flip_index(n, CPU)
    mix = FlipMixing(["mixup"])("mixup", x, lam, idx, MixRNG(0, CPU))
    w = torch.tensor(lam, dtype=torch.float32).view(-1, 1, 1, 1)
    torch.testing.assert_close(mix.x, w * x + (1 - w) * x[idx])
    assert mix.lam.tolist() == pytest.approx([0.15, 0.3, 1.0, 0.7, 0.85])  # the middle image is unchanged
    fmix = FlipMixing(["fmix"])("fmix", x, lam, idx, MixRNG(0, CPU))  # a registered mixer through PinnedRNG
    assert torch.equal(fmix.index, idx)
    torch.testing.assert_close(fmix.x, fmix.mask * x + (1 - fmix.mask) * x[idx])
    for i in (0, 1, 3, 4):
        assert abs(float(fmix.lam[i]) - lam[i]) <= 1 / 256 + 1e-6  # ⌈λHW⌉ or ⌊λHW⌋ kept pixels


# ------------------------------------------------------------------ naive mixing by hand


def test_naive_mixing_loss_by_hand(monkeypatch):
    n, t = 5, 0.5
    g = torch.Generator().manual_seed(3)
    qm, k2 = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    lam, idx = torch.tensor([0.3, 0.6, 0.8, 0.2, 0.5]), torch.tensor([2, 0, 4, 1, 3])
    v = views(n)
    for name in ("mocov3_mix", "byol_mix"):
        m = make(name, mix_weight=0.7, **({"temperature": t} if name == "mocov3_mix" else {}))
        monkeypatch.setattr(m, "naive_mixer", lambda x, y, rng: MixOutput(x, y, y[idx], lam, idx))
        monkeypatch.setattr(m, "query", lambda x: qm)
        monkeypatch.setattr(m, "clean_pass", lambda vs, feats0, stage=0: (
            {"loss": torch.tensor(1.0), "embedding": feats0}, (k2 * 0, k2), (None, None)))
        out = m.ssl_loss(v.views, torch.zeros(n, 8))
        if name == "mocov3_mix":  # 2T·mean_i λ_i·(−log P_i(i)) + (1 − λ_i)·(−log P_i(π(i)))
            p = _probs(qm, k2, t)
            want = 2 * t * sum(-lam[i] * math.log(p[i][i]) - (1 - lam[i]) * math.log(p[i][idx[i]])
                               for i in range(n)) / n
        else:  # BYOL: mean_i λ_i (2 − 2 cos(q̃_i, z_i)) + (1 − λ_i)(2 − 2 cos(q̃_i, z_π(i)))
            want = sum(lam[i] * (2 - 2 * _cos(qm[i], k2[i])) + (1 - lam[i]) * (2 - 2 * _cos(qm[i], k2[idx[i]]))
                       for i in range(n)) / n
        assert float(out["loss_mix"]) == pytest.approx(float(want), rel=1e-5)
        assert float(out["loss"]) == pytest.approx(1 + 0.7 * float(want), rel=1e-5)


def test_mocov2_soft_targets_span_the_batch_keys_and_the_queue_by_hand():
    m = make(MoCoV2Hooks, temperature=0.5)
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    t = source_targets(torch.tensor([0.3, 0.6, 1.0]), torch.tensor([1, 2, 2]), 3)
    keys = torch.cat([k, m.queue[1]])
    p = _probs(q, keys, 0.5)
    want = sum(-sum(float(t[i, j]) * math.log(p[i][j]) for j in range(3)) for i in range(3)) / 3
    assert float(m.pair_loss(q, k, t)) == pytest.approx(want, rel=1e-5)
    z = torch.randn(3, 16, generator=g)
    assert float(soft_regression(q, z, torch.eye(3))) == pytest.approx(
        sum(2 - 2 * _cos(q[i], z[i]) for i in range(3)) / 3, rel=1e-5)


def test_hooks_clean_pass_is_the_frameworks_own_loss():
    v = views(4)
    for hooks, base in ((MoCoV3Hooks, MoCoV3), (MoCoV2Hooks, MoCoV2), (BYOLHooks, BYOL)):
        m = make(hooks)
        feats0 = m.backbone(v.views[0]).flatten(1)
        own = base.ssl_loss(m, v.views, feats0)
        pending = getattr(m, "_pending", None)
        out, keys, maps = m.clean_pass(v.views, feats0, stage=3)
        torch.testing.assert_close(out["loss"], own["loss"])
        assert maps[0].shape[-1] == 4 and len(keys) == 2  # ResNet-10 stage 3 at 16 px: a 4x4 map
        if pending is not None:
            torch.testing.assert_close(m._pending, pending)


# ------------------------------------------------------------------ mixer lists: one sentence per problem


def test_a_mixer_list_with_an_unknown_name_is_a_one_sentence_error(tmp_path):
    problems = mixer_list_problems(["mixup", "cutmx"], "mixers", "[method]", {"mixers": "r.toml"})
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith("r.toml: [method].mixers: unknown mixer 'cutmx' (did you mean 'cutmix'?); valid:")
    assert "needs the trained classifier" in mixer_list_problems(["puzzlemix"], "mixers", "[method]", {})[0]
    res = CliRunner().invoke(app, ["validate", "recipes/ssl/shapes_mocov3_sdmp.toml", "--set",
                                   'method.mixers=["mixup", "cutmx"]'])
    assert res.exit_code == 2 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown mixer 'cutmx'" in errors[0]


# ------------------------------------------------------------------ SAMix without labels


def grads(loss: torch.Tensor, modules: list[nn.Module]) -> list[bool]:
    params = [p for mod in modules for p in mod.parameters()]
    out = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    found, i = [], 0
    for mod in modules:
        k = len(list(mod.parameters()))
        found.append(any(g is not None and g.abs().sum() > 0 for g in out[i:i + k]))
        i += k
    return found


@pytest.mark.parametrize("name", ["mocov3_samix", "mocov2_samix"])
def test_samix_ssl_gradients_reach_exactly_their_modules(name):
    m = make(name)
    online = [m.backbone, m.online.projector, *([m.predictor] if hasattr(m, "predictor") else [])]
    seen = []
    handle = m.target_backbone.stem.register_full_backward_hook(
        lambda mod, gi, go: seen.append(float(go[0].abs().sum())))
    out = m(views(4))
    # the Mixer learns only from its own loss, whose gradient passes through the frozen target network
    assert grads(out["loss_mixer"], [m.mix_block, *online]) == [True] + [False] * len(online)
    # the encoder's mixup loss reaches the online network, never the Mixer (its mask is detached)
    assert grads(out["loss_mix"], [m.mix_block, *online]) == [False] + [True] * len(online)
    out["loss_mixer"].backward()
    handle.remove()
    assert seen and seen[0] > 0
    assert not any(p.requires_grad for p in m.momentum_encoder.parameters())
    cfg = {"weight_decay": 0, "no_decay_norm_bias": False, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
           "nesterov": False}
    opt = {id(p) for grp in build_optimizer(m.param_groups(), cfg).param_groups for p in grp["params"]}
    assert {id(p) for p in m.mix_block.parameters()} <= opt
    assert not opt & {id(p) for p in m.momentum_encoder.parameters()}


class FixedMask(nn.Module):
    """A stand-in Mixer whose second-image mask S₁ is a given constant."""

    def __init__(self, s1: float):
        super().__init__()
        self.s1 = s1

    def forward(self, z_i, z_j, lam, size):
        return torch.full((z_i.shape[0], 1, *size), self.s1)


def test_samix_ssl_mask_adjustment_and_lambda_margin():
    m = make("mocov3_samix", mean_margin=0.1)
    x, f = torch.zeros(4, 3, 16, 16), torch.zeros(4, 8, 4, 4)
    idx, lam_t = torch.tensor([1, 2, 3, 0]), torch.full((4,), 0.5)
    m.mix_block = FixedMask(0.9)  # mean(S₀) = 0.1, 0.4 away from λ: rescaled to mean λ
    s0 = m._backbone_mask(f, f, idx, 0.5, lam_t, x)
    torch.testing.assert_close(s0.mean(dim=(1, 2, 3)), lam_t)
    m.mix_block = FixedMask(0.45)  # mean(S₀) = 0.55, within the margin: kept
    torch.testing.assert_close(m._backbone_mask(f, f, idx, 0.5, lam_t, x), torch.full((4, 1, 16, 16), 0.55))
    m.mix_block, m.mask_adjust = FixedMask(0.9), "off"
    torch.testing.assert_close(m._backbone_mask(f, f, idx, 0.5, lam_t, x), torch.full((4, 1, 16, 16), 0.1))
    m.lam_margin = 0.1  # λ within the margin of 0: plain Mixup
    assert m._backbone_mask(f, f, idx, 0.05, torch.full((4,), 0.05), x).flatten().tolist() == pytest.approx([0.05] * 4)


def test_samix_ssl_eta_acts_on_the_mixer_loss_only():
    g = torch.Generator().manual_seed(0)
    logits, a, b, lam = torch.randn(6, 9, generator=g), torch.arange(6), (torch.arange(6) + 1) % 6, torch.full((6,), .3)
    logp = F.log_softmax(logits, 1)
    mce = -(lam * logp[torch.arange(6), a] + (1 - lam) * logp[torch.arange(6), b]).mean()
    torch.testing.assert_close(eta_balanced(logits, a, b, lam, 1.0), mce)  # η = 1: mixup InfoNCE
    assert float(eta_balanced(logits, a, b, lam, 0.0)) < float(eta_balanced(logits, a, b, lam, 0.5)) < float(mce)
    no_b = logits.scatter(1, b.view(-1, 1), float("-inf"))
    no_a = logits.scatter(1, a.view(-1, 1), float("-inf"))
    ref = (lam * F.cross_entropy(no_b, a, reduction="none") + (1 - lam) * F.cross_entropy(no_a, b, reduction="none"))
    torch.testing.assert_close(two_positive_nce(logits, a, b, lam), ref.mean())
    v = views(4)
    outs = {eta: make("mocov3_samix", eta=eta)(v) for eta in (0.0, 0.5)}
    assert float(outs[0.0]["loss_mixer"]) != pytest.approx(float(outs[0.5]["loss_mixer"]), rel=1e-4)
    assert float(outs[0.0]["loss_mix"]) == pytest.approx(float(outs[0.5]["loss_mix"]), rel=1e-6)  # same draws


def test_samix_ssl_has_no_pairing_leak():
    """No leak: every mixed image x̃_i = S₀ x^q_i + S₁ x^k_π(i) has π(i) ≠ i, so its positives k^k_i and k^q_π(i) come
    from views whose pixels are not in x̃_i; the keys of the pasted views themselves (k^q_i, k^k_π(i)) appear nowhere
    in its logits; and the Mixer reads the features of exactly the two views it mixes (MoCoSAMix's second shuffle of
    the view-k features broke this)."""
    for n in range(2, 10):  # a derangement, each partner uniform over the others
        for s in range(20):
            pi = derangement(n, torch.Generator().manual_seed(s), CPU)
            assert sorted(pi.tolist()) == list(range(n)) and (pi != torch.arange(n)).all()
    counts = torch.zeros(4, 4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        pi = derangement(4, gen, CPU)
        counts[torch.arange(4), pi] += 1
    assert counts.diagonal().sum() == 0 and counts[~torch.eye(4, dtype=torch.bool)].min() > 150
    # logits: column i is k_a,i, column π(i) is k_b,π(i), every other column k_a,j (j ∉ {i, π(i)})
    g = torch.Generator().manual_seed(1)
    m_, ka, kb = (torch.randn(5, 6, generator=g) for _ in range(3))
    pi = torch.tensor([3, 0, 4, 1, 2])
    logits, col_a, col_b = in_batch_cross_view_logits(m_, ka, kb, pi, 0.5)
    assert col_a.tolist() == list(range(5)) and col_b.tolist() == pi.tolist()
    for i in range(5):
        want = [_cos(m_[i], kb[pi[i]] if j == pi[i] else ka[j]) / 0.5 for j in range(5)]
        assert logits[i].tolist() == pytest.approx(want, rel=1e-5)
        leaks = (_cos(m_[i], kb[i]) / 0.5, _cos(m_[i], ka[pi[i]]) / 0.5)  # keys of the pasted views
        assert all(abs(v - leak) > 1e-6 for v in logits[i].tolist() for leak in leaks)
    # a step: the Mixer's inputs and the mixed images use one π without fixed points, features match the pixels
    for name in ("mocov3_samix", "mocov2_samix"):
        m = make(name)
        v = views(8)
        seen: list = []
        mixed: list = []
        m.mix_block.register_forward_hook(lambda mod, args, out, seen=seen: seen.append((args[0], args[1], out)))
        m.momentum_encoder.module.register_forward_hook(lambda mod, args, out, mixed=mixed: mixed.append(args[0]))
        m(v)
        f_q = stage_features(m.target_backbone, v.views[0], 3)
        f_k = stage_features(m.target_backbone, v.views[1], 3)
        z_i, z_j, s1 = seen[0]  # the Mixer pass
        torch.testing.assert_close(z_i, f_q)
        pi = torch.tensor([int((f_k - z_j[i]).abs().flatten(1).sum(1).argmin()) for i in range(8)])
        torch.testing.assert_close(z_j, f_k[pi])
        assert (pi != torch.arange(8)).all()
        x_mb = mixed[-1]  # what the target network saw in the Mixer pass
        torch.testing.assert_close(x_mb, (1 - s1) * v.views[0] + s1 * v.views[1][pi])


# ------------------------------------------------------------------ training


@pytest.mark.parametrize("name", ["mocov3_sdmp", "mocov3_mix", "mocov3_samix"])
def test_a_few_cpu_steps_on_shapes_lower_the_loss(name):
    m = make(name, steps=5)
    opt = build_optimizer(m.param_groups(), {"optimizer": "lars", "lr": 0.05, "momentum": 0.9, "nesterov": False,
                                             "weight_decay": 1e-5, "no_decay_norm_bias": True})
    batch = views(8, seed=2)

    def loss_now() -> float:  # the same draws (λ, ops, boxes, pairs, swap) before and after training
        m.ctx.rng = MixRNG(7, CPU)
        with torch.no_grad():
            return float(m(batch)["loss_ssl"])

    before = loss_now()
    for step in range(5):
        m.global_step = step
        out = m(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        m.on_step_end(step + 1)
        assert math.isfinite(float(out["loss"]))
    assert loss_now() < 0.8 * before


TINY = """
name = "{name}"
seed = 0
[data]
source = "shapes"
train_size = 64
test_size = 32
image_size = 16
cache_dir = "{cache}"
[model]
name = "resnet10_cifar"
width = 0.125
[method]
name = "{method}"
proj_hidden = 32
proj_out = 16
pred_hidden = 32
[train]
epochs = 1
batch_size = 32
lr = 0.05
log_every = 2
[eval]
batch_size = 32
"""


@pytest.fixture(scope="module")
def shapes_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ssl-mixing")
    out = {}
    for method in ("mocov3_sdmp", "mocov3_mix", "mocov3_samix"):
        path = root / f"{method}.toml"
        path.write_text(TINY.format(name=method, method=method, cache=root / "cache"))
        out[method] = fit(load_recipe(path), out_root=root / "results", device=CPU).run_dir
    return out


def test_mixing_methods_run_through_the_engine_and_record_their_settings(shapes_runs):
    for method, run_dir in shapes_runs.items():
        s = json.loads((run_dir / "summary.json").read_text())
        assert s["status"] == "completed" and s["method"] == method and s["mixer_ms_per_step"] > 0
        assert s["mixing_pairs"] == "within each process's batch"
        assert s["method_settings"]["top1"].startswith("online linear classifier")
    settings = {m: json.loads((d / "summary.json").read_text())["method_settings"] for m, d in shapes_runs.items()}
    assert settings["mocov3_sdmp"]["mix_loss"] == "weighted_ce" and "sdmp_loss" in settings["mocov3_sdmp"]
    assert settings["mocov3_mix"]["naive_mixing"]["mixers"] == ["mixup"]
    assert settings["mocov3_samix"]["samix_mixer_loss"] == "L_local + η·L_global"


def test_mixer_pt_of_an_ssl_run_drives_samixp(shapes_runs):
    run_dir = shapes_runs["mocov3_samix"]
    saved = torch.load(run_dir / "mixer.pt", weights_only=True)
    assert saved["kind"] == "mixbench-mixer" and saved["feature_stage"] == 3 and saved["method"] == "mocov3samix"
    assert not any(k.startswith("stages.3.") for k in saved["encoder"])
    mixer = SAMixP(mixer_checkpoint=str(run_dir), alpha=2.0, lam_mode="batch", lam_margin=0.08, clean_loss=False)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["method"]
    for k, v in mixer.block.state_dict().items():
        torch.testing.assert_close(v, state[f"mix_block.{k}"])
    full_k = build_model("resnet10_cifar", 10, width=0.125)
    prefix = "momentum_encoder.module.backbone."
    full_k.backbone.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    with torch.no_grad():
        torch.testing.assert_close(stage_features(mixer.encoder, x, 3), stage_features(full_k.eval(), x, 3))
    mix = mixer(x, y, MixRNG(1, CPU))
    torch.testing.assert_close(mix.x, mix.mask * x + (1 - mix.mask) * x[mix.index])
    torch.manual_seed(0)
    model = build_model("resnet10_cifar", 10, width=0.125)
    from mixbench.losses import LOSSES

    ctx = MethodContext(model=model, loss=LOSSES.get("ce")(), num_classes=10, device=CPU, rng=MixRNG(0, CPU), epochs=1,
                        steps_per_epoch=1)
    values = {k: p.default for k, p in METHODS.entry("samixp").params.items() if k != "mixer_checkpoint"}
    method = build_method("samixp", {**values, "mixer_checkpoint": str(run_dir)}, ctx)
    out = method((x, torch.randint(0, 10, (4,))))
    out["loss"].backward()
    assert math.isfinite(float(out["loss"]))
