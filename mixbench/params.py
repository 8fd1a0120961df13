"""Typed, range-checked parameter declarations shared by every recipe table.

A ``Param`` says what one recipe key holds (type, default, range or choices, one-line doc).
``check_table`` validates a whole table against a dict of them and returns the problems as
sentences instead of raising, so a recipe can report every mistake at once.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mixbench.errors import did_you_mean

REQUIRED = object()  # sentinel default: the key must be given
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux: a longer path cannot name a file

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
            bounds.append(f"{'>' if self.low_open else '>='} {show_number(self.low)}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {show_number(self.high)}")
        return text + (" " + " and ".join(bounds) if bounds else "")


@dataclass(frozen=True)
class RunFacts:
    """What validation knows about the run a ``[method]`` table belongs to, from the recipe alone.

    Nothing is loaded or built: the backbone's residual stages and final feature-map side come from
    its name (``mixbench.models.num_stages``), the image side from the data source (``None``: only the
    files will tell). ``check`` classmethods take it as ``facts`` (``None`` when nothing is known, e.g.
    ``build_mixer`` outside a recipe) to refuse settings that the run would reject.
    """

    model: str = ""  # [model].name
    model_origin: str = "recipe"  # the file (or --set) that named it
    num_stages: int | None = None  # residual stages of a built-in backbone; None: unknown
    stage_hooks: bool = True  # False: a timm backbone, which cannot mix or read hidden stages
    image_side: int | None = None  # side of the training images; None: unknown until the files are read
    feature_side: int | None = None  # side of the backbone's final feature map at image_side
    patch_size: int | None = None  # [model].patch_size of a timm vision transformer; None: unset

    def stages_text(self) -> str:
        where = "the default" if self.model_origin == "defaults" else self.model_origin
        return f"[model].name = '{self.model}' ({where})"


def call_check(check: Callable[..., list[str]], values: dict[str, Any], where: str, origin: dict[str, str],
               facts: RunFacts | None) -> list[str]:
    """``check(values, where, origin, facts=facts)``, or without ``facts`` for a check that takes none."""
    try:
        takes_facts = "facts" in inspect.signature(check).parameters
    except (TypeError, ValueError):  # a builtin or an odd callable: the plain three-argument form
        takes_facts = False
    return check(values, where, origin, facts=facts) if takes_facts else check(values, where, origin)


def show_key(key: str) -> str:
    """A key for a message: as it is when short and printable, else its cut-down ``repr``."""
    return key if len(key) <= 60 and key.isprintable() else show(key, 60)


def show_number(x: float) -> str:
    """A number for a message: integers in full (2^k for large powers of two), other numbers as ``%g``."""
    if isinstance(x, int) or float(x).is_integer():
        n = int(x)
        if n >= 2**32 and (n & (n - 1) == 0 or (n + 1) & n == 0):
            k = (n + 1).bit_length() - 1 if (n + 1) & n == 0 else n.bit_length() - 1
            return f"2^{k}" if n & (n - 1) == 0 else f"2^{k} - 1"
        if abs(n) < 10**16:
            return str(n)
        if isinstance(x, int):  # beyond the float range too: its size is what matters
            return f"a {len(str(abs(n)))}-digit integer" if abs(n) < 10**4000 else "a huge integer"
    return f"{x:g}"


def show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters (huge lists, long strings, deep tables)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int beyond Python's digit limit, or a very deep structure
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _type_ok(kind: str, value: Any) -> tuple[bool, Any]:
    """Check (and lightly coerce: int -> float) a value of ``kind``."""
    if kind == "bool":
        return isinstance(value, bool), value
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        try:
            as_float = float(value)
        except OverflowError:  # an integer beyond the float range
            return False, value
        return math.isfinite(as_float), as_float
    if kind == "table":
        return isinstance(value, dict), value
    if kind == "str":
        return isinstance(value, str) and "\x00" not in value, value
    if kind == "path":
        return isinstance(value, str) and "\x00" not in value and 0 < len(value) <= MAX_PATH_CHARS, value
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
        if isinstance(value, str) and "\x00" in value:
            return f"expected {param.describe()} without NUL characters, got {show(value)}", value
        if param.kind == "path" and isinstance(value, str):
            return f"expected a path of 1 to {MAX_PATH_CHARS} characters, got {len(value)} characters", value
        return f"expected {param.describe()}, got {show(value)}", value
    if param.choices is not None and value not in param.choices:
        hint = did_you_mean(str(value), map(str, param.choices)) if isinstance(value, str) and len(value) < 100 else ""
        return f"expected {param.describe()}, got {show(value)}{hint}", value
    if param.kind in ("int", "float"):
        lo, hi = param.low, param.high
        if lo is not None and (value <= lo if param.low_open else value < lo):  # the lower bound, then the upper
            upper = "" if hi is None else f" (and {'<' if param.high_open else '<='} {show_number(hi)})"
            return f"expected {replace(param, high=None).describe()}, got {show(value)}{upper}", value
        if hi is not None and (value >= hi if param.high_open else value > hi):
            return f"expected {param.describe()}, got {show(value)}", value
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
                f"{src}: unknown key {where}.{show_key(key)}{did_you_mean(key, schema) if len(key) < 100 else ''}; "
                f"valid keys: {valid}"
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
        if param.kind != "path" or not isinstance(v, str):
            continue
        p = Path(v)
        with contextlib.suppress(RuntimeError):  # '~user' for a user this machine does not know: kept literal
            p = p.expanduser()
        if not p.is_absolute():
            src = origin.get(key)
            base = Path(src).parent if src and src != "--set" else Path.cwd()
            p = base / p
        try:
            values[key] = str(p.resolve())
        except (OSError, RuntimeError, ValueError):  # a symlink loop: absolute, links left as they are
            values[key] = os.path.abspath(p)
