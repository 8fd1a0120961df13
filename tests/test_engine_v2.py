"""Engine v2 contracts: self-describing checkpoints and their one reader, momentum teachers, MLP heads,
parameter groups, the top-k evaluator and registration next to the definition."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mixbench.checkpoint import read_checkpoint
from mixbench.engine import fit
from mixbench.engine.momentum import MomentumTeacher, momentum_at
from mixbench.engine.optim import LRSchedule, build_optimizer
from mixbench.engine.trainer import read_resume_checkpoint
from mixbench.errors import UserError
from mixbench.evaluate import EvalContext, TopKAccuracy
from mixbench.methods import METHODS, Method, ParamGroup
from mixbench.methods.supervised import Supervised
from mixbench.mixing.features import load_feature_model
from mixbench.models import build_model
from mixbench.models.heads import MLPHead
from mixbench.recipe import load_recipe

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def fixmatch_run(tmp_path_factory):
    """One tiny FixMatch run: its encoder (the EMA teacher) differs from its student."""
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("v2")
    path = tmp / "fm.toml"
    path.write_text(TINY.format(name="fm", method="fixmatch", epochs=1, train_size=100, cache=tmp / "cache")
                    + "\n")
    recipe = load_recipe(path, ["data.labels_per_class=2", "data.unlabeled_ratio=2", "train.batch_size=10",
                                "method.teacher_momentum=0.5", "method.teacher_momentum_end=0.5"])
    return fit(recipe, out_root=tmp / "results", device=CPU)


def test_checkpoint_alone_rebuilds_the_encoder_and_classifier(fixmatch_run):
    ckpt = read_checkpoint(fixmatch_run.run_dir)
    assert ckpt.version == 2 and ckpt.model_spec["name"] == "resnet18_cifar"
    assert ckpt.model_spec["num_classes"] == 10 and ckpt.normalization["mean"] == pytest.approx(
        [0.3867, 0.388, 0.3891], abs=1e-4)
    assert "[method]" in ckpt.recipe and ckpt.data["encoder_prefix"] == "teacher_ema.module.backbone."
    state = ckpt.method_state
    teacher = {k[len("teacher_ema.module."):]: v for k, v in state.items() if k.startswith("teacher_ema.module.")}
    student = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # the teacher is not the student
    backbone = ckpt.build_backbone()
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, teacher[f"backbone.{k}"]), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.build_classifier()(x), backbone(x) @ teacher["head.weight"].T
                                   + teacher["head.bias"])
    # the same reader serves features_from and [model].weights
    frozen = load_feature_model(fixmatch_run.run_dir, CPU)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    model = build_model("resnet18_cifar", 10, width=0.125, weights=str(fixmatch_run.run_dir / "checkpoint.pt"))
    assert all(torch.equal(v, teacher[f"backbone.{k}"]) for k, v in model.backbone.state_dict().items())


def test_version_1_checkpoints_are_migrated_for_weights_and_refused_for_resume(fixmatch_run, tmp_path):
    ckpt = read_checkpoint(fixmatch_run.run_dir)
    old = tmp_path / "old-run"
    old.mkdir()
    (old / "recipe.toml").write_text(ckpt.recipe)
    student = {k[len("model."):]: v for k, v in ckpt.method_state.items() if k.startswith("model.")}
    torch.save({"version": 1, "epoch": 1, "step": 10, "model": student, "extra": {}}, old / "checkpoint.pt")
    migrated = read_checkpoint(old)
    assert migrated.model_spec["width"] == 0.125 and migrated.model_spec["num_classes"] == 10
    assert all(torch.equal(v, student[f"backbone.{k}"]) for k, v in migrated.build_backbone().state_dict().items())
    with pytest.raises(UserError, match="version 1.*cannot be resumed"):
        read_resume_checkpoint(old / "checkpoint.pt")
    (old / "recipe.toml").unlink()
    with pytest.raises(UserError, match="does not describe its model"):
        read_checkpoint(old)
    torch.save({"kind": "mixbench-checkpoint", "version": 99}, tmp_path / "new.pt")
    with pytest.raises(UserError, match="version 99"):
        read_checkpoint(tmp_path / "new.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        read_checkpoint(tmp_path / "junk.pt", "[model].weights")


def test_momentum_teacher_follows_its_schedule_and_keeps_its_mode():
    source = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    teacher = MomentumTeacher(source, 0.5, 0.9, warmup=0.5, total_steps=10, copy_buffers=False)
    assert [teacher.momentum(s) for s in (0, 4)] == [0.5, 0.5]
    assert teacher.momentum(10) == pytest.approx(0.9)
    assert teacher.momentum(7) == pytest.approx(momentum_at(7, 10, 0.5, 0.9, 0.5))
    assert not any(p.requires_grad for p in teacher.parameters())
    before = [p.clone() for p in teacher.module.parameters()]
    with torch.no_grad():
        for p in source.parameters():
            p.add_(2.0)
        source[1].running_mean.add_(1.0)
    teacher.update(source, 2)  # m = 0.5: halfway to the source
    for t, b in zip(teacher.module.parameters(), before, strict=True):
        torch.testing.assert_close(t, b + 1.0)
    assert torch.equal(teacher.module[1].running_mean, torch.zeros(3))  # buffers kept: copy_buffers off
    wrapper = nn.Module()
    wrapper.teacher = teacher
    wrapper.train()
    assert not teacher.module.training  # a teacher read in eval mode stays there
    assert MomentumTeacher(source, 0.9, train_mode=True).module.training


def test_mlp_head_shapes_and_layers():
    head = MLPHead(16, 32, 8, layers=3, last_norm=True)
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 8)
    torch.testing.assert_close(out.mean(0), torch.zeros(8), atol=1e-5, rtol=0)  # affine-free BN at the end
    assert isinstance(MLPHead(4, 9, 2, layers=1).net[0], nn.Linear) and len(MLPHead(4, 9, 2, layers=1).net) == 1
    with pytest.raises(ValueError):
        MLPHead(4, 4, 4, layers=0)


def test_param_groups_carry_their_own_lr_weight_decay_and_fixed_lr():
    a, b, c = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)
    groups = [ParamGroup("a", a), ParamGroup("b", b, lr=0.5, min_lr=0.1, weight_decay=0.0),
              ParamGroup("c", c, fixed_lr=0.03)]
    cfg = {"weight_decay": 1e-4, "no_decay_norm_bias": True, "optimizer": "sgd", "lr": 1.0, "momentum": 0.9,
           "nesterov": False}
    opt = build_optimizer(groups, cfg)
    assert [g["name"] for g in opt.param_groups] == ["a", "a", "b", "b", "c", "c"]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0, 0.0, 0.0, 1e-4, 0.0]
    sched = LRSchedule({"lr": 1.0, "min_lr": 0.0, "schedule": "cosine", "epochs": 1, "warmup_epochs": 0,
                        "warmup_start": 0.0, "milestones": [], "gamma": 0.1}, 10)
    sched.apply(opt, 5)  # half way: cos term = 1/2
    assert [g["lr"] for g in opt.param_groups[::2]] == pytest.approx([0.5, 0.1 + 0.4 * 0.5, 0.03])


def test_topk_evaluator_counts_by_hand():
    class Fixed(nn.Module):
        def forward(self, x):
            return x  # the "images" are the logits

    class Holder:
        def classifiers(self):
            return {"": Fixed(), "other": Fixed()}

    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5], [2, 9, 1, 3, 4, 5], [3, 2, 1, 4, 5, 9], [6, 5, 4, 3, 2, 1]])
    y = torch.tensor([0, 0, 0, 5])  # top-1 hit; top-5 hit; top-5 hit; miss
    out = TopKAccuracy()(Holder(), [(logits[:2], y[:2]), (logits[2:], y[2:])], EvalContext(CPU))
    assert out == {"top1": 25.0, "top5": 75.0, "other_top1": 25.0, "other_top5": 75.0}


def test_a_method_registers_next_to_its_definition_and_the_registry_reads_the_class():
    try:
        @METHODS.register("tmp-probe")
        class Probe(Supervised):
            """Probe: a one-line doc read by the registry.

            More lines are not shown."""

            differs = "nothing"

        entry = METHODS.entry("tmp-probe")
        assert entry.doc == "Probe: a one-line doc read by the registry." and entry.differs == "nothing"
        assert entry.params == {} and entry.check(
            {}, "[method]", {}) == [] and issubclass(entry.factory, Method)
    finally:
        METHODS.remove("tmp-probe")
    assert "tmp-probe" not in METHODS
    for entry in METHODS:  # every method is a module with a declared batch
        assert issubclass(entry.factory, nn.Module) and entry.factory.batch is not None, entry.name


def test_run_record_notes_the_process_layout(fixmatch_run):
    summary = json.loads((fixmatch_run.run_dir / "summary.json").read_text())
    meta = json.loads((fixmatch_run.run_dir / "meta.json").read_text())
    for record in (summary, meta):
        assert record["world_size"] == 1 and record["global_batch"] == 10 and record["per_process_batch"] == 10
        assert record["backend"] is None and record["sync_bn"] is False
    assert math.isfinite(summary["top1_last"])
