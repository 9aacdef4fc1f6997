"""The YOLOv3 loss: target assignment on the grid (adapt.models.yolo_grid) and the loss terms.

Each ground truth is predicted by one prior, the one of highest shape IoU among all levels' priors, at the
cell of its level that contains the box centre (`assign`). Objectness: BCE, target 1 there and 0 elsewhere
except at predictions whose decoded box overlaps a ground truth by more than `ignore_threshold` (not
negatives; `best_overlap`). Classes: per-class BCE at the responsible predictions. Box: BCE of t_yx against
the centre's offset in its cell (less the offset's own entropy, so an exact box costs 0) plus the squared
error of t_hw against log(size / prior), scaled by 2 - w h (YOLOv3: small boxes count more). Every term is
summed and divided by the responsible predictions of the global batch (averaged over the devices), as SSD
does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.scipy.special import xlogy

from adapt.boxes import pairwise_iou
from adapt.models.yolo_grid import Grid

_EPS = 1e-8


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
