"""Batched detection post-processing: per-class top-k, decode, exact per-class greedy NMS, merge.

`decode_and_nms` gives bit for bit what the plain path gives (decode and clip every anchor's box, then
`adapt.nms.multiclass_non_max_suppression` on each image with ``pre_nms_top_k``), with less work:

1. Per image and class, the ``pre_nms_top_k`` best anchors above the score threshold from `lax.top_k`
   (which, like the plain path's stable sort, puts the lower anchor index first among equal scores;
   -0.0 is made +0.0 first so that it ties with 0.0 as in the sort): no sort of all anchors.
2. The boxes are decoded by the plain path's own `decode_boxes` + `clip_boxes` call; only the candidates'
   boxes are gathered. Anchors and weights pass an optimisation barrier so that XLA cannot fold constant
   anchors/weights into other arithmetic (it rewrites x / 10 as x * 0.1 when 10 is a compile-time
   constant, which moves some coordinates by an ulp): the output is the same eagerly, under jit with
   constants and inside shard_map, and equals the plain path run eagerly with ``box_weights`` passed
   (the plain path itself moves by an ulp under jit with constant anchors or weights).
3. Greedy NMS of each class's sorted candidates, all images and classes at once: one boolean matrix
   ``iou[i, j] > iou_threshold`` for i < j (`adapt.boxes.pairwise_iou`, the earlier box as first operand
   as in `adapt.nms`, so every decision is the plain path's; the threshold is the given one everywhere),
   then one loop over the K rows: row i removes what it overlaps if candidate i is still alive. Only
   earlier rows touch candidate i, so it is final when its row comes: this is the greedy walk. (A large
   matrix goes in a few row chunks, each against the columns from its first row on: less than all of it.)
4. The first ``max_per_class`` kept boxes of each class, merged over classes by score with one
   `lax.top_k` (ties: lower class, then the earlier kept box), as `multiclass_non_max_suppression` does.

No loop runs per image or per class, loop state comes from the inputs (so it runs inside `jax.shard_map`
with the varying-axes checks on), and the output has a fixed size with `num_valid`. When the overlap
matrix would be large (more than `MAX_MATRIX_CANDIDATES` candidates per class, e.g. ``pre_nms_top_k``
None, or more than `MAX_OVERLAP_MATRIX` entries), a loop that keeps one box per image and class per step
(the plain path's algorithm, vectorised) is used instead.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from adapt.boxes import clip_boxes, decode_boxes, pairwise_iou
from adapt.nms import Detections, multiclass_non_max_suppression

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # the box coder's scale factors (torchvision SSD / Faster R-CNN)
# The matrix NMS runs for at most this many candidates per class (it does K^2 IoUs and K loop steps; the
# stepwise loop does K IoUs per step and one step per kept box) and an overlap matrix [K, B, C, K] of at
# most MAX_OVERLAP_MATRIX booleans; otherwise the stepwise loop.
MAX_MATRIX_CANDIDATES = 512
MAX_OVERLAP_MATRIX = 2 ** 28
# Row chunks of the matrix NMS once the matrix has CHUNK_FROM entries: less IoU work, longer compiles (quick
# SSD, batch 64, 2-core CPU: NMS 20 ms in 4 chunks against 35 ms in one piece; compile 2.1 s against 1.2).
MATRIX_ROW_CHUNKS = 4
CHUNK_FROM = 2 ** 22


@functools.partial(jax.jit, static_argnames=("max_detections", "pre_nms_top_k", "max_per_class"))
def decode_and_nms(box_codes, anchors, scores, *, box_weights=BOX_WEIGHTS, score_threshold, iou_threshold,
                   max_detections, pre_nms_top_k, max_per_class=None):
    """Box codes [B, A, 4], anchors [A, 4] (normalised yxyx), per-class scores [B, A, C] (background dropped)
    -> `adapt.nms.Detections` with boxes [B, D, 4] (clipped yxyx), scores [B, D], classes int32 [B, D]
    (0-based) and num_valid int32 [B], D = ``max_detections``; rows past num_valid are 0.

    Per class: scores <= ``score_threshold`` (and NaN) are dropped, the ``pre_nms_top_k`` best are kept
    (None: all), greedy NMS (suppress IoU > ``iou_threshold``) keeps at most ``max_per_class`` (default
    ``max_detections``); then the ``max_detections`` best over all classes. Identical to
    ``jax.vmap(multiclass_non_max_suppression)`` on ``clip_boxes(decode_boxes(box_codes, anchors,
    box_weights))`` run eagerly, in every context (see the module docstring). The thresholds and
    ``box_weights`` may be traced.
    """
    scores = jnp.asarray(scores, jnp.float32)
    codes = jnp.asarray(box_codes, jnp.float32)
    batch, num_anchors, num_classes = scores.shape
    k = num_anchors if pre_nms_top_k is None else min(num_anchors, pre_nms_top_k)
    per_class = max_detections if max_per_class is None else max_per_class
    if k == 0 or num_classes == 0 or per_class == 0 or max_detections == 0:
        return _no_detections(scores, max_detections)

    # 1. Candidates: per image and class the k best passing scores, best first, ties to the lower index.
    class_scores = jnp.swapaxes(scores, 1, 2)  # [B, C, A]
    passing = class_scores > score_threshold  # NaN never passes
    key = jnp.where(passing, class_scores, -jnp.inf)
    key = jnp.where(key == 0, 0.0, key)  # -0.0 ties with 0.0, as in the plain path's sort
    top_key, top_idx = lax.top_k(key, k)  # [B, C, k]
    alive = top_key > -jnp.inf  # exactly the passing ones (a passing score is > -inf)
    top_scores = jnp.take_along_axis(class_scores, top_idx, axis=-1)  # the original values (keeps -0.0)

    # 2. Boxes of the candidates, decoded exactly as the plain path does. The barrier keeps XLA from
    # folding constant anchors/weights into the arithmetic (it would turn x / 10 into x * 0.1), so the
    # boxes are the same whether this runs eagerly, under jit with constants, or inside shard_map.
    anchors, box_weights = lax.optimization_barrier(
        (jnp.asarray(anchors, jnp.float32), tuple(jnp.asarray(w, jnp.float32) for w in box_weights)))
    boxes_all = clip_boxes(decode_boxes(codes, anchors, box_weights))  # [B, A, 4]
    flat = top_idx + (jnp.arange(batch, dtype=top_idx.dtype) * num_anchors)[:, None, None]
    boxes = boxes_all.reshape(batch * num_anchors, 4)[flat]  # [B, C, k, 4]

    # 3. Greedy NMS per (image, class); keep the first per_class kept boxes.
    entries = batch * num_classes * k * k
    if k <= MAX_MATRIX_CANDIDATES and entries <= MAX_OVERLAP_MATRIX:
        keep = _greedy_matrix(boxes, alive, iou_threshold, MATRIX_ROW_CHUNKS if entries >= CHUNK_FROM else 1)
    else:
        keep = _greedy_stepwise(boxes, alive, iou_threshold, per_class)
    keep = keep & (jnp.cumsum(keep, axis=-1, dtype=jnp.int32) <= per_class)

    # 4. Merge the classes: best scores first; ties to the lower class, then to the earlier kept box.
    n = num_classes * k
    merged_key = jnp.where(keep, top_key, -jnp.inf).reshape(batch, n)
    _, order = lax.top_k(merged_key, min(max_detections, n))
    valid = jnp.take_along_axis(keep.reshape(batch, n), order, axis=1)
    if order.shape[1] < max_detections:  # fewer candidates than detection slots
        pad = ((0, 0), (0, max_detections - order.shape[1]))
        order, valid = jnp.pad(order, pad), jnp.pad(valid, pad)
    det_boxes = jnp.take_along_axis(boxes.reshape(batch, n, 4), order[..., None], axis=1)
    det_scores = jnp.take_along_axis(top_scores.reshape(batch, n), order, axis=1)
    return Detections(jnp.where(valid[..., None], det_boxes, 0.0), jnp.where(valid, det_scores, 0.0),
                      jnp.where(valid, order // k, 0).astype(jnp.int32), valid.sum(axis=1, dtype=jnp.int32))


def plain_decode_and_nms(box_codes, anchors, scores, *, box_weights=BOX_WEIGHTS, score_threshold, iou_threshold,
                         max_detections, pre_nms_top_k, max_per_class=None):
    """The plain path `decode_and_nms` equals (run eagerly): every anchor's box decoded and clipped, then
    `adapt.nms.multiclass_non_max_suppression` on each image. The reference that checks it on real outputs."""
    boxes = clip_boxes(decode_boxes(box_codes, anchors, box_weights))
    return jax.vmap(lambda b, s: multiclass_non_max_suppression(
        b, s, iou_threshold, max_detections, score_threshold, max_per_class=max_per_class,
        pre_nms_top_k=pre_nms_top_k))(boxes, scores)


def _no_detections(scores, max_detections):
    """All-padding Detections (built from ``scores`` so they vary over a shard_map axis like it does)."""
    zero = jnp.zeros_like(scores, shape=(scores.shape[0], 1))  # [B, 1]
    rows = jnp.broadcast_to(zero, (zero.shape[0], max_detections))
    return Detections(jnp.broadcast_to(rows[..., None], rows.shape + (4,)), rows, rows.astype(jnp.int32),
                      zero[:, 0].astype(jnp.int32))


def _greedy_matrix(boxes, alive, iou_threshold, chunks=1):
    """Greedy NMS on candidates sorted best first: boxes [..., K, 4], alive [..., K] -> keep [..., K].

    over[i, ..., j] says that candidate i (first operand of `pairwise_iou`, as the kept box is in
    `adapt.nms`) overlaps a later candidate j; row i then removes what it overlaps if i is still alive.
    Row i is final when its turn comes (only earlier rows touch it), so this is the greedy walk. The rows
    may go in ``chunks`` pieces, each against the columns from its first row on (with 4 chunks 5/8 of the
    IoU matrix is computed, not all of it)."""
    k = boxes.shape[-2]
    if k == 0:
        return alive
    chunks = min(k, chunks)
    rows = jnp.moveaxis(boxes, -2, 0)[..., None, :]  # [K, ..., 1, 4]
    bounds = [k * c // chunks for c in range(chunks + 1)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        later = jnp.arange(lo, hi)[:, None] < jnp.arange(lo, k)[None, :]
        later = later.reshape((hi - lo,) + (1,) * (boxes.ndim - 2) + (k - lo,))
        over = pairwise_iou(rows[lo:hi], boxes[..., lo:, :])[..., 0, :] > iou_threshold  # [rows, ..., cols]
        over = over & later
        tail = lax.fori_loop(0, hi - lo, lambda i, a, over=over: a & ~(a[..., i, None] & over[i]), alive[..., lo:])
        alive = jnp.concatenate([alive[..., :lo], tail], axis=-1)
    return alive


def _greedy_stepwise(boxes, alive, iou_threshold, max_keep):
    """Greedy NMS as in `adapt.nms.non_max_suppression`: each step keeps the first surviving candidate of
    every (image, class) and suppresses what it overlaps; at most ``max_keep`` steps, O(K) memory."""
    positions = jnp.arange(boxes.shape[-2])

    def cond(state):
        step, alive, _ = state
        return (step < max_keep) & jnp.any(alive)

    def body(state):
        step, alive, keep = state
        first = jnp.argmax(alive, axis=-1)  # [...]
        found = jnp.take_along_axis(alive, first[..., None], axis=-1)  # [..., 1]
        best = jnp.take_along_axis(boxes, first[..., None, None], axis=-2)  # [..., 1, 4]
        over = pairwise_iou(best, boxes)[..., 0, :] > iou_threshold
        this = (positions == first[..., None]) & found
        return step + 1, alive & ~over & ~this, keep | this

    return lax.while_loop(cond, body, (0, alive, jnp.zeros_like(alive)))[2]
