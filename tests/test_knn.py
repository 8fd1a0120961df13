"""kNN evaluation: the vote against a brute-force reference, the result store, and `mixbench knn`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from mixbench.cli import app
from mixbench.evaluate import EVALUATORS, KNNAccuracy, knn_predict, load_or_run
from mixbench.evaluate.features import data_table
from mixbench.evaluate.store import load_or_compute_features, protocol_hash, result_path

CPU = torch.device("cpu")


def reference_predict(train_f, train_y, test_f, k, t, distance, num_classes):
    """One test row at a time, in float64, straight from the definition."""
    preds = []
    for f in test_f.double():
        sims = []
        for j, g in enumerate(train_f.double()):
            s = float(f @ g / (f.norm() * g.norm())) if distance == "cosine" else -float((f - g).norm())
            sims.append((s, j))
        sims.sort(key=lambda p: -p[0])
        votes = [0.0] * num_classes
        for s, j in sims[:k]:
            votes[int(train_y[j])] += math.exp(s / t)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


def test_separable_features_give_100_percent():
    torch.manual_seed(0)
    centres = torch.eye(4, 16) * 10
    train_y = torch.arange(4).repeat(50)
    test_y = torch.arange(4).repeat(10)
    train_f = centres[train_y] + 0.1 * torch.randn(200, 16)
    test_f = centres[test_y] + 0.1 * torch.randn(40, 16)
    for distance in ("cosine", "euclidean"):
        ev = KNNAccuracy([20, 200], [0.07, 0.1], distance)
        m = ev.metrics(train_f, train_y, test_f, test_y, 4)
        assert m["knn_top1"] == 100.0
        assert all(v == 100.0 for v in m.values()), m


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_knn_predict_matches_brute_force(distance):
    g = torch.Generator().manual_seed(1)
    train_f, test_f = torch.randn(60, 8, generator=g), torch.randn(25, 8, generator=g)
    train_y = torch.randint(0, 5, (60,), generator=g)
    ks, ts = [1, 5, 20, 100], [0.07, 0.5, 2.0]
    preds = knn_predict(train_f, train_y, test_f, ks=ks, temperatures=ts, distance=distance, num_classes=5,
                        chunk=7)
    assert set(preds) == {(k, t) for k in ks for t in ts}  # one call, every pair
    for (k, t), p in preds.items():
        ref = reference_predict(train_f, train_y, test_f, min(k, 60), t, distance, 5)
        assert torch.equal(p, ref), (k, t)


def test_one_similarity_pass_serves_every_pair(monkeypatch):
    calls = []
    real = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    train_f, test_f = torch.randn(50, 4), torch.randn(10, 4)
    preds = knn_predict(train_f, torch.randint(0, 3, (50,)), test_f, ks=[1, 3, 20], temperatures=[0.1, 1.0],
                        num_classes=3, chunk=256)
    assert len(preds) == 6 and len(calls) == 1


def test_registered_and_protocol():
    ev = EVALUATORS.entry("knn").factory([20, 200], [0.07, 0.1], "cosine")
    assert isinstance(ev, KNNAccuracy)
    assert "k=[20, 200]" in ev.protocol and "T=[0.07, 0.1]" in ev.protocol and "cosine" in ev.protocol
    assert "pooled backbone, eval mode, unaugmented" in ev.protocol


def test_semi_supervised_keys_dropped():
    recipe = '[data]\nsource = "shapes"\nlabels_per_class = 4\nunlabeled_ratio = 7\ntrain_size = 100\n'
    table = data_table(SimpleNamespace(recipe=recipe, path=Path("x")), {"test_size": 50})
    assert table == {"source": "shapes", "train_size": 100, "test_size": 50}


def test_store_caches_and_force_reruns(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"weights")
    calls = []

    def fn():
        calls.append(1)
        return {"knn_top1": 50.0}

    protocol = {"k": [20], "T": [0.07]}
    first = load_or_run(tmp_path, "knn", protocol, fn)
    second = load_or_run(tmp_path, "knn", protocol, fn)
    assert len(calls) == 1 and not first["reused"] and second["reused"]
    path = result_path(tmp_path, "knn", protocol)
    assert path == tmp_path / "evals" / f"knn-{protocol_hash(protocol)}" / "result.json"
    stored = json.loads(path.read_text())
    assert set(stored) == {"evaluator", "protocol", "metrics", "checkpoint_sha256", "seconds", "mixbench version",
                           "created"}
    load_or_run(tmp_path, "knn", protocol, fn, force=True)
    assert len(calls) == 2
    load_or_run(tmp_path, "knn", {"k": [200], "T": [0.07]}, fn)  # another protocol: another folder
    assert len(calls) == 3
    (tmp_path / "checkpoint.pt").write_bytes(b"other weights")  # a new checkpoint invalidates the result
    load_or_run(tmp_path, "knn", protocol, fn)
    assert len(calls) == 4

    made = []
    feats, reused = load_or_compute_features(tmp_path, {"a": 1}, lambda: made.append(1) or {"f": torch.ones(2)})
    feats2, reused2 = load_or_compute_features(tmp_path, {"a": 1}, lambda: made.append(1) or {"f": torch.ones(2)})
    assert len(made) == 1 and not reused and reused2 and torch.equal(feats2["f"], torch.ones(2))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from mixbench.engine import fit
    from mixbench.recipe import load_recipe
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("knn")
    path = tmp / "tiny.toml"
    path.write_text(TINY.format(name="tiny", method="vanilla", epochs=1, train_size=100, cache=tmp / "cache"))
    return fit(load_recipe(path), out_root=tmp / "results", device=CPU).run_dir


def test_cli_knn_writes_and_reuses(tiny_run: Path, monkeypatch):
    runner = CliRunner()
    args = ["knn", str(tiny_run / "checkpoint.pt"), "--k", "5,20", "--t", "0.07,0.1", "--device", "cpu"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "computed" in first.output and "k=5" in first.output and "T=0.1" in first.output
    results = list((tiny_run / "evals").glob("knn-*/result.json"))
    assert len(results) == 1
    stored = json.loads(results[0].read_text())
    assert stored["evaluator"] == "knn" and stored["protocol"]["k"] == [5, 20]
    assert set(stored["metrics"]) == {"knn_top1", "knn_top1@k=5,T=0.07", "knn_top1@k=5,T=0.1",
                                      "knn_top1@k=20,T=0.07", "knn_top1@k=20,T=0.1"}
    assert all(0.0 <= v <= 100.0 for v in stored["metrics"].values())
    assert len(list((tiny_run / "evals").glob("features-*.pt"))) == 1

    second = runner.invoke(app, ["knn", str(tiny_run), "--k", "5,20", "--t", "0.07,0.1", "--device", "cpu"])
    assert second.exit_code == 0 and "reused" in second.output
    assert second.output.splitlines()[1:3] == first.output.splitlines()[1:3]

    # another k reuses the cached features: the backbone is never rebuilt
    from mixbench.checkpoint import Checkpoint

    monkeypatch.setattr(Checkpoint, "build_backbone", lambda self: pytest.fail("features were not reused"))
    third = runner.invoke(app, ["knn", str(tiny_run), "--k", "3", "--t", "0.5", "--device", "cpu"])
    assert third.exit_code == 0, third.output
    assert len(list((tiny_run / "evals").glob("knn-*/result.json"))) == 2


def test_cli_knn_bad_path_exits_2(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    for path in (bad, tmp_path / "missing"):
        r = CliRunner().invoke(app, ["knn", str(path), "--device", "cpu"])
        assert r.exit_code == 2
        assert "Traceback" not in r.output and r.output.strip().count("\n") == 0
        assert r.output.startswith("error: knn:")


def test_cli_knn_missing_data_root_exits_2(tiny_run: Path, tmp_path):
    r = CliRunner().invoke(app, ["knn", str(tiny_run), "--device", "cpu", "--set", "data.source=cifar10",
                                 "--set", f"data.root={tmp_path / 'nowhere'}"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.output.strip().count("\n") == 0
