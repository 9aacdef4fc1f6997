"""Faster R-CNN (Ren et al. 2015), optionally with an FPN (Lin et al. 2017): a two-stage detector family.

backbone -> (FPN) -> RPN over anchors -> proposals (adapt.models.rpn: fixed counts, no gradient) -> RoIAlign or
RoI max pooling (adapt.roi_ops; with the FPN each RoI reads the level of FPN's canonical rule) -> two FC
layers -> class logits (softmax with background column 0) and per-class box codes.

`FasterRCNN(...).apply(variables, images01, train, labels)` returns (outputs, features):
  outputs: 'rpn_logits' [B, A] and 'rpn_codes' [B, A, 4] at `model.anchors(image_size)`; 'proposals' [B, R, 4]
    (normalised yxyx, no gradient) with 'proposal_mask' [B, R]; 'cls_logits' [B, R, C + 1] and 'box_codes'
    [B, R, C, 4] (encode_boxes against the proposal, weights 10, 10, 5, 5). R is the pass's post_nms_top_n,
    plus max_boxes when `labels` are given: the true boxes are appended to the proposals in a labelled
    training pass (torchvision, Detectron2), so the RoI head sees positives from the first step;
  features: the backbone levels ('C3', ...), the FPN levels ('P3', ...; 'P6' for the pooled extra level), and
    'instances' [B, K, D] (the RoI head's hidden features of the K best proposals, which carry their
    gradient), 'instance_logits' [B, K, C + 1] and 'instance_mask' [B, K] (DA-Faster's instance level).

`FasterRCNNDetector` is the family behind `adapt.models.detector`: its loss matches the anchors and the proposal
rows to the batch's boxes, samples anchors and RoIs with per-example keys and sums the four terms (RPN
objectness BCE, RPN box smooth L1, RoI class cross-entropy, RoI box smooth L1 at the true class), each over
the sampled count of the global batch. Matching happens in the loss, not in the forward pass, so labels
given only to the loss (mean_teacher's pseudo-labels) work too; the proposals they are matched to then lack
the appended boxes. Inference: per-class decoding of every proposal, score > 0.05, per-class greedy NMS 0.5,
100 detections (`adapt.nms.multiclass_non_max_suppression` per image, exact inside shard_map).
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

from adapt.anchors import grid_anchors
from adapt.boxes import clip_boxes, decode_boxes
from adapt.losses.adaptation import global_mean
from adapt.losses.detection import smooth_l1
from adapt.models.backbones import BACKBONES, FEATURE_STRIDES, preprocess
from adapt.models.detector import Detector
from adapt.models.layers import conv_init
from adapt.models.rpn import ProposalSettings, RPNHead, propose, rpn_loss, sampled_targets
from adapt.models.ssd import SSDDetector
from adapt.nms import multiclass_non_max_suppression
from adapt.postprocess import BOX_WEIGHTS
from adapt.roi_ops import check_roi_op, fpn_levels, roi_align, roi_pool
from adapt.training.config import image_size as config_image_size
from adapt.training.parallel import example_keys

FAMILY = 'faster_rcnn'


@dataclasses.dataclass(frozen=True)
class RoISettings:
    """How RoI features are read: `op` 'align' | 'pool', a square `output_size`, RoIAlign's `sampling_ratio`
    and half-pixel `aligned` flag, FPN's level rule (a box of canonical_scale^2 pixels reads P<canonical_level>)."""
    op: str = 'align'
    output_size: int = 7
    sampling_ratio: int = 2
    aligned: bool = True
    canonical_scale: float = 224.0
    canonical_level: int = 4

    def extract(self, maps, scales, boxes, levels):
        """One image's RoI features [R, s, s, C] (adapt.roi_ops)."""
        if check_roi_op(self.op) == 'pool':
            return roi_pool(maps, scales, boxes, levels, self.output_size)
        return roi_align(maps, scales, boxes, levels, self.output_size, self.sampling_ratio, self.aligned)


class FPN(nn.Module):
    """Feature pyramid: 1x1 laterals, top-down nearest x2 upsampling + sum, 3x3 outputs (torchvision's
    FeaturePyramidNetwork, no normalisation); with `pool_level`, an extra level subsampled from the last
    (torchvision's LastLevelMaxPool, for the RPN only)."""
    channels: int
    pool_level: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, maps):
        conv = functools.partial(nn.Conv, self.channels, kernel_init=conv_init, dtype=self.dtype)
        laterals = [conv((1, 1), name=f'lateral{i}')(m) for i, m in enumerate(maps)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            up = jnp.repeat(jnp.repeat(merged[0], 2, axis=1), 2, axis=2)[:, :lateral.shape[1], :lateral.shape[2]]
            merged.insert(0, lateral + up)
        outputs = [conv((3, 3), name=f'output{i}')(x) for i, x in enumerate(merged)]
        if self.pool_level:
            outputs.append(outputs[-1][:, ::2, ::2])  # max pool, kernel 1, stride 2
        return outputs


class FasterRCNNFeatures(nn.Module):
    """Backbone levels, then the FPN over them (named 'features', so the backbone sits at features/backbone as
    in SSD). -> (backbone maps, RPN maps): the FPN levels, or the one backbone level without it."""
    backbone: str
    levels: Sequence[str]
    width: float = 1.0
    fpn: bool = True
    fpn_channels: int = 256
    pool_level: bool = False
    frozen_bn: bool = False
    axis_name: Optional[str] = None
    dtype: Any = jnp.float32
    backbone_kwargs: Any = None

    @nn.compact
    def __call__(self, images, train=False):
        bn = dict(frozen_bn=self.frozen_bn, axis_name=self.axis_name, dtype=self.dtype)
        x = preprocess(self.backbone, images).astype(self.dtype)
        feats = BACKBONES[self.backbone](width=self.width, name='backbone', **bn, **dict(self.backbone_kwargs or {}))(
            x, train=train)
        maps = [feats[name] for name in self.levels]
        if not self.fpn:
            return maps, maps
        return maps, FPN(self.fpn_channels, self.pool_level, self.dtype, name='fpn')(maps)


class RoIHead(nn.Module):
    """Two FC layers + ReLU (torchvision's TwoMLPHead) on the flattened RoI features [B, R, s, s, C], then class
    logits [B, R, C' + 1] (normal(0.01)) and per-class box codes [B, R, C', 4] (normal(0.001), Detectron2).
    -> (logits, codes, hidden features [B, R, dim])."""
    num_classes: int
    dim: int = 1024
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = x.reshape(*x.shape[:2], -1)
        for i in range(2):
            x = nn.relu(nn.Dense(self.dim, dtype=self.dtype, name=f'fc{i}')(x))
        logits = nn.Dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                          name='cls')(x)
        codes = nn.Dense(4 * self.num_classes, kernel_init=nn.initializers.normal(0.001), dtype=self.dtype,
                         name='box')(x)
        return (logits.astype(jnp.float32), codes.reshape(*codes.shape[:2], self.num_classes, 4).astype(jnp.float32),
                x.astype(jnp.float32))


class FasterRCNN(nn.Module):
    """Faster R-CNN (see the module docstring).

    Attributes:
      num_classes: dataset classes (background not counted).
      backbone / width / backbone_kwargs / frozen_bn / axis_name / dtype: see adapt.models.backbones.
      levels: backbone maps ('C2' = stride 4, ...): the FPN's inputs, or the one map RPN and RoIs read without it.
      fpn, fpn_channels, pool_level: the FPN; `pool_level` adds a stride-2 subsampled last level for the RPN.
      anchor_sizes: anchor sides in input pixels: one per RPN level with the FPN, any number (each at every
        location) at the one level without; None until set or derived from the data (adapt.models.families).
      anchor_ratios: width / height of the anchors, at every level.
      head_dim: width of the RoI head's two FC layers; instance_top_k: proposals whose RoI features are the
        instances.
      proposals: adapt.models.rpn.ProposalSettings; roi: RoISettings.
    """
    num_classes: int
    backbone: str = 'resnet50'
    width: float = 1.0
    levels: Sequence[str] = ('C2', 'C3', 'C4', 'C5')
    fpn: bool = True
    fpn_channels: int = 256
    pool_level: bool = True
    anchor_sizes: Any = None
    anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0)
    head_dim: int = 1024
    instance_top_k: int = 64
    proposals: ProposalSettings = ProposalSettings()
    roi: RoISettings = RoISettings()
    frozen_bn: bool = False
    axis_name: Optional[str] = None
    dtype: Any = jnp.float32
    backbone_kwargs: Any = None

    @property
    def rpn_levels(self) -> tuple:
        """Names of the maps the RPN reads: 'P<k>' per FPN level ('P<k+1>' pooled), else the backbone level."""
        if not self.fpn:
            return tuple(self.levels)
        names = tuple(f'P{name[1:]}' for name in self.levels)
        return names + ((f'P{int(self.levels[-1][1:]) + 1}',) if self.pool_level else ())

    @property
    def strides(self) -> tuple:
        """Input pixels per cell of each RPN level."""
        strides = [FEATURE_STRIDES[name] for name in self.levels]
        return tuple(strides + ([2 * strides[-1]] if self.fpn and self.pool_level else []))

    def check(self):
        """One-line ValueErrors for settings that cannot build."""
        if not self.fpn and len(self.levels) != 1:
            raise ValueError(f'{FAMILY}: without the FPN, levels must name one backbone map, got {tuple(self.levels)}')
        strides = [FEATURE_STRIDES.get(name) for name in self.levels]
        if None in strides or any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(f'{FAMILY}: levels must be consecutive backbone maps of '
                             f'{", ".join(FEATURE_STRIDES)}, got {tuple(self.levels)}')
        if self.anchor_sizes is None:
            raise ValueError(f'{FAMILY}: model.anchor_sizes is None: set it, or let adapt.trainers.detection.train '
                             'derive it from the training boxes (adapt.models.families)')
        if self.fpn and len(self.anchor_sizes) != len(self.rpn_levels):
            raise ValueError(f'{FAMILY}: with the FPN, anchor_sizes needs one size per RPN level '
                             f'{self.rpn_levels}, got {tuple(self.anchor_sizes)}')
        if self.instance_top_k > min(self.proposals.post_nms_top_n):
            raise ValueError(f'{FAMILY}: instance_top_k {self.instance_top_k} exceeds the proposals kept '
                             f'{tuple(self.proposals.post_nms_top_n)}')
        check_roi_op(self.roi.op)

    @property
    def anchors_per_location(self) -> int:
        return len(self.anchor_ratios) * (1 if self.fpn else len(self.anchor_sizes))

    def feature_module(self, **kwargs):
        """The backbone + FPN part; kwargs: `name` inside `__call__`, `parent=None` outside."""
        return FasterRCNNFeatures(self.backbone, tuple(self.levels), self.width, self.fpn, self.fpn_channels,
                                  self.pool_level, self.frozen_bn, self.axis_name, self.dtype, self.backbone_kwargs,
                                  **kwargs)

    def anchors_for(self, feature_sizes, image_size):
        """grid_anchors [A, 4] (normalised) of the RPN levels of these (h, w) sizes, for `image_size` inputs."""
        sizes = [(s,) for s in self.anchor_sizes] if self.fpn else [tuple(self.anchor_sizes)]
        return grid_anchors(feature_sizes, image_size, self.strides, sizes, tuple(self.anchor_ratios))

    def anchors(self, image_size):
        """Anchors [A, 4] (NumPy, normalised yxyx) in the order of the RPN outputs for `image_size` images."""
        self.check()
        dummy = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
        (_, maps), _ = jax.eval_shape(self.feature_module(parent=None).init_with_output, jax.random.key(0), dummy)
        return self.anchors_for([tuple(m.shape[1:3]) for m in maps], image_size)

    @nn.compact
    def __call__(self, images, train=False, labels=None):
        self.check()
        backbone_maps, maps = self.feature_module(name='features')(images, train)
        image_size = tuple(images.shape[1:3])
        rpn_logits, rpn_codes = RPNHead(self.anchors_per_location, self.dtype, name='rpn')(maps)
        sizes = [tuple(m.shape[1:3]) for m in maps]
        anchors = self.anchors_for(sizes, image_size)
        counts = [h * w * self.anchors_per_location for h, w in sizes]
        boxes, _, valid = propose(rpn_logits, rpn_codes, anchors, counts, image_size, self.proposals, train)
        if labels is not None:
            boxes = jnp.concatenate([boxes, jnp.asarray(labels['boxes'], jnp.float32)], 1)
            valid = jnp.concatenate([valid, jnp.asarray(labels['mask'], bool)], 1)
        logits, codes, hidden = RoIHead(self.num_classes, self.head_dim, self.dtype, name='roi_head')(
            self.roi_features(maps[:len(self.levels)], boxes, image_size))
        outputs = {'rpn_logits': rpn_logits, 'rpn_codes': rpn_codes, 'proposals': boxes, 'proposal_mask': valid,
                   'cls_logits': logits, 'box_codes': codes}
        features = {name: m.astype(jnp.float32) for name, m in zip(self.levels, backbone_maps)}
        if self.fpn:
            features.update({name: m.astype(jnp.float32) for name, m in zip(self.rpn_levels, maps)})
        k = self.instance_top_k
        features.update({'instances': hidden[:, :k], 'instance_logits': logits[:, :k], 'instance_mask': valid[:, :k]})
        return outputs, features

    def roi_features(self, maps, boxes, image_size):
        """RoI features [B, R, s, s, C] of boxes [B, R, 4] (normalised) from `maps` (one per RoI level)."""
        pixels = boxes * jnp.asarray(image_size * 2, jnp.float32)
        scales = [1.0 / s for s in self.strides[:len(maps)]]
        if len(maps) == 1:
            return jax.vmap(lambda m, b: self.roi.extract([m], scales, b, None))(maps[0], pixels)
        first = int(np.log2(self.strides[0]))
        levels = fpn_levels(pixels, first, first + len(maps) - 1, self.roi.canonical_scale, self.roi.canonical_level)
        return jax.vmap(lambda ms, b, lv: self.roi.extract(ms, scales, b, lv))(list(maps), pixels, levels)


# ------------------------------------------------------------------------------------- losses, inference
def per_example_keys(key, batch_size, axis_name=None):
    """`example_keys` inside a data-parallel step; outside one (a single device) the same keys, device 0's."""
    if axis_name:
        return example_keys(key, batch_size, axis_name)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch_size))


def roi_loss(outputs, batch, keys, *, matcher, num_samples, positive_fraction, beta, axis_name):
    """RoI class cross-entropy and box smooth L1 of the true class (on the positives) over each image's sampled
    proposal rows, both divided by the sampled count of the global batch. -> (cls, box, positives)."""
    gt = {k: batch[k] for k in ('boxes', 'labels', 'mask')}
    per_image = lambda k, p, v, g: sampled_targets(k, p, v, g, matcher, num_samples, positive_fraction,  # noqa: E731
                                                   BOX_WEIGHTS)
    cls_t, box_t, pos, neg = jax.vmap(per_image)(keys, outputs['proposals'], outputs['proposal_mask'], gt)
    sampled = pos | neg
    ce = optax.softmax_cross_entropy_with_integer_labels(outputs['cls_logits'], cls_t)
    own = jnp.take_along_axis(outputs['box_codes'], jnp.maximum(cls_t - 1, 0)[..., None, None], axis=2)[:, :, 0]
    l1 = jnp.where(pos, smooth_l1(own - box_t, beta).sum(-1), 0.0)
    return global_mean(ce, sampled, axis_name), global_mean(l1, sampled, axis_name), pos


def postprocess(outputs, score_threshold=0.05, iou_threshold=0.5, max_detections=100):
    """Batched outputs -> adapt.nms.Detections [B, max_detections]: every proposal decoded per class (clipped),
    softmax scores (padding rows 0), exact per-class greedy NMS, the best over all classes (torchvision's
    defaults: score 0.05, IoU 0.5, 100 detections)."""
    boxes = clip_boxes(decode_boxes(outputs['box_codes'], outputs['proposals'][:, :, None, :], BOX_WEIGHTS))
    scores = jax.nn.softmax(outputs['cls_logits'], axis=-1)[..., 1:]
    scores = jnp.where(outputs['proposal_mask'][..., None], scores, 0.0)
    nms = lambda b, s: multiclass_non_max_suppression(b, s, iou_threshold, max_detections,  # noqa: E731
                                                      score_threshold)
    return jax.vmap(nms)(boxes, scores)


@dataclasses.dataclass(frozen=True, eq=False)
class FasterRCNNDetector(Detector):
    """Faster R-CNN behind the detector interface: `model` has BatchNorm over `axis_name` (the train step),
    `eval_model` none; `anchors` [A, 4] for `image_size` (None while the anchor sizes are unset)."""
    name: str
    num_classes: int
    image_size: tuple
    model: FasterRCNN
    eval_model: FasterRCNN
    anchors: Optional[np.ndarray]
    rpn_sampling: dict
    roi_sampling: dict
    loss_settings: dict
    postprocess_settings: dict
    score_kind = 'softmax'

    # the backbone sits at features/backbone as in SSD, so SSD's accessors apply unchanged
    backbone = SSDDetector.backbone
    with_backbone = SSDDetector.with_backbone

    @property
    def feature_levels(self):
        return tuple(self.model.levels) + (self.model.rpn_levels if self.model.fpn else ())

    @property
    def alignment_level(self):
        """The deepest backbone level (DA-Faster aligns the backbone output)."""
        return self.model.levels[-1]

    def init(self, key):
        return jax.jit(self.eval_model.init)(key, jnp.zeros((1, *self.image_size, 3), jnp.float32))

    def apply(self, variables, images, train=False, labels=None):
        if train:
            (outputs, features), new = self.model.apply(variables, images, train=True, labels=labels,
                                                        mutable=['batch_stats'])
            stats = jax.tree.map(lambda x: x.astype(jnp.float32), new['batch_stats'])
        else:
            outputs, features = self.eval_model.apply(variables, images, train=False, labels=labels)
            stats = variables.get('batch_stats', {})
        return outputs, features, stats

    def dense_scores(self, outputs):
        """The RPN's objectness per anchor: the RoI head's rows follow each image's own proposals."""
        return outputs['rpn_logits'][..., None], 'sigmoid'

    def loss(self, outputs, batch, axis_name=None, key=None):
        """The four terms (module docstring); `key` draws the anchor and RoI samples, per example. Metrics:
        each term, 'cls_loss' (RPN objectness + RoI class), 'box_loss' (both box terms), positives per image."""
        if key is None:
            raise ValueError(f'{FAMILY} samples anchors and RoIs: its loss needs a key')
        count = outputs['rpn_logits'].shape[0]
        rpn_keys, roi_keys = (per_example_keys(jax.random.fold_in(key, i), count, axis_name) for i in range(2))
        rpn_cls, rpn_box, rpn_pos = rpn_loss(outputs['rpn_logits'], outputs['rpn_codes'], jnp.asarray(self.anchors),
                                             batch, rpn_keys, beta=self.loss_settings['rpn_beta'],
                                             axis_name=axis_name, **self.rpn_sampling)
        roi_cls, roi_box, roi_pos = roi_loss(outputs, batch, roi_keys, beta=self.loss_settings['roi_beta'],
                                             axis_name=axis_name, **self.roi_sampling)
        cls_loss, box_loss = rpn_cls + roi_cls, rpn_box + roi_box
        return cls_loss + box_loss, {
            'loss': cls_loss + box_loss, 'cls_loss': cls_loss, 'box_loss': box_loss, 'rpn_cls_loss': rpn_cls,
            'rpn_box_loss': rpn_box, 'roi_cls_loss': roi_cls, 'roi_box_loss': roi_box,
            'rpn_positives_per_image': jnp.sum(rpn_pos) / count, 'roi_positives_per_image': jnp.sum(roi_pos) / count}

    def postprocess(self, outputs):
        return postprocess(outputs, **self.postprocess_settings)


# ------------------------------------------------------------------------------------- config
SAMPLING_KEYS = ('fg_iou_threshold', 'bg_iou_threshold', 'batch_size_per_image', 'positive_fraction')
BLOCK_KEYS = {
    'model': tuple(f.name for f in dataclasses.fields(FasterRCNN)
                   if f.name not in ('num_classes', 'axis_name', 'proposals', 'roi', 'parent', 'name')),
    'rpn': ('pre_nms_top_n', 'post_nms_top_n', 'nms_threshold', 'min_size', 'allow_low_quality') + SAMPLING_KEYS,
    'roi': tuple(f.name for f in dataclasses.fields(RoISettings)) + SAMPLING_KEYS,
    'loss': ('rpn_beta', 'roi_beta'),
    'postprocess': ('score_threshold', 'iou_threshold', 'max_detections'),
}


def section(block, name) -> dict:
    """The `name` settings of the family block as a dict; a one-line ValueError for an unknown key."""
    settings = dict(block[name])
    unknown = sorted(set(settings) - set(BLOCK_KEYS[name]))
    if unknown:
        raise ValueError(f'{FAMILY}.{name}: unknown {", ".join(unknown)}; valid choices: {", ".join(BLOCK_KEYS[name])}')
    return settings


def model_fields(model) -> dict:
    """FasterRCNN constructor fields from the `model` settings (tuples where flax wants them)."""
    fields = dict(model, dtype=jnp.dtype(model.get('dtype', 'float32')))
    for key in ('levels', 'anchor_ratios'):
        if key in fields:
            fields[key] = tuple(fields[key])
    if fields.get('anchor_sizes') is not None:
        fields['anchor_sizes'] = tuple(float(s) for s in fields['anchor_sizes'])
    return fields


def sampling(settings) -> dict:
    """Matcher and sampler settings of the `rpn` or `roi` settings (torchvision's names)."""
    return dict(matcher=dict(matched_threshold=float(settings['fg_iou_threshold']),
                             unmatched_threshold=float(settings['bg_iou_threshold']),
                             allow_low_quality=bool(settings.get('allow_low_quality', False))),
                num_samples=int(settings['batch_size_per_image']),
                positive_fraction=float(settings['positive_fraction']))


def build(config, num_classes, axis_name='data'):
    """Faster R-CNN from `config.faster_rcnn`: blocks `model` (FasterRCNN fields), `rpn` (proposal counts as
    (train, test) pairs, NMS, min_size; matcher and sampler), `roi` (RoISettings fields; matcher and
    sampler), `loss` (smooth-L1 betas) and `postprocess` (see `postprocess`)."""
    block = config[FAMILY]
    rpn, roi = section(block, 'rpn'), section(block, 'roi')
    proposals = ProposalSettings(tuple(rpn['pre_nms_top_n']), tuple(rpn['post_nms_top_n']),
                                 float(rpn['nms_threshold']), float(rpn['min_size']))
    roi_settings = RoISettings(**{f.name: roi[f.name] for f in dataclasses.fields(RoISettings) if f.name in roi})
    check_roi_op(roi_settings.op)
    model = FasterRCNN(num_classes=num_classes, axis_name=axis_name, proposals=proposals, roi=roi_settings,
                       **model_fields(section(block, 'model')))
    size = config_image_size(config)
    anchors = None if model.anchor_sizes is None else model.anchors(size)
    return FasterRCNNDetector(FAMILY, num_classes, size, model, model.clone(axis_name=None), anchors,
                              sampling(rpn), sampling(roi), section(block, 'loss'), section(block, 'postprocess'))



def derive_anchor_sizes(model, boxes, image_size):
    """Anchor sides (input pixels) at evenly spaced quantiles of the training boxes' sqrt(area): one per RPN
    level with the FPN (smallest on the finest), three at the one level without."""
    levels = len(model['levels']) + bool(model.get('pool_level', False)) if model.get('fpn', True) else 3
    height, width = image_size
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * height * (boxes[:, 3] - boxes[:, 1]) * width)
    return {'anchor_sizes': [round(float(q), 1) for q in np.quantile(sides, (np.arange(levels) + 0.5) / levels)]}
