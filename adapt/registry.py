"""Name -> object registries (detectors, methods, adaptation losses), as big_vision looks modules up by name.

A name of the form `package.module:attribute` is imported instead of looked up, so a user's own code plugs
in through flags without editing the library. Every failure is a `RegistryError` whose message is one line
naming the valid choices; the experiment scripts turn it into a usage error (exit status 2).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


class RegistryError(ValueError):
    """An unknown or unimportable name; `str(error)` is one line with the valid choices."""


class Registry:
    """`register(name)(obj)`, `get(name)`, `names()`; `get('pkg.mod:attr')` imports `attr` from `pkg.mod`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj):
            if name in self._entries:
                raise RegistryError(f'{self.kind} {name!r} is registered twice')
            self._entries[name] = obj
            return obj
        return add

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def _choices(self) -> str:
        return f'valid choices: {", ".join(self._entries)} or package.module:function'

    def get(self, name: str) -> Any:
        if name in self._entries:
            return self._entries[name]
        if ':' not in name:
            raise RegistryError(f'unknown {self.kind} {name!r}; {self._choices()}')
        return import_attribute(name, self.kind, self._choices())


def import_attribute(name: str, kind: str, choices: str = '') -> Any:
    """`package.module:attribute` -> the attribute, or a one-line RegistryError."""
    module_name, _, attribute = name.partition(':')
    suffix = f'; {choices}' if choices else ''
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or the user's module failing at import
        raise RegistryError(f'cannot import {kind} {name!r}: {type(error).__name__}: {error}{suffix}') from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise RegistryError(f'cannot import {kind} {name!r}: module {module_name!r} has no {attribute!r}'
                            f'{suffix}') from None


def parse_weighted(spec: str, kind: str = 'term') -> list[tuple[str, float]]:
    """'a:0.1, pkg.mod:fn:1.0' -> [('a', 0.1), ('pkg.mod:fn', 1.0)]; the weight follows the last ':'."""
    terms = []
    for item in (s.strip() for s in spec.split(',')):
        if not item:
            continue
        name, sep, weight = item.rpartition(':')
        try:
            value = float(weight) if sep and name else None
        except ValueError:
            value = None
        if value is None:
            raise RegistryError(f'malformed {kind} {item!r}: expected NAME:WEIGHT (e.g. dann_image:0.1)')
        if any(name == n for n, _ in terms):
            raise RegistryError(f'{kind} {name!r} is listed twice')
        terms.append((name, value))
    return terms
