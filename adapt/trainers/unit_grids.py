"""The image grids of UNIT training: a few fixed examples through the deterministic generator (z = mu).

One row per example, columns input | reconstruction | translation | cycle, for each direction; the
training loop writes them as PNG and to TensorBoard.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from adapt.models.unit import UNIT, UNITConfig, from_model, to_model
from adapt.trainers.unit_step import generate, latent_shape
from adapt.training.metrics_log import make_grid


def make_grid_fn(cfg: UNITConfig):
    """`grids(gen_params, a01, b01) -> {'day2night': [1, H', W', 3], 'night2day': ...}` in [0, 1]."""
    model = UNIT(cfg)

    @jax.jit
    def columns(gen_params, a01, b01):
        x_a, x_b = to_model(a01), to_model(b01)
        zero = jnp.zeros((2 * x_a.shape[0], *latent_shape(cfg, x_a.shape[1:3])))
        out = generate(model, gen_params, x_a, x_b, zero, zero)
        a = jnp.stack([x_a, out['x_aa'], out['x_ab'], out['x_aba']], 1)
        b = jnp.stack([x_b, out['x_bb'], out['x_ba'], out['x_bab']], 1)
        return from_model(a), from_model(b)

    def grids(gen_params, a01, b01):
        a, b = (np.asarray(x) for x in columns(gen_params, a01, b01))
        zoom = max(1, -(-128 // min(a.shape[2:4])))  # small images: nearest-neighbour zoom to >= 128 px
        return {name: make_grid(v.reshape(-1, *v.shape[2:]).repeat(zoom, 1).repeat(zoom, 2), ncol=4)[None]
                .astype(np.float32) / 255.0 for name, v in (('day2night', a), ('night2day', b))}

    return grids
