"""How a run's method differs from its reference implementation: recorded per run, shown by ``compare``.

Every method and mixer says in its ``differs`` class attribute how it departs from the reference it
reproduces (empty: it does not). A run records the text it trained with in summary.json's ``differs``
(``method_differs``, called where the trainer writes the summary), so a table can always be traced back
to the code that produced it. Runs written before that key existed fall back to the registry's current
text (``registry_differs``, read from ``catalog.json``, the torch-free snapshot of the registries that a
test keeps equal to the live classes), and the footnote says so.

``compare`` marks a row whose runs differ with a dagger and lists each distinct text once under the
table (``footnotes``): one text gives ``†``, several give ``†1``, ``†2``, ... No torch import here.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from mixbench.catalog import CATALOG_FILE

DAGGER = "†"
RECORDED, REGISTRY = "run record", "registry"  # where a row's text came from (``differs_from``)
REGISTRY_NOTE = "from mixbench's registry: these runs predate the record"
_MARK = " [vs reference: "  # how catalog.json appends an entry's differs to its doc


def method_differs(method: Any) -> str:
    """The ``differs`` text of a built method: its class's sentence, then, for a mixer that switches between
    several (``switch``, naive mixing's mixer), each chosen mixer's own sentence as ``name: text``."""
    texts = [str(getattr(method, "differs", "") or "")]
    for attr in ("mixer", "naive_mixer"):
        mixer = getattr(method, attr, None)
        names, children = getattr(mixer, "mixers", None), getattr(mixer, "children", None)
        if isinstance(names, list) and isinstance(children, list):  # nn.Module.children is a method: skipped
            texts += [
                f"{name}: {child.differs}"
                for name, child in zip(names, children, strict=False)
                if getattr(child, "differs", "")
            ]
    out: list[str] = []
    for text in texts:
        if text and text not in out:
            out.append(text)
    return "; ".join(out)


@lru_cache(maxsize=1)
def _catalog_methods() -> dict[str, str]:
    try:
        rows = json.loads(CATALOG_FILE.read_text(encoding="utf-8"))["methods"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out = {}
    for row in rows:
        if isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) for x in row):
            name, text = row
            at = text.find(_MARK)
            out[name] = text[at + len(_MARK) :].removesuffix("]") if at >= 0 and text.endswith("]") else ""
    return out


def registry_differs(method: Any) -> str | None:
    """The current ``differs`` of a registered method (``''``: none), or None for a name mixbench does not know."""
    if not isinstance(method, str):
        return None
    return _catalog_methods().get(method)


def run_differs(summary: dict[str, Any] | None, method: Any) -> tuple[str | None, str | None]:
    """(text, where from) of one run: summary.json's ``differs`` when recorded (a string; ``''``: none), else the
    registry's current text for its method; (None, None) when neither knows."""
    recorded = (summary or {}).get("differs")
    if isinstance(recorded, str):
        return recorded.strip(), RECORDED
    text = registry_differs(method)
    return (text, REGISTRY) if text is not None else (None, None)


def _items(row: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t, f) for t, f in zip(row.get("differs") or [], row.get("differs_from") or [], strict=False) if t]


def footnotes(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The dagger of each row and the footnote lines under its table, each distinct text once.

    A row's ``differs`` lists its runs' distinct texts, ``differs_from`` where each came from. One text in the
    table gives the mark ``†``, several ``†1``, ``†2``, ... in order of first use (a row whose runs recorded two
    texts gets ``†1,2``). A line reads ``† differs from the reference (samix): <text>``, naming the rows that
    carry it; a text that no run recorded (taken from the registry) ends with why.
    """
    number: dict[str, int] = {}
    recorded: set[str] = set()
    for row in rows:
        for text, source in _items(row):
            number.setdefault(text, len(number) + 1)
            if source == RECORDED:
                recorded.add(text)

    def mark(numbers: list[int]) -> str:
        if not numbers:
            return ""
        return DAGGER if len(number) == 1 else DAGGER + ",".join(map(str, numbers))

    marks = [mark(sorted({number[text] for text, _ in _items(row)})) for row in rows]
    lines = []
    for text, i in number.items():
        who = ", ".join(row["method"] for row in rows if text in (row.get("differs") or []))
        why = "" if text in recorded else f" [{REGISTRY_NOTE}]"
        lines.append(f"{mark([i])} differs from the reference ({who}): {text}{why}")
    return marks, lines


def row_differs(texts: list[Any], sources: list[Any]) -> tuple[list[str], list[str]]:
    """The distinct texts of a row's runs, in order, each with where it came from (the run record wins)."""
    found: dict[str, str] = {}
    for text, source in zip(texts, sources, strict=True):
        if isinstance(text, str) and text and found.get(text) != RECORDED:
            found[text] = source
    return list(found), list(found.values())


def by_label(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method label (the pivot's rows) with the union of its rows' texts, in order of first use."""
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        m = merged.setdefault(row["method"], {"method": row["method"], "differs": [], "differs_from": []})
        for text, source in _items(row):
            if text not in m["differs"]:
                m["differs"].append(text)
                m["differs_from"].append(source)
            elif source == RECORDED:
                m["differs_from"][m["differs"].index(text)] = RECORDED
    return list(merged.values())
