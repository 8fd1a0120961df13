"""``mixbench export``: backbone-only weights with metadata, loaded back by [model].weights, the read API and timm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from mixbench import __version__
from mixbench.checkpoint import read_checkpoint
from mixbench.cli import app
from mixbench.errors import UserError
from mixbench.evaluate.store import file_sha256
from mixbench.export import (
    EXPORT_KIND,
    default_path,
    export_backbone,
    export_state,
    human_bytes,
    read_export,
)
from mixbench.models import build_backbone, build_model, load_weights
from tests.conftest import TINY

X = torch.Generator().manual_seed(0)
INPUT = torch.randn(4, 3, 32, 32, generator=X)  # a fixed input for feature comparisons


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny run of the built-in resnet18_cifar (width 0.125) and one of timm:resnet10t, 1 epoch each."""
    from mixbench.engine import fit
    from mixbench.recipe import load_recipe

    work = tmp_path_factory.mktemp("export-runs")
    cache = tmp_path_factory.getbasetemp() / "mixbench-cache"
    out = {}
    for key, extra in (("builtin", []), ("timm", ['model.name="timm:resnet10t"'])):
        recipe = work / f"{key}.toml"
        recipe.write_text(TINY.format(name=f"exp_{key}", method="mixup", epochs=1, train_size=100, cache=cache))
        out[key] = fit(load_recipe(recipe, extra), out_root=work / "res", device=torch.device("cpu")).run_dir
    return out


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Same keys (safetensors stores them in its own order), and every tensor bit-identical (dtype, shape, values)."""
    return sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def features(module: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return module.eval()(INPUT)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_export_round_trips_bit_identical_with_metadata(runs, tmp_path, fmt):
    run = runs["builtin"]
    ckpt = read_checkpoint(run)
    path = tmp_path / f"b.{fmt}"
    result = export_backbone(run, fmt=fmt, out=path)
    assert result.path == path and result.bytes == path.stat().st_size > 0 and result.format == fmt
    reference = ckpt.build_backbone()
    exported = read_export(path)
    assert same_state(exported.state, reference.state_dict())
    assert same_state(exported.build_backbone().state_dict(), reference.state_dict())
    assert torch.equal(features(exported.build_backbone()), features(reference))
    m = exported.metadata
    assert m == result.metadata
    summary = json.loads((run / "summary.json").read_text())
    assert m["kind"] == EXPORT_KIND and m["architecture"] == "resnet18_cifar" and m["timm_name"] is None
    assert m["timm_loadable"] is False and "not a timm model" in m["timm_note"]
    assert (m["width"], m["in_chans"], m["image_size"], m["num_features"], m["num_classes"]) == (0.125, 3, 32, 64, 10)
    assert m["mean"] == ckpt.normalization["mean"] and m["std"] == ckpt.normalization["std"]
    assert m["class_names"] == ckpt.data["classes"] and len(m["class_names"]) == m["num_classes"]
    assert (m["run_id"], m["recipe_hash"], m["seed"], m["recipe_name"]) == (run.name, summary["run_id"][6:], 0,
                                                                             "exp_builtin")
    assert (m["method"], m["dataset"], m["epoch"], m["encoder"]) == ("mixup", "shapes", 1, "model.backbone.")
    assert m["checkpoint_sha256"] == file_sha256(run / "checkpoint.pt")
    assert m["mixbench_version"] == __version__ and m["torch_version"] == str(torch.__version__)
    assert m["num_parameters"] == result.parameters == sum(p.numel() for p in reference.parameters())
    assert result.tensors == len(reference.state_dict()) and m["key_prefix"] == ""
    if fmt == "safetensors":  # every value is JSON text; format "pt" as the Hugging Face convention asks
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata()
        assert raw["format"] == "pt" and json.loads(raw["architecture"]) == "resnet18_cifar"
    else:  # the plain state_dict is one key away
        data = torch.load(path, weights_only=True)
        assert same_state(data["state_dict"], reference.state_dict())
    again = read_export(export_backbone(run, fmt=fmt, out=tmp_path / f"again.{fmt}").path)
    assert again.metadata == m and same_state(again.state, exported.state)  # reproducible: no time stamp inside


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_recipe_model_weights_loads_the_export(runs, tmp_path, cache_dir, fmt):
    from mixbench.engine.build import build_run
    from mixbench.engine.distributed import DistInfo
    from mixbench.recipe import load_recipe

    path = export_backbone(runs["builtin"], fmt=fmt, out=tmp_path / f"w.{fmt}").path
    recipe = tmp_path / "fine.toml"
    text = TINY.format(name="fine", method="vanilla", epochs=1, train_size=100, cache=cache_dir)
    recipe.write_text(text.replace("width = 0.125\n", f'width = 0.125\nweights = "{path}"\n'))
    r = load_recipe(recipe)
    assert r.model["weights"] == str(path)
    run = build_run(r, torch.device("cpu"), DistInfo())
    reference = read_checkpoint(runs["builtin"]).build_backbone()
    backbone = run.method.model.backbone
    assert same_state(backbone.state_dict(), reference.state_dict())
    assert torch.equal(features(backbone), features(reference))


def test_export_of_a_timm_backbone_loads_in_timm(runs, tmp_path):
    run = runs["timm"]
    reference = read_checkpoint(run).build_backbone()
    want = features(reference)
    for fmt in ("safetensors", "pt"):
        result = export_backbone(run, fmt=fmt, out=tmp_path / f"r10t.{fmt}")
        m = result.metadata
        assert (m["architecture"], m["timm_name"], m["timm_loadable"], m["key_prefix"], m["width"]) == (
            "timm:resnet10t", "resnet10t", True, "model.", None)
        assert m["timm_version"] == timm.__version__ and "pretrained_cfg_overlay=dict(file=PATH)" in m["timm_note"]
        exported = read_export(result.path)
        assert not any(k.startswith("model.") for k in exported.state)  # timm's own key names
        model = timm.create_model("resnet10t", pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=dict(file=str(result.path)))  # a local file: no download
        assert same_state(model.state_dict(), exported.state)
        assert torch.equal(features(model), want)
        assert torch.equal(features(exported.build_backbone()), want)
        classifier = build_model("timm:resnet10t", 3, weights=str(result.path))  # [model].weights puts model. back
        assert torch.equal(features(classifier.backbone), want)


def test_builtin_cifar_resnet_is_not_timm_loadable_but_matches_timm_by_hand(tmp_path):
    """What the README and the metadata's timm_note say: timm.create_model(file=...) fails on the stem; swapping
    timm resnet18's stem by hand and renaming the keys in order gives the same features (width 1 only)."""
    torch.manual_seed(0)
    ours = build_backbone("resnet18_cifar", zero_init_residual=False).eval()
    theirs = timm.create_model("resnet18", pretrained=False, num_classes=0)
    rename = dict(zip(ours.state_dict(), theirs.state_dict(), strict=True))
    state = {rename[k]: v for k, v in export_state(ours, "").items()}
    path = tmp_path / "r18c.safetensors"
    save_file(state, str(path))
    with pytest.raises(RuntimeError, match="size mismatch for conv1.weight"):
        timm.create_model("resnet18", pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path)))
    theirs.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    theirs.maxpool = torch.nn.Identity()
    theirs.load_state_dict(state)
    assert torch.equal(features(theirs), features(ours))
    narrow = build_backbone("resnet18_cifar", width=0.125).state_dict()
    assert narrow["stem.0.weight"].shape[0] == 8 != theirs.state_dict()["conv1.weight"].shape[0]  # no width in timm


def test_load_weights_refuses_an_export_of_another_backbone(runs, tmp_path):
    path = export_backbone(runs["builtin"], out=tmp_path / "b.safetensors").path
    with pytest.raises(UserError, match="does not fit this backbone"):
        load_weights(build_model("resnet18_cifar", 10, width=0.25), path)
    model = build_model("resnet18_cifar", 10, width=0.125)
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    load_weights(model, path)
    assert same_state(model.head.state_dict(), head)  # no head in an export: the fresh one stays


def test_export_cli_default_paths_and_report(runs):
    run = runs["builtin"]
    runner = CliRunner()
    for fmt in ("safetensors", "pt"):
        result = runner.invoke(app, ["export", str(run), "--format", fmt])
        assert result.exit_code == 0, result.output
        path = run / f"backbone.{fmt}"
        assert path == default_path(read_checkpoint(run), fmt) and path.is_file()
        size = path.stat().st_size
        assert f"-> {path}" in result.output and f"({size} bytes)" in result.output
        assert "not loadable by timm.create_model" in result.output and f"[model].weights = \"{path}\"" in result.output
    timm_run = runs["timm"]
    result = runner.invoke(app, ["export", str(timm_run / "checkpoint.pt")])
    assert result.exit_code == 0 and "timm.create_model('resnet10t'" in result.output, result.output
    assert "exported timm:resnet10t encoder of" in result.output  # no width: timm models have none


def one_error_line(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert len(text.splitlines()) == 1 and "Traceback" not in text and needle in text, text


def test_export_cli_user_errors(runs, tmp_path):
    run, runner = runs["builtin"], CliRunner()
    one_error_line(runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "x.pt")]),
                   "a safetensors file needs a name ending in .safetensors")
    one_error_line(runner.invoke(app, ["export", str(run), "--format", "pt", "--out", str(tmp_path / "x.safetensors")]),
                   "anything but .safetensors")
    (tmp_path / "d.safetensors").mkdir()
    one_error_line(runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "d.safetensors")]), "is a folder")
    one_error_line(runner.invoke(app, ["export", str(tmp_path / "nope")]), "not found")
    with pytest.raises(UserError, match="valid formats are safetensors, pt"):
        export_backbone(run, fmt="onnx")


def test_read_export_refuses_what_is_not_one(tmp_path, runs):
    with pytest.raises(UserError, match="not found"):
        read_export(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(UserError, match="cannot read .* as safetensors"):
        read_export(tmp_path / "junk.safetensors")
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not a mixbench backbone export"):
        read_export(tmp_path / "plain.pt")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"), metadata={"note": "plain text"})
    foreign = read_export(tmp_path / "foreign.safetensors")
    assert foreign.metadata == {"note": "plain text"} and list(foreign.backbone_state()) == ["w"]
    with pytest.raises(UserError, match="has no 'architecture'; re-export it"):
        foreign.build_backbone()
    path = export_backbone(runs["builtin"], out=tmp_path / "b.safetensors").path
    wrong = read_export(path)
    wrong.metadata["width"] = 0.25
    with pytest.raises(UserError, match="do not fit resnet18_cifar"):
        wrong.build_backbone()


def test_export_state_and_sizes():
    backbone = build_backbone("resnet10_cifar", width=0.125)
    state = export_state(backbone, "")
    assert all(v.is_contiguous() and v.device.type == "cpu" for v in state.values())
    assert all(v.data_ptr() != w.data_ptr() for v, w in zip(state.values(), backbone.state_dict().values(),
                                                             strict=True))
    with pytest.raises(ValueError, match="lacks the prefix"):
        export_state(backbone, "model.")
    assert [human_bytes(n) for n in (5, 1536, 3 * 1024**2, 5 * 1024**3)] == ["5 B", "1.5 KiB", "3.0 MiB", "5.0 GiB"]
