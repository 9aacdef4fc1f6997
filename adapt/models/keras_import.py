"""Import keras.applications ImageNet weights (VGG16, ResNet50, MobileNetV2) into our backbones.

Our width-1.0 backbones (any width for MobileNetV2, whose Keras `alpha` is our `width`) have exactly the Keras
layers under the Keras layer names, so the import is a name-by-name copy with two layout changes: BatchNorm
gamma/beta/moving_mean/moving_variance -> scale/bias/mean/var, and a depthwise kernel (kh, kw, C, 1) ->
flax's grouped-conv kernel (kh, kw, 1, C). Imported weights expect `backbones.preprocess(name, images01)`.

Readable files: a full model saved as `.keras` (read through Keras), or an HDF5 `.h5` file in the legacy
Keras layout, either a full model or the weights-only files that keras.applications downloads
(e.g. resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5; read with h5py, no Keras needed).
The result is saved as an orbax checkpoint of {'params', 'batch_stats'} that training starts from.
"""
import os

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from adapt.models.backbones import get_backbone

KERAS_BACKBONES = ('vgg16', 'resnet50', 'mobilenet_v2')
# Widths a Keras file can have (MobileNetV2's alpha); the one whose shapes match the file is chosen.
KERAS_WIDTHS = {'vgg16': (1.0,), 'resnet50': (1.0,), 'mobilenet_v2': (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)}
# Keras layers whose outputs are our feature levels (documentation, and the taps the equality test reads).
KERAS_FEATURE_LAYERS = {
    'vgg16': {'C1': 'block2_conv2', 'C2': 'block3_conv3', 'C3': 'block4_conv3', 'C4': 'block5_conv3',
              'C5': 'block5_pool'},
    'resnet50': {'C1': 'conv1_relu', 'C2': 'conv2_block3_out', 'C3': 'conv3_block4_out',
                 'C4': 'conv4_block6_out', 'C5': 'conv5_block3_out'},
    'mobilenet_v2': {'C1': 'block_1_expand_relu', 'C2': 'block_3_expand_relu', 'C3': 'block_6_expand_relu',
                     'C4': 'block_13_expand_relu', 'C5': 'out_relu'},
}
# Classifier layers of include_top=True files; not part of a backbone.
_HEAD_LAYERS = frozenset({'fc1', 'fc2', 'predictions'})
_BN_NAMES = {'scale': 'gamma', 'bias': 'beta', 'mean': 'moving_mean', 'var': 'moving_variance'}
_INPUT = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)


def _short(name):
    """'conv1_conv/kernel:0' -> 'kernel' (Keras 2 and 3 weight names)."""
    return name.split('/')[-1].split(':')[0]


def _text(name):
    return name.decode() if isinstance(name, bytes) else str(name)


def read_keras_weights(path):
    """{layer name: {weight name: array}} for every layer of a Keras file that has weights."""
    path = os.fspath(path)
    if path.endswith('.keras'):
        import keras  # heavy and only needed for this format
        model = keras.saving.load_model(path, compile=False)
        return {layer.name: {_short(w.path): np.asarray(w.numpy()) for w in layer.weights}
                for layer in model.layers if layer.weights}
    if not path.endswith(('.h5', '.hdf5')):
        raise ValueError(f'{path}: expected a .keras or a .h5 Keras file')
    with h5py.File(path, 'r') as f:
        root = f['model_weights'] if 'model_weights' in f else f
        weights = {}
        for layer in map(_text, root.attrs['layer_names']):
            names = list(map(_text, root[layer].attrs['weight_names']))
            if names:
                weights[layer] = {_short(n): np.asarray(root[layer][n]) for n in names}
        return weights


def _convert_layer(ours, theirs):
    """Our variables of one layer ({'params': ..., 'batch_stats': ...}) from its Keras weights, or None if
    they do not fit (missing or extra weights, other shapes)."""
    theirs = dict(theirs)
    if 'depthwise_kernel' in theirs:  # Keras 2 name
        theirs['kernel'] = theirs.pop('depthwise_kernel')
    names = _BN_NAMES if 'scale' in ours['params'] else {}
    converted = {}
    for collection, leaves in ours.items():
        converted[collection] = {}
        for key, target in leaves.items():
            array = theirs.pop(names.get(key, key), None)
            shape = target.shape
            if array is not None and len(shape) == 4 and shape[2] == 1 and array.shape == (*shape[:2], shape[3], 1):
                array = array.reshape(shape)  # depthwise (kh, kw, C, 1) -> grouped conv (kh, kw, 1, C)
            if array is None or array.shape != shape:
                return None
            converted[collection][key] = array
    return None if theirs else converted


def keras_to_variables(weights, backbone, width):
    """Our backbone variables at `width` from Keras weights; raises ValueError naming the mismatches."""
    target = jax.eval_shape(get_backbone(backbone, width=width).init, jax.random.key(0), _INPUT)
    stats = target.get('batch_stats', {})
    variables, problems = {'params': {}, 'batch_stats': {}}, []
    for layer, params in target['params'].items():
        ours = {'params': params, 'batch_stats': stats.get(layer, {})}
        converted = _convert_layer(ours, weights[layer]) if layer in weights else None
        if converted is None:
            got = {k: v.shape for k, v in weights.get(layer, {}).items()}
            problems.append(f'{layer}: Keras has {got or "nothing"}')
            continue
        for collection, leaves in converted.items():
            if leaves:
                variables[collection][layer] = {k: np.asarray(v, np.float32) for k, v in leaves.items()}
    extra = sorted(set(weights) - set(target['params']) - _HEAD_LAYERS)
    if extra:
        problems.append(f'Keras layers with no counterpart: {", ".join(extra[:5])}')
    if problems:
        raise ValueError(f'{backbone} (width {width}) does not match the Keras weights: '
                         + '; '.join(problems[:5]) + (' ...' if len(problems) > 5 else ''))
    if not variables['batch_stats']:
        del variables['batch_stats']
    return variables


def import_keras_backbone(keras_file, backbone):
    """(variables, meta) for `backbone` from a keras.applications file; the width is inferred from shapes."""
    if backbone not in KERAS_BACKBONES:
        raise ValueError(f'no Keras import for {backbone!r}; valid choices: {", ".join(KERAS_BACKBONES)}')
    weights = read_keras_weights(keras_file)
    errors = []
    for width in KERAS_WIDTHS[backbone]:
        try:
            variables = keras_to_variables(weights, backbone, width)
        except ValueError as e:
            errors.append(str(e))
            continue
        return variables, {'backbone': backbone, 'width': width, 'source': os.path.basename(keras_file)}
    raise ValueError(f'{keras_file} is not a Keras {backbone}: {errors[-1]}')


def save_backbone_checkpoint(directory, variables, meta):
    """Writes `variables` as an orbax checkpoint at `directory` (replaced if present), `meta` as its metadata."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(directory), variables, custom_metadata=meta, force=True)
    checkpointer.wait_until_finished()


def load_backbone_checkpoint(directory):
    """Backbone variables {'params': ..., 'batch_stats': ...} (NumPy arrays) from `save_backbone_checkpoint`."""
    return ocp.StandardCheckpointer().restore(os.path.abspath(directory))


def load_backbone_meta(directory):
    """{'backbone', 'width', 'source'} of a checkpoint written by `save_backbone_checkpoint`."""
    return dict(ocp.StandardCheckpointer().metadata(os.path.abspath(directory)).custom_metadata)
