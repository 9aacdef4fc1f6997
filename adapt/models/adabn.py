"""AdaBN (Li et al. 2016): a trained detector's BatchNorm statistics recomputed on target images.

The weights stay; only every BatchNorm layer's running mean and variance are replaced by the mean and
variance of its inputs over unlabelled target images. The inputs are those of a training pass (each
batch normalised by its own statistics, as the layer was trained), pooled over all images and positions.
Works on any detector of the interface: the BatchNorm layers are found by intercepting flax's
nn.BatchNorm calls, so no family needs to know about it.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from adapt.training.parallel import AXIS, make_mesh, shard_batch


def _masked_moments(detector, variables, images, weights, axis_name=None):
    """{path: (sum x, sum x^2, count)} of every BatchNorm input over the rows with weight 1, each layer
    normalising with those statistics (a training pass over the valid rows)."""
    moments = {}

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if not isinstance(module, nn.BatchNorm) or context.method_name != '__call__':
            return next_fun(*args, **kwargs)
        x = args[0]
        w = weights.reshape((-1,) + (1,) * (x.ndim - 1)).astype(jnp.float32)
        xf = x.astype(jnp.float32)
        axes = tuple(range(x.ndim - 1))
        stats = (jnp.sum(xf * w, axes), jnp.sum(xf * xf * w, axes),
                 jnp.sum(w) * math.prod(x.shape[1:-1]))
        if axis_name is not None:
            stats = lax.psum(stats, axis_name)
        path = '/'.join(module.path)  # a layer called more than once (shared over levels): all its inputs
        moments[path] = tuple(a + b for a, b in zip(moments[path], stats)) if path in moments else stats
        mean = stats[0] / stats[2]
        var = jnp.maximum(stats[1] / stats[2] - mean ** 2, 0.0)
        y = (xf - mean) * lax.rsqrt(var + module.epsilon)
        params = module.variables.get('params', {})
        if module.use_scale:
            y = y * params['scale']
        if module.use_bias:
            y = y + params['bias']
        return y.astype(x.dtype)

    with nn.intercept_methods(intercept):
        detector.apply(variables, images, train=False)
    return moments


def make_moments_fn(detector, mesh=None):
    """jit-ed `moments(variables, images [B, H, W, 3], weights [B]) -> {path: (sum, sum of squares, count)}`
    summed over the global batch (data parallel over `mesh`)."""
    mesh = mesh or make_mesh()
    fn = jax.shard_map(lambda v, x, w: _masked_moments(detector, v, x, w, AXIS), mesh=mesh,
                       in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P())
    return jax.jit(fn)


def adapted_statistics(detector, variables, batches, mesh=None, print_fn=None) -> dict:
    """The detector's variables with every BatchNorm mean / var replaced by the statistics of its inputs over
    `batches` (eval-pipeline batches {'image', 'valid'}; rows not valid are ignored)."""
    mesh = mesh or make_mesh()
    moments = make_moments_fn(detector, mesh)
    totals, images = None, 0
    for batch in batches:
        valid = np.asarray(batch['valid'], np.float32)
        out = jax.device_get(moments(variables, shard_batch(batch['image'], mesh), shard_batch(valid, mesh)))
        out = {k: tuple(np.asarray(v, np.float64) for v in s) for k, s in out.items()}
        totals = out if totals is None else {k: tuple(a + b for a, b in zip(totals[k], out[k])) for k in totals}
        images += int(valid.sum())
    if not images:
        raise ValueError('AdaBN: no target images')
    stats = jax.tree.map(np.asarray, variables['batch_stats'])
    for path, (s1, s2, n) in totals.items():
        layer = stats
        for name in path.split('/'):
            layer = layer[name]
        mean = s1 / n
        layer['mean'] = mean.astype(np.float32)
        layer['var'] = np.maximum(s2 / n - mean ** 2, 0.0).astype(np.float32)
    if print_fn:
        print_fn(f'adabn: statistics of {len(totals)} BatchNorm layers from {images} target images')
    return {**variables, 'batch_stats': stats}
