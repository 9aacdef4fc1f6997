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


def severity_levels(config) -> list:
    """The night severities of `severities` ('1,2,3,4'; '' = none), sorted; ValueError (one line) for a level
    the target's dataset does not have."""
    from adapt.datasets.daynight_synth.daynight_synth import at_severity
    items = [x.strip() for x in config.get('severities', '').split(',') if x.strip()]
    levels = []
    for item in items:
        if not item.isdigit():
            raise ValueError(f'severities: {item!r} is not a level number')
        at_severity(config.domains[config.target].dataset, int(item))  # raises for another dataset or level
        levels.append(int(item))
    return sorted(set(levels))


def target_severity(config) -> int:
    from adapt.datasets.daynight_synth.daynight_synth import severity_of
    return severity_of(config.domains[config.target].dataset)


def swept_levels(config) -> list:
    """The swept levels that need their own stages: every level of `severities` but the target's own, whose
    rows are the protocol's main rows."""
    return [level for level in severity_levels(config) if level != target_severity(config)]


def severity_config(config, level: int):
    """The protocol config with the target domain's night at `level` (its scenes, splits and labels the same)."""
    import ml_collections
    from adapt.datasets.daynight_synth.daynight_synth import at_severity
    c = ml_collections.ConfigDict(config.to_dict())
    c.domains[config.target].dataset = at_severity(config.domains[config.target].dataset, level)
    return c


def severity_methods(config, methods) -> list:
    """The rows swept over the severities: those of `severity_methods` the protocol runs, in its order;
    ValueError (one line) without source_only and oracle, whose gap each level's share is of."""
    levels = severity_levels(config)  # validated here: experiments.day2night checks its flags through this
    wanted = {m.strip() for m in config.get('severity_methods', '').split(',') if m.strip()}
    rows = [m for m in methods if m in wanted]
    missing = [m for m in ('source_only', 'oracle') if m not in rows]
    if missing and levels:
        raise ValueError(f'severities need the {" and ".join(missing)} row(s) in both methods and severity_methods')
    return rows
