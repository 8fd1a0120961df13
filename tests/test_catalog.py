"""``mixbench list`` reads a snapshot of the registries; the snapshot must match them, and listing
must not import torch (start-up time)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mixbench.catalog import CATALOG_FILE, REGISTRIES, listing, live_listing


@pytest.mark.parametrize("what", REGISTRIES)
def test_catalog_snapshot_matches_the_registries(what):
    snapshot = [tuple(row) for row in json.loads(CATALOG_FILE.read_text(encoding="utf-8"))[what]]
    assert snapshot == live_listing(what), (
        f"mixbench/catalog.json is out of date for {what}: run `python -m mixbench.catalog` and commit it")
    assert listing(what) == snapshot


def test_list_does_not_import_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "mixbench", "list", "methods"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "vanilla" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "mixbench.methods" not in imported


def test_list_views_names_both_presets_and_every_override_key():
    from mixbench.data.views import PRESETS, VIEW_FIELDS

    names = [name for name, _ in listing("views")]
    assert [f"preset {p}" for p in PRESETS] == names[:len(PRESETS)]
    assert {f"view_overrides.{k}" for k in VIEW_FIELDS} <= set(names)
    solarised = dict(listing("views"))["preset asymmetric"].split("; ")
    assert "solarize_p" not in solarised[0] and "solarize_p=0.2" in solarised[1]  # solo-learn's second view
