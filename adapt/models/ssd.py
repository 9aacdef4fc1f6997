"""SSD (Liu et al. 2016): conv heads on backbone levels plus extra stride-2 layers, one default-box set.

The model is pure: `SSD(...).apply(variables, images01, train)` returns raw head outputs
`{'cls_logits': [B, A, C'], 'box_codes': [B, A, 4]}` and named features, with A anchors in the order of
`adapt.anchors.ssd_default_boxes` (levels in order, location-major, box types per location) and
`model.anchors(image_size)` giving those anchors. C' is num_classes + 1 with background at column 0 for
the softmax head (SSD), num_classes for the sigmoid head (the RetinaNet-style focal variant).

`SSDDetector` is the family behind the `adapt.models.detector` interface, built in two variants:
  ssd:       softmax head with a background column, cross-entropy with 3:1 hard-negative mining,
             matcher IoU 0.5 (every ground truth also keeps its best anchor);
  retinanet: sigmoid head (bias at prior 0.01), focal loss (alpha 0.25, gamma 2) on all anchors but an
             ignore band of IoU 0.4-0.5 (RetinaNet's matcher), normalised by the positives.
Instance features (for instance-level alignment) are the maps the class predictors read ('head_maps': each
level's map after its `head_convs`), read at the `instance_top_k` anchors of highest foreground score
(adapt.models.dense), so alignment acts on the features the heads see.
"""
import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from adapt.anchors import ssd_default_boxes
from adapt.losses.detection import ssd_loss
from adapt.matching import IGNORE_KEYS, assign_targets, near_ignored, negative_threshold
from adapt.models.dense import DENSE_SETTINGS, DenseDetector, class_scores, dense_settings, model_fields
from adapt.models.features import BackboneModel
from adapt.models.layers import conv_init
from adapt.postprocess import BOX_WEIGHTS, decode_and_nms, plain_decode_and_nms

HEADS = ('softmax', 'sigmoid')


def level_ratios(aspect_ratios, num_levels):
    """Per-level aspect ratios as `ssd_default_boxes` resolves them (None: SSD300's pattern)."""
    if aspect_ratios is None:
        return [(2.0,) if k == 0 or k >= num_levels - 2 else (2.0, 3.0) for k in range(num_levels)]
    if all(isinstance(r, (int, float)) for r in aspect_ratios):
        return [tuple(aspect_ratios)] * num_levels
    if len(aspect_ratios) != num_levels:
        raise ValueError(f'aspect_ratios: expected one entry per level ({num_levels}), got {len(aspect_ratios)}')
    return [tuple(r) for r in aspect_ratios]


class SSD(BackboneModel):
    """SSD detector.

    Attributes (besides adapt.models.features.BackboneModel's):
      levels: backbone feature maps that get heads ('C3' = stride 8, ...); extra_channels adds one
        stride-2 level per entry after the last of them.
      aspect_ratios, min_scale, max_scale: the default boxes (see `ssd_default_boxes`).
      head: 'softmax' (SSD, background column 0) or 'sigmoid' (focal loss; biases start at prior_prob).
      head_convs: 3x3 conv + ReLU layers before each level's predictors (0 = SSD's single conv).
    """
    extra_channels: Sequence[int] = (256, 256)
    aspect_ratios: Any = None
    min_scale: float = 0.2
    max_scale: float = 0.9
    head: str = 'softmax'
    head_convs: int = 0
    prior_prob: float = 0.01

    @property
    def level_names(self):
        """Names of the feature maps that get heads: the backbone levels, then 'extra0', 'extra1', ..."""
        return tuple(self.levels) + tuple(f'extra{i}' for i in range(len(self.extra_channels)))

    @property
    def boxes_per_location(self):
        """Default boxes at each location of each level (two squares and two per aspect ratio)."""
        return tuple(2 + 2 * len(r) for r in level_ratios(self.aspect_ratios, len(self.level_names)))

    @property
    def num_outputs(self):
        """Classification outputs per anchor."""
        return self.num_classes + (1 if self.head == 'softmax' else 0)

    def feature_module(self, **kwargs):
        """The backbone + extra layers part; kwargs: `name` inside `__call__`, `parent=None` outside."""
        return self.backbone_features(extra_channels=tuple(self.extra_channels), **kwargs)

    def anchors_for(self, sizes):
        return ssd_default_boxes(sizes, self.min_scale, self.max_scale, self.aspect_ratios)

    def anchors(self, image_size):
        """Default boxes [A, 4] (NumPy, normalised yxyx) matching the outputs for `image_size` images."""
        return self.anchors_for(self.feature_sizes(image_size))

    @nn.compact
    def __call__(self, images, train=False):
        """-> (outputs {'cls_logits', 'box_codes'}, features {level name: map, 'head_maps': [the map each level's
        predictors read]})."""
        if self.head not in HEADS:
            raise ValueError(f'head {self.head!r}; valid choices: {", ".join(HEADS)}')
        maps = self.feature_module(name='features')(images, train)
        bias = -np.log((1 - self.prior_prob) / self.prior_prob) if self.head == 'sigmoid' else 0.0
        cls_out, box_out, head_maps = [], [], []
        for k, (x, boxes_here) in enumerate(zip(maps, self.boxes_per_location)):
            for j in range(self.head_convs):
                x = nn.relu(nn.Conv(x.shape[-1], (3, 3), kernel_init=conv_init, dtype=self.dtype,
                                    name=f'head{k}_conv{j}')(x))
            head_maps.append(x.astype(jnp.float32))
            c = nn.Conv(boxes_here * self.num_outputs, (3, 3), dtype=self.dtype, name=f'cls{k}',
                        kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.constant(bias))(x)
            b = nn.Conv(boxes_here * 4, (3, 3), dtype=self.dtype, name=f'box{k}',
                        kernel_init=nn.initializers.normal(0.01))(x)
            cls_out.append(c.reshape(c.shape[0], -1, self.num_outputs))
            box_out.append(b.reshape(b.shape[0], -1, 4))
        outputs = {'cls_logits': jnp.concatenate(cls_out, 1).astype(jnp.float32),
                   'box_codes': jnp.concatenate(box_out, 1).astype(jnp.float32)}
        features = {name: m.astype(jnp.float32) for name, m in zip(self.level_names, maps)}
        features['head_maps'] = head_maps
        return outputs, features


def postprocess(outputs, anchors, head='softmax', score_threshold=0.01, iou_threshold=0.45, max_detections=100,
                pre_nms_top_k=400, box_weights=BOX_WEIGHTS):
    """Batched outputs -> `adapt.nms.Detections` with [B, max_detections] boxes (clipped yxyx), scores,
    0-based classes and num_valid [B]: the top `pre_nms_top_k` anchors per class decoded, then exact
    per-class greedy NMS (torchvision SSD's defaults: score 0.01, IoU 0.45); see adapt.postprocess."""
    return decode_and_nms(outputs['box_codes'], anchors, class_scores(outputs['cls_logits'], head),
                          box_weights=box_weights, score_threshold=score_threshold, iou_threshold=iou_threshold,
                          max_detections=max_detections, pre_nms_top_k=pre_nms_top_k)


# ------------------------------------------------------------------------------------- the family
VARIANTS = {
    'ssd': dict(head='softmax', classification='softmax', matched_threshold=0.5, unmatched_threshold=0.5),
    'retinanet': dict(head='sigmoid', classification='focal', matched_threshold=0.5, unmatched_threshold=0.4),
}


@dataclasses.dataclass(frozen=True, eq=False)
class SSDDetector(DenseDetector):
    """SSD / RetinaNet behind the detector interface (adapt.models.dense); `anchors` [A, 4] for `image_size`."""
    anchors: np.ndarray
    matcher: dict
    loss_settings: dict
    postprocess_settings: dict

    @property
    def score_kind(self):
        return self.model.head

    @property
    def feature_levels(self):
        return self.model.level_names

    @property
    def head_levels(self):
        return tuple(zip(self.model.level_names, self.model.feature_sizes(self.image_size),
                         self.model.boxes_per_location))

    def positives(self, batch):
        return self.targets(batch)['positive']

    def targets(self, batch):
        """assign_targets over a batch {'boxes' [B, M, 4], 'labels', 'mask'} -> dict of [B, A, ...]; with
        ignore regions (a pseudo-labelled batch), the negatives near them are not negatives."""
        anchors = jnp.asarray(self.anchors)
        assign = lambda b, l, m: assign_targets(anchors, b, l, m, weights=BOX_WEIGHTS, **self.matcher)  # noqa: E731
        targets = jax.vmap(assign)(batch['boxes'], batch['labels'], batch['mask'])
        if 'ignore_boxes' not in batch:
            return targets
        ignored = jax.vmap(lambda gt: near_ignored(anchors, gt, negative_threshold(self.matcher)))(
            {k: batch[k] for k in IGNORE_KEYS})
        return {**targets, 'negative': targets['negative'] & ~ignored, 'ignore': targets['ignore'] | ignored}

    def loss(self, outputs, batch, axis_name=None, key=None):
        """Multibox (or focal) loss normalised by the positives of the global batch (no sampling: `key` is
        unused); metrics count the positive anchors per image (a mean over the devices is then the global
        batch's). A pseudo-labelled batch (one with ignore regions) has its negatives weighted, not mined."""
        targets = self.targets(batch)
        positives = jnp.sum(targets['positive']).astype(jnp.float32)
        normalizer = lax.pmean(positives, axis_name) if axis_name else positives
        negatives = 'weighted' if 'ignore_boxes' in batch else 'mined'
        loss, metrics = ssd_loss(outputs, targets, normalizer=normalizer, negatives=negatives, **self.loss_settings)
        metrics['positives_per_image'] = metrics.pop('num_positives') / targets['positive'].shape[0]
        return loss, metrics

    def postprocess(self, outputs):
        return postprocess(outputs, self.anchors, head=self.score_kind, **self.postprocess_settings)

    def reference_postprocess(self, outputs):
        """`postprocess` by the plain path (`adapt.postprocess.plain_decode_and_nms`)."""
        scores = class_scores(outputs['cls_logits'], self.score_kind)
        return plain_decode_and_nms(outputs['box_codes'], self.anchors, scores, **self.postprocess_settings)


def detector_settings(variant, block) -> dict:
    """SSDDetector's matcher, loss, post-processing, instance and alignment settings of `variant` from a family
    block (shared by every family with SSD's head)."""
    defaults = VARIANTS[variant]
    matcher = {'matched_threshold': defaults['matched_threshold'],
               'unmatched_threshold': defaults['unmatched_threshold'],
               **{k: v for k, v in dict(block.matcher).items() if v is not None}}
    return dict(matcher=matcher, loss_settings=dict(classification=defaults['classification'], **dict(block.loss)),
                postprocess_settings=dict(block.postprocess), **dense_settings(block.model))


def build(variant, config, num_classes, image_size, axis_name='data'):
    """The `variant` ('ssd' | 'retinanet') for `image_size` (h, w) images from `config[variant]`: blocks `model`
    (SSD fields, plus `instance_top_k` and `alignment_levels`: adapt.models.dense), `matcher` (assign_targets
    arguments; None thresholds take the variant's), `loss` (ssd_loss hparams) and `postprocess` (see
    `postprocess`)."""
    block = config[variant]
    model = SSD(num_classes=num_classes, head=VARIANTS[variant]['head'], axis_name=axis_name,
                **model_fields(block.model, drop=DENSE_SETTINGS))
    return SSDDetector(variant, num_classes, image_size, model, model.clone(axis_name=None),
                       model.anchors(image_size), **detector_settings(variant, block))
