"""``mixbench transfer``: a checkpoint's backbone on another data set with a fresh head, linear or fine-tuned,
stored in the evaluated run and reused; CIFAR <-> Tiny-ImageNet at either side."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mixbench.checkpoint import read_checkpoint
from mixbench.cli import app
from mixbench.data import DataConfig, load_image_data
from mixbench.data.sources import resize_uint8
from mixbench.engine import fit
from mixbench.errors import UserError
from mixbench.evaluate.transfer import FINETUNE_RECIPE, transfer
from mixbench.recipe import load_recipe
from tests.conftest import TINY
from tests.test_tiny_archive import tiny_archive

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_CIFAR, SHARED_TINY = SHARED / "cifar10-jpeg.tar.gz", SHARED / "tiny-imagenet-200.tar.gz"
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One 1-epoch shapes checkpoint (resnet18_cifar width 0.125, 32 px) for the whole module."""
    root = tmp_path_factory.mktemp("transfer-source")
    recipe = root / "src.toml"
    recipe.write_text(TINY.format(name="src", method="vanilla", epochs=1, train_size=100,
                                  cache=tmp_path_factory.getbasetemp() / "mixbench-cache"))
    return fit(load_recipe(recipe), out_root=root / "r", device=torch.device("cpu")).run_dir


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the module's run folder: each test stores its own evaluations."""
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def invoke(*args: str):
    return runner.invoke(app, ["transfer", *map(str, args), "--device", "cpu"])


def stored(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "evals").glob("transfer-*/result.json"))]


def test_linear_transfer_to_a_tiny_imagenet_archive_is_stored_and_reused(run, tmp_path):
    archive = tiny_archive(tmp_path, per_class=6)
    before = read_checkpoint(run).method_state
    args = [run, "--data", "tiny-imagenet", "--root", archive, "--set", "probe.epochs=5"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "linear probe on tiny-imagenet" in first.output and "at 32 px" in first.output
    assert "from the checkpoint" in first.output
    (record,) = stored(run)
    p, m = record["protocol"], record["metrics"]
    assert record["evaluator"] == "transfer" and p["mode"] == "linear" and p["data"] == "tiny-imagenet"
    assert p["image_size"] == 32 and p["target"]["image_size"] == 32 and p["target"]["root"] == str(archive)
    norm = read_checkpoint(run).normalization
    assert p["normalization"] == {"mean": norm["mean"], "std": norm["std"], "from": "checkpoint"}
    assert p["probe"]["epochs"] == 5 and p["probe"]["bn"].startswith("frozen")
    assert 0 <= m["transfer_top1"] <= 100 and m["transfer_top1"] == m[f"transfer_top1@lr={m['transfer_lr']:g}"]
    assert record["checkpoint_sha256"] and record["seconds"] >= 0
    second = invoke(*args)
    assert second.exit_code == 0 and "reused the stored result" in second.output
    forced = invoke(*args, "--force")
    assert forced.exit_code == 0 and "computed in" in forced.output
    wider = invoke(run, "--data", "tiny-imagenet", "--root", archive, "--image-size", "48",
                   "--set", "probe.epochs=2", "--set", "probe.lrs=[0.5]")
    assert wider.exit_code == 0, wider.output
    sides = sorted(r["protocol"]["image_size"] for r in stored(run))
    assert sides == [32, 48]
    after = read_checkpoint(run).method_state
    assert all(torch.equal(before[k], after[k]) for k in before)  # the checkpoint is only read


def test_finetune_transfer_trains_a_fresh_head_from_the_backbone(run, tmp_path, monkeypatch):
    archive = tiny_archive(tmp_path, per_class=6)
    args = [run, "--data", "tiny-imagenet", "--root", archive, "--mode", "finetune", "--set", "train.epochs=1",
            "--set", "train.batch_size=6", "--set", "data.train_size=12", "--set", "train.lr=0.02"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "fine-tuned on tiny-imagenet" in first.output and "for 1 epochs" in first.output
    (record,) = stored(run)
    p, m = record["protocol"], record["metrics"]
    assert p["mode"] == "finetune" and p["data"] == "tiny-imagenet" and p["image_size"] == 32
    assert p["target"]["train_size"] == 12 and p["normalization"]["from"] == "checkpoint"
    ft = p["finetune"]
    assert ft["train"]["epochs"] == 1 and ft["train"]["lr"] == 0.02 and ft["method"]["name"] == "vanilla"
    assert ft["model"]["name"] == "resnet18_cifar" and "weights" not in ft["model"] and len(p["finetune_hash"]) == 12
    assert 0 <= m["transfer_top1"] <= 100 and m["finetune_wall_s"] > 0
    folder = Path(record_path := next((run / "evals").glob("transfer-*/result.json"))).parent
    src = read_checkpoint(run)
    backbone = torch.load(folder / "backbone.pt", weights_only=True)
    assert set(backbone) == set(src.backbone_state()) and not any(k.startswith("head") for k in backbone)
    (ft_run,) = (folder / ".finetune" / "transfer-finetune").iterdir()
    assert json.loads((ft_run / "summary.json").read_text())["status"] == "completed"
    tuned = read_checkpoint(ft_run)
    assert tuned.model_spec["num_classes"] == 3 and tuned.model_spec["image_size"] == 32
    assert tuned.normalization == src.normalization
    assert f'weights = "{folder / "backbone.pt"}"' in (ft_run / "recipe.toml").read_text()

    import mixbench.engine.trainer as trainer

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(trainer, "fit", no_training)
    again = invoke(*args)
    assert again.exit_code == 0 and "reused the stored result" in again.output
    monkeypatch.undo()
    Path(record_path).unlink()  # the result lost, the finished run kept: it is resumed, not trained again
    resumed = invoke(*args)
    assert resumed.exit_code == 0, resumed.output
    assert stored(run)[0]["metrics"]["transfer_top1"] == m["transfer_top1"]
    forced = invoke(*args, "--force")  # trains again in a staged folder that replaces the run
    assert forced.exit_code == 0, forced.output
    assert len(list((folder / ".finetune" / "transfer-finetune").iterdir())) == 1
    own = invoke(*args, "--set", "data.mean=[0.5,0.5,0.5]")  # another normalisation: another result, recorded
    assert own.exit_code == 0, own.output
    norms = sorted((n["from"], n["mean"]) for n in (r["protocol"]["normalization"] for r in stored(run)))
    assert norms == [("--set", [0.5, 0.5, 0.5]), ("checkpoint", src.normalization["mean"])]

    from mixbench.engine.stopping import Interrupted

    def stopped(*a, **k):
        raise Interrupted("continue with --resume", 3)

    monkeypatch.setattr(trainer, "fit", stopped)
    res = invoke(*args, "--force")
    assert res.exit_code == 130 and "epoch-3 checkpoint" in res.output and "same transfer command" in res.output


def write_cifar10(root: Path, per_class: int = 4) -> None:
    """A small CIFAR-10 in torchvision's pickle layout (class c has mean brightness 20 c + 30)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [c for c in range(10) for _ in range(per_class)]
        data = np.clip(rng.normal(0, 20, (len(labels), 3072)) + 20 * np.array(labels)[:, None] + 30, 0, 255)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data.astype(np.uint8), b"labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)


def test_cifar_pickles_load_at_another_side(tmp_path):
    write_cifar10(tmp_path / "data")
    cfg = {"source": "cifar10", "root": str(tmp_path / "data"), "cache_dir": str(tmp_path / "c"), "train_size": 20}
    native = load_image_data(DataConfig(**cfg))
    big = load_image_data(DataConfig(**cfg, image_size=64))
    assert native.train_x.shape == (20, 3, 32, 32) and big.train_x.shape == (20, 3, 64, 64)
    assert big.test_x.shape == (40, 3, 64, 64) and torch.equal(big.train_y, native.train_y)
    assert torch.equal(load_image_data(DataConfig(**cfg, image_size=32)).train_x, native.train_x)
    assert (big.train_x.float().mean() - native.train_x.float().mean()).abs() < 1.0
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for side in (24, 32, 100):  # PIL's bilinear filter, which antialiases, to within rounding
        pil = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR)).astype(int)
        ours = resize_uint8(torch.from_numpy(image).permute(2, 0, 1)[None].contiguous(), side)
        assert np.abs(ours[0].permute(1, 2, 0).numpy().astype(int) - pil).max() <= 1
    flat = torch.full((2, 3, 5, 5), 77, dtype=torch.uint8)
    assert resize_uint8(flat, 9).unique().tolist() == [77] and resize_uint8(flat, 5) is flat


def test_cifar_as_the_target_at_64_and_at_its_native_32_px(run, tmp_path):
    write_cifar10(tmp_path / "data", per_class=2)
    res = invoke(run, "--data", "cifar10", "--root", tmp_path / "data", "--image-size", "64", "--set", "probe.epochs=3")
    assert res.exit_code == 0, res.output
    (record,) = stored(run)
    assert record["protocol"]["image_size"] == 64 and record["protocol"]["target"]["image_size"] == 64
    assert record["protocol"]["data"] == "cifar10"
    native = invoke(run, "--data", "cifar10", "--root", tmp_path / "data", "--set", "probe.epochs=3")
    assert native.exit_code == 0, native.output
    # at the native side image_size stays unset, so the target shares the data cache of a CIFAR training run
    assert sorted((r["protocol"]["image_size"], r["protocol"]["target"]["image_size"]) for r in stored(run)) == [
        (32, None), (64, 64)]


def test_bad_input_is_one_sentence_and_exit_2(run, tmp_path):
    archive = tiny_archive(tmp_path)
    cases = [
        ([run, "--data", "imagenet"], "unknown data set"),
        ([run, "--data", "tiny-imagenet"], "--root is required"),
        ([run, "--data", "tiny-imagenet", "--root", tmp_path / "nowhere"], "no such file"),
        ([tmp_path / "missing", "--data", "shapes"], "not found"),
        ([run, "--data", "shapes", "--set", "train.lr=0.1"], "--mode finetune"),
        ([run, "--data", "shapes", "--set", "probe.epochs=0"], "probe.epochs"),
        ([run, "--data", "shapes", "--set", "data.sizes=3"], "linear takes data."),
        ([run, "--data", "shapes", "--mode", "finetune", "--set", "model.name=resnet10_cifar"], "checkpoint's own"),
        ([run, "--data", "shapes", "--mode", "finetune", "--set", "train.stop_after=1"], "train.epochs"),
        ([run, "--data", "shapes", "--mode", "finetune", "--set", "train.lr=-1"], "[train].lr"),
        ([run, "--data", "shapes", "--mode", "finetune", "--set", "probe.lrs=[1.0]"], "--mode linear"),
        ([run, "--data", "tiny-imagenet", "--root", run], "wnids.txt"),
        ([run, "--data", "shapes", "--set", "data.source=nope"], "unknown data set"),
        ([run, "--data", "shapes", "--set", "probe.lrs=[-1.0]"], "positive learning rates"),
    ]
    for args, phrase in cases:
        res = invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        assert phrase in res.output and "Traceback" not in res.output, (args, res.output)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:3000])
    res = invoke(run, "--data", "tiny-imagenet", "--root", broken)
    assert res.exit_code == 2 and "truncated or corrupt" in res.output
    ckpt = read_checkpoint(run)
    for spec, phrase in (({"name": "resnet99_cifar"}, "cannot be rebuilt"), ({"width": 0.25}, "do not fit")):
        data = dict(ckpt.data, model_spec=dict(ckpt.model_spec, **spec))
        bad = tmp_path / f"bad-{phrase[:6]}" / "checkpoint.pt"
        bad.parent.mkdir()
        torch.save(data, bad)
        res = invoke(bad, "--data", "shapes")
        assert res.exit_code == 2 and phrase in res.output and "Traceback" not in res.output, res.output
    with pytest.raises(UserError, match="--mode"):
        transfer(run, data="shapes", mode="both", device=torch.device("cpu"))
    assert not (run / "evals").exists()  # nothing was stored by a refused call


def test_the_finetune_defaults_ship_with_the_package():
    r = load_recipe(FINETUNE_RECIPE)
    assert r.method["name"] == "vanilla" and r.train["optimizer"] == "sgd" and r.train["schedule"] == "cosine"
    assert 0.01 <= r.train["lr"] <= 0.05 and r.train["epochs"] == 30 and r.train["batch_size"] == 100
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"evaluate/*.toml"' in text  # installed as package data


@pytest.mark.skipif(not (SHARED_CIFAR.is_file() and SHARED_TINY.is_file()), reason="shared archives not present")
def test_real_cifar10_to_tiny_imagenet(tmp_path, cache_dir):
    """A 1-epoch ResNet-10 on 500 CIFAR-10 images (JPEG archive) probed on 400/200 Tiny-ImageNet images at 32 px."""
    recipe = tmp_path / "cifar.toml"
    recipe.write_text(f'name = "cifar"\n[data]\nsource = "imagefolder"\nroot = "{SHARED_CIFAR}"\ntrain_size = 500\n'
                      f'test_size = 100\ncache_dir = "{cache_dir}"\n[model]\nname = "resnet10_cifar"\nwidth = 0.125\n'
                      '[method]\nname = "vanilla"\n[train]\nepochs = 1\nbatch_size = 50\nlr = 0.05\n')
    run = fit(load_recipe(recipe), out_root=tmp_path / "r", device=torch.device("cpu")).run_dir
    res = invoke(run, "--data", "tiny-imagenet", "--root", SHARED_TINY, "--set", "data.train_size=400",
                 "--set", "data.test_size=200", "--set", "probe.epochs=20")
    assert res.exit_code == 0, res.output
    (record,) = stored(run)
    assert record["protocol"]["data"] == "tiny-imagenet" and record["protocol"]["image_size"] == 32
    assert record["protocol"]["normalization"]["mean"] == list(read_checkpoint(run).normalization["mean"])
    assert 0 <= record["metrics"]["transfer_top1"] <= 100
