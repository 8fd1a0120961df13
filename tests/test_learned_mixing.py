"""AutoMix, SAMix and SAMix^P against their definitions (spec sections 1 and 2)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mixbench.cli import app
from mixbench.engine import fit
from mixbench.engine.momentum import momentum_at
from mixbench.engine.optim import LRSchedule, build_optimizer
from mixbench.losses import LOSSES
from mixbench.methods import METHODS, MethodContext, build_method
from mixbench.methods.automix import neg_weight_soft_ce
from mixbench.mixing.base import MixRNG
from mixbench.mixing.learned import MixBlock, adjust_mask_mean, mask_loss, rescale_lambda, stage_features
from mixbench.models import build_model
from mixbench.recipe import load_recipe


def make_method(name: str, **params):
    torch.manual_seed(0)
    model = build_model("resnet10_cifar", 4, width=0.125)
    ctx = MethodContext(model=model, loss=LOSSES.get("ce")(), num_classes=4, device=torch.device("cpu"),
                        rng=MixRNG(0, torch.device("cpu")), epochs=2, steps_per_epoch=10,
                        model_spec={"name": "resnet10_cifar", "width": 0.125, "image_size": 16})
    values = {k: p.default for k, p in METHODS.entry(name).params.items()} | params
    return build_method(name, values, ctx)


def batch(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def grads(loss, modules):
    params = [p for m in modules for p in m.parameters()]
    out = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    found, i = [], 0
    for m in modules:
        k = len(list(m.parameters()))
        found.append(any(g is not None and g.abs().sum() > 0 for g in out[i:i + k]))
        i += k
    return found


@pytest.mark.parametrize("name", ["automix", "samix"])
def test_each_pass_reaches_exactly_its_modules(name):
    m = make_method(name, lam_margin=0.0)
    x, y = batch()
    out = m((x, y))
    # Mixer pass: only the Mixer learns; its gradient passes through the frozen momentum encoder.
    assert grads(out["loss_mixer"], [m.mix_block, m.model, m.head_one]) == [True, False, False]
    # Encoder pass: backbone and both online heads; the Mixer's mask is detached.
    assert grads(out["loss_encoder"], [m.mix_block, m.model.backbone, m.model.head, m.head_one]) == [
        False, True, True, True]
    assert not any(p.requires_grad for p in m.momentum_encoder.parameters())
    opt_params = {id(p) for g in build_optimizer(m.param_groups(), {"weight_decay": 0, "no_decay_norm_bias": False,
                  "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False}).param_groups
                  for p in g["params"]}
    assert not opt_params & {id(p) for p in m.momentum_encoder.parameters()}
    assert {id(p) for p in m.mix_block.parameters()} <= opt_params


def test_gradient_hooks_see_the_momentum_encoder_carry_the_mixer_gradient():
    m = make_method("automix", lam_margin=0.0)
    seen = []
    handle = m.momentum_encoder.backbone.stem.register_full_backward_hook(
        lambda mod, gin, gout: seen.append(gout[0].abs().sum().item()))
    x, y = batch()
    m((x, y))["loss"].backward()
    handle.remove()
    assert seen and seen[0] > 0  # the Mixer's gradient flows back through f_k's stem to the image


def test_rescaled_lambda_matches_the_spec_table():
    lam = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    expected = torch.tensor([0.0, 0.182, 0.357, 0.5, 0.643, 0.818, 1.0])
    torch.testing.assert_close(rescale_lambda(lam, 0.25), expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(rescale_lambda(lam, -1.0), lam)


@pytest.mark.parametrize("encoding", ["concat", "mul"])
def test_mask_responds_to_lambda_and_learns_to_follow_it(encoding):
    torch.manual_seed(0)
    block = MixBlock(8, lam_encoding=encoding, lam_mul_k=0.25, value_net="convneck", qk="concat",
                     upsample="bilinear")
    z = torch.randn(4, 8, 4, 4)
    lo, hi = torch.full((4,), 0.2), torch.full((4,), 0.8)
    assert not torch.allclose(block(z, z.flip(0), lo, (16, 16)), block(z, z.flip(0), hi, (16, 16)))
    opt = torch.optim.Adam(block.parameters(), lr=0.05)
    for _ in range(150):
        loss = sum(mask_loss(1 - block(z, z.flip(0), lam, (16, 16)), lam, margin=0.0) for lam in (lo, hi))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for lam in (lo, hi):
        assert (1 - block(z, z.flip(0), lam, (16, 16))).mean().item() == pytest.approx(lam[0].item(), abs=0.03)


def test_automix_cifar_block_ignores_lambda_and_upsamples_before_the_sigmoid():
    torch.manual_seed(0)
    block = MixBlock(8)  # AutoMix's CIFAR settings: no λ encoding, nearest upsampling
    z = torch.randn(2, 8, 4, 4)
    a = block(z, z.flip(0), torch.full((2,), 0.2), (16, 16))
    torch.testing.assert_close(a, block(z, z.flip(0), torch.full((2,), 0.9), (16, 16)))
    assert a.shape == (2, 1, 16, 16) and ((a > 0) & (a < 1)).all()
    # nearest upsampling by 4: each 4x4 block is constant
    torch.testing.assert_close(a, a[:, :, ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3))


def test_mixer_mask_is_the_second_images_weight():
    """S₁ = σ(Up(P v)) with v read from z_j only: changing z_j's content changes the mask."""
    torch.manual_seed(0)
    block = MixBlock(4)
    with torch.no_grad():
        block.query.weight.zero_()  # uniform attention: s_j = mean over positions of v(z_j)
        block.value.weight.fill_(1.0)
    z_i, z_j = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    s1 = block(z_i, z_j, torch.full((1,), 0.5), (2, 2))
    expected = torch.sigmoid(z_j.sum(1).mean())
    torch.testing.assert_close(s1, expected.expand(1, 1, 2, 2))


def test_mask_loss_by_hand():
    s0 = torch.tensor([0.2, 0.4, 0.6, 0.2]).view(1, 1, 2, 2)  # mean 0.35, variance 0.0275
    lam = torch.tensor([0.7])
    assert mask_loss(s0, lam, 0.1).item() == pytest.approx(0.25)
    assert mask_loss(s0, lam, 0.5).item() == pytest.approx(0.0)
    assert mask_loss(s0, lam, 0.1, var_weight=2.0).item() == pytest.approx(0.25 - 2 * 0.0275)


def test_adjust_mask_mean_hits_lambda_and_stays_in_range():
    s0 = torch.rand(6, 1, 8, 8)
    lam = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.45])
    out = adjust_mask_mean(s0, lam)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), lam, atol=1e-5, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


def test_momentum_schedule_and_update():
    assert momentum_at(5, 100, 0.999, 0.999999, 0.1) == 0.999
    assert momentum_at(100, 100, 0.999, 0.999999, 0.1) == pytest.approx(0.999999)
    mid = 0.999999 - (0.999999 - 0.999) * (math.cos(math.pi * 0.5) + 1) / 2
    assert momentum_at(50, 100, 0.999, 0.999999, 0.1) == pytest.approx(mid)
    m = make_method("automix", momentum=0.5, momentum_end=0.5)
    q0 = [p.detach().clone() for p in m.model.parameters()]
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(1.0)
    m.on_step_end(1)
    for k, q in zip(m.momentum_encoder.parameters(), q0, strict=True):
        torch.testing.assert_close(k, q + 0.5)  # 0.5·q + 0.5·(q + 1)


def test_lam_margin_falls_back_to_plain_mixup():
    m = make_method("samix", lam_margin=0.3)
    x, y = batch()
    z = stage_features(m.momentum_encoder, x, 3)
    s0 = m._backbone_mask(z, torch.arange(8).flip(0), 0.1, torch.full((8,), 0.1), (16, 16), x)
    assert s0.shape == (8, 1, 1, 1) and torch.all(s0 == 0.1)
    s0 = m._backbone_mask(z, torch.arange(8).flip(0), 0.5, torch.full((8,), 0.5), (16, 16), x)
    assert s0.shape == (8, 1, 16, 16) and s0.std() > 0


def test_reference_mixer_loss_ignores_eta_and_ours_does_not():
    z = torch.randn(5, 6, requires_grad=True)
    a, b, lam = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([1, 2, 3, 4, 5]), torch.full((5,), 0.3)
    mce = LOSSES.get("ce")()(z, a, b, lam)
    for eta in (0.0, 0.5, 3.0):
        torch.testing.assert_close(neg_weight_soft_ce(z, a, b, lam, eta), mce)
    m_half = make_method("samix", eta=0.5)
    m_one = make_method("samix", eta=1.0)
    g_half = torch.autograd.grad(m_half._generator_loss(z, a, b, lam), z)[0]
    g_one = torch.autograd.grad(m_one._generator_loss(z, a, b, lam), z)[0]
    torch.testing.assert_close(m_one._generator_loss(z, a, b, lam), mce)
    assert not torch.allclose(g_half, g_one)


def test_mixer_param_group_follows_its_own_lr():
    m = make_method("samix", mixer_lr=0.05, mixer_min_lr=0.01)
    cfg = {"weight_decay": 1e-4, "no_decay_norm_bias": False, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
           "nesterov": False}
    opt = build_optimizer(m.param_groups(), cfg)
    sched = LRSchedule({"lr": 0.1, "min_lr": 0.05, "schedule": "cosine", "epochs": 2, "warmup_epochs": 0,
                        "warmup_start": 0.0, "milestones": [], "gamma": 0.1}, 10)
    sched.apply(opt, 20)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.05, 0.01])
    sched.apply(opt, 0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.1, 0.05])


def _run(tiny_recipe, tmp_path, name, method, sets=(), **kw):
    recipe = load_recipe(tiny_recipe(name=name, method=method, epochs=1, train_size=100, **kw), list(sets))
    result = fit(recipe, out_root=tmp_path / "results", device=torch.device("cpu"))
    return result, json.loads((result.run_dir / "summary.json").read_text())


@pytest.mark.parametrize("name", ["automix", "samix"])
def test_learned_mixer_trains_end_to_end_and_exports_its_mixer(name, tiny_recipe, tmp_path):
    result, s = _run(tiny_recipe, tmp_path, f"run-{name}", name, ["eval.save_mixes=1"])
    assert s["status"] == "completed" and s["method"] == name
    assert 0 <= s["top1_last"] <= 100 and 0 <= s["momentum_top1_last"] <= 100
    assert s["mixer_ms_per_step"] > 0
    assert (result.run_dir / "mixes" / "epoch0001.png").is_file()
    obj = torch.load(result.run_dir / "mixer.pt", weights_only=True)
    assert obj["kind"] == "mixbench-mixer" and obj["feature_stage"] == 3
    ckpt = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    modules = {k.split(".")[0] for k in ckpt["method"]}
    assert {"model", "head_one", "momentum_teacher", "mix_block"} <= modules


def test_samixp_loads_a_frozen_mixer_on_another_backbone_and_trains(tiny_recipe, tmp_path):
    source, _ = _run(tiny_recipe, tmp_path, "source", "samix")
    saved = torch.load(source.run_dir / "mixer.pt", weights_only=True)
    result, s = _run(tiny_recipe, tmp_path, "target", "samixp",
                     [f"method.mixer_checkpoint={json.dumps(str(source.run_dir))}", "model.name=resnet10_cifar",
                      "data.seed=3"])
    assert s["status"] == "completed" and s["mixer_ms_per_step"] > 0
    assert s["method_settings"]["source"]["name"] == "resnet18_cifar"
    # the Mixer is frozen: it is not in the checkpoint's optimiser and its weights are unchanged
    method = build_method("samixp", {"mixer_checkpoint": str(source.run_dir), "alpha": 2.0, "lam_mode": "batch",
                                     "lam_margin": 0.08, "clean_loss": False, "prob": 1.0},
                          make_method("vanilla").ctx)
    assert not any(p.requires_grad for p in method.mixer.block.parameters())
    for k, v in method.mixer.block.state_dict().items():
        torch.testing.assert_close(v, saved["mixer"][k])
    # mixer.pt keeps the momentum backbone only up to the Mixer's stage, and it reads the same features
    assert saved["encoder"] and not any(k.startswith("stages.3.") for k in saved["encoder"])
    full_k = build_model("resnet18_cifar", 10, width=0.125)
    state = torch.load(source.run_dir / "checkpoint.pt", weights_only=True)["method"]
    prefix = "momentum_teacher.module."
    full_k.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    probe = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(stage_features(method.mixer.encoder, probe, 3),
                                   stage_features(full_k.eval(), probe, 3))
    png = tmp_path / "samixp.png"
    res = CliRunner().invoke(app, ["visualize", "--method", "samixp", "--n", "4", "--out", str(png), "--device", "cpu",
                                   "--set", f"mixer_checkpoint={json.dumps(str(source.run_dir / 'mixer.pt'))}"])
    assert res.exit_code == 0, res.output
    assert png.is_file()
    res = CliRunner().invoke(app, ["visualize", "--method", "automix", "--out", str(png)])
    assert res.exit_code == 2 and "eval.save_mixes" in res.output
    x, y = batch()
    x = F.interpolate(x, size=32)
    mix = method.mixer(x, y, MixRNG(1, torch.device("cpu")))
    assert mix.mask.shape == (8, 1, 32, 32) and mix.x.shape == x.shape
    torch.testing.assert_close(mix.x, mix.mask * x + (1 - mix.mask) * x[mix.index])


def test_samixp_bad_checkpoint_is_one_sentence_exit_2(tiny_recipe, tmp_path):
    path = tiny_recipe(name="bad", method="samixp")
    res = CliRunner().invoke(app, ["run", str(path), "--set", f"method.mixer_checkpoint={json.dumps(str(tmp_path))}",
                                   "--out", str(tmp_path / "r"), "--device", "cpu"])
    assert res.exit_code == 2
    assert "mixer_checkpoint" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("method,sets", [
    ("samix", []),
    ("dmixmatch", ["data.labels_per_class=4", "data.unlabeled_ratio=3", "train.batch_size=8", "loss.name=dm"]),
])
def test_resume_restores_the_methods_own_modules(method, sets, tiny_recipe, tmp_path):
    path = tiny_recipe(name=f"resume-{method}", method=method, epochs=2, train_size=100)
    common = ["train.deterministic=true", *sets]
    full = fit(load_recipe(path, common), out_root=tmp_path / "a", device=torch.device("cpu"))
    half = fit(load_recipe(path, [*common, "train.stop_after=1"]), out_root=tmp_path / "b",
               device=torch.device("cpu"))
    assert half.status == "interrupted"
    resumed = fit(load_recipe(path, common), out_root=tmp_path / "b", device=torch.device("cpu"), resume=True)
    a = [json.loads(line) for line in (full.run_dir / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    extra = "momentum_top1" if method == "samix" else "student_top1"
    for ma, mb in zip(a, b, strict=True):
        for key in ("train_loss", "top1", extra):
            assert ma[key] == mb[key], (key, ma, mb)
    ca = torch.load(full.run_dir / "checkpoint.pt", weights_only=True)["method"]
    cb = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)["method"]
    assert ca.keys() == cb.keys() and len({k.split(".")[0] for k in ca}) >= 3  # model, heads, teacher, Mixer
    for name in ca:
        assert torch.equal(ca[name], cb[name]), name
