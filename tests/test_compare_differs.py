"""``compare`` says where a method differs from its reference (a dagger and a footnote, from the run record or,
for older runs, the registry) and, with ``--reference``, puts the published value and our difference to it next
to our top-1."""

from __future__ import annotations

import io
import json
import types

import pandas as pd
import pytest
from typer.testing import CliRunner

from mixbench.cli import app
from mixbench.results import leaderboard as lb
from mixbench.results.differs import REGISTRY_NOTE, footnotes, method_differs, registry_differs
from mixbench.results.leaderboard import collect_runs, leaderboard, render, render_pivot
from tests.test_compare_stats import make_run

SAMIX = "the Mixer is trained on L_local + η·L_global"
FMIX = "no soft mask edges (the reference's max_soft = 0 default)"


@pytest.fixture
def runs(tmp_path):
    """vanilla and mixup recorded as not differing, samix with a recorded text, fmix an old run (no record)."""
    for seed, v in enumerate([76.0, 77.0, 78.0]):
        make_run(tmp_path, "vanilla", seed, v, summary={"differs": ""})
    for seed, v in enumerate([78.0, 79.0, 80.5]):
        make_run(tmp_path, "mixup", seed, v, summary={"differs": ""})
    make_run(tmp_path, "samix", 0, 80.1, summary={"differs": SAMIX})
    make_run(tmp_path, "samix", 1, 80.3, summary={"differs": SAMIX})
    make_run(tmp_path, "fmix", 0, 79.0)
    return tmp_path


@pytest.fixture
def reference(tmp_path_factory, monkeypatch):
    ref = tmp_path_factory.mktemp("ref") / "reference.csv"
    ref.write_text(
        "dataset,backbone,epochs,method,alpha,top1,note\n"
        "cifar100,resnet18_cifar,4,mixup,1,78.52,median of last 10\n"
        "cifar100,resnet18_cifar,4,samix,2,81.21,median of last 10\n"
    )
    monkeypatch.setattr(lb, "REFERENCE_CSV", ref)


def _groups(root, capsys, **kw):
    groups = leaderboard(collect_runs([root]), **kw)
    assert not capsys.readouterr().err
    return groups


def _rows(groups):
    return {r["method"]: r for r in groups[0].rows}


def test_rows_carry_the_recorded_text_or_the_registry_s(runs, capsys):
    rows = _rows(_groups(runs, capsys))
    assert rows["samix"]["differs"] == [SAMIX] and rows["samix"]["differs_from"] == ["run record"]
    assert rows["fmix"]["differs"] == [FMIX] and rows["fmix"]["differs_from"] == ["registry"]
    assert rows["mixup"]["differs"] == [] and rows["vanilla"]["differs"] == []  # recorded: none


def test_registry_fallback_is_the_class_attribute():
    """catalog.json (torch-free) gives the registry's current ``differs`` of each method."""
    from mixbench.methods import METHODS

    for entry in METHODS:
        assert registry_differs(entry.name) == entry.differs, entry.name
    assert registry_differs("no_such_method") is None and registry_differs(None) is None


def test_terminal_table_daggers_and_numbered_footnotes(runs, capsys):
    text = render(_groups(runs, capsys), "table")
    lines = text.splitlines()
    assert lines[-2:] == [
        f"†1 differs from the reference (samix): {SAMIX}",
        f"†2 differs from the reference (fmix): {FMIX} [{REGISTRY_NOTE}]",
    ]
    methods = [x.split("  ")[0].strip() for x in lines[3:7]]
    assert methods == ["vanilla", "samix †1", "mixup", "fmix †2"]
    assert "published" not in lines[1]  # no --reference: no published columns


def test_one_text_is_a_plain_dagger_and_a_row_with_two_texts_gets_both(tmp_path, capsys):
    make_run(tmp_path, "vanilla", 0, 70.0)
    make_run(tmp_path, "samix", 0, 80.0, summary={"differs": SAMIX})
    text = render(_groups(tmp_path, capsys), "markdown")
    assert "| samix †  " in text and text.endswith(f"† differs from the reference (samix): {SAMIX}")
    make_run(tmp_path, "samix", 1, 80.0, summary={"differs": "an older text"})  # the code changed between seeds
    text = render(_groups(tmp_path, capsys), "table")
    assert "samix †1,2" in text
    assert text.splitlines()[-2:] == [
        f"†1 differs from the reference (samix): {SAMIX}",
        "†2 differs from the reference (samix): an older text",
    ]


def test_a_text_recorded_by_one_run_and_inferred_for_another_is_one_recorded_footnote():
    rows = [
        {"method": "fmix", "differs": [FMIX], "differs_from": ["run record"]},
        {"method": "fmix [old]", "differs": [FMIX], "differs_from": ["registry"]},
        {"method": "vanilla", "differs": [], "differs_from": []},
    ]
    marks, lines = footnotes(rows)
    assert marks == ["†", "†", ""]
    assert lines == [f"† differs from the reference (fmix, fmix [old]): {FMIX}"]


def test_csv_json_latex_html_and_pivot_carry_them(runs, capsys):
    groups = _groups(runs, capsys)
    frame = pd.read_csv(io.StringIO(render(groups, "csv"))).set_index("method")
    assert frame.loc["samix", "differs"] == SAMIX and frame.loc["samix", "differs_from"] == "run record"
    assert frame.loc["fmix", "differs_from"] == "registry" and pd.isna(frame.loc["mixup", "differs"])
    rows = {r["method"]: r for r in json.loads(render(groups, "json"))[0]["rows"]}
    assert rows["samix"]["differs"] == [SAMIX] and rows["mixup"]["differs"] == []
    latex = render(groups, "latex")
    assert " samix †1 " in latex and f"% †1 differs from the reference (samix): {SAMIX}" in latex
    html = render(groups, "html")
    assert (
        "<td>samix †1" in html
        and "<p>†2 differs from the reference (fmix): no soft mask edges (the reference&#x27;s" in html
    )
    pivot = render_pivot(groups, "markdown")
    assert "| samix †1 " in pivot and "| fmix †2 " in pivot and "| mixup  " in pivot
    assert pivot.endswith(f"†2 differs from the reference (fmix): {FMIX} [{REGISTRY_NOTE}]")
    assert "\nsamix †1 & \\textbf{80.20} $\\pm$ 0.14 \\\\" in render_pivot(groups, "latex")


def test_runs_without_differences_look_as_before(tmp_path, capsys):
    """Methods that do not differ (recorded or by the registry): no dagger, no footnote, no new csv/json keys."""
    for seed, v in enumerate([76.0, 77.0]):
        make_run(tmp_path, "vanilla", seed, v)
        make_run(tmp_path, "mixup", seed, v + 2, summary={"differs": ""})
    groups = _groups(tmp_path, capsys)
    for fmt in ("table", "markdown", "latex", "html"):
        assert "†" not in render(groups, fmt) and "differs" not in render(groups, fmt)
    assert "differs" not in render(groups, "csv") and "differs" not in render(groups, "json")
    assert "†" not in render_pivot(groups, "table")


def test_a_wrong_typed_record_is_named_and_the_registry_text_shown(tmp_path, capsys):
    make_run(tmp_path, "fmix", 0, 79.0, summary={"differs": 5})
    groups = leaderboard(collect_runs([tmp_path]))
    err = capsys.readouterr().err
    assert (
        err.count("warning: ") == 1 and "differs is 5 (int), not a string, the registry's current text is shown" in err
    )
    assert _rows(groups)["fmix"]["differs_from"] == ["registry"]


def test_reference_puts_published_and_delta_next_to_our_top1(runs, reference, capsys):
    groups = _groups(runs, capsys, include_reference=True)
    rows = _rows(groups)
    assert rows["samix"]["published"] == 81.21
    assert rows["samix"]["delta_published"] == pytest.approx(80.2 - 81.21)
    assert rows["mixup"]["delta_published"] == pytest.approx(sum([78.0, 79.0, 80.5]) / 3 - 78.52)
    assert rows["fmix"]["published"] is None and rows["samix (published)"]["published"] is None
    text = render(groups, "table")
    header = text.splitlines()[1].split("  ")
    assert [h.strip() for h in header if h.strip()][:5] == [
        "method",
        "n",
        "top-1 (median of last 1)",
        "published",
        "Δ published",
    ]
    samix = next(x for x in text.splitlines() if x.startswith("samix †1"))
    assert samix.split()[3:8] == ["80.20", "±", "0.14", "81.21", "-1.01"]
    mixup = next(x for x in text.splitlines() if x.startswith("mixup  "))
    assert mixup.split()[1:6] == ["3", "79.17", "±", "1.26", "78.52"] and mixup.split()[6] == "+0.65"
    assert (
        "published: the published top-1 of the same method, data set, backbone and epochs (its (published) row); "
        "Δ published = ours − published" in text
    )
    frame = pd.read_csv(io.StringIO(render(groups, "csv"))).set_index("method")
    assert frame.loc["samix", "published"] == 81.21 and frame.loc["samix", "delta_published"] == pytest.approx(-1.01)


def test_reference_without_a_matching_published_row_adds_no_columns(tmp_path, reference, capsys):
    make_run(tmp_path, "vanilla", 0, 70.0, dataset="cifar10")
    groups = _groups(tmp_path, capsys, include_reference=True)
    assert "published" not in groups[0].rows[0] and "Δ published" not in render(groups, "table")


def test_several_published_values_are_not_guessed(tmp_path, capsys, monkeypatch):
    """lightly publishes kNN top-1 at two batch sizes for 200 epochs: no single published value, a note instead."""
    make_run(tmp_path, "byol", 0, 80.0, dataset="cifar10", epochs=200, summary={"differs": ""})
    run = next(tmp_path.rglob("seed0-*"))
    (run / "evals" / "knn-abc").mkdir(parents=True)
    (run / "evals" / "knn-abc" / "result.json").write_text(
        json.dumps(
            {
                "evaluator": "knn",
                "protocol": {"k": 200},
                "metrics": {"knn_top1": 85.0},
                "created": "2024-05-01T10:00:00",
            }
        )
    )
    groups = _groups(tmp_path, capsys, include_reference=True, metric="knn")
    row = _rows(groups)["byol"]
    assert row.get("published") is None
    assert "note: byol: 2 published knn values here (86.80, 86.90); see its (published) rows" in groups[0].notes
    r = CliRunner().invoke(app, ["compare", str(tmp_path), "--reference", "--metric", "knn"])
    assert r.exit_code == 0 and "see its (published) rows" in r.stdout


def test_cli_compare_html_and_reference(runs, reference):
    r = CliRunner().invoke(app, ["compare", str(runs), "--reference", "--format", "html"])
    assert r.exit_code == 0 and r.stderr == "", r.output
    assert "<th>published" in r.stdout and "<td>81.21" in r.stdout and "<td>-1.01" in r.stdout


def test_method_differs_records_a_switch_s_mixers():
    """What the trainer stores: the method's sentence, then each switched mixer's own (named), each once."""
    child = types.SimpleNamespace
    mixer = child(
        mixers=["mixup", "fmix", "smoothmix"],
        children=[child(differs=""), child(differs=FMIX), child(differs="label weight inverted")],
    )
    method = child(differs="", mixer=mixer)
    assert method_differs(method) == f"fmix: {FMIX}; smoothmix: label weight inverted"
    assert method_differs(child(differs=SAMIX, mixer=object())) == SAMIX
    assert method_differs(child(differs="")) == ""


def test_a_run_records_differs_and_compare_shows_it(tiny_recipe, tmp_path):
    """End to end on CPU (one tiny epoch each): summary.json stores the text, compare daggers the row from it."""
    from mixbench.methods import METHODS

    out = tmp_path / "res"
    for method in ("vanilla", "fmix"):
        path = tiny_recipe(name=f"t_{method}", method=method, epochs=1, train_size=64)
        r = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--device", "cpu"])
        assert r.exit_code == 0, r.output
    (fmix,) = (out / "t_fmix").iterdir()
    (vanilla,) = (out / "t_vanilla").iterdir()
    assert json.loads((fmix / "summary.json").read_text())["differs"] == METHODS.entry("fmix").differs == FMIX
    assert json.loads((vanilla / "summary.json").read_text())["differs"] == ""
    r = CliRunner().invoke(app, ["compare", str(out)])
    assert r.exit_code == 0, r.output
    assert "fmix †" in r.stdout and r.stdout.rstrip().endswith(f"† differs from the reference (fmix): {FMIX}")
