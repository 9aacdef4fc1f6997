"""Keras import: our features equal keras.applications' on the same input, for all three Keras file layouts.

Reference: the Keras models themselves (TensorFlow backend), built offline with random weights and random
BatchNorm statistics (so BN inference is really compared), at small odd / non-square sizes that exercise the
asymmetric 'same' and `correct_pad` paddings and the 'valid' strided 1x1 convs.
"""
import os
import subprocess
import sys

import h5py
import jax
import numpy as np
import pytest

from adapt.models import keras_import
from adapt.models.backbones import get_backbone, preprocess

keras = pytest.importorskip('keras')
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402  (writes the keras.applications .h5 layout)

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')  # Keras/TF on NumPy 2
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# backbone -> (Keras constructor kwargs, input (H, W), how the file is written)
CASES = {
    'vgg16': ('VGG16', {}, (70, 70), 'weights_h5'),
    'resnet50': ('ResNet50', {}, (67, 75), 'keras'),
    'mobilenet_v2': ('MobileNetV2', {'alpha': 0.35}, (72, 88), 'model_h5'),
}


def _randomise_batchnorm(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n),
                               rng.uniform(0.5, 2.0, n)])


def _text(name):
    return name.decode() if isinstance(name, bytes) else str(name)


def _write(model, path, layout):
    if layout == 'weights_h5':
        with h5py.File(path, 'w') as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    elif layout == 'keras2_weights_h5':  # what keras.applications downloads: Keras 2 names ('kernel:0', ...)
        _write(model, path, 'weights_h5')
        with h5py.File(path, 'r+') as f:
            for layer in map(_text, f.attrs['layer_names']):
                group, renamed = f[layer], []
                for name in map(_text, group.attrs['weight_names']):
                    new = name + ':0'
                    if 'depthwise' in layer:
                        new = new.replace('/kernel:0', '/depthwise_kernel:0')
                    group.move(name, new)
                    renamed.append(new.encode())
                group.attrs['weight_names'] = renamed
    else:
        model.save(path)


@pytest.mark.parametrize('backbone', list(CASES))
def test_features_match_keras(backbone, tmp_path):
    constructor, kwargs, size, layout = CASES[backbone]
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, constructor)(include_top=False, weights=None,
                                                      input_shape=(*size, 3), **kwargs)
    _randomise_batchnorm(model, rng)
    path = str(tmp_path / ('model.keras' if layout == 'keras' else 'model.h5'))
    _write(model, path, layout)

    variables, meta = keras_import.import_keras_backbone(path, backbone)
    keras_import.save_backbone_checkpoint(tmp_path / 'ckpt', variables, meta)
    restored = keras_import.load_backbone_checkpoint(tmp_path / 'ckpt')
    meta = keras_import.load_backbone_meta(tmp_path / 'ckpt')
    assert meta['backbone'] == backbone and meta['width'] == kwargs.get('alpha', 1.0)

    images = rng.uniform(0.0, 1.0, (2, *size, 3)).astype(np.float32)
    x = np.asarray(preprocess(backbone, images))
    taps = keras_import.KERAS_FEATURE_LAYERS[backbone]
    extractor = keras.Model(model.input, [model.get_layer(taps[k]).output for k in sorted(taps)])
    theirs = dict(zip(sorted(taps), extractor(x, training=False)))
    ours = jax.jit(get_backbone(backbone, width=meta['width']).apply)(restored, x)

    assert sorted(ours) == sorted(taps)
    for level in sorted(taps):
        expected = np.asarray(theirs[level])
        got = np.asarray(ours[level])
        assert got.shape == expected.shape, level
        scale = np.abs(expected).max()
        diff = np.abs(got - expected).max()
        err = diff / scale
        print(f'{backbone} {level} {got.shape}: max|diff| {diff:.2e}, max|keras| {scale:.3g}, ratio {err:.2e}')
        assert scale > 0 and err < 1e-4, (level, err)


@pytest.mark.parametrize('backbone', list(CASES))
def test_preprocess_matches_keras(backbone):
    images = np.random.default_rng(1).uniform(0.0, 1.0, (2, 5, 7, 3)).astype(np.float32)
    expected = getattr(keras.applications, backbone).preprocess_input(images * 255.0)
    np.testing.assert_allclose(np.asarray(preprocess(backbone, images)), expected, atol=1e-4)


def _cli(*args):
    return subprocess.run([sys.executable, '-m', 'experiments.import_weights', *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_cli_writes_checkpoint_and_rejects_wrong_architecture(tmp_path):
    model = keras.applications.MobileNetV2(include_top=True, weights=None, input_shape=(32, 32, 3), alpha=0.5)
    path = str(tmp_path / 'm.h5')
    _write(model, path, 'keras2_weights_h5')
    proc = _cli(f'--keras_file={path}', '--backbone=mobilenet_v2', f'--out={tmp_path / "ckpt"}')
    assert proc.returncode == 0, proc.stderr
    assert keras_import.load_backbone_meta(tmp_path / 'ckpt')['width'] == 0.5
    restored = keras_import.load_backbone_checkpoint(tmp_path / 'ckpt')
    np.testing.assert_array_equal(restored['params']['Conv_1']['kernel'], model.get_layer('Conv_1').get_weights()[0])
    depthwise = model.get_layer('block_5_depthwise').get_weights()[0]  # (3, 3, C, 1) -> (3, 3, 1, C)
    np.testing.assert_array_equal(restored['params']['block_5_depthwise']['kernel'][:, :, 0], depthwise[..., 0])
    with pytest.raises(ValueError, match='not a Keras resnet50'):
        keras_import.import_keras_backbone(path, 'resnet50')


def test_cli_bad_backbone_exits_2():
    proc = _cli('--keras_file=x.h5', '--backbone=resnet18', '--out=/tmp/unused')
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(n in lines[0] for n in keras_import.KERAS_BACKBONES), proc.stderr
