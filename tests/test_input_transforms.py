"""The input transforms of training-free adaptation (adapt.models.input_transforms) against NumPy
re-derivations of their definitions and closed forms: gamma correction (a grey frame reaches the target
mean), histogram matching (a frame matched to its own CDF is unchanged, a uniform target CDF equalises) and
the day luminance statistics. The references are shared with tests/test_training_free.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.models import input_transforms as T

LUMA64 = np.array([0.299, 0.587, 0.114])


# ------------------------------------------------------------------------------------------- references
def np_luminance(images):
    return np.asarray(images, np.float64) @ LUMA64


def np_gamma(images, target):
    """Per frame: mean luminance m, gamma = log(target) / log(m) clipped to [0.2, 5], image ** gamma."""
    out = []
    for image in np.asarray(images, np.float64):
        m = np_luminance(image).mean()
        with np.errstate(divide='ignore'):              # black (log 0) and white (log 1 = 0) frames: +-inf
            gamma = np.clip(np.log(target) / np.log(m), 0.2, 5.0)
        out.append(image ** gamma)
    return np.stack(out)


def np_levels(images):
    return np.clip(np.floor(np_luminance(images) * 256), 0, 255).astype(int)


def off_bin_edges(images):
    """`images` with the few pixels whose luminance * 256 lies within 1e-4 of an integer (a level edge) made
    brighter by 5e-4 / 256: only away from the edges do float32 (XLA) and float64 (NumPy) agree on the level."""
    y = np_luminance(images) * 256
    near = np.abs(y - np.round(y)) < 1e-4
    images = np.where(near[..., None], images + np.float32(5e-4 / 256), images).astype(np.float32)
    y = np_luminance(images) * 256
    assert np.min(np.abs(y - np.round(y))) > 1e-4   # float32 rounding of Y * 256 is < 3e-5
    return images


def np_histogram_match(images, target_cdf):
    """The loop definition: per frame, level v -> the first k with target_cdf[k] >= cdf[v]; RGB scaled by
    (k + 0.5) / (v + 0.5), clipped to [0, 1]."""
    target_cdf = np.asarray(target_cdf, np.float64)
    out = np.zeros(images.shape, np.float64)
    for i, image in enumerate(np.asarray(images, np.float64)):
        levels = np_levels(image)
        cdf = np.cumsum(np.bincount(levels.ravel(), minlength=256)) / levels.size
        first = {v: next(k for k in range(256) if target_cdf[k] >= cdf[v]) for v in np.unique(levels)}
        for y in range(levels.shape[0]):
            for x in range(levels.shape[1]):
                v = levels[y, x]
                out[i, y, x] = np.clip(image[y, x] * (first[v] + 0.5) / (v + 0.5), 0.0, 1.0)
    return out


def np_cdf(levels):
    return np.cumsum(np.bincount(np.asarray(levels).ravel(), minlength=256)) / np.asarray(levels).size


# The transforms run under jit (as inside a detector): one compile per input shape, where eager mode would
# compile every primitive.
gamma_correct, histogram_match = jax.jit(T.gamma_correct), jax.jit(T.histogram_match)


# ---------------------------------------------------------------------------------------- 1. gamma
def test_gamma_correct_equals_numpy_and_brings_a_grey_frame_to_the_target_mean():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (10, 8, 8, 3)).astype(np.float32)
    images[1] *= 0.05                                  # a dark frame: gamma < 1 (0.23 for target 0.45)
    images[2] = images[2] ** 4                         # darker than the target
    images[3] = 1 - 0.3 * images[3]                    # brighter than the target: gamma > 1
    images[4] = 0.001                                  # nearly black: gamma clipped at 0.2 (log .45/log .001 = .12)
    images[5], images[6] = 0.0, 1.0                    # black and white: finite (0 and 1)
    images[7:] = np.array((0.1, 0.6, 0.3), np.float32)[:, None, None, None]
    for target in (0.45, 0.3):
        out = np.asarray(gamma_correct(jnp.asarray(images), target))
        np.testing.assert_allclose(out, np_gamma(images, target), rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(out[4], 0.001 ** 0.2, rtol=1e-5)
        assert np.all(out[5] == 0.0) and np.all(out[6] == 1.0)
        # closed form: a grey frame of value c has luminance c, and c ** (log t / log c) = t
        for grey in out[7:]:
            np.testing.assert_allclose(np_luminance(grey).mean(), target, rtol=1e-5)
            np.testing.assert_allclose(grey, target, rtol=1e-5)


# ------------------------------------------------------------------------------------ 2. histogram match
def test_histogram_match_equals_the_numpy_loop_keeps_a_frame_matched_to_itself_and_equalises():
    """One frame at a time (one compiled shape)."""
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
    images[0] = images[0] ** 3                          # dark
    images[1] = 0.2 + 0.1 * images[1]                   # narrow luminance range
    images = off_bin_edges(images)
    target_cdf = np.cumsum(rng.dirichlet(np.ones(256) * 0.5))
    target_cdf[-1] = 1.0
    for image in images:
        out = np.asarray(histogram_match(jnp.asarray(image[None]), target_cdf))
        np.testing.assert_allclose(out, np_histogram_match(image[None], target_cdf), rtol=1e-5, atol=1e-6)
        assert not np.allclose(out, image, atol=1e-2)
        # closed form: a frame matched to its own CDF comes back unchanged (each level present maps to itself)
        same = np.asarray(histogram_match(jnp.asarray(image[None]), np_cdf(np_levels(image))))
        np.testing.assert_allclose(same[0], image, rtol=1e-5, atol=1e-6)

    # a uniform target CDF equalises: a dark frame (luminance density falling linearly from 0.05 to 0.5, so
    # no level holds more than ~2 % of the pixels, which must move together) comes out about flat in 8 bins
    base = 0.05 + 0.45 * (1 - np.sqrt(rng.uniform(0, 1, (1, 32, 32, 1))))
    dark = (base * np.array([1.1, 1.0, 0.8]) + rng.uniform(-0.01, 0.01, (1, 32, 32, 3))).astype(np.float32)
    uniform = np.arange(1, 257) / 256.0
    before = np.histogram(np_luminance(dark), bins=8, range=(0, 1))[0] / dark[..., 0].size
    after = np.histogram(np_luminance(np.asarray(histogram_match(jnp.asarray(dark), uniform))),
                         bins=8, range=(0, 1))[0] / dark[..., 0].size
    assert before[0] > 0.25 and before[5:].sum() == 0  # input: far from flat
    np.testing.assert_allclose(after, 1 / 8, atol=0.02)


# ----------------------------------------------------------------------------------- 3. day statistics
def test_luminance_statistics_equal_numpy_over_two_batches():
    rng = np.random.default_rng(2)
    batches = [rng.uniform(0, 1, (3, 10, 10, 3)).astype(np.float32),
               (rng.uniform(0, 1, (2, 10, 10, 3)) ** 2).astype(np.float32)]
    batches = [off_bin_edges(b) for b in batches]
    stats = T.luminance_statistics(iter(batches))
    y = np.concatenate([np_luminance(b).ravel() for b in batches])
    np.testing.assert_allclose(stats['mean'], y.mean(), rtol=1e-6)
    np.testing.assert_allclose(stats['cdf'], np_cdf(np.clip(np.floor(y * 256), 0, 255).astype(int)), atol=1e-12)
    assert len(stats['cdf']) == 256 and stats['cdf'][-1] == 1.0
    with pytest.raises(ValueError, match='no images'):
        T.luminance_statistics([])
