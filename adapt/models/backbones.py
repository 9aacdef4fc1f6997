"""Backbone registry and input preprocessing.

Every backbone is a flax linen Module called as `model.apply(variables, images, train=...)` on NHWC images
of any size (>= 32 pixels) and returns a dict of feature maps `{'C1': ..., ..., 'C5': ...}`, where `C{k}` is
the deepest activation at stride 2**k (`FEATURE_STRIDES`); each module's docstring names the layer behind
each level. Shared keyword arguments (see `layers.Backbone`): width, frozen_bn, axis_name ('data' when the
step runs under jax.shard_map, None otherwise), bn_momentum, bn_epsilon, dtype.

    model = get_backbone('resnet18', width=0.25)
    variables = model.init(key, preprocess('resnet18', images01))
"""
import functools

import jax.numpy as jnp

from adapt.models.layers import FEATURE_STRIDES  # noqa: F401  (re-exported for the detectors)
from adapt.models.mobilenet import MobileNetV2
from adapt.models.resnet import ResNet
from adapt.models.vgg import VGG16

BACKBONES = {
    'vgg16': VGG16,
    'resnet18': functools.partial(ResNet, stage_sizes=(2, 2, 2, 2)),
    'resnet34': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3)),
    'resnet50': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), bottleneck=True, use_bias=True),
    'mobilenet_v2': MobileNetV2,
}

# What each backbone's inputs look like (the keras.applications `preprocess_input` modes):
#   caffe: RGB -> BGR, 0..255, minus the ImageNet mean per channel, no scaling (Keras VGG16 / ResNet50);
#   tf:    scaled to [-1, 1] (Keras MobileNetV2);
#   torch: [0, 1] standardised by the ImageNet mean / std (torchvision convention; no Keras weights).
PREPROCESS_MODES = {'vgg16': 'caffe', 'resnet50': 'caffe', 'mobilenet_v2': 'tf',
                    'resnet18': 'torch', 'resnet34': 'torch'}
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _check_name(name):
    if name not in BACKBONES:
        raise ValueError(f'unknown backbone {name!r}; valid choices: {", ".join(BACKBONES)}')


def get_backbone(name, **kwargs):
    """The backbone module `name` (a key of BACKBONES) with `kwargs` as module attributes."""
    _check_name(name)
    return BACKBONES[name](**kwargs)


def preprocess(name, images01):
    """Maps float RGB images in [0, 1] (the pipeline's format) to what backbone `name` was trained on."""
    _check_name(name)
    x = jnp.asarray(images01, jnp.float32)
    mode = PREPROCESS_MODES[name]
    if mode == 'caffe':
        return x[..., ::-1] * 255.0 - jnp.asarray(_CAFFE_MEAN_BGR)
    if mode == 'tf':
        return x * 2.0 - 1.0
    return (x - jnp.asarray(_TORCH_MEAN)) / jnp.asarray(_TORCH_STD)
