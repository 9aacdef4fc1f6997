"""Data parallelism: one SPMD step per device, mapped with jax.shard_map over a 'data' mesh axis.

A per-device step has the signature `step(state, batch, key) -> (state, metrics)`: `batch` is this
device's shard, `state` is replicated. Inside it, take gradients with `mean_value_and_grad`, which
averages them over 'data' (plain `jax.grad` of replicated params under shard_map's default
`check_vma=True` returns the *sum* over devices, see its docstring), and give BatchNorm
`axis_name='data'`. `data_parallel` jits the mapped step, derives the key from (state.rng, state.step),
averages the metrics and advances `state.step`. The same step runs on 1 device, N devices or N hosts.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from adapt.training.state import all_finite

AXIS = "data"


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None, **kwargs) -> bool:
    """Start JAX's multi-controller runtime when asked (`num_processes` > 1); True if it did.

    Call before any other JAX use, with the same coordinator 'host:port' in every process and
    process_id 0..num_processes-1. On CPU the collectives go through gloo.
    """
    if not num_processes or num_processes <= 1:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only affects the CPU backend
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **kwargs)
    return True


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D ('data',) mesh over the first `num_devices` devices (default: all, on all processes)."""
    n = num_devices or jax.device_count()
    return jax.make_mesh((n,), (AXIS,), devices=jax.devices()[:n])


def mean_value_and_grad(fn: Callable, has_aux: bool = False, axis_name: str = AXIS) -> Callable:
    """Like `jax.value_and_grad(fn)` (grad w.r.t. the first argument) but averaged over `axis_name`.

    The params are cast to device-varying first, so the gradient is the local one, then pmean'd:
    this gives the gradient of the global-batch mean loss for equal shards, on any device count.
    The loss is pmean'd too; `aux` is returned as computed on this device.
    """
    vg = jax.value_and_grad(fn, has_aux=has_aux)

    def wrapped(params, *args, **kwargs):
        params = jax.tree.map(lambda x: lax.pcast(x, axis_name, to="varying"), params)
        out, grads = vg(params, *args, **kwargs)
        grads = lax.pmean(grads, axis_name)
        if has_aux:
            loss, aux = out
            return (lax.pmean(loss, axis_name), aux), grads
        return lax.pmean(out, axis_name), grads

    return wrapped


def global_mean(values, mask=None, axis_name=None):
    """Masked mean of `values` over the global batch, as a per-device value whose mean over the devices
    (what the data-parallel step takes) is that global mean."""
    mask = jnp.ones(values.shape, bool) if mask is None else jnp.broadcast_to(mask, values.shape)
    total = jnp.sum(jnp.where(mask, values, 0.0))
    count = jnp.sum(mask).astype(jnp.float32)
    if axis_name:
        count = lax.pmean(count, axis_name)
    return total / jnp.maximum(count, 1.0)


def example_keys(key: jax.Array, local_batch_size: int, axis_name: str = AXIS) -> jax.Array:
    """One key per example of this device's shard, `fold_in(key, global example index)`.

    Per-example draws made with these keys do not depend on how the batch is split over devices
    (a draw of shape [local_batch, ...] from the shared key would), so 1 and N devices agree.
    """
    start = lax.axis_index(axis_name) * local_batch_size
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(local_batch_size))


def cast_floating(tree, dtype):
    """Cast the floating leaves of `tree` to `dtype` (bf16 mixed precision: params/inputs before apply).

    Gradients flow back through the cast, so they arrive in the params' float32; keep the loss in
    float32 (`logits.astype(jnp.float32)`) and cast new BatchNorm statistics back to float32.
    """
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x
    return jax.tree.map(cast, tree)


def data_parallel(step_fn: Callable, mesh: jax.sharding.Mesh, donate: bool = True) -> Callable:
    """jit(shard_map(step_fn)) as `train_step(state, batch) -> (state, metrics, finite)`.

    `batch` is sharded on its leading axis (see `shard_batch`), `state` replicated (see `replicate`).
    The per-step key is `fold_in(state.rng, state.step)`; metrics are pmean'd (a no-op for metrics
    already averaged) and `finite` says whether the new state is all finite (for the NaN guard).
    With `donate`, the input state's buffers are reused: do not touch it after the call.
    """
    def per_device(state, batch):
        new_state, metrics = step_fn(state, batch, state.step_key())
        new_state = new_state.replace(step=state.step + 1)
        metrics = jax.tree.map(lambda m: lax.pmean(jnp.asarray(m, jnp.float32), AXIS), metrics)
        return new_state, metrics, all_finite(new_state)

    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P(), P()))
    return jax.jit(mapped, donate_argnums=(0,) if donate else ())


def shard_batch(host_batch, mesh: jax.sharding.Mesh):
    """Global arrays from each process's local part of the batch (leading axis split over 'data').

    Single process: the whole batch. Several processes: each passes its own consecutive slice
    (process i holds rows [i*b, (i+1)*b) of the global batch).
    """
    sharding = NamedSharding(mesh, P(AXIS))
    local = len(mesh.local_devices)

    def put(x):
        x = np.asarray(x)
        if x.shape[0] % local:
            raise ValueError(f"local batch size {x.shape[0]} is not divisible by {local} local devices")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, host_batch)


def replicate(tree, mesh: jax.sharding.Mesh):
    """Copy a (host or single-device) pytree onto every device of `mesh` (works multi-process)."""
    sharding = NamedSharding(mesh, P())

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(put, tree)


def to_host(tree) -> Any:
    """NumPy copy of a replicated pytree, also when its arrays span other processes' devices."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)
    return jax.tree.map(get, tree)
