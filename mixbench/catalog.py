"""What ``mixbench list`` prints: every registered part with its one-line description.

Listing the registries means importing every method, model and mixer, and with them torch
(seconds on a loaded machine). So ``mixbench list`` reads ``catalog.json``, a snapshot of the
registries written by ``python -m mixbench.catalog`` and kept true by a test that compares it with
the live registries; recipes are read from their TOML files. Neither needs torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mixbench.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CATALOG_FILE = Path(__file__).with_name("catalog.json")
REGISTRIES = ("methods", "models", "datasets", "losses", "evaluators", "views")


def recipes_dir() -> Path | None:
    """``./recipes`` if present, else the ``recipes/`` folder beside the installed package."""
    for candidate in (Path.cwd() / "recipes", Path(__file__).resolve().parents[1] / "recipes"):
        if candidate.is_dir():
            return candidate
    return None


def _recipe_doc(path: Path) -> str:
    """A recipe's description: its first ``#`` comment line, else its name."""
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    try:
        return str(tomllib.loads(text).get("name", path.stem))
    except tomllib.TOMLDecodeError:
        return "(invalid TOML)"


def view_listing() -> list[tuple[str, str]]:
    """The self-supervised view presets (each view's settings) and every ``[method].view_overrides`` key."""
    from mixbench.data.views import PRESETS, VIEW_FIELDS, ViewSpec, spec_dict

    rows = [(f"preset {name}", "; ".join(f"view {i}: {spec.describe()}" for i, spec in enumerate(specs)))
            for name, specs in PRESETS.items()]
    default = spec_dict(ViewSpec())
    rows += [(f"view_overrides.{key}", doc if "default" in doc else f"{doc} (default {default[key]!r})")
             for key, doc in VIEW_FIELDS.items()]
    rows.append(("view_overrides tables", "[method.view_overrides.all] (every view), then .local (DINO's local "
                 "crops), then .0, .1, ... (one view, numbered from 0): the more specific table wins"))
    return rows


def live_listing(what: str) -> list[tuple[str, str]]:
    """(name, one-line doc) rows read from the registries themselves (imports torch)."""
    if what == "views":
        return view_listing()
    if what == "methods":
        from mixbench.methods import METHODS as reg
    elif what == "models":
        from mixbench.models import MODELS as reg
    elif what == "datasets":
        from mixbench.data import DATASETS as reg
    elif what == "evaluators":
        from mixbench.evaluate import EVALUATORS as reg
    else:
        from mixbench.losses import LOSSES as reg
    rows = [(e.name, e.doc + (f" [vs reference: {e.differs}]" if e.differs else "")
             + (f" [protocol: {e.factory.protocol}]" if what == "evaluators" else "")) for e in reg]
    if what == "models":
        rows.append(("timm:<name>", "any timm model, built without downloading weights"))
    return rows


def write_catalog(path: Path = CATALOG_FILE) -> None:
    """Snapshot every registry's listing into ``catalog.json``."""
    data = {what: live_listing(what) for what in REGISTRIES}
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def listing(what: str) -> list[tuple[str, str]]:
    """(name, one-line doc) pairs for methods, models, datasets, losses or recipes."""
    if what == "recipes":
        root = recipes_dir()
        if root is None:
            raise UserError("no recipes/ folder found in the working directory or beside mixbench")
        return [(str(p.relative_to(root)), _recipe_doc(p))
                for p in sorted(root.rglob("*.toml")) if "_base" not in p.parts]
    if what not in REGISTRIES:
        raise UserError(f"cannot list '{what}'; valid: {', '.join(REGISTRIES)}, recipes")
    if not CATALOG_FILE.is_file():  # a source tree without the snapshot: ask the registries
        return live_listing(what)
    return [tuple(row) for row in json.loads(CATALOG_FILE.read_text(encoding="utf-8"))[what]]


if __name__ == "__main__":
    write_catalog()
    print(f"wrote {CATALOG_FILE}")
