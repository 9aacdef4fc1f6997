"""GAN / VAE loss terms against hand-computed values on tiny inputs (NumPy only as the reference)."""
import numpy as np
import pytest

from adapt.losses import gan

# Two critic scales: a 1x2 patch map and a 1x1 one (shapes [B=1, h, w, 1]).
REAL = [np.array([0.5, 1.5], np.float32).reshape(1, 1, 2, 1), np.array([2.0], np.float32).reshape(1, 1, 1, 1)]
FAKE = [np.array([0.2, -0.4], np.float32).reshape(1, 1, 2, 1), np.array([-1.0], np.float32).reshape(1, 1, 1, 1)]


def softplus(x):
    return np.log1p(np.exp(x))


def test_discriminator_losses_by_hand():
    # lsgan: scale 1: ((0.5-1)^2 + (1.5-1)^2)/2 + (0.2^2 + 0.4^2)/2 = 0.25 + 0.1; scale 2: (2-1)^2 + 1^2 = 2
    np.testing.assert_allclose(gan.discriminator_loss(REAL, FAKE, 'lsgan'), 0.35 + 2.0, rtol=1e-6)
    # hinge: scale 1: (relu(0.5) + relu(-0.5))/2 + (relu(1.2) + relu(0.6))/2 = 0.25 + 0.9; scale 2: 0 + relu(0) = 0
    np.testing.assert_allclose(gan.discriminator_loss(REAL, FAKE, 'hinge'), 1.15, rtol=1e-6)
    expected = (np.mean(softplus(-np.array([0.5, 1.5]))) + np.mean(softplus(np.array([0.2, -0.4])))
                + softplus(-2.0) + softplus(-1.0))
    np.testing.assert_allclose(gan.discriminator_loss(REAL, FAKE, 'nsgan'), expected, rtol=1e-6)
    # nsgan is binary cross-entropy on logits: -log sigmoid(real) - log(1 - sigmoid(fake))
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    bce = (np.mean(-np.log(sig(np.array([0.5, 1.5])))) + np.mean(-np.log(1 - sig(np.array([0.2, -0.4]))))
           - np.log(sig(2.0)) - np.log(1 - sig(-1.0)))
    np.testing.assert_allclose(expected, bce, rtol=1e-6)


def test_generator_adversarial_losses_by_hand():
    # lsgan: ((0.2-1)^2 + (-0.4-1)^2)/2 + (-1-1)^2 = 1.3 + 4
    np.testing.assert_allclose(gan.generator_adversarial_loss(FAKE, 'lsgan'), 5.3, rtol=1e-6)
    # hinge: -mean(fake) per scale: 0.1 + 1
    np.testing.assert_allclose(gan.generator_adversarial_loss(FAKE, 'hinge'), 1.1, rtol=1e-6)
    expected = np.mean(softplus(-np.array([0.2, -0.4]))) + softplus(1.0)
    np.testing.assert_allclose(gan.generator_adversarial_loss(FAKE, 'nsgan'), expected, rtol=1e-6)
    # A single map (not a list) is one scale.
    np.testing.assert_allclose(gan.generator_adversarial_loss(FAKE[1], 'lsgan'), 4.0, rtol=1e-6)


def test_reconstruction_kl_and_feature_terms_by_hand():
    x = np.array([[0.0, 1.0], [-1.0, 0.5]], np.float32)
    y = np.array([[0.5, 1.0], [1.0, 0.0]], np.float32)
    np.testing.assert_allclose(gan.l1(x, y), (0.5 + 0 + 2 + 0.5) / 4, rtol=1e-6)
    np.testing.assert_allclose(gan.kl(x), (0 + 1 + 1 + 0.25) / 4, rtol=1e-6)
    fx = {'C3': x, 'C4': np.array([1.0, 2.0], np.float32)}
    fy = {'C3': y, 'C4': np.array([0.0, 0.0], np.float32)}
    np.testing.assert_allclose(gan.feature_loss(fx, fy, 'l1'), (0.75 + 1.5) / 2, rtol=1e-6)
    np.testing.assert_allclose(gan.feature_loss(fx, fy, 'l2'), ((0.25 + 4 + 0.25) / 4 + 2.5) / 2, rtol=1e-6)


def _outputs(rng, with_features=False):
    img = lambda: rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)  # noqa: E731
    lat = lambda: rng.normal(size=(2, 2, 2, 5)).astype(np.float32)  # noqa: E731
    maps = lambda: [rng.normal(size=(2, 2, 2, 1)).astype(np.float32), rng.normal(size=(2, 1, 1, 1)).astype(np.float32)]  # noqa: E731
    out = {k: img() for k in ('x_a', 'x_b', 'x_aa', 'x_bb', 'x_aba', 'x_bab')}
    out.update({k: lat() for k in ('h_a', 'h_b', 'h_ab', 'h_ba')}, d_ab=maps(), d_ba=maps())
    if with_features:
        out.update({k: {'C3': rng.normal(size=(2, 3, 3, 4)).astype(np.float32)} for k in ('f_a', 'f_b', 'f_ab', 'f_ba')})
    return out


def test_unit_generator_objective_weights_every_term():
    out = _outputs(np.random.default_rng(0), with_features=True)
    l1 = lambda a, b: np.mean(np.abs(a - b))  # noqa: E731
    ls = lambda maps: sum(np.mean((m - 1) ** 2) for m in maps)  # noqa: E731
    terms = {'gan_a': ls(out['d_ba']), 'gan_b': ls(out['d_ab']),
             'recon_a': l1(out['x_aa'], out['x_a']), 'recon_b': l1(out['x_bb'], out['x_b']),
             'kl_a': np.mean(out['h_a'] ** 2), 'kl_b': np.mean(out['h_b'] ** 2),
             'cycle_a': l1(out['x_aba'], out['x_a']), 'cycle_b': l1(out['x_bab'], out['x_b']),
             'cycle_kl_a': np.mean(out['h_ab'] ** 2), 'cycle_kl_b': np.mean(out['h_ba'] ** 2),
             'feature_a': l1(out['f_ab']['C3'], out['f_a']['C3']), 'feature_b': l1(out['f_ba']['C3'], out['f_b']['C3'])}
    # Reference weights: the feature loss is off by default.
    total, metrics = gan.unit_generator_loss(out)
    expected = (terms['gan_a'] + terms['gan_b'] + 10 * (terms['recon_a'] + terms['recon_b'])
                + 0.01 * (terms['kl_a'] + terms['kl_b']) + 10 * (terms['cycle_a'] + terms['cycle_b'])
                + 0.01 * (terms['cycle_kl_a'] + terms['cycle_kl_b']))
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    assert 'g_feature_a' not in metrics
    for name, value in terms.items():
        if not name.startswith('feature'):
            np.testing.assert_allclose(metrics[f'g_{name}'], value, rtol=1e-5, err_msg=name)
    weights = dict(gan=2.0, recon=3.0, kl=5.0, cycle=7.0, cycle_kl=11.0, feature=13.0)
    total, metrics = gan.unit_generator_loss(out, weights)
    expected = sum(weights[name.rsplit('_', 1)[0]] * value for name, value in terms.items())
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics['g_feature_b'], terms['feature_b'], rtol=1e-5)


def test_unit_discriminator_objective():
    rng = np.random.default_rng(1)
    maps = lambda: [rng.normal(size=(2, 2, 2, 1)).astype(np.float32), rng.normal(size=(2, 1, 1, 1)).astype(np.float32)]  # noqa: E731
    out = {'d_real_a': maps(), 'd_ba': maps(), 'd_real_b': maps(), 'd_ab': maps()}
    hinge = lambda r, f: sum(np.mean(np.maximum(1 - x, 0)) + np.mean(np.maximum(1 + y, 0)) for x, y in zip(r, f))  # noqa: E731
    total, metrics = gan.unit_discriminator_loss(out, {'gan': 0.5}, 'hinge')
    d_a, d_b = hinge(out['d_real_a'], out['d_ba']), hinge(out['d_real_b'], out['d_ab'])
    np.testing.assert_allclose([metrics['d_a'], metrics['d_b'], total], [d_a, d_b, 0.5 * (d_a + d_b)], rtol=1e-5)


def test_unknown_kinds_are_rejected():
    with pytest.raises(ValueError, match='lsgan, nsgan, hinge'):
        gan.discriminator_loss(REAL, FAKE, 'wgan')
    with pytest.raises(ValueError, match='l1, l2'):
        gan.feature_loss({'a': np.zeros(1)}, {'a': np.zeros(1)}, 'cosine')
    with pytest.raises(ValueError):  # scale counts must agree
        gan.discriminator_loss(REAL, FAKE[:1])
