"""The UNIT train step (domain a = source/day, b = target/night): one critic update, then one generator update.

One step = the reference's alternating pair: a critic update, then a generator update against the updated
critics, in a single per-device step for `adapt.training.data_parallel`. The generator's forward pass runs
once per step: its translations feed the critic update (as constants) and its `jax.vjp` gives the generator
gradient afterwards, so nothing is computed twice. Latent noise is drawn per example from `example_keys`,
so 1 and N devices take the same step. The state is a `MultiTrainState` with groups 'gen' and 'disc' (each
half-update leaves the other group bit-identical).

Detection-aware training (adapt.losses.detection_aware): with a `FrozenDetector` (adapt.trainers.unit_judge)
the generator also answers to the detector's semantic consistency and to its loss on labelled day images
after day -> night -> day. With `crop_size`, UNIT trains on random windows of the detector-size frames
(objects keep the scale the detector knows, at a fraction of the cost) and the detector judges each whole
frame with its window replaced by the translation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from adapt.losses.detection_aware import labelled_cycle, semantic_consistency
from adapt.losses.gan import DEFAULT_WEIGHTS, unit_discriminator_loss, unit_generator_loss
from adapt.models.unit import UNIT, Discriminators, UNITConfig, to_model
from adapt.trainers.unit_judge import FrozenDetector, needs_detector, needs_features
from adapt.training import mean_value_and_grad
from adapt.training.parallel import AXIS, example_keys


def latent_shape(cfg: UNITConfig, size) -> tuple:
    return (size[0] // cfg.stride, size[1] // cfg.stride, cfg.dim * cfg.stride)


def generate(model: UNIT, gen_params, x_a, x_b, noise, noise_cycle):
    """Every generator output of one UNIT step (images in [-1, 1]).

    noise / noise_cycle: [2B, h, w, c] latent noise for (x_a, x_b) and for the re-encoded (x_ab, x_ba)
    (zeros for the deterministic, test-time path). Both domains go through the shared layers as one batch.
    """
    def run(method, *args):
        return model.apply({'params': gen_params}, *args, method=method)

    b = x_a.shape[0]
    h = run(UNIT.shared_encoder, jnp.concatenate([run(UNIT.front, x_a, 'a'), run(UNIT.front, x_b, 'b')]))
    s = run(UNIT.shared_decoder, h + noise)
    to_a, to_b = run(UNIT.back, s, 'a'), run(UNIT.back, s, 'b')
    x_aa, x_ba, x_ab, x_bb = to_a[:b], to_a[b:], to_b[:b], to_b[b:]
    h2 = run(UNIT.shared_encoder, jnp.concatenate([run(UNIT.front, x_ab, 'b'), run(UNIT.front, x_ba, 'a')]))
    s2 = run(UNIT.shared_decoder, h2 + noise_cycle)
    return {'x_a': x_a, 'x_b': x_b, 'h_a': h[:b], 'h_b': h[b:], 'x_aa': x_aa, 'x_bb': x_bb, 'x_ab': x_ab,
            'x_ba': x_ba, 'h_ab': h2[:b], 'h_ba': h2[b:], 'x_aba': run(UNIT.back, s2[:b], 'a'),
            'x_bab': run(UNIT.back, s2[b:], 'b')}


def _critic_pair(critics, disc_params, real, fake, domain):
    """Critic outputs on real and fake images of `domain`, in one batch."""
    maps = critics.apply({'params': disc_params}, jnp.concatenate([real, fake]), domain)
    b = real.shape[0]
    return [m[:b] for m in maps], [m[b:] for m in maps]


def crop_offsets(key, count: int, size, crop: int):
    """[count, 2] int32 top-left corners of `crop` x `crop` windows in images of `size` (h, w), uniform, one
    key per example (`example_keys`), so 1 and N devices draw the same."""
    high = jnp.asarray([size[0] - crop + 1, size[1] - crop + 1])
    return jax.vmap(lambda k: jax.random.randint(k, (2,), 0, high))(example_keys(key, count))


def crop(images, offsets, size: int):
    """The `size` x `size` windows at `offsets` [B, 2] of images [B, H, W, C]."""
    return jax.vmap(lambda x, o: lax.dynamic_slice(x, (o[0], o[1], 0), (size, size, x.shape[-1])))(images, offsets)


def paste(images, patches, offsets):
    """Images [B, H, W, C] with patches [B, h, w, C] written at `offsets` [B, 2]."""
    return jax.vmap(lambda x, p, o: lax.dynamic_update_slice(x, p, (o[0], o[1], 0)))(images, patches, offsets)


def make_train_step(cfg: UNITConfig, weights=DEFAULT_WEIGHTS, gan_kind: str = 'lsgan', features=None,
                    feature_kind: str = 'l1', groups=('disc', 'gen'), detector: FrozenDetector | None = None,
                    crop_size: int = 0):
    """Per-device `step(state, batch, key) -> (state, metrics)` for `data_parallel`.

    batch: {'a': [B, H, W, 3], 'b': [B, H, W, 3]} in [0, 1]; 'a' is a dict {'image', 'boxes', 'labels',
    'mask'} when weights['labelled_cycle'] > 0. `features`: a `FrozenFeatures` for the feature loss
    (weights['feature'] > 0); `detector`: a `FrozenDetector` for the semantic and labelled-cycle terms.
    `crop_size` > 0: UNIT trains on a random window of that size of each image (cheaper; objects keep
    their scale), and the detector judges the whole frame with the window replaced by its translation.
    `groups`: the half-updates to make, always critic first (('disc',) or ('gen',) alone, e.g. for
    critic warm-up or tests).
    """
    if not groups or set(groups) - {'disc', 'gen'}:
        raise ValueError(f"groups {groups!r}: a non-empty subset of ('disc', 'gen')")
    model, critics = UNIT(cfg), Discriminators(cfg)
    weights = {**DEFAULT_WEIGHTS, **dict(weights)}
    featured, judged = needs_features(weights), needs_detector(weights)
    if featured and features is None:
        raise ValueError('the feature loss (weight > 0) needs a frozen backbone (features)')
    if judged and detector is None:
        raise ValueError('the semantic and labelled-cycle losses (weight > 0) need a frozen detector')

    def detection_terms(out, frames, offsets, labels_a, key):
        """The frozen detector's terms on whole frames ([-1, 1]) with the crop replaced by its translation."""
        d, v = detector.detector, detector.variables
        to01 = lambda x: (x + 1.0) * 0.5  # noqa: E731  (no clipping: keep the gradient)
        whole = lambda name, patch: to01(paste(frames[name], out[patch], offsets[name]))  # noqa: E731
        terms = {}
        if weights['semantic'] > 0:  # both domains in one pass of the detector
            kl = semantic_consistency(d, v, to01(jnp.concatenate([frames['a'], frames['b']])),
                                      jnp.concatenate([whole('a', 'x_ab'), whole('b', 'x_ba')]))
            b = frames['a'].shape[0]
            terms['semantic_a'], terms['semantic_b'] = jnp.mean(kl[:b]), jnp.mean(kl[b:])
        if weights['labelled_cycle'] > 0:
            terms['labelled_cycle_a'], _ = labelled_cycle(d, v, whole('a', 'x_aba'), labels_a, AXIS, key)
        return terms

    def d_objective(disc_params, out):
        real_a, fake_ba = _critic_pair(critics, disc_params, out['x_a'], out['x_ba'], 'a')
        real_b, fake_ab = _critic_pair(critics, disc_params, out['x_b'], out['x_ab'], 'b')
        return unit_discriminator_loss({'d_real_a': real_a, 'd_ba': fake_ba, 'd_real_b': real_b, 'd_ab': fake_ab},
                                       weights, gan_kind)

    def g_objective(out, disc_params, frames, offsets, labels_a, key):
        out = {**out, 'd_ba': critics.apply({'params': disc_params}, out['x_ba'], 'a'),
               'd_ab': critics.apply({'params': disc_params}, out['x_ab'], 'b')}
        if featured:
            f = lambda x: features((x + 1.0) * 0.5)  # noqa: E731  (no clipping: keep the gradient)
            out.update(f_a=f(out['x_a']), f_b=f(out['x_b']), f_ab=f(out['x_ab']), f_ba=f(out['x_ba']))
        if judged:
            out.update(detection_terms(out, frames, offsets, labels_a, key))
        return unit_generator_loss(out, weights, gan_kind, feature_kind)

    def step(state, batch, key):
        labels_a = batch['a'] if isinstance(batch['a'], dict) else None
        frames = {'a': to_model(labels_a['image'] if labels_a else batch['a']), 'b': to_model(batch['b'])}
        if crop_size:
            offsets = {name: crop_offsets(jax.random.fold_in(key, 2 + i), x.shape[0], x.shape[1:3], crop_size)
                       for i, (name, x) in enumerate(frames.items())}
            x_a, x_b = crop(frames['a'], offsets['a'], crop_size), crop(frames['b'], offsets['b'], crop_size)
        else:
            offsets = {name: jnp.zeros((x.shape[0], 2), jnp.int32) for name, x in frames.items()}
            x_a, x_b = frames['a'], frames['b']
        shape = latent_shape(cfg, x_a.shape[1:3])
        keys = jnp.concatenate([example_keys(key, x_a.shape[0]), example_keys(jax.random.fold_in(key, 1),
                                                                              x_b.shape[0])])
        draws = jax.vmap(lambda k: jax.random.normal(k, (2, *shape)))(keys)   # [2B, 2, h, w, c]
        # Local gradient w.r.t. device-varying params, then pmean: the global-batch gradient on any mesh.
        gen_params = jax.tree.map(lambda p: lax.pcast(p, AXIS, to='varying'), state.params['gen'])
        out, gen_vjp = jax.vjp(lambda p: generate(model, p, x_a, x_b, draws[:, 0], draws[:, 1]), gen_params)
        metrics = {}
        if 'disc' in groups:
            fakes = {**out, 'x_ab': lax.stop_gradient(out['x_ab']), 'x_ba': lax.stop_gradient(out['x_ba'])}
            (_, d_metrics), d_grads = mean_value_and_grad(d_objective, has_aux=True)(state.params['disc'], fakes)
            state = state.apply_gradients('disc', d_grads)
            metrics.update(d_metrics)
        if 'gen' in groups:
            (_, g_metrics), out_grads = jax.value_and_grad(g_objective, has_aux=True)(
                out, state.params['disc'], frames, offsets, labels_a, jax.random.fold_in(key, 4))
            (g_grads,) = gen_vjp(out_grads)
            state = state.apply_gradients('gen', lax.pmean(g_grads, AXIS))
            metrics.update(g_metrics)
        return state, metrics

    return step
