"""Self-supervised frameworks (MoCo v2+, MoCo v3, SimCLR, BYOL): their losses against hand loops, the momentum
schedule and the MoCo queue by hand, a few CPU steps each with a falling loss, the online classifier's stop-gradient,
the kNN monitor, a resume-exact queue, the published reference rows in ``compare --reference``, and MoCo v3 under
torchrun (2 gloo processes) with keys gathered across ranks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbench.data.gpu_loader import Views
from mixbench.engine import fit
from mixbench.engine.momentum import MomentumTeacher
from mixbench.engine.optim import build_optimizer
from mixbench.evaluate.features import EvalData
from mixbench.losses.ssl import byol_loss, info_nce
from mixbench.methods import METHODS, MethodContext
from mixbench.methods.ssl.mocov2 import enqueue, queue_nce
from mixbench.methods.ssl.simclr import nt_xent
from mixbench.mixing.base import MixRNG
from mixbench.models import build_model
from mixbench.recipe import RecipeError, load_recipe
from mixbench.results.leaderboard import collect_runs, leaderboard, render

CPU = torch.device("cpu")
FRAMEWORKS = ("mocov2", "mocov3", "simclr", "byol")
HEADS = {"proj_hidden": 64, "proj_out": 32}
EXTRA = {"mocov2": {"queue_size": 16}, "mocov3": {"pred_hidden": 64}, "simclr": {}, "byol": {"pred_hidden": 64}}


def make(name: str, steps: int = 10, **values) -> nn.Module:
    """A framework on ResNet-10 (width 0.125) for 16-pixel images, 4 classes, small heads."""
    torch.manual_seed(0)
    model = build_model("resnet10_cifar", 4, width=0.125, image_size=16)
    ctx = MethodContext(model=model, loss=None, num_classes=4, device=CPU, rng=MixRNG(0, CPU), epochs=1,
                        steps_per_epoch=steps)
    return METHODS.get(name)(ctx, **{**HEADS, **EXTRA[name], **values})


def batches(n: int = 3, b: int = 16) -> list[Views]:
    """n fixed batches of two 'views': images and their mirror images plus a little noise."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.randn(b, 3, 16, 16, generator=g)
        x2 = x.flip(3) + 0.1 * torch.randn(x.shape, generator=g)
        out.append(Views((x, x2), torch.randint(0, 4, (b,), generator=g)))
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one thread is faster than two, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ losses against hand loops


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _nce_by_hand(q: torch.Tensor, k: torch.Tensor, t: float, targets: torch.Tensor | None = None) -> float:
    """mean_i Σ_j t_ij (log Σ_l exp(cos(q_i, k_l)/T) − cos(q_i, k_j)/T), t one-hot on j = i unless given."""
    total = 0.0
    for i in range(len(q)):
        logits = [_cos(q[i], k[j]) / t for j in range(len(k))]
        log_z = math.log(sum(math.exp(v) for v in logits))
        weights = [float(j == i) for j in range(len(k))] if targets is None else targets[i].tolist()
        total += sum(w * (log_z - v) for w, v in zip(weights, logits, strict=True))
    return total / len(q)


def test_info_nce_hard_and_soft_targets_match_a_hand_loop():
    g = torch.Generator().manual_seed(0)
    q, k, t = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g), 0.5
    targets = torch.softmax(torch.randn(4, 5, generator=g), dim=1)
    assert float(info_nce(q, k[:4], t)) == pytest.approx(_nce_by_hand(q, k[:4], t), rel=1e-5)
    assert float(info_nce(q, k, t)) == pytest.approx(_nce_by_hand(q, k, t), rel=1e-5)  # key 4: a negative
    assert float(info_nce(q, k, t, targets=targets)) == pytest.approx(_nce_by_hand(q, k, t, targets), rel=1e-5)


def test_byol_loss_matches_a_hand_loop_and_stops_the_target_gradient():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 4, generator=g, requires_grad=True), torch.randn(5, 4, generator=g, requires_grad=True)
    want = sum(2 - 2 * _cos(p[i].detach(), z[i].detach()) for i in range(5)) / 5
    loss = byol_loss(p, z)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert p.grad is not None and z.grad is None


def test_nt_xent_matches_a_double_loop_over_2n():
    g = torch.Generator().manual_seed(0)
    z1, z2, t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), 0.2
    z = torch.cat([z1, z2])
    total = 0.0
    for i in range(6):
        positive = (i + 3) % 6
        denominator = sum(math.exp(_cos(z[i], z[j]) / t) for j in range(6) if j != i)
        total += -math.log(math.exp(_cos(z[i], z[positive]) / t) / denominator)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(total / 6, rel=1e-5)


def test_queue_nce_matches_a_hand_loop():
    g = torch.Generator().manual_seed(0)
    q, k, queue, t = (torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g),
                      torch.randn(5, 4, generator=g), 0.2)
    total = 0.0
    for i in range(3):
        pos = math.exp(_cos(q[i], k[i]) / t)
        total += -math.log(pos / (pos + sum(math.exp(_cos(q[i], n) / t) for n in queue)))
    assert float(queue_nce(q, k, queue, t)) == pytest.approx(total / 3, rel=1e-5)


# ------------------------------------------------------------------ momentum schedule, queue


def test_momentum_follows_the_cosine_from_tau_to_one_by_hand():
    source = nn.Linear(2, 2)
    teacher = MomentumTeacher(source, 0.99, 1.0, total_steps=100)
    for step, tau in ((0, 0.99), (25, 1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2), (50, 0.995), (100, 1.0),
                      (150, 1.0)):
        assert teacher.momentum(step) == pytest.approx(tau, abs=1e-12)
    old = teacher.module.weight.detach().clone()
    with torch.no_grad():
        source.weight.add_(1.0)
    teacher.update(source, 25)
    tau = 1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2
    torch.testing.assert_close(teacher.module.weight, tau * old + (1 - tau) * source.weight.detach())


def test_byol_target_takes_one_ema_step_per_optimiser_step():
    m = make("byol", steps=4)
    online0 = [p.detach().clone() for p in m.online.parameters()]
    with torch.no_grad():
        for p in m.online.parameters():
            p.add_(0.5)
    m.on_step_end(2)  # τ(2) of 4 steps: 1 − 0.01 (cos(π/2) + 1)/2 = 0.995
    for t, p0, p in zip(m.target.module.parameters(), online0, m.online.parameters(), strict=True):
        torch.testing.assert_close(t, 0.995 * p0 + 0.005 * p.detach())


def test_enqueue_writes_fifo_rows_and_wraps_without_a_host_sync():
    queue, ptr = torch.zeros(2, 5, 1), torch.zeros(1, dtype=torch.long)
    for start in (1, 3, 5):  # batches of 2 keys per view: values start, start + 1 (view 1: negated)
        keys = torch.tensor([[start, start + 1], [-start, -start - 1]], dtype=torch.float).unsqueeze(-1)
        enqueue(queue, ptr, keys)
    # rows 0-1 <- 1, 2; rows 2-3 <- 3, 4; rows 4, 0 <- 5, 6 (wrapped); the pointer is at 1
    assert queue[0, :, 0].tolist() == [6, 2, 3, 4, 5] and queue[1, :, 0].tolist() == [-6, -2, -3, -4, -5]
    assert ptr.tolist() == [1]
    enqueue(queue, ptr, torch.arange(7, dtype=torch.float).view(1, 7, 1).repeat(2, 1, 1))  # 7 keys > 5 rows
    assert sorted(queue[0, :, 0].tolist()) == [2, 3, 4, 5, 6] and ptr.tolist() == [(1 + 7) % 5]
    assert queue[0, 3, 0] == 2 and queue[0, 2, 0] == 6  # FIFO order kept: the last key written last


def test_mocov2_enqueues_every_key_after_the_step_and_keeps_the_queue_in_its_state():
    m = make("mocov2", queue_size=40)
    state = m.state_dict()
    assert state["queue"].shape == (2, 40, 32) and state["queue_ptr"].tolist() == [0]
    torch.testing.assert_close(state["queue"].norm(dim=2), torch.ones(2, 40))
    before = m.queue.clone()
    out = m(batches(1)[0])
    torch.testing.assert_close(m.queue, before)  # the loss read the queue; it changes after the step
    m.on_step_end(1)
    assert m.queue_ptr.tolist() == [16]
    torch.testing.assert_close(m.queue[:, 16:], before[:, 16:])
    torch.testing.assert_close(m.queue[:, :16].norm(dim=2), torch.ones(2, 16))
    assert torch.isfinite(out["loss"]) and "embed_std" in out


# ------------------------------------------------------------------ training steps


OPTIMISERS = {"mocov2": "sgd", "mocov3": "lars", "simclr": "lars", "byol": "lars"}  # solo-learn's


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_a_few_cpu_steps_lower_the_loss(name):
    m = make(name, steps=24)
    opt = build_optimizer(m.param_groups(), {"optimizer": OPTIMISERS[name], "lr": 0.05, "momentum": 0.9,
                                             "nesterov": False, "weight_decay": 1e-5, "no_decay_norm_bias": True})
    data, losses = batches(), []
    for step in range(24):
        m.global_step = step
        out = m(data[step % 3])
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        m.on_step_end(step + 1)
        losses.append(float(out["loss_ssl"]))
    assert all(math.isfinite(v) for v in losses)
    first = sum(losses[1:5]) / 4  # step 0 of MoCo v2 meets the random initial queue
    assert sum(losses[-4:]) / 4 < 0.9 * first, losses


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_the_online_classifier_sends_no_gradient_into_the_backbone(name, monkeypatch):
    m = make(name)
    monkeypatch.setattr(m, "ssl_loss", lambda views, feats0: {"loss": torch.zeros(()), "embedding": feats0.detach()})
    out = m(batches(1)[0])
    out["loss"].backward()  # the online CE alone
    assert all(p.grad is None for p in m.backbone.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.model.head.parameters())
    groups = {g.name: g for g in m.param_groups()}
    assert groups["online_classifier"].fixed_lr == m.classifier_lr and groups["online_classifier"].weight_decay == 0


# ------------------------------------------------------------------ kNN monitor


class OneHotLabel(nn.Module):
    """A fake backbone whose features are the one-hot of the label written in pixel (0, 0) of channel 0."""

    num_features = 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = (x[:, 0, 0, 0] * 255 / 40).round().long()
        return F.one_hot(label, 5).float()


def test_knn_monitor_is_100_percent_on_features_separable_by_construction():
    g = torch.Generator().manual_seed(0)

    def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 5, (n,), generator=g)
        x = torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
        x[:, 0, 0, 0] = (y * 40).to(torch.uint8)
        return x, y

    (train_x, train_y), (test_x, test_y) = images(60), images(30)
    data = EvalData(train_x, train_y, test_x, test_y, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), [str(c) for c in range(5)])
    m = make("simclr", knn_every=2, knn_k=10)
    m.backbone = OneHotLabel()
    assert m.monitor(2, False, data) == {"knn_top1": pytest.approx(100.0)}
    assert m.monitor(3, False, data) == {} and m.monitor(3, True, data) == {"knn_top1": pytest.approx(100.0)}
    m.knn_every = 0
    assert m.monitor(2, True, data) == {}


TINY = """
name = "{name}"
seed = 0
[data]
source = "shapes"
train_size = 200
test_size = 100
cache_dir = "{cache}"
[model]
name = "resnet10_cifar"
width = 0.125
[method]
name = "{method}"
proj_hidden = 64
proj_out = 32
knn_every = 1
knn_k = 20
{extra}
[train]
epochs = 2
batch_size = 32
lr = 0.05
log_every = 3
deterministic = true
sync_bn = true
[eval]
batch_size = 100
"""


def write_recipe(folder: Path, name: str, method: str, extra: str = "") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY.format(name=name, method=method, cache=folder / "cache", extra=extra))
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_mocov2_run_monitors_knn_every_epoch_and_resumes_its_queue_exactly(tmp_path):
    path = write_recipe(tmp_path, "q", "mocov2", "queue_size = 48")
    full = fit(load_recipe(path), out_root=tmp_path / "a", device=CPU)
    rows = metrics(full.run_dir)
    assert [m["epoch"] for m in rows] == [1, 2] and all(0 <= m["knn_top1"] <= 100 for m in rows)
    assert all({"loss_ssl", "loss_online", "embed_std"} <= set(m["terms"]) for m in rows)
    summary = json.loads((full.run_dir / "summary.json").read_text())
    assert summary["method_settings"]["top1"].startswith("online linear classifier")
    assert "k=20, T=0.1" in summary["method_settings"]["knn_monitor"]
    half = fit(load_recipe(path, ["train.stop_after=1"]), out_root=tmp_path / "b", device=CPU)
    assert half.status == "interrupted"
    resumed = fit(load_recipe(path), out_root=tmp_path / "b", device=CPU, resume=True)
    a = torch.load(full.run_dir / "checkpoint.pt", weights_only=True)["method"]
    b = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)["method"]
    assert b["queue_ptr"].tolist() == [(2 * 6 * 32) % 48]  # 6 steps of 32 keys a epoch
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["train_loss"] for m in metrics(resumed.run_dir)] == [m["train_loss"] for m in rows]


def test_every_ssl_key_is_validated():
    from mixbench.recipe import validate

    def problems(method: dict) -> str:
        with pytest.raises(RecipeError) as e:
            validate({"data": {"source": "shapes"}, "method": method}, {})
        return "\n".join(e.value.problems)

    assert "[method].queue_size: expected an integer >= 1" in problems({"name": "mocov2", "queue_size": 0})
    assert "[method].temperature: expected a number > 0" in problems({"name": "simclr", "temperature": 0})
    assert "momentum_end = 0.9 is below momentum = 0.99" in problems({"name": "byol", "momentum_end": 0.9})
    assert "momentum_end = 0.5 is below" in problems({"name": "mocov2", "momentum_end": 0.5})
    assert "[method].views: expected one of" in problems({"name": "simclr", "views": "weak"})
    assert "view_overrides" in problems({"name": "mocov2", "view_overrides": {"all": {"brightnes": 0.4}}})
    assert "unknown key [method].pred_hidden" in problems({"name": "simclr", "pred_hidden": 8})


# ------------------------------------------------------------------ published reference rows


def test_compare_reference_shows_ssl_rows_with_their_protocol_only_for_ssl_groups(tmp_path):
    def run(folder: str, method: str, epochs: int, top1: float, ssl: bool) -> None:
        d = tmp_path / folder
        d.mkdir(parents=True)
        settings = {"top1": "online linear classifier on detached backbone features (solo-learn protocol)"} if ssl \
            else {"alpha": 1.0}
        (d / "summary.json").write_text(json.dumps({
            "schema": 1, "dataset": "cifar10", "backbone": "resnet18_cifar", "epochs": epochs, "status": "completed",
            "method": method, "loss": "ce", "run_id": f"seed0-{folder[-6:]}", "top1": top1, "top1_best": top1,
            "top1_last": top1, "wall_time_s": 60.0, "images_per_s": 100.0, "method_settings": settings}))

    run("a/seed0-aaaaaa", "byol", 1000, 91.0, True)
    run("b/seed0-bbbbbb", "byol", 800, 89.0, True)
    run("c/seed0-cccccc", "byol", 200, 85.0, True)
    run("d/seed0-dddddd", "mixup", 200, 95.0, False)
    groups = leaderboard(collect_runs([tmp_path], warn=None), include_reference=True)
    by_epochs = {g.epochs: {r["method"]: r for r in g.rows} for g in groups}
    solo = by_epochs[1000]["byol [online linear, batch 256] (published)"]
    assert solo["top1"] == 92.58 and solo["n"] == 0 and solo["other"].startswith("solo-learn")
    assert "mocov3 [online linear, batch 256] (published)" in by_epochs[1000]
    assert "byol [kNN k=200 T=0.1, batch 512] (published)" in by_epochs[800]
    assert "vanilla (published)" not in by_epochs[800]  # OpenMixup has an 800-epoch row: not for an SSL group
    lightly = by_epochs[200]["byol [kNN k=200 T=0.1, batch 128] (published)"]
    assert lightly["knn"] == 86.9 and lightly["top1"] is None and lightly["other"].startswith("lightly")
    assert by_epochs[200]["byol [kNN k=200 T=0.1, batch 512] (published)"]["knn"] == 86.8
    assert "mixup (published)" in by_epochs[200]  # the 200-epoch group also holds a supervised run
    text = render(groups, "table")
    assert "knn top-1" in text and "kNN k=200 T=0.1, batch 128" in text

    (tmp_path / "a").rename(tmp_path / "sup")  # a folder of its own for the supervised run
    (tmp_path / "d").rename(tmp_path / "sup" / "d")
    rows = [r["method"] for g in leaderboard(collect_runs([tmp_path / "sup" / "d"], warn=None),
                                             include_reference=True) for r in g.rows]
    assert not any("[" in r for r in rows) and "mixup (published)" in rows  # OpenMixup's, not lightly's


# ------------------------------------------------------------------ torchrun


def test_mocov3_under_two_processes_gathers_keys_and_matches_one_process(tmp_path):
    """Each process's queries meet every process's keys: with sync BN the 2-process loss is the 1-process loss
    (with this process's 16 keys alone the InfoNCE would be another number)."""
    path = write_recipe(tmp_path, "ddp", "mocov3", "pred_hidden = 64")
    sets = ["train.epochs=1", "method.knn_every=0", "data.train_size=96"]  # 3 steps of 16 + 16 images
    one = fit(load_recipe(path, sets), out_root=tmp_path / "one", device=CPU)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    two = subprocess.run([sys.executable, "-m", "mixbench", "run", str(path), "--device", "cpu", "--out",
                          str(tmp_path / "two"), "--nproc", "2", *(a for s in sets for a in ("--set", s))],
                         capture_output=True, text=True, timeout=240, env=env)
    assert two.returncode == 0, two.stdout + two.stderr
    (a,), (b,) = metrics(one.run_dir), metrics(tmp_path / "two" / "ddp" / one.run_dir.name)
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert b["terms"]["loss_ssl"] == pytest.approx(a["terms"]["loss_ssl"], rel=1e-4)


GATHER_CHECK = '''
import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from mixbench.methods.ssl.simclr import nt_xent

def main(rank, world, store):
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    w, x1, x2 = torch.randn(5, 4, generator=g), torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    whole = w.clone().requires_grad_(True)
    nt_xent(x1 @ whole, x2 @ whole, 0.3, gather=False).backward()  # one process, the whole batch
    half = w.clone().requires_grad_(True)
    rows = slice(4 * rank, 4 * rank + 4)
    nt_xent(x1[rows] @ half, x2[rows] @ half, 0.3).backward()  # this rank's half, every rank's rows gathered
    grad = half.grad.clone()
    dist.all_reduce(grad)  # DDP's mean over ranks
    if rank == 0:
        print(float((grad / world - whole.grad).abs().max()))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(main, args=(2, sys.argv[1]), nprocs=2)
'''


def test_simclr_gathers_rows_with_their_gradient_across_two_processes(tmp_path):
    """NT-Xent over both processes' rows, gradients averaged as DDP does, equals one process on the whole batch."""
    script = tmp_path / "gather_check.py"
    script.write_text(GATHER_CHECK)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], capture_output=True, text=True,
                       timeout=240, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert float(r.stdout.split()[-1]) < 1e-6
