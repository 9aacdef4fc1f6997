"""ResNet v1 (He et al. 2016): ResNet-18/34 with basic blocks, ResNet-50 with bottleneck blocks.

The bottleneck layout is keras.applications.ResNet50's (stride on the first 1x1 conv, biases on every conv,
BatchNorm epsilon 1.001e-5, explicit zero padding in the stem), with its layer names, so Keras weights
map 1:1 at width 1.0. Basic blocks follow torchvision (stride on the first 3x3 conv, symmetric padding,
no conv biases); they share the stem and the names.
"""
from collections.abc import Sequence

import flax.linen as nn

from adapt.models.layers import Backbone, max_pool, zero_pad


class ResNet(Backbone):
    """ResNet feature extractor.

    Features: C1 = conv1_relu (stride 2), C2..C5 = output of the last block of stage conv2..conv5
    (strides 4, 8, 16, 32; Keras names conv2_block3_out ... conv5_block3_out for ResNet-50).

    Attributes:
      stage_sizes: blocks per stage (conv2..conv5).
      bottleneck: bottleneck blocks (x4 expansion) instead of basic blocks.
      use_bias: biases on the convs (True in Keras ResNet50, redundant before BatchNorm otherwise).
    """
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    use_bias: bool = False
    bn_epsilon: float = 1.001e-5

    @nn.compact
    def __call__(self, x, train=False):
        x = self.conv(self.channels(64), 7, 'conv1_conv', strides=2, padding=((3, 3), (3, 3)),
                      use_bias=self.use_bias)(x)
        x = nn.relu(self.norm(train, 'conv1_bn')(x))
        features = {'C1': x}
        x = max_pool(zero_pad(x, ((1, 1), (1, 1))), 3, 2)  # zeros are safe after the ReLU
        block_fn = self._bottleneck if self.bottleneck else self._basic
        for stage, blocks in enumerate(self.stage_sizes):
            filters = self.channels(64 * 2 ** stage)
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = block_fn(x, filters, stride, train, f'conv{stage + 2}_block{block + 1}')
            features[f'C{stage + 2}'] = x
        return features

    def _shortcut(self, x, out_channels, stride, train, name):
        """Identity, or a strided 1x1 conv + BatchNorm where the shape changes."""
        if stride == 1 and x.shape[-1] == out_channels:
            return x
        x = self.conv(out_channels, 1, f'{name}_0_conv', strides=stride, padding='VALID',
                      use_bias=self.use_bias)(x)
        return self.norm(train, f'{name}_0_bn')(x)

    def _basic(self, x, filters, stride, train, name):
        shortcut = self._shortcut(x, filters, stride, train, name)
        y = self.conv(filters, 3, f'{name}_1_conv', strides=stride, padding=((1, 1), (1, 1)),
                      use_bias=self.use_bias)(x)
        y = nn.relu(self.norm(train, f'{name}_1_bn')(y))
        y = self.conv(filters, 3, f'{name}_2_conv', use_bias=self.use_bias)(y)
        y = self.norm(train, f'{name}_2_bn')(y)
        return nn.relu(shortcut + y)

    def _bottleneck(self, x, filters, stride, train, name):
        shortcut = self._shortcut(x, 4 * filters, stride, train, name)
        y = self.conv(filters, 1, f'{name}_1_conv', strides=stride, padding='VALID', use_bias=self.use_bias)(x)
        y = nn.relu(self.norm(train, f'{name}_1_bn')(y))
        y = self.conv(filters, 3, f'{name}_2_conv', use_bias=self.use_bias)(y)
        y = nn.relu(self.norm(train, f'{name}_2_bn')(y))
        y = self.conv(4 * filters, 1, f'{name}_3_conv', use_bias=self.use_bias)(y)
        y = self.norm(train, f'{name}_3_bn')(y)
        return nn.relu(shortcut + y)
