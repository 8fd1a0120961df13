"""What ``mixbench list`` prints: every registered part with its one-line description."""

from __future__ import annotations

import sys
from pathlib import Path

from mixbench.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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


def listing(what: str) -> list[tuple[str, str]]:
    """(name, one-line doc) pairs for methods, models, datasets, losses or recipes."""
    if what == "recipes":
        root = recipes_dir()
        if root is None:
            raise UserError("no recipes/ folder found in the working directory or beside mixbench")
        return [(str(p.relative_to(root)), _recipe_doc(p))
                for p in sorted(root.rglob("*.toml")) if "_base" not in p.parts]
    if what == "methods":
        from mixbench.methods import METHODS as reg
    elif what == "models":
        from mixbench.models import MODELS as reg
    elif what == "datasets":
        from mixbench.data import DATASETS as reg
    elif what == "losses":
        from mixbench.losses import LOSSES as reg
    else:
        raise UserError(f"cannot list '{what}'; valid: methods, models, datasets, losses, recipes")
    rows = [(e.name, e.doc) for e in reg]
    if what == "methods":
        rows = [(e.name, e.doc + (f" [vs reference: {e.differs}]" if e.differs else ""))
                for e in reg]
    if what == "models":
        rows.append(("timm:<name>", "any timm model, built without downloading weights"))
    return rows
