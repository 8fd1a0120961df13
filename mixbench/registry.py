"""A small name -> factory registry, in the manner of timm's model registry.

Every pluggable part (data sets, backbones, methods, losses) lives in one ``Registry``;
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


class Registry:
    """Map names to factories; ``register`` is a decorator, ``get`` a checked lookup."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, doc: str, **meta: Any) -> Callable[[Callable], Callable]:
        """Decorator: register ``factory`` under ``name`` with a one-line ``doc``."""

        def wrap(factory: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, factory, doc, dict(meta))
            return factory

        return wrap

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
