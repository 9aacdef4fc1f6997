"""SSD (Liu et al. 2016): conv heads on backbone levels plus extra stride-2 layers, one default-box set.

The model is pure: `SSD(...).apply(variables, images01, train)` returns raw head outputs
`{'cls_logits': [B, A, C'], 'box_codes': [B, A, 4]}`, with A anchors in the order of
`adapt.anchors.ssd_default_boxes` (levels in order, location-major, box types per location) and
`model.anchors(image_size)` giving those anchors. C' is num_classes + 1 with background at column 0 for
the softmax head (SSD), num_classes for the sigmoid head (the RetinaNet-style focal variant).
`postprocess` turns outputs into fixed-size detections (decode, per-class NMS).
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adapt.anchors import ssd_default_boxes
from adapt.boxes import clip_boxes, decode_boxes
from adapt.models.backbones import BACKBONES, preprocess
from adapt.models.layers import conv_init
from adapt.nms import multiclass_non_max_suppression

HEADS = ('softmax', 'sigmoid')
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # the box coder's scale factors (torchvision SSD / Faster R-CNN)


def level_ratios(aspect_ratios, num_levels):
    """Per-level aspect ratios as `ssd_default_boxes` resolves them (None: SSD300's pattern)."""
    if aspect_ratios is None:
        return [(2.0,) if k == 0 or k >= num_levels - 2 else (2.0, 3.0) for k in range(num_levels)]
    if all(isinstance(r, (int, float)) for r in aspect_ratios):
        return [tuple(aspect_ratios)] * num_levels
    if len(aspect_ratios) != num_levels:
        raise ValueError(f'aspect_ratios: expected one entry per level ({num_levels}), got {len(aspect_ratios)}')
    return [tuple(r) for r in aspect_ratios]


class SSDFeatures(nn.Module):
    """Backbone levels, then extra layers (1x1 conv to c/2, 3x3 stride-2 conv to c, each + BN + ReLU)."""
    backbone: str
    levels: Sequence[str]
    extra_channels: Sequence[int]
    width: float = 1.0
    frozen_bn: bool = False
    axis_name: Optional[str] = None
    dtype: Any = jnp.float32
    backbone_kwargs: Any = None

    @nn.compact
    def __call__(self, images, train=False):
        bn = dict(frozen_bn=self.frozen_bn, axis_name=self.axis_name, dtype=self.dtype)
        x = preprocess(self.backbone, images).astype(self.dtype)  # validates the backbone name
        net = BACKBONES[self.backbone](width=self.width, name='backbone', **bn, **dict(self.backbone_kwargs or {}))
        feats = net(x, train=train)
        maps = [feats[name] for name in self.levels]
        x = maps[-1]
        for i, channels in enumerate(self.extra_channels):
            for j, (c, k, s) in enumerate(((max(channels // 2, 8), 1, 1), (channels, 3, 2))):
                x = nn.Conv(c, (k, k), strides=(s, s), use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                            name=f'extra{i}_conv{j}')(x)
                x = nn.BatchNorm(use_running_average=self.frozen_bn or not train, momentum=0.99, epsilon=1e-5,
                                 axis_name=self.axis_name, dtype=self.dtype, name=f'extra{i}_bn{j}')(x)
                x = nn.relu(x)
            maps.append(x)
        return maps


class SSD(nn.Module):
    """SSD detector.

    Attributes:
      num_classes: dataset classes (background not counted).
      backbone / width / backbone_kwargs: see adapt.models.backbones (e.g. {'batch_norm': True} for VGG16).
      levels: backbone feature maps that get heads ('C3' = stride 8, ...); extra_channels adds one
        stride-2 level per entry after the last of them.
      aspect_ratios, min_scale, max_scale: the default boxes (see `ssd_default_boxes`).
      head: 'softmax' (SSD, background column 0) or 'sigmoid' (focal loss; biases start at prior_prob).
      head_convs: 3x3 conv + ReLU layers before each level's predictors (0 = SSD's single conv).
      frozen_bn, axis_name ('data' in the data-parallel train step), dtype: as the backbones.
    """
    num_classes: int
    backbone: str = 'resnet18'
    width: float = 1.0
    levels: Sequence[str] = ('C3', 'C4', 'C5')
    extra_channels: Sequence[int] = (256, 256)
    aspect_ratios: Any = None
    min_scale: float = 0.2
    max_scale: float = 0.9
    head: str = 'softmax'
    head_convs: int = 0
    prior_prob: float = 0.01
    frozen_bn: bool = False
    axis_name: Optional[str] = None
    dtype: Any = jnp.float32
    backbone_kwargs: Any = None

    @property
    def num_outputs(self):
        """Classification outputs per anchor."""
        return self.num_classes + (1 if self.head == 'softmax' else 0)

    def feature_module(self, **kwargs):
        """The backbone + extra layers part; kwargs: `name` inside `__call__`, `parent=None` outside."""
        return SSDFeatures(self.backbone, tuple(self.levels), tuple(self.extra_channels), self.width,
                           self.frozen_bn, self.axis_name, self.dtype, self.backbone_kwargs, **kwargs)

    def feature_sizes(self, image_size):
        """(height, width) of every level for images of `image_size` (h, w), from shapes only."""
        dummy = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
        maps, _ = jax.eval_shape(self.feature_module(parent=None).init_with_output, jax.random.key(0), dummy)
        return [tuple(m.shape[1:3]) for m in maps]

    def anchors_for(self, sizes):
        return ssd_default_boxes(sizes, self.min_scale, self.max_scale, self.aspect_ratios)

    def anchors(self, image_size):
        """Default boxes [A, 4] (NumPy, normalised yxyx) matching the outputs for `image_size` images."""
        return self.anchors_for(self.feature_sizes(image_size))

    @nn.compact
    def __call__(self, images, train=False):
        if self.head not in HEADS:
            raise ValueError(f'head {self.head!r}; valid choices: {", ".join(HEADS)}')
        maps = self.feature_module(name='features')(images, train)
        ratios = level_ratios(self.aspect_ratios, len(maps))
        bias = -np.log((1 - self.prior_prob) / self.prior_prob) if self.head == 'sigmoid' else 0.0
        cls_out, box_out = [], []
        for k, (x, r) in enumerate(zip(maps, ratios)):
            boxes_here = 2 + 2 * len(r)
            for j in range(self.head_convs):
                x = nn.relu(nn.Conv(x.shape[-1], (3, 3), kernel_init=conv_init, dtype=self.dtype,
                                    name=f'head{k}_conv{j}')(x))
            c = nn.Conv(boxes_here * self.num_outputs, (3, 3), dtype=self.dtype, name=f'cls{k}',
                        kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.constant(bias))(x)
            b = nn.Conv(boxes_here * 4, (3, 3), dtype=self.dtype, name=f'box{k}',
                        kernel_init=nn.initializers.normal(0.01))(x)
            cls_out.append(c.reshape(c.shape[0], -1, self.num_outputs))
            box_out.append(b.reshape(b.shape[0], -1, 4))
        return {'cls_logits': jnp.concatenate(cls_out, 1).astype(jnp.float32),
                'box_codes': jnp.concatenate(box_out, 1).astype(jnp.float32)}


def class_scores(cls_logits, head):
    """Per-class probabilities [..., A, num_classes] (the softmax background column dropped)."""
    if head == 'softmax':
        return jax.nn.softmax(cls_logits, axis=-1)[..., 1:]
    return jax.nn.sigmoid(cls_logits)


def postprocess(outputs, anchors, head='softmax', score_threshold=0.01, iou_threshold=0.45, max_detections=100,
                pre_nms_top_k=400, box_weights=BOX_WEIGHTS):
    """Batched outputs -> `adapt.nms.Detections` with [B, max_detections] boxes (clipped yxyx), scores,
    0-based classes and num_valid [B]: decode against the anchors, then per-class NMS (torchvision SSD's
    defaults: score 0.01, IoU 0.45; top `pre_nms_top_k` boxes per class)."""
    boxes = clip_boxes(decode_boxes(outputs['box_codes'], anchors, box_weights))
    scores = class_scores(outputs['cls_logits'], head)
    nms = lambda b, s: multiclass_non_max_suppression(  # noqa: E731
        b, s, iou_threshold, max_detections, score_threshold, pre_nms_top_k=pre_nms_top_k)
    return jax.vmap(nms)(boxes, scores)
