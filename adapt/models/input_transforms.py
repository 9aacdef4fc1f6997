"""Frozen image -> image transforms that run in front of a detector, online, on every frame.

A detector wrapped by one of them (adapt.models.translated) sees every frame transformed, whatever its
domain: it cannot know whether a frame is night, so day and dusk frames are transformed too.
  unit:   the frozen night -> day generator of a finished train_unit run (z = mu), at the detector's input
          resolution (the generator is fully convolutional);
  gamma:  per frame, the gamma that brings its mean luminance to `target_mean` (luminance^gamma = target);
  histeq: per frame, histogram matching of the luminance to `target_cdf` (256 levels; a uniform CDF is
          plain equalisation), chroma kept by scaling R, G, B by the luminance ratio.
gamma's and histeq's targets are statistics of day frames (`luminance_statistics`), chosen on a labelled
source split that is not a test split (the day validation split by default).

`build_transform(block, generator) -> images01 [B, H, W, 3] -> images01` reads the wrapper's config block
(`transform` and that transform's settings; `generator`: unit's adapt.models.unit.Generator); every
transform is a pure jnp function of constants.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from adapt.models.unit import make_translate_fn
from adapt.registry import Registry

TRANSFORMS = Registry('input transform')
LEVELS = 256
LUMA = (0.299, 0.587, 0.114)        # ITU-R BT.601, on the stored (gamma-encoded) values
GAMMA_RANGE = (0.2, 5.0)             # a frame's gamma is clipped to this range (black or white frames)
EPS = 1e-3


def luminance(images01):
    return images01 @ jnp.asarray(LUMA, images01.dtype)


def gamma_correct(images01, target_mean: float):
    """Each frame raised to the gamma that maps its mean luminance m to `target_mean` (m^g = target)."""
    m = jnp.clip(jnp.mean(luminance(images01), axis=(1, 2)), EPS, 1.0 - EPS)
    gamma = jnp.clip(jnp.log(target_mean) / jnp.log(m), *GAMMA_RANGE)
    return jnp.clip(images01, 0.0, 1.0) ** gamma[:, None, None, None]


def luminance_levels(images01):
    """Luminance quantised to LEVELS bins (int32 [B, H, W])."""
    return jnp.clip(jnp.floor(luminance(jnp.clip(images01, 0.0, 1.0)) * LEVELS), 0, LEVELS - 1).astype(jnp.int32)


def histogram_match(images01, target_cdf):
    """Each frame's luminance level v goes to the first level whose target CDF reaches the frame's own
    CDF at v (histogram specification); R, G, B are scaled by new / old luminance (bin centres)."""
    target_cdf = jnp.asarray(target_cdf, jnp.float32)
    levels = luminance_levels(images01)
    b = images01.shape[0]
    counts = jax.vmap(lambda v: jnp.zeros(LEVELS, jnp.float32).at[v.reshape(-1)].add(1.0))(levels)
    cdf = jnp.cumsum(counts, axis=1) / jnp.sum(counts, axis=1, keepdims=True)          # [B, LEVELS]
    mapping = jnp.searchsorted(target_cdf, cdf - 1e-6, side='left').clip(0, LEVELS - 1)  # [B, LEVELS]
    new_levels = jnp.take_along_axis(mapping, levels.reshape(b, -1), axis=1).reshape(levels.shape)
    ratio = (new_levels + 0.5) / (levels + 0.5)
    return jnp.clip(images01 * ratio[..., None], 0.0, 1.0)


def luminance_statistics(batches) -> dict:
    """{'mean': mean luminance, 'cdf': LEVELS-bin CDF of the luminance levels} over the frames of
    `batches` (an iterable of [B, H, W, 3] arrays in [0, 1]; every pixel counts once)."""
    total, count, hist = 0.0, 0, np.zeros(LEVELS, np.float64)
    for images in batches:
        images = np.asarray(images, np.float32)
        total += float(np.sum(np.asarray(luminance(jnp.asarray(images)), np.float64)))
        levels = np.asarray(luminance_levels(jnp.asarray(images)))
        hist += np.bincount(levels.reshape(-1), minlength=LEVELS)
        count += levels.size
    if not count:
        raise ValueError('no images to take luminance statistics from')
    return {'mean': total / count, 'cdf': (np.cumsum(hist) / count).tolist()}


# ----------------------------------------------------------------------------------------- registry
@TRANSFORMS.register('gamma')
def _gamma(block, generator):
    if block.get('target_mean') is None:
        raise ValueError('translated.target_mean is not set: the gamma method fills it from day frames')
    return functools.partial(gamma_correct, target_mean=float(block.target_mean))


@TRANSFORMS.register('histeq')
def _histeq(block, generator):
    if len(block.get('target_cdf') or ()) != LEVELS:
        raise ValueError(f'translated.target_cdf needs {LEVELS} values: the histeq method fills it from day frames')
    return functools.partial(histogram_match, target_cdf=np.asarray(block.target_cdf, np.float32))


@TRANSFORMS.register('unit')
def _unit(block, generator):
    """Night (b) -> day (a) with `generator` (the UNIT run of `unit_run` at `unit_step`)."""
    if generator is None:
        raise ValueError('translated.transform unit needs the generator of translated.unit_run')
    translate = make_translate_fn(generator.config, 'b', 'a')
    return lambda images01: translate(generator.params, images01)


def build_transform(block, generator=None):
    """The transform `block.transform` with its settings; ValueError (one line) when they are missing."""
    return TRANSFORMS.get(block.transform)(block, generator)
