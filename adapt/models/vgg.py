"""VGG-16 (Simonyan & Zisserman 2015; the lectures' diagram): 2-2-3-3-3 conv3x3 blocks with max-pools.

At width 1.0 without BatchNorm the layers and names are those of keras.applications.VGG16 (include_top=False).
"""
import flax.linen as nn

from adapt.models.layers import Backbone, max_pool

STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))  # (convs, channels) per block


class VGG16(Backbone):
    """VGG-16 feature extractor.

    Features: C1 = block2_conv2 (stride 2), C2 = block3_conv3 (4), C3 = block4_conv3 (8; SSD's conv4_3),
    C4 = block5_conv3 (16), C5 = block5_pool (32).

    Attributes:
      batch_norm: add BatchNorm after every conv (the VGG-16-BN variant; trains from scratch far more
        easily, but has no Keras counterpart).
    """
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train=False):
        features = {}
        for block, (convs, base) in enumerate(STAGES, start=1):
            for i in range(1, convs + 1):
                name = f'block{block}_conv{i}'
                x = self.conv(self.channels(base), 3, name, use_bias=not self.batch_norm)(x)
                if self.batch_norm:
                    x = self.norm(train, f'{name}_bn')(x)
                x = nn.relu(x)
            if block > 1:
                features[f'C{block - 1}'] = x
            x = max_pool(x, 2, 2)
        features['C5'] = x
        return features
