"""What the Day2Night protocol is made of, read by the stage graph and the report alike: its domains, its
extra rows, and what each row's method needs (a UNIT run, training).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Domain:
    name: str
    dataset: str
    train: str
    validation: str
    test: str


def domains(config) -> dict:
    """{name: Domain} in the config's order (source, intermediate, target first)."""
    order = [config.source, config.intermediate, config.target]
    names = order + [n for n in config.domains if n not in order]
    return {n: Domain(n, **config.domains[n].to_dict()) for n in names if n}


def extra_methods(config) -> dict:
    """{row name: adaptation-loss list} of `extra_methods`, 'NAME=LOSS:WEIGHT,...;NAME2=...': source_only
    plus those terms (any registered loss or package.module:function), trained like every other row."""
    out = {}
    for item in (x.strip() for x in config.get('extra_methods', '').split(';') if x.strip()):
        name, sep, losses = (p.strip() for p in item.partition('='))
        if not (sep and name and losses):
            raise ValueError(f'extra_methods: {item!r} is not NAME=LOSS:WEIGHT,...')
        out[name] = losses
    return out


def row_method(config, name: str):
    """The Method of a row: the registered method `name`, or source_only for an extra row (its terms
    are `extra_methods`')."""
    import adapt.methods  # noqa: F401  (registers the built-in methods)
    from adapt.methods.base import get_method
    return get_method('source_only' if name in extra_methods(config) else name)


def needs_unit(config, name: str) -> bool:
    """Whether the row reads the protocol's UNIT run (as a translator, or for its encoders)."""
    return bool(row_method(config, name).unit_run_setting)


def trains(config, name: str) -> bool:
    """Whether the row trains its detector (False: training-free, the burn-in's detector changed or wrapped)."""
    return row_method(config, name).trains_detector
