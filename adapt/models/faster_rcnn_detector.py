"""Faster R-CNN behind `adapt.models.detector`, and its config block.

The network: adapt.models.faster_rcnn; the loss (four terms on per-example samples): adapt.models.faster_rcnn_loss.
Inference: per-class decoding of every proposal, score > 0.05, per-class greedy NMS 0.5, 100 detections
(`adapt.nms.multiclass_non_max_suppression` per image, exact inside shard_map).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from adapt.boxes import clip_boxes, decode_boxes
from adapt.models.dense import BackboneDetector, model_fields
from adapt.models.faster_rcnn import FAMILY, FasterRCNN, RoISettings
from adapt.models.faster_rcnn_loss import per_example_keys, roi_loss
from adapt.models.rpn import ProposalSettings, rpn_loss
from adapt.nms import multiclass_non_max_suppression
from adapt.postprocess import BOX_WEIGHTS
from adapt.roi_ops import check_roi_op
from adapt.settings import checked


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
class FasterRCNNDetector(BackboneDetector):
    """Faster R-CNN behind the detector interface (adapt.models.dense: its instances are the RoI head's own, one
    group; image-level alignment on its deepest backbone level unless a loss names others);
    `anchors` [A, 4] for `image_size` (None while the anchor sizes are unset)."""
    anchors: Optional[np.ndarray]
    rpn_sampling: dict
    roi_sampling: dict
    loss_settings: dict
    postprocess_settings: dict
    score_kind = 'softmax'

    @property
    def feature_levels(self):
        return tuple(self.model.levels) + (self.model.rpn_levels if self.model.fpn else ())

    def model_inputs(self, labels):
        """The labels of a labelled pass: their true boxes join the proposals (adapt.models.faster_rcnn)."""
        return {'labels': labels}

    def dense_scores(self, outputs):
        """The RPN's objectness per anchor: the RoI head's rows follow each image's own proposals."""
        return outputs['rpn_logits'][..., None], 'sigmoid'

    def loss(self, outputs, batch, axis_name=None, key=None):
        """The four terms (adapt.models.faster_rcnn_loss); `key` draws the anchor and RoI samples, per example. Metrics:
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
    return checked(block[name], BLOCK_KEYS[name], f'{FAMILY}.{name}')


def faster_rcnn_fields(model) -> dict:
    """FasterRCNN constructor fields from the `model` settings (anchor sizes as floats)."""
    fields = model_fields(model)
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


def build(config, num_classes, image_size, axis_name='data'):
    """Faster R-CNN for `image_size` (h, w) images from `config.faster_rcnn`: blocks `model` (FasterRCNN fields),
    `rpn` (proposal counts as (train, test) pairs, NMS, min_size; matcher and sampler), `roi` (RoISettings
    fields; matcher and sampler), `loss` (smooth-L1 betas) and `postprocess` (see `postprocess`)."""
    block = config[FAMILY]
    rpn, roi = section(block, 'rpn'), section(block, 'roi')
    proposals = ProposalSettings(tuple(rpn['pre_nms_top_n']), tuple(rpn['post_nms_top_n']),
                                 float(rpn['nms_threshold']), float(rpn['min_size']))
    roi_settings = RoISettings(**{f.name: roi[f.name] for f in dataclasses.fields(RoISettings) if f.name in roi})
    check_roi_op(roi_settings.op)
    model = FasterRCNN(num_classes=num_classes, axis_name=axis_name, proposals=proposals, roi=roi_settings,
                       **faster_rcnn_fields(section(block, 'model')))
    anchors = None if model.anchor_sizes is None else model.anchors(image_size)
    return FasterRCNNDetector(FAMILY, num_classes, image_size, model, model.clone(axis_name=None), anchors,
                              sampling(rpn), sampling(roi), section(block, 'loss'), section(block, 'postprocess'))


def derive_anchor_sizes(config, boxes, image_size):
    """Anchor sides (input pixels) at evenly spaced quantiles of the training boxes' sqrt(area): one per RPN
    level with the FPN (smallest on the finest), three at the one level without."""
    model = config[FAMILY].model
    levels = len(model['levels']) + bool(model.get('pool_level', False)) if model.get('fpn', True) else 3
    height, width = image_size
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * height * (boxes[:, 3] - boxes[:, 1]) * width)
    return {'anchor_sizes': [round(float(q), 1) for q in np.quantile(sides, (np.arange(levels) + 0.5) / levels)]}
