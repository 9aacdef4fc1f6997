"""Backbones: feature shapes / strides / channels, published parameter counts, BatchNorm modes, and BatchNorm
statistics averaged over a 4-device mesh equal to those of the global batch on one device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from adapt.models.backbones import BACKBONES, FEATURE_STRIDES, get_backbone, preprocess

# Channels per level at the small widths below, worked out by hand from the architectures.
SMALL = {
    'vgg16': (0.25, (32, 64, 128, 128, 128)),
    'resnet18': (0.25, (16, 16, 32, 64, 128)),
    'resnet34': (0.25, (16, 16, 32, 64, 128)),
    'resnet50': (0.25, (16, 64, 128, 256, 512)),
    'mobilenet_v2': (0.35, (48, 48, 96, 192, 1280)),
}
# Weights at width 1.0 without a classifier: keras.applications include_top=False counts (params + BatchNorm
# statistics) for VGG16, ResNet50, MobileNetV2; torchvision's parameters minus the 513,000 fc ones for the rest.
PUBLISHED_COUNTS = {'vgg16': 14_714_688, 'resnet50': 23_587_712, 'mobilenet_v2': 2_257_984,
                    'resnet18': 11_689_512 - 513_000, 'resnet34': 21_797_672 - 513_000}
TORCHVISION = ('resnet18', 'resnet34')


def _init(model, x):
    return jax.jit(model.init)(jax.random.key(0), x)


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _close_to_scale(got, expected, tol=1e-4):
    got, expected = np.asarray(got), np.asarray(expected)
    assert np.abs(got - expected).max() <= tol * np.abs(expected).max()


@pytest.mark.parametrize('name', list(BACKBONES))
def test_feature_shapes_and_strides(name):
    width, channels = SMALL[name]
    model = get_backbone(name, width=width)
    x = jnp.zeros((2, 64, 96, 3))
    shapes = jax.eval_shape(lambda: model.apply(_init(model, x), x))
    assert list(shapes) == list(FEATURE_STRIDES)
    for (level, stride), c in zip(FEATURE_STRIDES.items(), channels):
        assert shapes[level].shape == (2, 64 // stride, 96 // stride, c), (level, shapes[level].shape)


@pytest.mark.parametrize('name', list(BACKBONES))
def test_full_width_parameter_counts(name):
    model = get_backbone(name)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    counted = variables['params'] if name in TORCHVISION else variables
    assert _count(counted) == PUBLISHED_COUNTS[name]


def test_vgg16_batch_norm_variant():
    model = get_backbone('vgg16', batch_norm=True)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    channels = 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512
    assert len(variables['batch_stats']) == 13
    # Keras VGG16 without the 13 conv biases, plus BatchNorm scale/bias (params) and mean/var (statistics).
    assert _count(variables) == PUBLISHED_COUNTS['vgg16'] - channels + 4 * channels


def test_train_updates_batch_stats_with_momentum_and_frozen_bn_does_not():
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
    model = get_backbone('resnet18', width=0.125, bn_momentum=0.9)
    variables = _init(model, x)
    # Train mode: the running statistics move towards the batch statistics of conv1_bn's input.
    _, state = jax.jit(lambda v: model.apply(v, x, train=True, mutable=['batch_stats', 'intermediates'],
                                             capture_intermediates=lambda mdl, _: mdl.name == 'conv1_conv'))(variables)
    conv1 = np.asarray(state['intermediates']['conv1_conv']['__call__'][0], np.float64)
    old = variables['batch_stats']['conv1_bn']
    new = state['batch_stats']['conv1_bn']
    np.testing.assert_allclose(new['mean'], 0.9 * old['mean'] + 0.1 * conv1.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new['var'], 0.9 * old['var'] + 0.1 * conv1.var((0, 1, 2)), rtol=1e-4, atol=1e-6)
    # Frozen: train=True leaves every statistic as it was and normalises like inference.
    frozen = get_backbone('resnet18', width=0.125, bn_momentum=0.9, frozen_bn=True)
    trained = {'params': variables['params'], 'batch_stats': state['batch_stats']}
    out, frozen_state = jax.jit(lambda v: frozen.apply(v, x, train=True, mutable=['batch_stats']))(trained)
    jax.tree.map(np.testing.assert_array_equal, frozen_state['batch_stats'], state['batch_stats'])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 out, jax.jit(model.apply)(trained, x))


def test_cross_device_batchnorm_equals_global_batch():
    name = 'resnet18'
    assert jax.device_count() >= 4
    mesh = jax.make_mesh((4,), ('data',))
    x = jax.random.uniform(jax.random.key(2), (8, 32, 32, 3))
    reference = get_backbone(name, width=0.25)
    variables = _init(reference, x)
    sharded_x = jax.device_put(x, NamedSharding(mesh, P('data')))
    replicated = jax.device_put(variables, NamedSharding(mesh, P()))

    def train_step(model):
        return lambda v, images: model.apply(v, images, train=True, mutable=['batch_stats'])

    expected_out, expected_state = jax.jit(train_step(reference))(variables, x)

    def sharded(axis_name):
        fn = jax.shard_map(train_step(get_backbone(name, width=0.25, axis_name=axis_name)), mesh=mesh,
                           in_specs=(P(), P('data')), out_specs=(P('data'), P()), check_vma=axis_name is not None)
        return jax.jit(fn)(replicated, sharded_x)

    out, state = sharded('data')
    # Train-mode BatchNorm amplifies summation-order rounding, so compare relative to each array's scale.
    jax.tree.map(_close_to_scale, state['batch_stats'], expected_state['batch_stats'])
    jax.tree.map(_close_to_scale, out, expected_out)
    # Without the axis name each device normalises with its own quarter of the batch: visibly different.
    local_out, _ = sharded(None)
    assert np.abs(np.asarray(local_out['C5']) - np.asarray(expected_out['C5'])).max() > 1e-2


def test_bfloat16_compute_keeps_float32_params():
    model = get_backbone('resnet18', width=0.125, dtype=jnp.bfloat16)
    x = jnp.ones((1, 32, 32, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert jax.eval_shape(model.apply, variables, x)['C5'].dtype == jnp.bfloat16


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match='vgg16, resnet18, resnet34, resnet50, mobilenet_v2'):
        get_backbone('resnet101')
    with pytest.raises(ValueError, match='valid choices'):
        preprocess('alexnet', np.zeros((1, 2, 2, 3)))


def test_preprocess_modes():
    rgb = np.array([[[[1.0, 0.5, 0.0]]]], np.float32)
    np.testing.assert_allclose(preprocess('vgg16', rgb)[0, 0, 0], [-103.939, 127.5 - 116.779, 255 - 123.68],
                               rtol=1e-6)
    np.testing.assert_allclose(preprocess('mobilenet_v2', rgb)[0, 0, 0], [1.0, 0.0, -1.0])
    np.testing.assert_allclose(preprocess('resnet18', rgb)[0, 0, 0],
                               [(1 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, -0.406 / 0.225], rtol=1e-6)
