"""Box formats, pairwise overlaps and the Faster R-CNN box coder.

Inside the project a box is ``[ymin, xmin, ymax, xmax]`` normalised to [0, 1] (the TFDS ``BBoxFeature``
convention); pixel formats exist only at the edges (COCO JSON ``xywh``, BDD100K ``xyxy``). Every function
is plain ``jax.numpy`` on the last axis, so it accepts NumPy input, any leading batch dims, ``jit`` and
``vmap`` (the public functions are jitted so that eager calls compile once per shape, not op by op).
Degenerate boxes (zero or negative extent) have area 0 and give IoU 0, never NaN.
"""
import math

import jax
import jax.numpy as jnp

# Largest log-scale a decoded box may grow by: a box at most 1000/16 times its anchor (torchvision, Detectron2).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
# Floor for heights/widths before dividing or taking logs, so degenerate boxes stay finite when encoded.
_EPS = 1e-8


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _unstack(boxes):
    boxes = _f32(boxes)
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def _safe_div(num, den):
    """num / den where den > 0, else 0 (an empty union or hull means no overlap, not NaN)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


@jax.jit
def yxyx_to_xyxy(boxes, height, width):
    """Normalised ``[ymin, xmin, ymax, xmax]`` -> pixel ``[x1, y1, x2, y2]``."""
    ymin, xmin, ymax, xmax = _unstack(boxes)
    return jnp.stack([xmin * width, ymin * height, xmax * width, ymax * height], axis=-1)


@jax.jit
def xyxy_to_yxyx(boxes, height, width):
    """Pixel ``[x1, y1, x2, y2]`` -> normalised ``[ymin, xmin, ymax, xmax]``."""
    x1, y1, x2, y2 = _unstack(boxes)
    return jnp.stack([y1 / height, x1 / width, y2 / height, x2 / width], axis=-1)


@jax.jit
def yxyx_to_xywh(boxes, height, width):
    """Normalised ``[ymin, xmin, ymax, xmax]`` -> COCO pixel ``[x, y, width, height]``."""
    ymin, xmin, ymax, xmax = _unstack(boxes)
    return jnp.stack([xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height], axis=-1)


@jax.jit
def xywh_to_yxyx(boxes, height, width):
    """COCO pixel ``[x, y, width, height]`` -> normalised ``[ymin, xmin, ymax, xmax]``."""
    x, y, w, h = _unstack(boxes)
    return jnp.stack([y / height, x / width, (y + h) / height, (x + w) / width], axis=-1)


@jax.jit
def area(boxes):
    """Area of each box; boxes with negative extent count as empty (0)."""
    ymin, xmin, ymax, xmax = _unstack(boxes)
    return jnp.maximum(ymax - ymin, 0.0) * jnp.maximum(xmax - xmin, 0.0)


def _pairwise_parts(a, b):
    """Intersection and union areas [..., N, M], plus the corners for the enclosing box."""
    a, b = _f32(a)[..., :, None, :], _f32(b)[..., None, :, :]
    lo = jnp.maximum(a[..., :2], b[..., :2])
    hi = jnp.minimum(a[..., 2:], b[..., 2:])
    wh = jnp.maximum(hi - lo, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a) + area(b) - inter
    return a, b, inter, union


@jax.jit
def pairwise_iou(a, b):
    """IoU of every box in ``a`` [..., N, 4] with every box in ``b`` [..., M, 4] -> [..., N, M]."""
    _, _, inter, union = _pairwise_parts(a, b)
    return _safe_div(inter, union)


@jax.jit
def pairwise_giou(a, b):
    """Generalised IoU (Rezatofighi et al. 2019): IoU - (hull - union) / hull, in [-1, 1].

    A pair whose smallest enclosing box has zero area (two degenerate boxes on a line) gives 0.
    """
    a, b, inter, union = _pairwise_parts(a, b)
    hull_wh = jnp.maximum(jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2]), 0.0)
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return _safe_div(inter, union) - _safe_div(hull - union, hull)


@jax.jit
def clip_boxes(boxes, lo=0.0, hi=1.0):
    """Clamp every coordinate into [lo, hi] (image bounds in normalised coordinates by default)."""
    return jnp.clip(_f32(boxes), lo, hi)


def _centre_size(boxes):
    ymin, xmin, ymax, xmax = _unstack(boxes)
    return (ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin


@jax.jit
def encode_boxes(boxes, anchors, weights=(10.0, 10.0, 5.0, 5.0)):
    """Faster R-CNN regression targets ``(ty, tx, th, tw)`` of ``boxes`` relative to ``anchors``.

    ty = wy (cy - cya) / ha, th = wh log(h / ha), likewise for x. Heights and widths are floored at 1e-8
    so a degenerate box or anchor gives a large finite code instead of inf/NaN.
    """
    wy, wx, wh, ww = weights
    cy, cx, h, w = _centre_size(boxes)
    cya, cxa, ha, wa = _centre_size(anchors)
    ha, wa = jnp.maximum(ha, _EPS), jnp.maximum(wa, _EPS)
    h, w = jnp.maximum(h, _EPS), jnp.maximum(w, _EPS)
    return jnp.stack([wy * (cy - cya) / ha, wx * (cx - cxa) / wa,
                      wh * jnp.log(h / ha), ww * jnp.log(w / wa)], axis=-1)


@jax.jit
def decode_boxes(codes, anchors, weights=(10.0, 10.0, 5.0, 5.0), clip_log_scale=BBOX_XFORM_CLIP):
    """Inverse of ``encode_boxes``; the log-scales are clamped at ``clip_log_scale`` so exp cannot overflow."""
    wy, wx, wh, ww = weights
    codes = _f32(codes)
    cya, cxa, ha, wa = _centre_size(anchors)
    cy = codes[..., 0] / wy * ha + cya
    cx = codes[..., 1] / wx * wa + cxa
    h = jnp.exp(jnp.minimum(codes[..., 2] / wh, clip_log_scale)) * ha
    w = jnp.exp(jnp.minimum(codes[..., 3] / ww, clip_log_scale)) * wa
    return jnp.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)
