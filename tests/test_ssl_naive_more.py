"""Naive mixing for SimCLR and DINO (issue 12): the simclr_mix and dino_mix losses against hand loops on a fixed
batch with a fixed λ and pairing, soft targets summing to one, a few CPU steps lowering the loss, a 1-epoch shapes run
of each through ``mixbench run``, and simclr_mix under ``--nproc 2`` (gloo, sync BN) equal to one process given the
same per-process pairs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mixbench.cli import app
from mixbench.data.gpu_loader import Views
from mixbench.data.shapes import generate
from mixbench.data.views import make_views
from mixbench.engine import build as build_module
from mixbench.engine import fit
from mixbench.engine.optim import build_optimizer
from mixbench.losses.ssl import info_nce
from mixbench.methods import METHODS, MethodContext
from mixbench.methods.ssl.dino_mix import mixed_teacher_targets
from mixbench.methods.ssl.hooks import SimCLRHooks
from mixbench.methods.ssl.mixing import source_targets
from mixbench.methods.ssl.simclr import SimCLR
from mixbench.mixing.base import MixOutput, MixRNG
from mixbench.models import build_model
from mixbench.recipe import load_recipe

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
HEADS = {"proj_hidden": 32, "proj_out": 16}
LAM, INDEX = torch.tensor([0.3, 0.6, 0.8, 0.2, 1.0]), torch.tensor([2, 0, 4, 1, 4])  # row 4 paired with itself


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one thread is faster than two, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(name: str | type, steps: int = 10, image_size: int = 16, **values) -> nn.Module:
    """A method (registered name or class) on ResNet-10 (width 0.125) for shapes, small heads."""
    torch.manual_seed(0)
    model = build_model("resnet10_cifar", 10, width=0.125, image_size=image_size)
    ctx = MethodContext(
        model=model, loss=None, num_classes=10, device=CPU, rng=MixRNG(0, CPU), epochs=1, steps_per_epoch=steps
    )
    cls = METHODS.get(name) if isinstance(name, str) else name
    extra = {"num_prototypes": 12} if "num_prototypes" in cls.params else {}
    return cls(ctx, **{**HEADS, **extra, **values})


def views(b: int = 5, seed: int = 1) -> Views:
    """Shapes images (16 px) as two 'views': the image and its mirror plus a little noise."""
    x, y = generate(b, 16, seed)
    x = (x.float() / 255 - 0.5) / 0.25
    g = torch.Generator().manual_seed(seed)
    return Views((x, x.flip(3) + 0.1 * torch.randn(x.shape, generator=g)), y)


def pin_mix(monkeypatch, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Make the method's mixer return Mixup of ``x`` at the fixed λ and pairing (LAM, INDEX), mixed here by hand."""
    mixed = torch.stack([LAM[i] * x[i] + (1 - LAM[i]) * x[INDEX[i]] for i in range(len(x))])
    monkeypatch.setattr(m, "naive_mixer", lambda x_, y, rng: MixOutput(mixed, y, y[INDEX], LAM, INDEX))
    return mixed


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


# ------------------------------------------------------------------ SimCLR + naive mixing by hand


def test_simclr_mix_loss_by_hand(monkeypatch):
    """L = NT-Xent(z¹, z²) + w·mean_i [λ_i (−log P_i(i)) + (1 − λ_i)(−log P_i(π(i)))], P_i over view 2's keys at T."""
    n, t, w = 5, 0.5, 0.7
    m = make("simclr_mix", temperature=t, mix_weight=w)
    x1, x2 = views(n).views
    x_mix = pin_mix(monkeypatch, m, x1)
    with torch.no_grad():
        out = m.ssl_loss((x1, x2), m.backbone(x1).flatten(1))
        z1, z2, zm = (m.query(x) for x in (x1, x2, x_mix))
    rows = list(z1) + list(z2)
    nt = 0.0
    for a in range(2 * n):  # NT-Xent: positive (a + n) mod 2n, every other row a negative
        log_z = math.log(sum(math.exp(_cos(rows[a], rows[j]) / t) for j in range(2 * n) if j != a))
        nt += (log_z - _cos(rows[a], rows[(a + n) % (2 * n)]) / t) / (2 * n)
    mix = 0.0
    for i in range(n):
        log_z = math.log(sum(math.exp(_cos(zm[i], z2[j]) / t) for j in range(n)))
        own, partner = log_z - _cos(zm[i], z2[i]) / t, log_z - _cos(zm[i], z2[INDEX[i]]) / t
        mix += (float(LAM[i]) * own + (1 - float(LAM[i])) * partner) / n
    assert float(out["loss_mix"]) == pytest.approx(mix, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(nt + w * mix, rel=1e-5)


def test_simclr_hooks_keys_keep_their_gradient_and_the_clean_pass_is_simclr():
    m = make(SimCLRHooks, temperature=0.3)
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(5, 16, generator=g, requires_grad=True), torch.randn(5, 16, generator=g, requires_grad=True)
    m.pair_loss(q, k, source_targets(LAM, INDEX, 5)).backward()
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0  # i-Mix's N-pair form: the keys learn too
    torch.testing.assert_close(m.pair_loss(q, k), info_nce(q, k, 0.3))  # no targets: the diagonal positives
    x1, x2 = views(4).views
    feats0 = m.backbone(x1).flatten(1)
    out, keys, maps = m.clean_pass((x1, x2), feats0)
    torch.testing.assert_close(out["loss"], SimCLR.ssl_loss(m, (x1, x2), feats0)["loss"])
    assert all(k_.requires_grad for k_ in keys) and maps == (None, None)
    with pytest.raises(ValueError, match="no target network"):
        m.clean_pass((x1, x2), feats0, stage=3)


# ------------------------------------------------------------------ DINO + naive mixing by hand


def test_dino_mix_loss_and_centre_by_hand(monkeypatch):
    """L = L_DINO + w·mean_i H(λ_i P_t(x²_i) + (1 − λ_i) P_t(x²_π(i)), P_s(x̃_i)); the centre sees clean crops only."""
    n, w, k = 5, 0.7, 12
    m = make("dino_mix", mix_weight=w, freeze_last_layer=0)
    m.center.copy_(torch.randn(1, k, generator=torch.Generator().manual_seed(3)))
    center = m.center.clone()
    x1, x2 = views(n).views
    x_mix = pin_mix(monkeypatch, m, x1)
    with torch.no_grad():
        feats0 = m.backbone(x1).flatten(1)
        dino, _, _ = m.dino_terms((x1, x2), feats0)  # DINO's own loss on the clean crops
        out = m.ssl_loss((x1, x2), feats0)
        t1, t2 = m.teacher(x1).double(), m.teacher(x2).double()
        student = m.head(m.backbone(x_mix).flatten(1)).double()
    tau_t, tau_s, c = m.teacher_temp(), m.student_temperature, center[0].double()
    p_t = [[math.exp(float(t2[i, j] - c[j]) / tau_t) for j in range(k)] for i in range(n)]
    p_t = [[v / sum(row) for v in row] for row in p_t]
    want = 0.0
    for i in range(n):
        target = [float(LAM[i]) * p_t[i][j] + (1 - float(LAM[i])) * p_t[INDEX[i]][j] for j in range(k)]
        assert sum(target) == pytest.approx(1.0, abs=1e-9)
        log_z = math.log(sum(math.exp(float(student[i, j]) / tau_s) for j in range(k)))
        want += sum(-target[j] * (float(student[i, j]) / tau_s - log_z) for j in range(k)) / n
    assert float(out["loss_mix"]) == pytest.approx(want, rel=1e-5)
    assert float(out["loss_dino"]) == pytest.approx(float(dino["loss"]), rel=1e-6)
    assert float(out["loss"]) == pytest.approx(float(dino["loss"]) + w * want, rel=1e-5)
    clean_mean = torch.cat([t1, t2]).mean(0, keepdim=True)  # c ← m c + (1 − m)·mean of the clean teacher rows
    torch.testing.assert_close(m.center.double(), 0.9 * center.double() + 0.1 * clean_mean, rtol=1e-5, atol=1e-6)


def test_soft_targets_sum_to_one_and_mix_the_teacher_rows():
    t = source_targets(LAM, INDEX, 10, offset=5)  # rank 1 of 2: its keys are columns 5..9 of the gathered ones
    torch.testing.assert_close(t.sum(1), torch.ones(5))
    assert t[:, :5].abs().sum() == 0 and float(t[0, 5]) == pytest.approx(0.3) and float(t[0, 7]) == pytest.approx(0.7)
    assert float(t[4, 9]) == 1.0  # a self-paired row targets its own key only
    probs = torch.softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(4)), dim=-1)
    mixed = mixed_teacher_targets(probs, LAM, INDEX)
    torch.testing.assert_close(mixed.sum(-1), torch.ones(5))
    assert (mixed >= 0).all()
    torch.testing.assert_close(mixed[0], 0.3 * probs[0] + 0.7 * probs[2])
    torch.testing.assert_close(mixed[4], probs[4])


# ------------------------------------------------------------------ training


def test_a_few_cpu_steps_on_shapes_lower_the_simclr_mix_loss():
    m = make("simclr_mix", steps=5)
    opt = build_optimizer(
        m.param_groups(),
        {
            "optimizer": "lars",
            "lr": 0.05,
            "momentum": 0.9,
            "nesterov": False,
            "weight_decay": 1e-5,
            "no_decay_norm_bias": True,
        },
    )
    batch = views(8, seed=2)

    def loss_now() -> float:  # the same draws (λ, pairs) before and after training
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
        assert math.isfinite(float(out["loss"].detach()))
    assert loss_now() < 0.8 * before


def test_a_few_cpu_steps_on_shapes_lower_the_dino_mix_loss():
    """As test_dino's DINO steps (3 batches of augmented 32-px shapes, AdamW, teacher EMA 0.9): what the student
    controls falls, DINO's KL H(P_t, P_s) − H(P_t) and the mixed term's excess over the teacher's entropy."""
    m = make("dino_mix", image_size=32, freeze_last_layer=0, momentum=0.9, num_prototypes=64)
    x, y = generate(24, 32, seed=0)
    g = torch.Generator().manual_seed(0)
    specs = METHODS.get("dino_mix").view_specs({})
    batches = [
        Views(tuple((make_views(x[k : k + 8], s, g) / 255 - 0.5) / 0.25 for s in specs), y[k : k + 8])
        for k in (0, 8, 16)
    ]
    opt = torch.optim.AdamW(
        [p for group in m.param_groups() for p in group.module.parameters() if p.requires_grad],
        lr=2e-3,
        weight_decay=0.0,
    )
    kl, excess = [], []
    for step in range(6):
        m.global_step = step
        out = m(batches[step % 3])
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        m.on_step_end(step + 1)
        kl.append(float(out["loss_dino"] - out["teacher_entropy"]))
        excess.append(float(out["loss_mix"] - out["teacher_entropy"]))
    assert all(math.isfinite(v) and v >= -1e-4 for v in kl + excess)
    for values in (kl, excess):
        assert sum(values[-3:]) < 0.5 * sum(values[:3]), values


TINY = """
base = "{base}"
name = "{name}"
seed = 0
[data]
train_size = {train_size}
test_size = 64
cache_dir = "{cache}"
[model]
width = 0.125
[method]
proj_hidden = 64
proj_out = 32
knn_every = 0
{extra}
[train]
epochs = 1
batch_size = 32
lr = 0.05
log_every = 3
warmup_epochs = 0
deterministic = true
sync_bn = true
[eval]
batch_size = 64
"""


def write_recipe(folder: Path, method: str, train_size: int = 200, extra: str = "") -> Path:
    """A tiny 1-epoch run on top of the shipped ``recipes/ssl/shapes_<method>.toml``."""
    path = folder / f"{method}.toml"
    base = (REPO / "recipes" / "ssl" / f"shapes_{method}.toml").as_posix()
    path.write_text(
        TINY.format(base=base, name=method, train_size=train_size, cache=(folder / "cache").as_posix(), extra=extra)
    )
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shapes_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ssl-naive-more")
    out = {}
    for method, extra in (("simclr_mix", ""), ("dino_mix", "num_prototypes = 64")):
        res = CliRunner().invoke(
            app,
            ["run", str(write_recipe(root, method, extra=extra)), "--device", "cpu", "--out", str(root / "results")],
        )
        assert res.exit_code == 0, res.output
        (out[method],) = (root / "results" / method).glob("*/summary.json")
    return out


def test_both_methods_run_one_epoch_through_mixbench_run(shapes_runs):
    for method, summary_path in shapes_runs.items():
        s = json.loads(summary_path.read_text())
        assert s["status"] == "completed" and s["method"] == method and s["mixer_ms_per_step"] > 0
        assert s["method_settings"]["naive_mixing"]["mixers"] == ["mixup"]
        assert s["method_settings"]["naive_loss"].startswith("L_DINO" if method == "dino_mix" else "L_framework")
        (row,) = metrics(summary_path.parent)
        assert math.isfinite(row["train_loss"]) and {"loss_mix", "loss_ssl", "embed_std"} <= set(row["terms"])


# ------------------------------------------------------------------ torchrun


class RankPairs(MixRNG):
    """The 1-process reference of a 2-process run: the pairing each rank draws for its half of the batch.

    Under torchrun rank r pairs its own 16 rows with its own generator (seed + 7919·r); here the first half of the
    32 rows is paired by rank 0's generator and the second by rank 1's, so both runs mix the same images."""

    def __init__(self, seed: int, device: torch.device, rank: int = 0):
        super().__init__(seed, device, rank)
        self.rank1 = MixRNG(seed, device, rank=1)

    def permutation(self, n: int, device: torch.device) -> torch.Tensor:
        half = n // 2
        return torch.cat([super().permutation(half, device), self.rank1.permutation(half, device) + half])


def test_simclr_mix_under_two_processes_matches_one_process(tmp_path, monkeypatch):
    """Keys gathered with their gradient and soft targets offset into them: with sync BN and the same per-process
    pairs (each process pairs within its own rows, so the 1-process run is given those pairs) the losses are equal."""
    path = write_recipe(tmp_path, "simclr_mix", train_size=96)  # 3 steps of 16 + 16 images
    monkeypatch.setattr(build_module, "MixRNG", RankPairs)
    one = fit(load_recipe(path), out_root=tmp_path / "one", device=CPU)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixbench",
            "run",
            str(path),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "two"),
            "--nproc",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert two.returncode == 0, two.stdout + two.stderr
    (a,), (b,) = metrics(one.run_dir), metrics(tmp_path / "two" / "simclr_mix" / one.run_dir.name)
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    for term in ("loss_ssl", "loss_mix"):
        assert b["terms"][term] == pytest.approx(a["terms"][term], rel=1e-4)
