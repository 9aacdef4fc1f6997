"""Fixed-size, jit-able non-maximum suppression that keeps exactly the textbook greedy set.

Textbook greedy NMS: drop boxes with score <= score_threshold, sort by score (descending, ties to the lower
index), walk the list and keep a box unless a box kept earlier overlaps it with IoU > iou_threshold
(strictly), stop after max_output_size boxes. Here each step jumps straight to the next surviving box (the
first unsuppressed one in sorted order, which is exactly the box the walk keeps next) and suppresses
everything it overlaps, so the loop runs once per KEPT box, each step O(N) with no N x N IoU matrix in
memory. The thresholds are ordinary (traceable) arguments: nothing is hard-coded.

With ``pre_nms_top_k`` below the number of boxes, the candidates come from `lax.top_k` (a partial sort,
far cheaper than sorting everything; like the stable sort it puts the lower index first among equal
scores, and -0.0 is made +0.0 first so that it ties with 0.0 as in the sort). The loop state is built from
the inputs, so everything here also runs inside `jax.shard_map` with its varying-axes checks on.
`adapt.postprocess.decode_and_nms` is the fast batched path for detector outputs (same results).

Indices are padded with 0 (harmless to gather with); ``num_valid`` says how many are real.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adapt.boxes import pairwise_iou


@functools.partial(jax.jit, static_argnames=("max_output_size", "pre_nms_top_k"))
def non_max_suppression(boxes, scores, iou_threshold, max_output_size, score_threshold=-jnp.inf,
                        pre_nms_top_k=None):
    """Greedy NMS on boxes [N, 4] (any consistent corner layout, e.g. yxyx) and scores [N].

    ``pre_nms_top_k`` (static) first keeps only the k best-scoring boxes. ``max_output_size`` is static.
    Returns (selected_indices int32 [max_output_size]: indices into ``boxes`` in selection order, i.e. by
    descending score, padded with 0; num_valid int32). Scores that are NaN never pass the score threshold.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    n = scores.shape[0]
    k = n if pre_nms_top_k is None else min(n, pre_nms_top_k)
    if k == 0 or max_output_size == 0:
        return jnp.zeros((max_output_size,), jnp.int32), jnp.zeros((), jnp.int32)

    passing = scores > score_threshold
    key = jnp.where(passing, scores, -jnp.inf)
    if k < n:
        order = jax.lax.top_k(jnp.where(key == 0, 0.0, key), k)[1].astype(jnp.int32)
    else:
        order = jnp.argsort(-key, stable=True).astype(jnp.int32)
    sorted_boxes = boxes[order]
    alive = passing[order]  # candidates neither kept nor suppressed yet, in sorted order

    def cond(state):
        count, _, _, done = state
        return (count < max_output_size) & ~done

    def body(state):
        count, alive, selected, _ = state
        i = jnp.argmax(alive)  # first surviving box in score order
        found = alive[i]
        overlaps = pairwise_iou(sorted_boxes[i][None], sorted_boxes)[0] > iou_threshold
        alive = alive & ~overlaps & (jnp.arange(k) != i)
        selected = selected.at[count].set(jnp.where(found, order[i], 0))
        return count + found.astype(jnp.int32), alive, selected, ~found

    # Built from the scores (not constants, nor argsort's indices, which JAX types as device-invariant) so
    # that inside shard_map the carry's varying-axes type matches the body's.
    zero = jnp.zeros_like(scores[0], dtype=jnp.int32)
    init = (zero, alive, jnp.broadcast_to(zero, (max_output_size,)), zero > 0)
    count, _, selected, _ = jax.lax.while_loop(cond, body, init)
    return selected, count


def batched_non_max_suppression(boxes, scores, iou_threshold, max_output_size, score_threshold=-jnp.inf,
                                pre_nms_top_k=None):
    """``non_max_suppression`` over a batch of images: boxes [B, N, 4], scores [B, N] -> ([B, K], [B])."""
    nms = lambda b, s: non_max_suppression(b, s, iou_threshold, max_output_size, score_threshold, pre_nms_top_k)
    return jax.vmap(nms)(boxes, scores)


class Detections(NamedTuple):
    """Fixed-size detections of one image (a pytree, so vmap gives a batched one). Padding rows are 0."""
    boxes: jax.Array  # [D, 4]
    scores: jax.Array  # [D]
    classes: jax.Array  # int32 [D], column index into the scores' class axis
    num_valid: jax.Array  # int32 []


def _per_class_boxes(boxes, num_classes):
    """[N, 4] shared by all classes, or [N, C, 4] per class -> [C, N, 4]."""
    boxes = jnp.asarray(boxes, jnp.float32)
    if boxes.ndim == 2:
        return jnp.broadcast_to(boxes[None], (num_classes,) + boxes.shape)
    return jnp.swapaxes(boxes, 0, 1)


def _take_valid(x, idx, valid):
    """x[idx], with the rows where ``valid`` is False set to 0."""
    return jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 1)), x[idx], 0)


def _gather_top(boxes, scores, classes, valid, max_detections):
    """The ``max_detections`` valid rows of highest score (stable), zero-padded, as Detections."""
    order = jnp.argsort(-jnp.where(valid, scores, -jnp.inf), stable=True)[:max_detections]
    pad = (0, max_detections - order.shape[0])  # fewer candidates than max_detections
    order, keep = jnp.pad(order, pad), jnp.pad(valid[order], pad)
    return Detections(_take_valid(boxes, order, keep), _take_valid(scores, order, keep),
                      _take_valid(classes, order, keep).astype(jnp.int32), keep.sum().astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("max_detections", "max_per_class", "pre_nms_top_k"))
def multiclass_non_max_suppression(boxes, scores, iou_threshold, max_detections, score_threshold=-jnp.inf,
                                   max_per_class=None, pre_nms_top_k=None):
    """Per-class NMS (each class independently, exact), then the best ``max_detections`` over all classes.

    boxes [N, 4] shared by the classes or [N, C, 4] per class; scores [N, C] (drop a background column
    before calling, so ``classes`` are the dataset's 0-based labels). ``max_per_class`` (default
    max_detections) and ``pre_nms_top_k`` apply per class. Vmapping over classes instead of offsetting
    coordinates per class keeps the IoUs bit-identical to single-class NMS. Returns Detections.
    """
    scores = jnp.asarray(scores, jnp.float32)
    num_classes = scores.shape[1]
    per_class = max_detections if max_per_class is None else max_per_class
    cls_boxes = _per_class_boxes(boxes, num_classes)  # [C, N, 4]
    nms = lambda b, s: non_max_suppression(b, s, iou_threshold, per_class, score_threshold, pre_nms_top_k)
    idx, count = jax.vmap(nms)(cls_boxes, scores.T)
    valid = jnp.arange(per_class)[None] < count[:, None]  # [C, P]
    kept_boxes = jnp.take_along_axis(cls_boxes, idx[..., None], axis=1)
    kept_scores = jnp.take_along_axis(scores.T, idx, axis=1)
    classes = jnp.broadcast_to(jnp.arange(num_classes)[:, None], idx.shape)
    return _gather_top(kept_boxes.reshape(-1, 4), kept_scores.reshape(-1), classes.reshape(-1),
                       valid.reshape(-1), max_detections)


@functools.partial(jax.jit, static_argnames=("max_detections", "pre_nms_top_k"))
def class_agnostic_non_max_suppression(boxes, scores, iou_threshold, max_detections, score_threshold=-jnp.inf,
                                       pre_nms_top_k=None):
    """Class-agnostic NMS: each box takes its best class, then one NMS over all boxes regardless of class.

    Same inputs and output as ``multiclass_non_max_suppression`` (with [N, C, 4] boxes, the box of the best
    class is used). A box of one class can suppress a box of another.
    """
    scores = jnp.asarray(scores, jnp.float32)
    best = jnp.argmax(scores, axis=1).astype(jnp.int32)
    best_scores = jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0]
    boxes = jnp.asarray(boxes, jnp.float32)
    if boxes.ndim == 3:
        boxes = jnp.take_along_axis(boxes, best[:, None, None], axis=1)[:, 0]
    idx, count = non_max_suppression(boxes, best_scores, iou_threshold, max_detections, score_threshold,
                                     pre_nms_top_k)
    valid = jnp.arange(max_detections) < count
    return Detections(_take_valid(boxes, idx, valid), _take_valid(best_scores, idx, valid),
                      _take_valid(best, idx, valid), count)
