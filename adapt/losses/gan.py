"""GAN and VAE losses for image translation (UNIT), as pure functions.

Critic outputs are lists of patch maps (one per scale, logits); the adversarial losses are means over
each map, summed over the scales (as the UNIT / MUNIT reference code does). Kinds:
  lsgan  (Mao et al. 2017, UNIT's default): D: (D(x) - 1)^2 + D(G(z))^2;  G: (D(G(z)) - 1)^2
  nsgan  (non-saturating, Goodfellow et al. 2014): D: softplus(-D(x)) + softplus(D(G(z)));
         G: softplus(-D(G(z)))  (binary cross-entropy on logits)
  hinge  (Lim & Ye 2017; Miyato et al. 2018): D: relu(1 - D(x)) + relu(1 + D(G(z)));  G: -D(G(z))
`unit_generator_loss` and `unit_discriminator_loss` combine the terms with the reference weights.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

GAN_KINDS = ('lsgan', 'nsgan', 'hinge')
FEATURE_KINDS = ('l1', 'l2')
# The UNIT reference weights (mingyuliutw/UNIT configs): gan_w, recon_x_w, recon_kl_w, recon_x_cyc_w,
# recon_kl_cyc_w; `feature` (0 = off) weighs the optional frozen-backbone feature loss.
DEFAULT_WEIGHTS = {'gan': 1.0, 'recon': 10.0, 'kl': 0.01, 'cycle': 10.0, 'cycle_kl': 0.01, 'feature': 0.0,
                   'semantic': 0.0, 'labelled_cycle': 0.0}
# Terms the step computes with a frozen detector (adapt.losses.detection_aware) and passes in `out`.
DETECTION_TERMS = ('semantic_a', 'semantic_b', 'labelled_cycle_a')


def _check(kind):
    if kind not in GAN_KINDS:
        raise ValueError(f'GAN loss {kind!r}: choose one of {", ".join(GAN_KINDS)}')


def _maps(outputs):
    return outputs if isinstance(outputs, (list, tuple)) else [outputs]


def discriminator_loss(real: Sequence[jax.Array], fake: Sequence[jax.Array], kind: str = 'lsgan') -> jax.Array:
    """The critic's loss on real and (already stop-gradient'ed) fake patch maps, summed over scales."""
    _check(kind)
    total = 0.0
    for r, f in zip(_maps(real), _maps(fake), strict=True):
        r, f = r.astype(jnp.float32), f.astype(jnp.float32)
        if kind == 'lsgan':
            total += jnp.mean((r - 1.0) ** 2) + jnp.mean(f ** 2)
        elif kind == 'nsgan':
            total += jnp.mean(jax.nn.softplus(-r)) + jnp.mean(jax.nn.softplus(f))
        else:
            total += jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
    return total


def generator_adversarial_loss(fake: Sequence[jax.Array], kind: str = 'lsgan') -> jax.Array:
    """The generator's adversarial loss on the critic's outputs for its images, summed over scales."""
    _check(kind)
    total = 0.0
    for f in _maps(fake):
        f = f.astype(jnp.float32)
        if kind == 'lsgan':
            total += jnp.mean((f - 1.0) ** 2)
        elif kind == 'nsgan':
            total += jnp.mean(jax.nn.softplus(-f))
        else:
            total += -jnp.mean(f)
    return total


def l1(x, y) -> jax.Array:
    """Mean absolute error (the reference's recon_criterion)."""
    return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def kl(mu) -> jax.Array:
    """KL(N(mu, I) || N(0, I)) up to constants and scale, as the reference computes it: mean(mu^2)."""
    return jnp.mean(jnp.square(mu.astype(jnp.float32)))


def feature_loss(features_x: Mapping[str, jax.Array], features_y: Mapping[str, jax.Array],
                 kind: str = 'l1') -> jax.Array:
    """Mean over the feature levels of the mean L1 (or squared L2) distance between two feature dicts."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f'feature loss {kind!r}: choose one of {", ".join(FEATURE_KINDS)}')
    terms = []
    for name in sorted(features_x):
        d = features_x[name].astype(jnp.float32) - features_y[name].astype(jnp.float32)
        terms.append(jnp.mean(jnp.abs(d)) if kind == 'l1' else jnp.mean(jnp.square(d)))
    return sum(terms) / len(terms)


def unit_generator_loss(out: Mapping[str, object], weights: Mapping[str, float] = DEFAULT_WEIGHTS,
                        gan_kind: str = 'lsgan', feature_kind: str = 'l1'):
    """The UNIT generator objective -> (total, metrics).

    `out` holds the images (model range [-1, 1]) x_a, x_b, within-domain reconstructions x_aa, x_bb,
    cycle reconstructions x_aba, x_bab; latent means h_a, h_b (of the inputs) and h_ab, h_ba (of the
    translations x_ab = G_b(z_a), x_ba = G_a(z_b), re-encoded); critic outputs d_ab = D_b(x_ab),
    d_ba = D_a(x_ba); with weights['feature'] > 0 also feature dicts f_a, f_ab, f_b, f_ba (a frozen
    backbone on the inputs and on their translations); the DETECTION_TERMS present are added with their
    weights ('semantic_a' -> 'semantic').
    """
    w = {**DEFAULT_WEIGHTS, **dict(weights)}
    terms = {
        'gan_a': generator_adversarial_loss(out['d_ba'], gan_kind),
        'gan_b': generator_adversarial_loss(out['d_ab'], gan_kind),
        'recon_a': l1(out['x_aa'], out['x_a']), 'recon_b': l1(out['x_bb'], out['x_b']),
        'kl_a': kl(out['h_a']), 'kl_b': kl(out['h_b']),
        'cycle_a': l1(out['x_aba'], out['x_a']), 'cycle_b': l1(out['x_bab'], out['x_b']),
        'cycle_kl_a': kl(out['h_ab']), 'cycle_kl_b': kl(out['h_ba']),
    }
    if w['feature'] > 0:
        terms['feature_a'] = feature_loss(out['f_ab'], out['f_a'], feature_kind)
        terms['feature_b'] = feature_loss(out['f_ba'], out['f_b'], feature_kind)
    terms.update({name: out[name] for name in DETECTION_TERMS if name in out})
    total = sum(w[name.rsplit('_', 1)[0]] * value for name, value in terms.items())  # 'cycle_kl_a' -> 'cycle_kl'
    return total, {'g_loss': total, **{f'g_{k}': v for k, v in terms.items()}}


def unit_discriminator_loss(out: Mapping[str, object], weights: Mapping[str, float] = DEFAULT_WEIGHTS,
                            gan_kind: str = 'lsgan'):
    """The critics' objective -> (total, metrics): D_a on real x_a vs x_ba, D_b on real x_b vs x_ab.

    `out`: d_real_a, d_real_b (critic outputs on real images), d_ba, d_ab (on stop-gradient translations).
    """
    w = {**DEFAULT_WEIGHTS, **dict(weights)}
    loss_a = discriminator_loss(out['d_real_a'], out['d_ba'], gan_kind)
    loss_b = discriminator_loss(out['d_real_b'], out['d_ab'], gan_kind)
    total = w['gan'] * (loss_a + loss_b)
    return total, {'d_loss': total, 'd_a': loss_a, 'd_b': loss_b}
