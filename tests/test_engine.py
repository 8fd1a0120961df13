"""The training engine: learning, schedules, resume equivalence, divergence, interruption."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch

from mixbench.engine import Interrupted, fit
from mixbench.engine.optim import LRSchedule
from mixbench.errors import DivergedError, UserError
from mixbench.methods.supervised import Supervised
from mixbench.recipe import load_recipe

CPU = torch.device("cpu")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cosine_schedule_with_warmup():
    cfg = {"lr": 0.1, "min_lr": 0.01, "schedule": "cosine", "epochs": 10, "warmup_epochs": 2,
           "warmup_start": 0.0, "milestones": [], "gamma": 0.1}
    s = LRSchedule(cfg, steps_per_epoch=10)
    assert s(0) == 0.0 and s(10) == pytest.approx(0.05)  # linear warm-up
    assert s(20) == pytest.approx(0.1)  # peak right after warm-up
    assert s(60) == pytest.approx(0.01 + 0.09 * 0.5)  # half way through the cosine
    assert s(100) == pytest.approx(0.01)


def test_step_schedule():
    cfg = {"lr": 1.0, "min_lr": 0.0, "schedule": "step", "epochs": 10, "warmup_epochs": 0,
           "warmup_start": 0.0, "milestones": [3, 6], "gamma": 0.5}
    s = LRSchedule(cfg, steps_per_epoch=4)
    assert [s(0), s(11), s(12), s(24)] == [1.0, 1.0, 0.5, 0.25]


def test_loss_falls_and_record_is_complete(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe(epochs=4, train_size=400, method="mixup"))
    result = fit(recipe, out_root=tmp_path / "results", device=CPU)
    assert result.status == "completed"
    run = result.run_dir
    assert run == tmp_path / "results" / "tiny" / recipe.run_id()
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    for m in metrics:
        assert {"train_loss", "lr", "top1", "top5", "epoch_seconds", "images_per_s"} <= set(m)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 4
    assert summary["method"] == "mixup" and summary["params"] > 0
    assert summary["top1_last"] == metrics[-1]["top1"]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["seed"] == 0 and meta["end_time"]
    assert "torch" in json.dumps(meta)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 4 and set(ckpt) >= {"method", "optimizer", "step", "rng", "ema", "scaler"}
    assert ckpt["kind"] == "mixbench-checkpoint" and ckpt["version"] == 2
    assert ckpt["model_spec"]["name"] == "resnet18_cifar" and ckpt["model_spec"]["num_classes"] == 10
    assert load_recipe(run / "recipe.toml").as_dict() == recipe.as_dict()


def test_resume_reproduces_an_uninterrupted_run(tiny_recipe, tmp_path):
    path = tiny_recipe(epochs=4, method="cutmix")
    full = fit(load_recipe(path, ["train.deterministic=true", "train.ema=true"]),
               out_root=tmp_path / "a", device=CPU)
    half = fit(load_recipe(path, ["train.deterministic=true", "train.ema=true", "train.stop_after=2"]),
               out_root=tmp_path / "b", device=CPU)
    assert half.status == "interrupted"
    assert json.loads((half.run_dir / "summary.json").read_text())["epochs_done"] == 2
    resumed = fit(load_recipe(path, ["train.deterministic=true", "train.ema=true"]),
                  out_root=tmp_path / "b", device=CPU, resume=True)
    assert resumed.status == "completed"
    a, b = read_jsonl(full.run_dir / "metrics.jsonl"), read_jsonl(resumed.run_dir / "metrics.jsonl")
    assert [m["epoch"] for m in b] == [1, 2, 3, 4]
    for ma, mb in zip(a, b, strict=True):
        for key in ("train_loss", "lr", "top1", "top5", "ema_top1"):
            assert ma[key] == mb[key], (key, ma, mb)
    wa = torch.load(full.run_dir / "checkpoint.pt", weights_only=True)["method"]
    wb = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)["method"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


class NanAfterFourSteps(Supervised):
    """Vanilla training whose loss turns NaN after 4 steps (4 steps per epoch: epoch 2 goes bad)."""

    def forward(self, batch):
        out = super().forward(batch)
        if self.global_step >= 4:
            out["loss"] = out["loss"] * float("nan")
        return out


class SigtermInEpochTwo(Supervised):
    """Vanilla training that sends itself SIGTERM at its 6th step (during epoch 2) while ``armed``."""

    armed = True

    def forward(self, batch):
        if self.armed and self.global_step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(batch)


def test_divergence_keeps_last_good_checkpoint(tiny_recipe, tmp_path, register_method):
    register_method("nan_after_4", NanAfterFourSteps)
    recipe = load_recipe(tiny_recipe(epochs=3, method="nan_after_4"))
    with pytest.raises(DivergedError):
        fit(recipe, out_root=tmp_path, device=CPU)
    run = tmp_path / "tiny" / recipe.run_id()
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
    assert json.loads((run / "meta.json").read_text())["status"] == "diverged"
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())


def test_sigterm_checkpoints_and_marks_interrupted(tiny_recipe, tmp_path, register_method):
    register_method("sigterm_in_epoch_2", SigtermInEpochTwo)
    path = tiny_recipe(epochs=3, method="sigterm_in_epoch_2")
    recipe = load_recipe(path)
    with pytest.raises(Interrupted):
        fit(recipe, out_root=tmp_path, device=CPU)
    run = tmp_path / "tiny" / recipe.run_id()
    assert json.loads((run / "meta.json").read_text())["status"] == "interrupted"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    SigtermInEpochTwo.armed = False  # the same run, resumed without the signal
    resumed = fit(recipe, out_root=tmp_path, device=CPU, resume=True)
    assert resumed.status == "completed"
    assert [m["epoch"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_refuses_to_overwrite_and_keeps_files(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe(epochs=1))
    first = fit(recipe, out_root=tmp_path, device=CPU)
    before = {p.name: p.read_bytes() for p in first.run_dir.iterdir()}
    with pytest.raises(UserError, match="--resume or --overwrite"):
        fit(recipe, out_root=tmp_path, device=CPU)
    assert {p.name: p.read_bytes() for p in first.run_dir.iterdir()} == before
    again = fit(recipe, out_root=tmp_path, device=CPU, overwrite=True)
    assert again.status == "completed"


@pytest.mark.parametrize("precision", ["bf16"])
def test_bf16_and_options_train(tiny_recipe, tmp_path, precision):
    recipe = load_recipe(tiny_recipe(epochs=2), [
        f"train.precision={precision}", "train.channels_last=true", "train.grad_clip=1.0",
        "train.no_decay_norm_bias=true", "train.optimizer=adamw", "train.lr=0.002",
        "train.warmup_epochs=1", "train.ema=true", "loss.name=soft_ce", "loss.label_smoothing=0.1"])
    result = fit(recipe, out_root=tmp_path, device=CPU)
    s = result.summary
    assert s["status"] == "completed" and math.isfinite(s["top1_last"])
    assert "ema_top1" in read_jsonl(result.run_dir / "metrics.jsonl")[-1]


def test_fp16_grad_scaler_path_trains_and_resumes(tiny_recipe, tmp_path):
    """The CUDA fp16 path (autocast + GradScaler + unscale before clipping), run on the CPU."""
    path = tiny_recipe(epochs=2)
    sets = ["train.precision=fp16", "train.grad_clip=1.0"]
    half = fit(load_recipe(path, sets + ["train.stop_after=1"]), out_root=tmp_path, device=CPU)
    ckpt = torch.load(half.run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0
    done = fit(load_recipe(path, sets), out_root=tmp_path, device=CPU, resume=True)
    assert done.status == "completed" and math.isfinite(done.summary["top1_last"])
    assert done.summary["epochs_done"] == 2
