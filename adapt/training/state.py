"""Train states: one optimizer (detectors) or several named optimizers (GANs).

Both states carry `step` (completed updates) and `rng` (a base PRNG key); the per-step key is
`fold_in(rng, step)` (see `step_key`), so a resumed run draws exactly what an uninterrupted one would.
The step counter is advanced by the engine (`parallel.data_parallel`), never by `apply_gradients`,
so a GAN step that applies two half-updates still counts as one step.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct


def as_key(seed_or_key) -> jax.Array:
    """A raw uint32[2] PRNG key (checkpoint-friendly) from an int seed or an existing raw key."""
    if isinstance(seed_or_key, int):
        return jax.random.PRNGKey(seed_or_key)
    key = jnp.asarray(seed_or_key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return key


def _update(tx: optax.GradientTransformation, grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@struct.dataclass
class TrainState:
    """params + BatchNorm statistics + one optax optimizer + `aux`: state that is checkpointed with the
    rest but not optimised (an EMA of the weights, a teacher, a frozen model)."""
    step: jax.Array
    rng: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    aux: Any = struct.field(default_factory=dict)

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, rng, batch_stats=None, aux=None) -> "TrainState":
        """`rng`: int seed or raw key. `batch_stats`: the model's 'batch_stats' collection ({} if none)."""
        return cls(step=jnp.zeros((), jnp.int32), rng=as_key(rng), params=params,
                   batch_stats={} if batch_stats is None else batch_stats,
                   opt_state=tx.init(params), tx=tx, aux={} if aux is None else aux)

    def apply_gradients(self, grads, batch_stats=None) -> "TrainState":
        """One optimizer update; optionally also store the new BatchNorm statistics."""
        params, opt_state = _update(self.tx, grads, self.opt_state, self.params)
        return self.replace(params=params, opt_state=opt_state,
                            batch_stats=self.batch_stats if batch_stats is None else batch_stats)

    def step_key(self) -> jax.Array:
        return jax.random.fold_in(self.rng, self.step)


@struct.dataclass
class MultiTrainState:
    """Several named parameter groups, each with its own optimizer (e.g. 'gen' and 'disc').

    `apply_gradients(group, grads)` touches only `params[group]` and `opt_state[group]`: the other
    groups stay bit-identical, which alternating GAN updates need. `batch_stats` maps group -> stats.
    """
    step: jax.Array
    rng: jax.Array
    params: dict
    batch_stats: dict
    opt_state: dict
    txs: tuple = struct.field(pytree_node=False)  # ((group, tx), ...): hashable, so jit can cache

    @classmethod
    def create(cls, params: Mapping[str, Any], txs: Mapping[str, optax.GradientTransformation], rng,
               batch_stats: Mapping[str, Any] | None = None) -> "MultiTrainState":
        if set(params) != set(txs):
            raise ValueError(f"params groups {sorted(params)} != optimizer groups {sorted(txs)}")
        return cls(step=jnp.zeros((), jnp.int32), rng=as_key(rng), params=dict(params),
                   batch_stats={k: {} for k in params} | dict(batch_stats or {}),
                   opt_state={k: txs[k].init(params[k]) for k in params},
                   txs=tuple(sorted(txs.items())))

    def tx(self, group: str) -> optax.GradientTransformation:
        return dict(self.txs)[group]

    def apply_gradients(self, group: str, grads, batch_stats=None) -> "MultiTrainState":
        """Update one group's params (and optionally its BatchNorm statistics); others untouched."""
        params, opt_state = _update(self.tx(group), grads, self.opt_state[group], self.params[group])
        new_stats = dict(self.batch_stats)
        if batch_stats is not None:
            new_stats[group] = batch_stats
        return self.replace(params={**self.params, group: params},
                            opt_state={**self.opt_state, group: opt_state}, batch_stats=new_stats)

    def step_key(self) -> jax.Array:
        return jax.random.fold_in(self.rng, self.step)


def all_finite(tree) -> jax.Array:
    """True when every floating leaf of `tree` is finite (a scalar bool, jit-able)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
