"""optax optimizers from a config: schedules, weight decay, clipping, per-group lr multipliers / freezing.

Parameter groups are chosen by `re.search` of a regex on the '/'-joined parameter path (for example
'backbone/stage1/conv/kernel'); the first matching pattern wins, unmatched parameters get multiplier 1.
A multiplier of 0 freezes the group: its gradient is zeroed before clipping (so it does not count in the
global norm) and it gets `optax.set_to_zero()` (exactly zero updates, no optimizer state).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from adapt.settings import checked

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
FROZEN = "frozen"


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Every knob of `make_optimizer`; build it from a ConfigDict with `OptimizerConfig.from_mapping`."""
    name: str = "adam"                 # sgd | adam | adamw
    learning_rate: float = 1e-3        # peak learning rate
    momentum: float = 0.9              # sgd
    nesterov: bool = False             # sgd
    b1: float = 0.9                    # adam / adamw
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0          # sgd/adam: L2 added to the gradient; adamw: decoupled
    no_decay: str | None = r"(^|/)(bias|scale)$"   # params matching this regex are not decayed
    schedule: str = "constant"         # constant | cosine | step
    warmup_steps: int = 0              # linear warm-up: update k (1-based) uses lr * k / warmup_steps
    total_steps: int = 0               # cosine: lr reaches end_factor * lr at this step
    end_factor: float = 0.0            # cosine
    boundaries: Sequence[int] = ()     # step: from each of these steps on, lr *= decay_factor
    decay_every: int = 0               # step: alternatively decay every this many steps (StepLR)
    decay_factor: float = 0.1          # step
    clip_norm: float | None = None     # global-norm gradient clipping
    param_groups: Sequence[tuple[str, float]] = ()  # (regex, lr multiplier); 0 freezes

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "OptimizerConfig":
        """From a dict / ml_collections.ConfigDict; unknown keys are an error (typos must not pass)."""
        d = checked(cfg, (f.name for f in dataclasses.fields(cls)), "optimizer")
        d["boundaries"] = tuple(d.get("boundaries", ()))
        d["param_groups"] = tuple((str(p), float(m)) for p, m in d.get("param_groups", ()))
        return cls(**d)

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.name!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.schedule == "cosine" and self.total_steps <= self.warmup_steps:
            raise ValueError("cosine schedule needs total_steps > warmup_steps")


def make_schedule(cfg: OptimizerConfig) -> Callable[[Any], jax.Array]:
    """lr(t), t = number of updates already applied (optax's count): warm-up times decay."""
    peak, w = cfg.learning_rate, cfg.warmup_steps

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        warm = jnp.minimum(1.0, (t + 1.0) / w) if w > 0 else 1.0
        if cfg.schedule == "cosine":
            p = jnp.clip((t - w) / (cfg.total_steps - w), 0.0, 1.0)
            decay = cfg.end_factor + (1.0 - cfg.end_factor) * 0.5 * (1.0 + jnp.cos(jnp.pi * p))
        elif cfg.schedule == "step":
            passed = sum((t >= b).astype(jnp.float32) for b in cfg.boundaries)
            if cfg.decay_every > 0:
                passed = passed + jnp.floor(t / cfg.decay_every)
            decay = cfg.decay_factor ** passed
        else:
            decay = 1.0
        return peak * warm * decay

    return schedule


def param_path(path) -> str:
    """'/'-joined names of a key path from jax.tree_util.tree_flatten_with_path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return "/".join(parts)


def param_labels(params, groups: Sequence[tuple[str, float]]):
    """Tree of labels: 'group<i>' for the first pattern i that matches, 'default', or FROZEN (multiplier 0)."""
    def label(path, _):
        name = param_path(path)
        for i, (pattern, mult) in enumerate(groups):
            if re.search(pattern, name):
                return FROZEN if float(mult) == 0.0 else f"group{i}"
        return "default"
    return jax.tree_util.tree_map_with_path(label, params)


def _path_mask(pattern: str | None, keep_if_match: bool):
    def mask(params):
        def leaf(path, _):
            hit = pattern is not None and re.search(pattern, param_path(path)) is not None
            return hit == keep_if_match
        return jax.tree_util.tree_map_with_path(leaf, params)
    return mask


def _base(cfg: OptimizerConfig, lr) -> optax.GradientTransformation:
    decay_mask = _path_mask(cfg.no_decay, keep_if_match=False)
    if cfg.name == "adamw":
        return optax.adamw(lr, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.name == "adam":
        opt = optax.adam(lr, cfg.b1, cfg.b2, cfg.eps)
    else:
        opt = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    if cfg.weight_decay:
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay, decay_mask), opt)
    return opt


def make_optimizer(cfg: OptimizerConfig | Mapping[str, Any]) -> optax.GradientTransformation:
    """The optax transformation for `cfg` (an OptimizerConfig, dict or ConfigDict)."""
    if not isinstance(cfg, OptimizerConfig):
        cfg = OptimizerConfig.from_mapping(cfg)
    schedule = make_schedule(cfg)
    transforms = {f"group{i}": _base(cfg, lambda t, m=float(m): m * schedule(t))
                  for i, (_, m) in enumerate(cfg.param_groups) if float(m) != 0.0}
    transforms["default"] = _base(cfg, schedule)
    transforms[FROZEN] = optax.set_to_zero()
    labels = lambda params: param_labels(params, cfg.param_groups)  # noqa: E731
    parts = []
    if any(m == 0.0 for _, m in cfg.param_groups):
        is_frozen = lambda params: jax.tree.map(lambda l: l == FROZEN, labels(params))  # noqa: E731
        parts.append(optax.masked(optax.set_to_zero(), is_frozen))
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.multi_transform(transforms, labels))
    return optax.chain(*parts)
