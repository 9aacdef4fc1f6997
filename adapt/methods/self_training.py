"""What self-training methods (mean_teacher, pseudo_label, lwf's pseudo-label mode) share: pseudo-labels that
ignore what the teacher does not know, their loss, and soft distillation.

A teacher detection scoring at or above `threshold` is a pseudo-label; one scoring in [low, threshold) is an
ignore region: anchors over it are neither objects nor background (adapt.matching.near_ignored), so an object
the teacher is unsure of is never taught as background. The remaining negatives are weighted, not hard-mined
(the hardest negatives of a pseudo-labelled image are where the teacher missed an object), so an image without
pseudo-labels still teaches its confident background. pseudo_label's stored rounds carry their ignore regions
as objects of label IGNORE_LABEL, so the pipeline crops and flips them with the image.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from adapt.losses.adaptation import adaptation_loss
from adapt.losses.distillation import sigmoid_kl, softmax_kl
from adapt.training.parallel import global_mean

IGNORE_LABEL = -2  # an ignore region among a pseudo-labelled batch's objects (padding is -1)
DISTILLATION = ('hard', 'soft')


def check_band(block, name):
    """ValueError (one line) unless 0 <= ignore_low <= threshold <= 1 in a method's settings `block`."""
    if not 0.0 <= block.threshold <= 1.0:
        raise ValueError(f'{name}.threshold={block.threshold} must lie in [0, 1]')
    if not 0.0 <= block.ignore_low <= block.threshold:
        raise ValueError(f'{name}.ignore_low={block.ignore_low} must lie in [0, threshold={block.threshold}]')


def teacher_labels(detections, threshold, low):
    """Detections [B, D] -> {'boxes' [B, D, 4], 'labels' int32 [B, D] (-1 where not kept), 'mask'}: the valid
    detections scoring at or above `threshold`; and the ignore regions {'ignore_boxes', 'ignore_mask'}: those
    scoring in [low, threshold)."""
    rows = jnp.arange(detections.scores.shape[1])
    valid = rows[None, :] < detections.num_valid[:, None]
    keep = valid & (detections.scores >= threshold)
    unsure = valid & (detections.scores >= low) & ~keep
    return {'boxes': jnp.where(keep[..., None], detections.boxes, 0.0),
            'labels': jnp.where(keep, detections.classes, -1).astype(jnp.int32), 'mask': keep,
            'ignore_boxes': jnp.where(unsure[..., None], detections.boxes, 0.0), 'ignore_mask': unsure}


def round_labels(pred: dict, threshold: float, low: float) -> dict:
    """Host version for stored rounds, from `predict_split` output: {'index' [N], 'boxes' [N, D, 4], 'labels'
    [N, D] (class, IGNORE_LABEL for an ignore region, -1 where neither), 'mask' [N, D] (either)}."""
    keep = pred['det_mask'] & (pred['scores'] >= low)
    sure = keep & (pred['scores'] >= threshold)
    return {'index': np.asarray(pred['index'], np.int64),
            'boxes': np.where(keep[..., None], pred['boxes'], 0.0).astype(np.float32),
            'labels': np.where(sure, pred['classes'], np.where(keep, IGNORE_LABEL, -1)).astype(np.int64),
            'mask': keep}


def with_ignore_regions(batch):
    """A pseudo-labelled batch whose ignore regions are objects of IGNORE_LABEL -> its objects {'boxes',
    'labels', 'mask'} and its ignore regions {'ignore_boxes', 'ignore_mask'}."""
    unsure = batch['mask'] & (batch['labels'] == IGNORE_LABEL)
    return {'boxes': batch['boxes'], 'labels': batch['labels'], 'mask': batch['mask'] & (batch['labels'] >= 0),
            'ignore_boxes': batch['boxes'], 'ignore_mask': unsure}


def pseudo_label_loss(ctx, labels, name, box_regression):
    """The detector's loss of the student's target outputs on `labels` (with ignore regions): its
    classification part unless `box_regression` (pseudo-boxes are too loose to regress on, as published)."""
    loss, metrics = ctx.detector.loss(ctx.target_outputs, labels, ctx.axis_name, ctx.loss_key(name))
    per_image = lambda mask: jnp.mean(jnp.sum(mask, axis=1, dtype=jnp.float32))  # noqa: E731
    metrics = {**metrics, 'pseudo_boxes_per_image': per_image(labels['mask']),
               'ignore_regions_per_image': per_image(labels['ignore_mask'])}
    return (loss if box_regression else metrics['cls_loss']), metrics


def soft_distillation(detector, student, teacher, axis_name=None):
    """KL(teacher || student) of the class probabilities at every dense position (anchor, grid cell; ALDI++'s
    soft targets instead of thresholded pseudo-labels), averaged over the positions of the global batch."""
    student_logits, kind = detector.dense_scores(student)
    teacher_logits, _ = detector.dense_scores(teacher)
    kl = softmax_kl if kind == 'softmax' else sigmoid_kl
    return global_mean(kl(student_logits, teacher_logits, 1.0), axis_name=axis_name)


@adaptation_loss('pseudo_label', domains=('target',))
def stored_pseudo_labels(ctx, *, box_regression=False):
    """The target batch's own labels (pseudo_label's stored rounds, with their ignore regions) on the
    student's target outputs."""
    return pseudo_label_loss(ctx, with_ignore_regions(ctx.target), 'pseudo_label', box_regression)
