"""Typed, range-checked parameter declarations shared by every recipe table.

A ``Param`` says what one recipe key holds (type, default, range or choices, one-line doc).
``check_table`` validates a whole table against a dict of them and returns the problems as
sentences instead of raising, so a recipe can report every mistake at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbench.errors import did_you_mean

REQUIRED = object()  # sentinel default: the key must be given

_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "path": "a path string",
    "int_list": "a list of integers",
    "float_list": "a list of numbers",
    "float3": "a list of 3 numbers",
    "str_list": "a list of strings",
    "table": "a table of settings",
}


@dataclass(frozen=True)
class Param:
    """One recipe key: ``kind`` (see ``_TYPE_NAMES``), default, bounds, choices and a doc line.

    ``low``/``high`` bound numbers (``*_open`` makes the bound exclusive); ``optional`` lets the
    key be absent with a ``None`` value; ``kind="path"`` values resolve against the file that
    names them.
    """

    kind: str
    default: Any = REQUIRED
    doc: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """What a valid value looks like, for error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        text = _TYPE_NAMES[self.kind]
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return text + (" " + " and ".join(bounds) if bounds else "")


def _type_ok(kind: str, value: Any) -> tuple[bool, Any]:
    """Check (and lightly coerce: int -> float) a value of ``kind``."""
    if kind == "bool":
        return isinstance(value, bool), value
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return math.isfinite(value), float(value)
    if kind == "table":
        return isinstance(value, dict), value
    if kind in ("str", "path"):
        return isinstance(value, str), value
    if kind in ("int_list", "float_list", "float3", "str_list"):
        if not isinstance(value, list):
            return False, value
        item = {"int_list": "int", "str_list": "str"}.get(kind, "float")
        coerced = []
        for v in value:
            ok, c = _type_ok(item, v)
            if not ok:
                return False, value
            coerced.append(c)
        if kind == "float3" and len(coerced) != 3:
            return False, value
        return True, coerced
    raise ValueError(f"unknown param kind {kind}")


def check_value(param: Param, value: Any) -> tuple[str | None, Any]:
    """Return ``(problem or None, coerced value)`` for one value."""
    ok, value = _type_ok(param.kind, value)
    if not ok:
        return f"expected {param.describe()}, got {value!r}", value
    if param.choices is not None and value not in param.choices:
        return f"expected {param.describe()}, got {value!r}{did_you_mean(str(value), map(str, param.choices))}", value
    if param.kind in ("int", "float"):
        lo, hi = param.low, param.high
        if (lo is not None and (value <= lo if param.low_open else value < lo)) or (
            hi is not None and (value >= hi if param.high_open else value > hi)
        ):
            return f"expected {param.describe()}, got {value!r}", value
    return None, value


def check_table(
    table: dict[str, Any], schema: dict[str, Param], where: str, origin: dict[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Validate ``table`` against ``schema``; fill defaults. Returns (values, problems).

    ``where`` names the table (``[train]``) and ``origin`` maps each given key to the file (or
    ``--set``) it came from, so every problem names the file, the key and what is valid.
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in table.items():
        src = origin.get(key, "recipe")
        if key not in schema:
            valid = ", ".join(sorted(schema)) or "none"
            problems.append(
                f"{src}: unknown key {where}.{key}{did_you_mean(key, schema)}; valid keys: {valid}"
            )
            continue
        problem, coerced = check_value(schema[key], value)
        if problem:
            problems.append(f"{src}: {where}.{key}: {problem}")
        else:
            values[key] = coerced
    for key, param in schema.items():
        if key in values or key in table:
            continue
        if param.default is REQUIRED:
            problems.append(f"missing key {where}.{key}: {param.doc or param.describe()}")
        else:
            values[key] = param.default
    return values, problems


def resolve_paths(values: dict[str, Any], schema: dict[str, Param], origin: dict[str, str]) -> None:
    """Make path values absolute, relative to the file that named them (cwd for --set)."""
    for key, param in schema.items():
        v = values.get(key)
        if param.kind != "path" or v is None:
            continue
        p = Path(v).expanduser()
        if not p.is_absolute():
            src = origin.get(key)
            base = Path(src).parent if src and src != "--set" else Path.cwd()
            p = base / p
        values[key] = str(p.resolve())
