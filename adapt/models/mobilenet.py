"""MobileNetV2 (Sandler et al. 2018): inverted residual blocks with linear bottlenecks and ReLU6.

Layout, channel rounding, padding and names are keras.applications.MobileNetV2's (width = its `alpha`;
BatchNorm epsilon 1e-3), so Keras weights map 1:1. Keras pads asymmetrically before stride-2 layers: the
stem conv uses 'same' padding (TF/XLA 'SAME' puts the extra pixel bottom/right, as flax does) and the
stride-2 depthwise convs use explicit `correct_pad` zero padding.
"""
import flax.linen as nn
import jax.numpy as jnp

from adapt.models.layers import Backbone, correct_pad, make_divisible, zero_pad

# (expansion, output channels, repeats, first stride) per stage, as in the paper's Table 2.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))


def relu6(x):
    return jnp.clip(x, 0.0, 6.0)


class MobileNetV2(Backbone):
    """MobileNetV2 feature extractor.

    Features: C_k is the deepest activation at stride 2**k, i.e. the expansion (Keras `block_{i}_expand_relu`)
    entering each stride-2 block: C1 = block_1 (stride 2), C2 = block_3 (4), C3 = block_6 (8),
    C4 = block_13 (16; the SSDLite tap), C5 = out_relu (32, the final 1x1 conv).
    """
    bn_epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x, train=False):
        x = self.conv(make_divisible(32 * self.width), 3, 'Conv1', strides=2, use_bias=False)(x)
        x = relu6(self.norm(train, 'bn_Conv1')(x))
        features, level, block_id = {}, 1, 0
        for expansion, base, repeats, first_stride in STAGES:
            filters = make_divisible(int(base * self.width))
            for i in range(repeats):
                stride = first_stride if i == 0 else 1
                x, expanded = self._inverted_residual(x, expansion, filters, stride, train, block_id)
                if stride == 2:
                    features[f'C{level}'] = expanded
                    level += 1
                block_id += 1
        last = make_divisible(1280 * self.width) if self.width > 1.0 else 1280
        x = self.conv(last, 1, 'Conv_1', use_bias=False)(x)
        features[f'C{level}'] = relu6(self.norm(train, 'Conv_1_bn')(x))
        return features

    def _inverted_residual(self, inputs, expansion, filters, stride, train, block_id):
        """Returns (block output, expanded activation that the depthwise conv reads)."""
        prefix = f'block_{block_id}_' if block_id else 'expanded_conv_'
        channels = inputs.shape[-1]
        x = inputs
        if block_id:
            x = self.conv(expansion * channels, 1, f'{prefix}expand', use_bias=False)(x)
            x = relu6(self.norm(train, f'{prefix}expand_BN')(x))
        expanded = x
        if stride == 2:
            x = zero_pad(x, correct_pad(x, 3))
        x = self.conv(x.shape[-1], 3, f'{prefix}depthwise', strides=stride,
                      padding='SAME' if stride == 1 else 'VALID', use_bias=False, groups=x.shape[-1])(x)
        x = relu6(self.norm(train, f'{prefix}depthwise_BN')(x))
        x = self.conv(filters, 1, f'{prefix}project', use_bias=False)(x)
        x = self.norm(train, f'{prefix}project_BN')(x)
        if channels == filters and stride == 1:
            x = inputs + x
        return x, expanded
