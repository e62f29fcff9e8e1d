"""Names -> things of one kind, the one registry idiom of the project (task types' pipelines, SSL
methods, trackers, queue backends, analysis commands, target readers).

An entry is registered as the object itself (``register``, also as a decorator) or lazily as a module
to import on first use (``lazy``), so a run loads only what it names. Lookup by ``reg[name]`` behaves
like a dict (``KeyError``, ``get``, ``in``); :meth:`Registry.find` raises the registry's own one-line
``UserError`` naming the known entries.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, Optional, TypeVar

from utility.errors import UserError

T = TypeVar("T")


class _Lazy:
    """A module not imported yet: importing it registers the entry, or ``attr`` of it is the entry."""

    def __init__(self, module: str, attr: Optional[str]) -> None:
        self.module, self.attr = module, attr


def _default_unknown(kind: str) -> Callable[[str, list[str]], str]:
    def message(name: str, known: list[str]) -> str:
        hint = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
        return (f"unknown {kind} '{name}'" + (f"; did you mean '{hint[0]}'?" if hint else "")
                + f" (known: {', '.join(known)})")
    return message


class Registry(Mapping[str, T], Generic[T]):
    """Entries of one ``kind`` by name, in registration order; ``unknown(name, known)`` words the
    error of :meth:`find`."""

    def __init__(self, kind: str, unknown: Optional[Callable[[str, list[str]], str]] = None) -> None:
        self.kind = kind
        self.unknown = unknown or _default_unknown(kind)
        self._entries: dict[str, Any] = {}
        self.help: dict[str, str] = {}  # one line per entry, where the registry has them (analysis commands)

    def register(self, *names: str, entry: Any = None, help: str = "") -> Any:
        """``register("a", entry=x)``, or as a decorator ``@reg.register("a", "b")`` (the decorated
        object itself is registered)."""
        def add(obj: Any) -> Any:
            for name in names:
                self._entries[name] = obj
                if help:
                    self.help[name] = help
            return obj
        return add if entry is None else add(entry)

    def lazy(self, name: str, target: str, help: str = "") -> None:
        """``target``: ``"package.module:attr"`` (that attribute is the entry) or ``"package.module"``
        (importing it registers the entry)."""
        module, _, attr = target.partition(":")
        self._entries[name] = _Lazy(module, attr or None)
        if help:
            self.help[name] = help

    def __getitem__(self, name: str) -> T:
        entry = self._entries[name]
        if isinstance(entry, _Lazy):
            mod = importlib.import_module(entry.module)
            if isinstance(self._entries[name], _Lazy):  # the module did not register it itself
                if entry.attr is None:
                    raise KeyError(name)
                self._entries[name] = getattr(mod, entry.attr)
            entry = self._entries[name]
        return entry

    def __contains__(self, name: object) -> bool:  # without importing a lazy entry's module
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def find(self, name: str) -> T:
        """The entry, or a UserError worded by ``unknown``."""
        if name not in self._entries:
            raise UserError(self.unknown(name, self.names()))
        return self[name]
