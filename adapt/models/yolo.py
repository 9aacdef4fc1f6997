"""YOLO (v2/v3 style): a grid of cells per level, a few box priors per cell, objectness x class scores.

The model is pure: `YOLO(...).apply(variables, images01, train)` returns raw outputs per prediction
(levels in order, cells location-major, priors per cell: `adapt.anchors`' order)
  'objectness' [B, A], 'class_logits' [B, A, C], 'box_codes' [B, A, 4] = (t_y, t_x, t_h, t_w),
  'cls_logits' [B, A, C]: the logit of the detection score sigmoid(objectness) * sigmoid(class logit),
so the generic readers of a sigmoid family (instances, entropy, LwF's distillation) see the score.
A box is YOLOv2's: centre (cell + sigmoid(t_yx)) / S, size prior * exp(t_hw). That is the Faster R-CNN
coder with unit weights against the prior box at the cell centre (offset (sigmoid(t) - 0.5) / (S x prior),
log-scale t_hw), so decoding is `adapt.boxes.decode_boxes` (its clamp bounds the exponent) and
post-processing is `adapt.postprocess.decode_and_nms`.

Network: the backbone levels (`SSDFeatures` without extra layers: the backbone sits at
'features/backbone' as in SSD), a YOLOv3 / FPN top-down neck (per level, deepest first: 1x1 lateral conv,
concatenated with the deeper level's output upsampled x2 (nearest, no transposed conv), 3x3 conv; each
conv + BatchNorm + leaky ReLU 0.1), and a 1x1 predictor per level. Instance features are a 1x1
projection of each neck map.

Priors: `config.yolo.model.anchors`, one list of normalised (width, height) pairs per level. Left None,
the trainer derives them from the source training boxes (YOLOv2's k-means, `adapt.priors`, sorted by area,
the smallest to the finest level) and run.json stores them (`adapt.models.families`).

Loss (YOLOv3): each ground truth is predicted by one prior, the one of highest shape IoU among all
levels' priors, at the cell of its level that contains the box centre (`YOLODetector.targets`).
Objectness: BCE, target 1 there and 0 elsewhere except at predictions whose decoded box overlaps a ground
truth by more than `ignore_threshold` (not negatives). Classes: per-class BCE at the responsible
predictions. Box: BCE of t_yx against the centre's offset in its cell (less the offset's own entropy, so
an exact box costs 0) plus the squared error of t_hw against log(size / prior), scaled by 2 - w h
(YOLOv3: small boxes count more). Every term is summed and divided by the responsible predictions of
the global batch (averaged over the devices), as SSD does.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.scipy.special import xlogy

from adapt.anchors import cell_centres, level_boxes
from adapt.boxes import decode_boxes, pairwise_iou
from adapt.models.detector import Detector
from adapt.models.layers import conv_init
from adapt.models.ssd import SSDDetector, SSDFeatures, feature_map_sizes
from adapt.postprocess import decode_and_nms
from adapt.priors import box_shapes, kmeans_priors, split_levels
from adapt.training.config import image_size as config_image_size

UNIT_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # YOLO's codes against the prior boxes (see the module docstring)
_EPS = 1e-8


class YOLO(nn.Module):
    """YOLO network.

    Attributes:
      num_classes: dataset classes.
      priors_per_level: predictions per cell of each level (the number of its priors).
      backbone / width / backbone_kwargs / levels: as SSD (levels: backbone maps that get a head).
      neck_channels: channels of the neck and of the maps the predictors read.
      prior_prob: objectness probability the predictors start at (bias init; RetinaNet's 0.01).
      instance_dim: channels of the per-prediction instance features.
      frozen_bn, axis_name, dtype: as the backbones.
    """
    num_classes: int
    priors_per_level: Sequence[int]
    backbone: str = 'resnet18'
    width: float = 1.0
    levels: Sequence[str] = ('C3', 'C4', 'C5')
    neck_channels: int = 64
    prior_prob: float = 0.01
    instance_dim: int = 64
    frozen_bn: bool = False
    axis_name: Optional[str] = None
    dtype: Any = jnp.float32
    backbone_kwargs: Any = None

    @property
    def neck_names(self):
        """Names of the neck maps, one per level: 'C3' -> 'P3' (FPN's naming)."""
        return tuple(f'P{name[1:]}' for name in self.levels)

    def feature_module(self, **kwargs):
        """The backbone part (SSD's feature module without extra levels)."""
        return SSDFeatures(self.backbone, tuple(self.levels), (), self.width, self.frozen_bn, self.axis_name,
                           self.dtype, self.backbone_kwargs, **kwargs)

    def feature_sizes(self, image_size):
        """(height, width) of every level's grid for images of `image_size`, from shapes only (cached)."""
        return list(feature_map_sizes(self.feature_module(parent=None), tuple(image_size)))

    def _conv_bn(self, x, kernel, name, train):
        x = nn.Conv(self.neck_channels, (kernel, kernel), use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                    name=f'{name}_conv')(x)
        x = nn.BatchNorm(use_running_average=self.frozen_bn or not train, momentum=0.99, epsilon=1e-5,
                         axis_name=self.axis_name, dtype=self.dtype, name=f'{name}_bn')(x)
        return nn.leaky_relu(x, 0.1)

    @nn.compact
    def __call__(self, images, train=False):
        """-> (outputs, features {backbone level: map, neck map: map, 'anchor_features': [B, A, D]})."""
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
        raw, inst_out = [], []
        for k, (x, count) in enumerate(zip(necks, self.priors_per_level)):
            inst = nn.Conv(self.instance_dim, (1, 1), dtype=self.dtype, name=f'instance{k}')(x)
            inst_out.append(jnp.repeat(inst.reshape(inst.shape[0], -1, self.instance_dim), count, axis=1))
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
        features['anchor_features'] = jnp.concatenate(inst_out, 1).astype(jnp.float32)
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


def class_scores(outputs):
    """Detection scores [B, A, C]: objectness x class probability."""
    return jax.nn.sigmoid(outputs['objectness'])[..., None] * jax.nn.sigmoid(outputs['class_logits'])


MISSING_PRIORS = ('yolo.model.anchors is None: set one list of (width, height) per level, or let '
                  'adapt.trainers.detection.train derive them from the training boxes (adapt.models.families)')


@dataclasses.dataclass(frozen=True)
class Grid:
    """The prediction layout: level k is a `sizes[k]` (fh, fw) grid with the priors `priors[k]` ((w, h)
    pairs, normalised) at every cell; predictions run over levels, cells (location-major), priors.
    `priors` None (not derived yet: a preset checked before its run starts) builds, but cannot be used."""
    sizes: tuple
    priors: Optional[tuple]

    @property
    def level_priors(self) -> tuple:
        if self.priors is None:
            raise ValueError(MISSING_PRIORS)
        return self.priors

    @functools.cached_property
    def boxes(self):
        """Prior boxes [A, 4] (normalised yxyx) centred at their cells."""
        return np.concatenate([level_boxes(*cell_centres(s), p) for s, p in zip(self.sizes, self.level_priors)]
                              ).astype(np.float32)

    @functools.cached_property
    def cells(self):
        """(fh, fw) of each prediction's level [A, 2]."""
        return np.concatenate([np.tile(np.float32(s), (s[0] * s[1] * len(p), 1))
                               for s, p in zip(self.sizes, self.level_priors)])

    @functools.cached_property
    def prior_table(self):
        """Per prior (all levels in order) [P]: 'wh' [P, 2], its level's grid 'fh' / 'fw', the index of the
        level's first prediction 'first', the level's priors per cell 'count' and its position 'index'."""
        rows, first = [], 0
        for (fh, fw), priors in zip(self.sizes, self.level_priors):
            rows += [(w, h, fh, fw, first, len(priors), b) for b, (w, h) in enumerate(priors)]
            first += fh * fw * len(priors)
        cols = np.asarray(rows, np.float64).T
        return {'wh': cols[:2].T.astype(np.float32), **{key: cols[i].astype(np.int32) for i, key in enumerate(
            ('fh', 'fw', 'first', 'count', 'index'), start=2)}}

    def codes(self, box_codes):
        """YOLO's (t_y, t_x, t_h, t_w) [..., A, 4] -> Faster R-CNN codes (unit weights) against `boxes`."""
        prior_hw = self.boxes[:, 2:] - self.boxes[:, :2]
        offsets = (jax.nn.sigmoid(box_codes[..., :2]) - 0.5) / (self.cells * prior_hw)
        return jnp.concatenate([offsets, box_codes[..., 2:]], axis=-1)

    def decode(self, box_codes):
        """Boxes [..., A, 4] (normalised yxyx, not clipped): centre (cell + sigmoid(t_yx)) / S, size
        prior x exp(t_hw) (the exponent clamped as `decode_boxes` does)."""
        return decode_boxes(self.codes(box_codes), self.boxes, UNIT_WEIGHTS)


def _centred(h, w):
    return jnp.stack([-h / 2, -w / 2, h / 2, w / 2], axis=-1)


def assign(grid: Grid, boxes, labels, mask):
    """YOLOv3 targets of one image (ground truth [G, 4] yxyx, labels [G], mask [G]) -> dict of [A, ...]:
    'responsible' (a ground truth's prediction), 'labels', 'offsets' (the centre's (y, x) offset in its cell,
    in [0, 1]), 'log_sizes' (log of (h, w) / the prior's), 'scale' (2 - w h); zero where not responsible.
    A ground truth goes to the prior of highest shape IoU over all levels (the first on a tie), at the cell
    of that level holding its centre; when two share a prediction, the first of them keeps it."""
    table = grid.prior_table
    boxes = jnp.asarray(boxes, jnp.float32)
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    valid = jnp.asarray(mask, bool) & (h > 0) & (w > 0)
    prior_wh = jnp.asarray(table['wh'])
    best = jnp.argmax(pairwise_iou(_centred(h, w), _centred(prior_wh[:, 1], prior_wh[:, 0])), axis=1)  # [G]
    fh, fw = jnp.asarray(table['fh'])[best], jnp.asarray(table['fw'])[best]
    i = jnp.clip(jnp.floor(cy * fh).astype(jnp.int32), 0, fh - 1)
    j = jnp.clip(jnp.floor(cx * fw).astype(jnp.int32), 0, fw - 1)
    slot = jnp.asarray(table['first'])[best] + (i * fw + j) * jnp.asarray(table['count'])[best] + jnp.asarray(
        table['index'])[best]
    hit = valid[:, None] & (slot[:, None] == jnp.arange(len(grid.boxes))[None])  # [G, A]
    responsible = jnp.any(hit, axis=0)
    owner = jnp.argmax(hit, axis=0)
    size = jnp.maximum(jnp.stack([h, w], -1), _EPS) / prior_wh[best][:, ::-1]
    per_gt = {'labels': jnp.asarray(labels, jnp.int32),
              'offsets': jnp.stack([cy * fh - i, cx * fw - j], -1),
              'log_sizes': jnp.where(valid[:, None], jnp.log(size), 0.0),
              'scale': 2.0 - h * w}
    return {'responsible': responsible,
            **{k: jnp.where(responsible.reshape(-1, *([1] * (v.ndim - 1))), v[owner], 0).astype(v.dtype)
               for k, v in per_gt.items()}}


def best_overlap(decoded, boxes, mask):
    """Highest IoU [A] of each decoded prediction [A, 4] with a valid ground truth [G, 4] (0 with none)."""
    iou = pairwise_iou(decoded, boxes)
    return jnp.max(jnp.where(jnp.asarray(mask, bool)[None], iou, 0.0), axis=-1, initial=0.0)


def yolo_loss(outputs, targets, negative, *, normalizer, obj_weight=1.0, noobj_weight=1.0, cls_weight=1.0,
              box_weight=1.0):
    """The YOLOv3 loss (module docstring) from `assign`'s batched targets and the negative mask [B, A];
    -> (loss, {'loss', 'cls_loss' (objectness + classes), 'box_loss', 'obj_loss', 'class_loss'})."""
    bce = optax.sigmoid_binary_cross_entropy
    pos = targets['responsible']
    norm = jnp.maximum(lax.stop_gradient(normalizer), 1.0)
    obj = outputs['objectness']
    obj_sum = (obj_weight * jnp.sum(jnp.where(pos, bce(obj, 1.0), 0.0))
               + noobj_weight * jnp.sum(jnp.where(negative, bce(obj, 0.0), 0.0)))
    onehot = jax.nn.one_hot(targets['labels'], outputs['class_logits'].shape[-1])
    class_sum = jnp.sum(jnp.where(pos[..., None], bce(outputs['class_logits'], onehot), 0.0))
    t, offsets = outputs['box_codes'], targets['offsets']
    entropy = -xlogy(offsets, offsets) - xlogy(1 - offsets, 1 - offsets)  # BCE - entropy: 0 when exact
    per_box = (jnp.sum(bce(t[..., :2], offsets) - entropy, -1)
               + jnp.sum((t[..., 2:] - targets['log_sizes']) ** 2, -1)) * targets['scale']
    box_sum = jnp.sum(jnp.where(pos, per_box, 0.0))
    obj_loss, class_loss = obj_sum / norm, cls_weight * class_sum / norm
    cls_loss, box_loss = obj_loss + class_loss, box_weight * box_sum / norm
    loss = cls_loss + box_loss
    return loss, {'loss': loss, 'cls_loss': cls_loss, 'box_loss': box_loss, 'obj_loss': obj_loss,
                  'class_loss': class_loss}


@dataclasses.dataclass(frozen=True, eq=False)
class YOLODetector(Detector):
    """YOLO behind the detector interface: `model` has BatchNorm over `axis_name` (the train step),
    `eval_model` none; `grid` the layout and priors for `image_size`. The feature module, the output
    contract (a sigmoid 'cls_logits', 'anchor_features') and the parameter layout are SSD's, so
    SSDDetector's init, apply, instance selection and backbone access apply unchanged."""
    name: str
    num_classes: int
    image_size: tuple
    model: YOLO
    eval_model: YOLO
    grid: Grid
    loss_settings: dict
    postprocess_settings: dict
    instance_top_k: int = 64

    init = SSDDetector.init
    apply = SSDDetector.apply
    _with_instances = SSDDetector._with_instances
    backbone = SSDDetector.backbone
    with_backbone = SSDDetector.with_backbone

    @property
    def score_kind(self):
        return 'sigmoid'

    @property
    def feature_levels(self):
        return tuple(self.model.levels) + self.model.neck_names

    @property
    def alignment_level(self):
        """The deepest backbone level (as SSD)."""
        return self.model.levels[-1]

    def targets(self, batch):
        """`assign` over a batch {'boxes' [B, M, 4], 'labels', 'mask'} -> dict of [B, A, ...]."""
        return jax.vmap(functools.partial(assign, self.grid))(batch['boxes'], batch['labels'], batch['mask'])

    def negatives(self, outputs, batch, responsible):
        """Predictions [B, A] that are objectness negatives: not responsible, and no decoded box overlapping
        a ground truth by more than the ignore threshold (the choice carries no gradient)."""
        decoded = self.grid.decode(lax.stop_gradient(outputs['box_codes']))
        overlap = jax.vmap(best_overlap)(decoded, batch['boxes'], batch['mask'])
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


def derive_priors(model, boxes, image_size):
    """{'anchors': `priors_per_level` k-means priors per level (seed `kmeans_seed`), smallest first}. The
    normalised shapes suffice: IoU does not change when an axis is scaled, so neither do the clusters."""
    del image_size
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


def build(config, num_classes, axis_name='data'):
    """The yolo family from `config.yolo`: blocks `model` (YOLO fields; `anchors` per level, or None to
    derive `priors_per_level` per level with k-means seeded by `kmeans_seed`; `instance_top_k`), `loss`
    (LOSS_DEFAULTS's keys) and `postprocess` (decode_and_nms settings). With `anchors` None the detector builds (the
    scripts check a preset before the trainer derives them) but its loss and post-processing raise."""
    block = config.yolo
    fields = dict(block.model)
    priors = level_priors(fields.pop('anchors'), fields['levels'])
    per_level = [int(fields.pop('priors_per_level', 3))] * len(fields['levels'])
    for key in ('kmeans_seed', 'instance_top_k'):
        fields.pop(key, None)
    fields.update(levels=tuple(fields['levels']), dtype=jnp.dtype(fields.get('dtype', 'float32')))
    unknown = set(block.loss) - set(LOSS_DEFAULTS)
    if unknown:
        raise ValueError(f'yolo.loss: unknown {", ".join(sorted(unknown))}; valid choices: {", ".join(LOSS_DEFAULTS)}')
    size = config_image_size(config)
    model = YOLO(num_classes=num_classes, priors_per_level=tuple(per_level if priors is None else map(len, priors)),
                 axis_name=axis_name, **fields)
    grid = Grid(tuple(model.feature_sizes(size)), priors)
    return YOLODetector('yolo', num_classes, size, model, model.clone(axis_name=None), grid,
                        {**LOSS_DEFAULTS, **block.loss}, dict(block.postprocess),
                        int(block.model.get('instance_top_k', 64)))

