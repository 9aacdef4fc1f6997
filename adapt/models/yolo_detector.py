"""YOLO behind the detector interface: targets, loss and post-processing on the grid, and the config.

The network: adapt.models.yolo; the layout and decoding: adapt.models.yolo_grid; the loss: adapt.models.yolo_loss.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from adapt.models.dense import DENSE_SETTINGS, DenseDetector, dense_settings, model_fields
from adapt.models.yolo import YOLO
from adapt.models.yolo_grid import UNIT_WEIGHTS, Grid
from adapt.models.yolo_loss import assign, best_overlap, yolo_loss
from adapt.postprocess import decode_and_nms
from adapt.priors import box_shapes, kmeans_priors, split_levels
from adapt.settings import checked


def class_scores(outputs):
    """Detection scores [B, A, C]: objectness x class probability."""
    return jax.nn.sigmoid(outputs['objectness'])[..., None] * jax.nn.sigmoid(outputs['class_logits'])


@dataclasses.dataclass(frozen=True, eq=False)
class YOLODetector(DenseDetector):
    """YOLO behind the detector interface (adapt.models.dense: a sigmoid 'cls_logits' and 'head_maps', as SSD's);
    `grid` the layout and priors for `image_size`."""
    grid: Grid
    loss_settings: dict
    postprocess_settings: dict

    @property
    def score_kind(self):
        return 'sigmoid'

    @property
    def feature_levels(self):
        return tuple(self.model.levels) + self.model.neck_names

    @property
    def head_levels(self):
        return tuple(zip(self.model.neck_names, self.grid.sizes, self.model.priors_per_level))

    def positives(self, batch):
        return self.targets(batch)['responsible']

    def targets(self, batch):
        """`assign` over a batch {'boxes' [B, M, 4], 'labels', 'mask'} -> dict of [B, A, ...]."""
        return jax.vmap(functools.partial(assign, self.grid))(batch['boxes'], batch['labels'], batch['mask'])

    def negatives(self, outputs, batch, responsible):
        """Predictions [B, A] that are objectness negatives: not responsible, and no decoded box overlapping
        a ground truth, or an ignore region of a pseudo-labelled batch, by more than the ignore threshold (the
        choice carries no gradient)."""
        decoded = self.grid.decode(lax.stop_gradient(outputs['box_codes']))
        overlap = jax.vmap(best_overlap)(decoded, batch['boxes'], batch['mask'])
        if 'ignore_boxes' in batch:
            overlap = jnp.maximum(overlap, jax.vmap(best_overlap)(decoded, batch['ignore_boxes'], batch['ignore_mask']))
        return ~responsible & (overlap <= self.loss_settings['ignore_threshold'])

    def loss(self, outputs, batch, axis_name=None, key=None):
        """The YOLOv3 loss normalised by the responsible predictions of the global batch (no sampling: `key`
        is unused); metrics count them per image (a mean over the devices is then the global batch's)."""
        targets = self.targets(batch)
        positives = jnp.sum(targets['responsible']).astype(jnp.float32)
        normalizer = lax.pmean(positives, axis_name) if axis_name else positives
        settings = {k: v for k, v in self.loss_settings.items() if k != 'ignore_threshold'}
        negative = self.negatives(outputs, batch, targets['responsible'])
        loss, metrics = yolo_loss(outputs, targets, negative, normalizer=normalizer, **settings)
        metrics['positives_per_image'] = positives / targets['responsible'].shape[0]
        return loss, metrics

    def postprocess(self, outputs):
        """Per-class greedy NMS over the decoded boxes (see `adapt.postprocess.decode_and_nms`)."""
        return decode_and_nms(self.grid.codes(outputs['box_codes']), self.grid.boxes, class_scores(outputs),
                              box_weights=UNIT_WEIGHTS, **self.postprocess_settings)


# ------------------------------------------------------------------------------------- settings


LOSS_DEFAULTS = dict(ignore_threshold=0.5, obj_weight=1.0, noobj_weight=1.0, cls_weight=1.0, box_weight=1.0)


def derive_priors(config, boxes, image_size):
    """{'anchors': `priors_per_level` k-means priors per level (seed `kmeans_seed`) of `config.yolo.model`,
    smallest first}. The normalised shapes suffice: IoU does not change when an axis is scaled, so neither do
    the clusters."""
    del image_size
    model = config.yolo.model
    counts = [int(model.priors_per_level)] * len(model.levels)
    priors = kmeans_priors(box_shapes(boxes), sum(counts), seed=int(model.get('kmeans_seed', 0)))
    return {'anchors': split_levels(priors, counts)}


def level_priors(anchors, levels) -> Optional[tuple]:
    """The `anchors` setting as ((w, h), ...) per level (None stays None); ValueError (one line) when it
    does not fit."""
    if anchors is None:
        return None
    priors = tuple(tuple((float(w), float(h)) for w, h in group) for group in anchors)
    if len(priors) != len(levels) or not all(priors):
        raise ValueError(f'yolo.model.anchors: {len(priors)} groups for {len(levels)} levels {tuple(levels)}; '
                         f'give one non-empty list of (width, height) per level')
    if not all(w > 0 and h > 0 for group in priors for w, h in group):
        raise ValueError('yolo.model.anchors: widths and heights must be > 0 (normalised to the image)')
    return priors


def build(config, num_classes, image_size, axis_name='data'):
    """The yolo family for `image_size` (h, w) images from `config.yolo`: blocks `model` (YOLO fields; `anchors`
    per level, or None to derive `priors_per_level` per level with k-means seeded by `kmeans_seed`;
    `instance_top_k` and `alignment_levels`: adapt.models.dense), `loss` (LOSS_DEFAULTS's keys) and `postprocess`
    (decode_and_nms settings). With `anchors` None the detector builds (the scripts check a preset before the
    trainer derives them) but its loss and post-processing raise."""
    block = config.yolo
    fields = model_fields(block.model, drop=('anchors', 'priors_per_level', 'kmeans_seed', *DENSE_SETTINGS))
    priors = level_priors(block.model.anchors, fields['levels'])
    per_level = [int(block.model.get('priors_per_level', 3))] * len(fields['levels'])
    loss = checked(block.loss, LOSS_DEFAULTS, 'yolo.loss')
    model = YOLO(num_classes=num_classes, priors_per_level=tuple(per_level if priors is None else map(len, priors)),
                 axis_name=axis_name, **fields)
    grid = Grid(tuple(model.feature_sizes(image_size)), priors)
    return YOLODetector('yolo', num_classes, image_size, model, model.clone(axis_name=None), grid,
                        {**LOSS_DEFAULTS, **loss}, dict(block.postprocess), **dense_settings(block.model))
