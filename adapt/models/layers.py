"""Shared pieces of the backbones: channel rounding, Keras-exact padding, and the conv / BatchNorm factory.

Every backbone subclasses `Backbone`, so width, BatchNorm behaviour (cross-device statistics, frozen mode)
and compute dtype are configured the same way everywhere. Layers are created with explicit, flat names
(the `keras.applications` layer names where a Keras model exists) so pretrained weights map 1:1 and
parameter groups can be chosen by name pattern.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# Level name -> stride w.r.t. the input. `C{k}` is the deepest activation at stride 2**k (same for all).
FEATURE_STRIDES = {'C1': 2, 'C2': 4, 'C3': 8, 'C4': 16, 'C5': 32}

# He-normal on fan-out (the torchvision init for these architectures), for training from scratch.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def make_divisible(value, divisor=8, min_value=None):
    """Round a channel count to a multiple of `divisor`, never dropping below 90 % of it.

    Identical to keras.applications' `_make_divisible`, so width 1.0 keeps every canonical channel count.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def zero_pad(x, pads):
    """Zero-pad an NHWC tensor by `((top, bottom), (left, right))` (Keras ZeroPadding2D)."""
    return jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))


def correct_pad(x, kernel_size):
    """The padding keras.applications puts before a stride-2 'valid' conv (imagenet_utils.correct_pad).

    Even sizes get one pixel less on the top/left, odd sizes are padded symmetrically; computed from the
    static input shape, as Keras does for a model built with a fixed input size.
    """
    half = kernel_size // 2
    return tuple((half - (1 - size % 2), half) for size in x.shape[1:3])


def max_pool(x, window, stride):
    """Max pooling with 'valid' padding (Keras MaxPooling2D default)."""
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding='VALID')


class Backbone(nn.Module):
    """Fields and layer factories common to all backbones.

    Attributes:
      width: multiplier on every channel count (1.0 = the published / Keras architecture).
      frozen_bn: if True, BatchNorm always uses its running statistics and never updates them (fine-tuning
        with small batches); `train` then only affects other layers.
      axis_name: mesh axis over which BatchNorm batch statistics are averaged in training ('data' for the
        data-parallel step under jax.shard_map; None on one device).
      bn_momentum: running-average decay (Keras / flax convention: new = m * old + (1 - m) * batch).
      bn_epsilon: BatchNorm epsilon (per architecture, to match the Keras weights).
      dtype: computation dtype (bfloat16 for mixed precision); parameters stay float32.
    """
    width: float = 1.0
    frozen_bn: bool = False
    axis_name: str | None = None
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-5
    dtype: Any = jnp.float32

    def channels(self, base):
        """`base` channels scaled by the width multiplier."""
        return make_divisible(base * self.width)

    def conv(self, features, kernel_size, name, strides=1, padding='SAME', use_bias=True, groups=1):
        return nn.Conv(features, (kernel_size, kernel_size), strides=(strides, strides), padding=padding,
                       use_bias=use_bias, feature_group_count=groups, kernel_init=conv_init,
                       dtype=self.dtype, name=name)

    def norm(self, train, name):
        return nn.BatchNorm(use_running_average=self.frozen_bn or not train, momentum=self.bn_momentum,
                            epsilon=self.bn_epsilon, axis_name=self.axis_name, dtype=self.dtype, name=name)
