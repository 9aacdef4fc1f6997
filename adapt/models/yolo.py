"""YOLO (v2/v3 style): a grid of cells per level, a few box priors per cell, objectness x class scores.

The model is pure: `YOLO(...).apply(variables, images01, train)` returns raw outputs per prediction
(levels in order, cells location-major, priors per cell: `adapt.anchors`' order)
  'objectness' [B, A], 'class_logits' [B, A, C], 'box_codes' [B, A, 4] = (t_y, t_x, t_h, t_w),
  'cls_logits' [B, A, C]: the logit of the detection score sigmoid(objectness) * sigmoid(class logit),
so the generic readers of a sigmoid family (instances, entropy, LwF's distillation) see the score.
A box is YOLOv2's: centre (cell + sigmoid(t_yx)) / S, size prior * exp(t_hw). That is the Faster R-CNN
coder with unit weights against the prior box at the cell centre (offset (sigmoid(t) - 0.5) / (S x prior),
log-scale t_hw), so decoding is `adapt.boxes.decode_boxes` (its clamp bounds the exponent; see
adapt.models.yolo_grid) and post-processing is `adapt.postprocess.decode_and_nms`.

Network: the backbone levels (adapt.models.features without extra layers: the backbone sits at
'features/backbone' as in SSD), a YOLOv3 / FPN top-down neck (per level, deepest first: 1x1 lateral conv,
concatenated with the deeper level's output upsampled x2 (nearest, no transposed conv), 3x3 conv; each
conv + BatchNorm + leaky ReLU 0.1), and a 1x1 predictor per level. Instance features are the neck maps the
predictors read ('head_maps'), at the best predictions' cells (adapt.models.dense).

Priors: `config.yolo.model.anchors`, one list of normalised (width, height) pairs per level. Left None,
the trainer derives them from the source training boxes (YOLOv2's k-means, `adapt.priors`, sorted by area,
the smallest to the finest level) and run.json stores them (`adapt.models.families`).

The loss: adapt.models.yolo_loss; the family behind the detector interface: adapt.models.yolo_detector.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adapt.models.features import BackboneModel
from adapt.models.layers import conv_init


class YOLO(BackboneModel):
    """YOLO network (its feature module: the backbone levels, no extra levels).

    Attributes (besides adapt.models.features.BackboneModel's):
      priors_per_level: predictions per cell of each level (the number of its priors).
      levels: backbone maps that get a head.
      neck_channels: channels of the neck and of the maps the predictors read.
      prior_prob: objectness probability the predictors start at (bias init; RetinaNet's 0.01).
    """
    priors_per_level: Sequence[int] = (3, 3, 3)
    neck_channels: int = 64
    prior_prob: float = 0.01

    @property
    def neck_names(self):
        """Names of the neck maps, one per level: 'C3' -> 'P3' (FPN's naming)."""
        return tuple(f'P{name[1:]}' for name in self.levels)

    def _conv_bn(self, x, kernel, name, train):
        x = nn.Conv(self.neck_channels, (kernel, kernel), use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                    name=f'{name}_conv')(x)
        x = nn.BatchNorm(use_running_average=self.frozen_bn or not train, momentum=0.99, epsilon=1e-5,
                         axis_name=self.axis_name, dtype=self.dtype, name=f'{name}_bn')(x)
        return nn.leaky_relu(x, 0.1)

    @nn.compact
    def __call__(self, images, train=False):
        """-> (outputs, features {backbone level: map, neck map: map, 'head_maps': [the neck maps]})."""
        maps = self.feature_module(name='features')(images, train)
        necks, deeper = [None] * len(maps), None
        for k in reversed(range(len(maps))):
            x = self._conv_bn(maps[k], 1, f'lateral{k}', train)
            if deeper is not None:
                x = jnp.concatenate([x, upsample(deeper, x.shape[1:3])], axis=-1)
            necks[k] = deeper = self._conv_bn(x, 3, f'neck{k}', train)
        logit = float(np.log(self.prior_prob / (1 - self.prior_prob)))
        per_prior_bias = np.zeros(5 + self.num_classes, np.float32)
        per_prior_bias[0] = logit  # [objectness, t_y, t_x, t_h, t_w, classes...] per prior
        raw = []
        for k, (x, count) in enumerate(zip(necks, self.priors_per_level)):
            bias = np.tile(per_prior_bias, count)
            y = nn.Conv(count * (5 + self.num_classes), (1, 1), dtype=self.dtype, name=f'head{k}',
                        kernel_init=nn.initializers.normal(0.01),
                        bias_init=lambda key, shape, dtype, b=bias: jnp.asarray(b, dtype))(x)
            raw.append(y.reshape(y.shape[0], -1, 5 + self.num_classes))
        raw = jnp.concatenate(raw, axis=1).astype(jnp.float32)
        objectness, box_codes, class_logits = raw[..., 0], raw[..., 1:5], raw[..., 5:]
        outputs = {'objectness': objectness, 'class_logits': class_logits, 'box_codes': box_codes,
                   'cls_logits': score_logits(objectness, class_logits)}
        features = {name: m.astype(jnp.float32) for name, m in zip(self.levels, maps)}
        features.update({name: m.astype(jnp.float32) for name, m in zip(self.neck_names, necks)})
        features['head_maps'] = [features[name] for name in self.neck_names]
        return outputs, features


def upsample(x, size):
    """Nearest-neighbour x2 upsampling of [B, h, w, C] cropped to `size` (the finer level: 2h or 2h - 1)."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x[:, :size[0], :size[1]]


def score_logits(objectness, class_logits):
    """logit(sigmoid(o) sigmoid(c)) per class [..., C], stable: 1 - p = sigmoid(-o) + sigmoid(o) sigmoid(-c)."""
    o = objectness[..., None]
    log_p = jax.nn.log_sigmoid(o) + jax.nn.log_sigmoid(class_logits)
    log_not_p = jnp.logaddexp(jax.nn.log_sigmoid(-o), jax.nn.log_sigmoid(o) + jax.nn.log_sigmoid(-class_logits))
    return log_p - log_not_p


