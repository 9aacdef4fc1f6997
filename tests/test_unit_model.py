"""UNIT model: shapes, the shared layers (one parameter set, gradients from both domains), layers against
NumPy, per-sample normalisation, no transposed convolutions, and half-steps that touch only their group."""
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'scripts'))
import unit_tiny  # noqa: E402

from adapt.models import unit  # noqa: E402

CFG = unit.UNITConfig(**unit_tiny.TINY)


@pytest.fixture(scope='module')
def params():
    return unit.init_params(CFG, jax.random.PRNGKey(0), (16, 16))


def _images(seed, n=2, size=16):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)), jnp.float32)


def test_shapes_and_output_range(params):
    model, x = unit.UNIT(CFG), _images(0)

    @jax.jit
    def forward(p, x):
        mu = model.apply({'params': p['gen']}, x, 'a', method=unit.UNIT.encode)
        y = model.apply({'params': p['gen']}, mu, 'b', method=unit.UNIT.decode)
        return mu, y, unit.Discriminators(CFG).apply({'params': p['disc']}, x, 'a')

    mu, y, maps = forward(params, x)
    assert mu.shape == (2, 16 // CFG.stride, 16 // CFG.stride, CFG.dim * CFG.stride)
    assert y.shape == x.shape and float(jnp.max(jnp.abs(y))) < 1.0  # tanh
    # scale s sees 16 / 2**s pixels; each of the dis_layers convs halves it; 1 channel (a patch map)
    assert [m.shape for m in maps] == [(2, 4, 4, 1), (2, 2, 2, 1)]


def test_shared_layers_are_one_parameter_set(params):
    gen = params['gen']
    assert sorted(gen) == ['dec_a', 'dec_b', 'dec_shared', 'enc_a', 'enc_b', 'enc_shared']
    for private in ('enc_a', 'enc_b', 'dec_a', 'dec_b'):  # no shared block hides inside a domain's layers
        assert len(gen[private]['res']) == 2 * (CFG.n_res - CFG.n_shared)
    assert len(gen['enc_shared']) == len(gen['dec_shared']) == 2 * CFG.n_shared


def test_shared_layers_get_gradients_from_each_domain_alone(params):
    """A loss on one domain only (its auto-encoding) reaches the shared blocks, not the other domain."""
    model, x = unit.UNIT(CFG), _images(1)

    def loss(gen, domain):
        return jnp.mean(model.apply({'params': gen}, x, domain, domain, method=unit.UNIT.translate) ** 2)

    grads = jax.jit(lambda p: {d: jax.grad(loss)(p, d) for d in 'ab'})(params['gen'])
    norm = lambda tree: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(tree)))  # noqa: E731
    for domain, other in (('a', 'b'), ('b', 'a')):
        for shared in ('enc_shared', 'dec_shared'):
            for leaf in jax.tree.leaves(grads[domain][shared]):
                assert float(jnp.max(jnp.abs(leaf))) > 0.0, (domain, shared)
        assert norm(grads[domain][f'enc_{domain}']) > 0 and norm(grads[domain][f'dec_{domain}']) > 0
        assert norm(grads[domain][f'enc_{other}']) == 0 and norm(grads[domain][f'dec_{other}']) == 0


def test_normalisation_layers_match_numpy():
    x = np.random.default_rng(2).normal(2.0, 3.0, (2, 5, 4, 3)).astype(np.float32)

    class Norms(unit.nn.Module):
        @unit.nn.compact
        def __call__(self, x):
            return unit.normalize(x, 'instance', 'inorm'), unit.normalize(x, 'layer', 'lnorm')

    variables = Norms().init(jax.random.PRNGKey(0), x)
    assert 'inorm' not in variables.get('params', {})  # instance norm without affine, as the reference
    scale = np.arange(1, 4, dtype=np.float32)
    variables = {'params': {'lnorm': {'scale': scale, 'bias': -scale}}}
    inorm, lnorm = Norms().apply(variables, x)
    m, v = x.mean((1, 2), keepdims=True), x.var((1, 2), keepdims=True)
    np.testing.assert_allclose(inorm, (x - m) / np.sqrt(v + 1e-5), atol=1e-4)
    m, v = x.mean((1, 2, 3), keepdims=True), x.var((1, 2, 3), keepdims=True)
    np.testing.assert_allclose(lnorm, (x - m) / np.sqrt(v + 1e-5) * scale - scale, atol=1e-4)


@pytest.mark.parametrize('pad_type, mode', [('reflect', 'edge'), ('zero', 'constant')])
def test_subpixel_upsampling_conv_equals_upsample_then_conv5x5(pad_type, mode):
    x = np.random.default_rng(3).normal(size=(2, 5, 6, 3)).astype(np.float32)
    layer = unit.UpConv(4, pad_type)
    variables = layer.init(jax.random.PRNGKey(0), x)
    kernel, bias = variables['params']['kernel'], variables['params']['bias']
    assert kernel.shape == (5, 5, 3, 4)
    up = np.pad(x.repeat(2, 1).repeat(2, 2), ((0, 0), (2, 2), (2, 2), (0, 0)), mode=mode)  # nearest x2, pad 2
    expected = np.zeros((2, 10, 12, 4), np.float64)
    for i in range(5):          # a direct 5x5 'valid' correlation
        for j in range(5):
            expected += np.einsum('bhwc,co->bhwo', up[:, i:i + 10, j:j + 12], kernel[i, j])
    np.testing.assert_allclose(layer.apply(variables, x), expected + bias, atol=1e-5)


def test_critic_downsampling_matches_numpy():
    x = np.random.default_rng(3).normal(size=(1, 3, 4, 2)).astype(np.float32)
    # 3x3 stride-2 average with padding 1, padded cells not counted
    y = np.asarray(unit.downsample(x))
    expected = np.zeros((1, 2, 2, 2), np.float32)
    for i in range(2):
        for j in range(2):
            rows = slice(max(2 * i - 1, 0), min(2 * i + 2, 3))
            cols = slice(max(2 * j - 1, 0), min(2 * j + 2, 4))
            expected[0, i, j] = x[0, rows, cols].mean((0, 1))
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_samples_are_independent_of_their_batch(params):
    """Instance / layer norm are per sample: a sample's output must not depend on the rest of its batch
    (what lets 1 and N devices compute the same step)."""
    model, x = unit.UNIT(CFG), _images(4, n=3)
    fwd = jax.jit(lambda xs: model.apply({'params': params['gen']}, xs, xs)['ab'])
    np.testing.assert_allclose(fwd(x)[:1], fwd(x[:1]), atol=1e-5)


def test_no_transposed_convolutions(params):
    """Upsampling is resize + conv: no convolution in the generator has input dilation (ConvTranspose)."""
    model, x = unit.UNIT(CFG), _images(5)
    text = str(jax.make_jaxpr(lambda p: model.apply({'params': p}, x, x))(params['gen']))
    dilations = re.findall(r'lhs_dilation=\(([0-9, ]+)\)', text)
    assert len(dilations) == text.count('conv_general_dilated[') > 0
    assert set(dilations) == {'1, 1'}


def test_config_validation():
    with pytest.raises(ValueError, match='reflect, zero'):
        unit.UNITConfig(pad_type='circular')
    with pytest.raises(ValueError, match='n_shared'):
        unit.UNITConfig(n_res=2, n_shared=3)
    with pytest.raises(ValueError, match='unit model: unknown .*; valid choices: dim, '):
        unit.UNITConfig.from_mapping({'dims': 3})


def test_half_steps_leave_the_other_group_bit_identical():
    from adapt.trainers.unit import init_state
    cfg = unit_tiny.config()
    start = jax.device_get(init_state(cfg))
    for group, other in (('disc', 'gen'), ('gen', 'disc')):
        (state,), (metrics,) = unit_tiny.run_steps(cfg, [unit_tiny.batch(0)], 1, (group,), start)
        assert sorted(metrics)[0].startswith(group[0] + '_')  # only this half's losses were computed
        for tree in ('params', 'opt_state'):
            for x, y in zip(jax.tree.leaves(getattr(state, tree)[other]), jax.tree.leaves(getattr(start, tree)[other])):
                assert np.array_equal(x, y), (group, tree)
        moved = [not np.array_equal(x, y) for x, y in
                 zip(jax.tree.leaves(state.params[group]), jax.tree.leaves(start.params[group]))]
        assert all(moved), group
