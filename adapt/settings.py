"""Strict settings blocks: a mapping read into a dict whose keys must all be known, so a typo in a preset or on
the command line stops the run with one line instead of being silently ignored."""
from __future__ import annotations

from typing import Any, Iterable, Mapping


def checked(settings: Mapping[str, Any], valid: Iterable[str], where: str) -> dict:
    """`settings` (a dict or an ml_collections.ConfigDict) as a plain dict; a one-line ValueError naming the
    unknown keys and the valid choices."""
    valid = tuple(valid)
    d = dict(settings.to_dict() if hasattr(settings, 'to_dict') else settings)
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ValueError(f'{where}: unknown {", ".join(unknown)}; valid choices: {", ".join(valid)}')
    return d
