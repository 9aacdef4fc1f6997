"""Pseudo-labels as a self-training method makes them, and how good they are, on evaluation predictions.

A self-training run (mean_teacher, pseudo_label) keeps a detection as a label when its score reaches the
method's threshold. How many it keeps per image, and their precision and recall against the true boxes,
say whether self-training has anything to grow from; they are measured at every evaluation on the
evaluation splits (the target's validation split among them), from the predictions the evaluation made
anyway, so no training label of the target is read for them and nothing reaches the step.
"""
from __future__ import annotations

import numpy as np

from adapt.boxes import pairwise_iou

METRICS = ('pseudo_boxes_per_image', 'pseudo_precision', 'pseudo_recall')


def select_pseudo_labels(pred: dict, threshold: float) -> dict:
    """The detections of `predict_split` output at or above `threshold` (the rule of
    `mean_teacher.pseudo_labels`, on the host): {'index' [N], 'boxes' [N, D, 4] (normalised yxyx in the
    original image), 'labels' [N, D] (-1 where not kept), 'mask' [N, D]}."""
    keep = pred['det_mask'] & (pred['scores'] >= threshold)
    return {'index': np.asarray(pred['index'], np.int64),
            'boxes': np.where(keep[..., None], pred['boxes'], 0.0).astype(np.float32),
            'labels': np.where(keep, pred['classes'], -1).astype(np.int64), 'mask': keep}


def pseudo_label_quality(labels: dict, pred: dict, iou_threshold: float = 0.5) -> dict:
    """Number of pseudo-boxes, and their precision and recall against the true boxes in `pred` (a pseudo-box
    is correct when it takes an unmatched true box of its class at IoU >= iou_threshold, in the given order,
    as VOC matches detections). The IoUs of all images come from one call on the padded arrays (one
    shape: an evaluation split's images do not compile one program each)."""
    ious = np.asarray(pairwise_iou(labels['boxes'], pred['gt_boxes']))  # [N, D, M]
    correct = 0
    for iou, classes, mask, gt_labels, gt_mask in zip(ious, labels['labels'], labels['mask'], pred['gt_labels'],
                                                       pred['gt_mask']):
        taken = ~np.asarray(gt_mask, bool)  # padding is never matched
        for row in np.flatnonzero(mask):
            candidates = np.where((gt_labels == classes[row]) & ~taken, iou[row], -1.0)
            if candidates.size and candidates.max() >= iou_threshold:
                taken[np.argmax(candidates)] = True
                correct += 1
    num_boxes, num_true = int(labels['mask'].sum()), int(pred['gt_mask'].sum())
    return {'num_boxes': num_boxes, 'precision': correct / max(num_boxes, 1), 'recall': correct / max(num_true, 1)}


def pseudo_label_metrics(pred: dict, threshold: float) -> dict:
    """{'pseudo_boxes_per_image', 'pseudo_precision', 'pseudo_recall'} of the detections at `threshold`."""
    quality = pseudo_label_quality(select_pseudo_labels(pred, threshold), pred)
    return {'pseudo_boxes_per_image': quality['num_boxes'] / max(len(pred['index']), 1),
            'pseudo_precision': quality['precision'], 'pseudo_recall': quality['recall']}
