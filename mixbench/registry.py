"""A small name -> factory registry, in the manner of timm's model registry.

Every pluggable part (data sets, backbones, methods, mixers, losses) registers itself next to its
definition with ``@REGISTRY.register("name")``. For a class the registry reads what it needs from
the class itself: the first line of its docstring (``doc``), its declared ``params``, its ``check``
of several parameters together, and ``differs`` (how it departs from the reference);
``mixbench list`` prints ``names()`` with each entry's one-line ``doc``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mixbench.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Entry:
    """One registered factory with its one-line description and extra metadata."""

    name: str
    factory: Callable[..., Any]
    doc: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        """The declared parameters (``Param`` by key): explicit metadata, else the class's ``params``."""
        return self.meta["params"] if "params" in self.meta else getattr(self.factory, "params", {})

    @property
    def check(self) -> Callable[..., list[str]] | None:
        """``check(values, where, origin) -> problems`` for settings that involve several keys."""
        return self.meta["check"] if "check" in self.meta else getattr(self.factory, "check", None)

    @property
    def differs(self) -> str:
        """One sentence: how this entry differs from its reference implementation (may be empty)."""
        return self.meta["differs"] if "differs" in self.meta else getattr(self.factory, "differs", "")


def first_doc_line(obj: Any, default: str) -> str:
    """The first line of ``obj``'s docstring, or ``default``."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else default


class Registry:
    """Map names to factories; ``register`` is a decorator, ``get`` a checked lookup."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str | None = None, doc: str | None = None, **meta: Any) -> Callable[[Callable], Callable]:
        """Decorator: register ``factory`` under ``name`` (default: its ``name`` attribute) with a
        one-line ``doc`` (default: the first line of its docstring)."""

        def wrap(factory: Callable) -> Callable:
            key = name or getattr(factory, "name", None) or factory.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = Entry(key, factory, doc or first_doc_line(factory, key), dict(meta))
            return factory

        return wrap

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests that register a method of their own clean up with this)."""
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry:
        """The entry for ``name``; an unknown name is a :class:`UserError` listing valid ones."""
        if name not in self._entries:
            valid = ", ".join(sorted(self._entries))
            raise UserError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                f"valid {self.kind}s: {valid}"
            )
        return self._entries[name]

    def get(self, name: str) -> Callable[..., Any]:
        return self.entry(name).factory

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)
