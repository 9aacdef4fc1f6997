"""Anchor-to-ground-truth matching, target assignment, hard-negative mining and balanced sampling.

All functions take one image (ground truth padded to a fixed G with a validity mask) and are jit- and
vmap-able; vmap them over the batch. Ground truth rows whose mask is False are never matched. They are jitted here (flags
and sizes static) so that eager calls compile once instead of op by op.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from adapt.boxes import encode_boxes, pairwise_iou

NEGATIVE = -1  # anchor is background
IGNORE = -2  # anchor in the ignore band: neither positive nor negative
IGNORE_KEYS = ('ignore_boxes', 'ignore_mask')  # a pseudo-labelled batch's regions of uncertain objects


@functools.partial(jax.jit, static_argnames=("allow_low_quality",))
def match_anchors(iou, gt_mask, matched_threshold=0.5, unmatched_threshold=None, allow_low_quality=False):
    """Argmax matcher with thresholds and an ignore band (torchvision / Detectron2 ``Matcher``).

    iou: [G, A] quality of each ground truth (rows) against each anchor. An anchor takes its best valid
    ground truth if that IoU >= matched_threshold; it is NEGATIVE (-1) below unmatched_threshold (defaults to
    matched_threshold: no band) and IGNORE (-2) in between. With ``allow_low_quality``, every valid ground
    truth also keeps the anchor(s) of its highest IoU, ties included: such an anchor gets back its own argmax
    ground truth (which may be another box), as in torchvision. A ground truth that overlaps no anchor
    (highest IoU 0) adds nothing, where torchvision would mark every zero-IoU anchor positive.
    Returns int32 [A]: the matched gt index (>= 0), NEGATIVE or IGNORE.
    """
    if unmatched_threshold is None:
        unmatched_threshold = matched_threshold
    if iou.shape[0] == 0:
        return jnp.full(iou.shape[1:], NEGATIVE, jnp.int32)
    iou = jnp.where(jnp.asarray(gt_mask, bool)[:, None], jnp.asarray(iou, jnp.float32), -1.0)  # padded gt can never win
    # Materialised once: XLA:CPU would otherwise recompute the IoUs inside each of the reductions below.
    iou = lax.optimization_barrier(iou)
    best_iou = iou.max(axis=0)
    # argmax as the first index reaching the maximum (the same value; XLA:CPU's argmax reduction is slow)
    rows = jnp.arange(iou.shape[0], dtype=jnp.int32)[:, None]
    best_gt = jnp.min(jnp.where(iou == best_iou[None], rows, iou.shape[0]), axis=0).astype(jnp.int32)
    matches = jnp.where(best_iou >= matched_threshold, best_gt,
                        jnp.where(best_iou < unmatched_threshold, NEGATIVE, IGNORE)).astype(jnp.int32)
    if allow_low_quality:
        gt_best = iou.max(axis=1, keepdims=True)  # [G, 1]
        is_best = (iou == gt_best) & (gt_best > 0)  # padded rows hold -1, so they never count
        matches = jnp.where(is_best.any(axis=0), best_gt, matches)
    return matches


@functools.partial(jax.jit, static_argnames=("allow_low_quality", "weights"))
def assign_targets(anchors, gt_boxes, gt_labels, gt_mask, matched_threshold=0.5, unmatched_threshold=None,
                   allow_low_quality=False, weights=(10.0, 10.0, 5.0, 5.0)):
    """Classification and regression targets for every anchor of one image.

    Returns a dict: ``matches`` [A] (as ``match_anchors``); ``cls_targets`` int32 [A], 0 for background and
    ignored anchors, label + 1 for objects; ``box_targets`` [A, 4], the matched box encoded against its anchor
    (``encode_boxes`` with ``weights``; 0 where not positive); boolean masks ``positive``, ``negative`` and
    ``ignore`` [A], which serve as the loss weights.
    """
    gt_mask = jnp.asarray(gt_mask, bool)
    matches = match_anchors(pairwise_iou(gt_boxes, anchors), gt_mask, matched_threshold,
                            unmatched_threshold, allow_low_quality)
    positive = matches >= 0
    idx = jnp.maximum(matches, 0)
    labels = jnp.asarray(gt_labels, jnp.int32)[idx]
    encoded = encode_boxes(jnp.asarray(gt_boxes, jnp.float32)[idx], anchors, weights)
    return {
        "matches": matches,
        "cls_targets": jnp.where(positive, labels + 1, 0).astype(jnp.int32),
        "box_targets": jnp.where(positive[:, None], encoded, 0.0),
        "positive": positive,
        "negative": matches == NEGATIVE,
        "ignore": matches == IGNORE,
    }


def near_ignored(boxes, gt, threshold):
    """[A] bool: which of one image's `boxes` [A, 4] (anchors, proposals) overlap a valid ignore region of `gt`
    ({'ignore_boxes' [K, 4], 'ignore_mask' [K]}: a teacher's uncertain detections) at IoU >= `threshold` (a
    matcher's negative threshold: such a box would otherwise teach background where an object may be);
    all False when `gt` has no ignore regions."""
    if 'ignore_boxes' not in gt:
        return jnp.zeros(boxes.shape[:1], bool)
    iou = pairwise_iou(boxes, gt['ignore_boxes'])  # [A, K]
    return jnp.any((iou >= threshold) & jnp.asarray(gt['ignore_mask'], bool)[None], axis=-1)


def negative_threshold(matcher: dict) -> float:
    """The IoU below which a matcher's anchor is background (`unmatched_threshold`, else `matched_threshold`)."""
    unmatched = matcher.get('unmatched_threshold')
    return matcher.get('matched_threshold', 0.5) if unmatched is None else unmatched


def _rank(priority, axis=-1):
    """Position of each element when sorted by ascending priority (stable: ties keep index order)."""
    order = jnp.argsort(priority, axis=axis, stable=True)
    return jnp.argsort(order, axis=axis, stable=True)


def _sortable_bits(x):
    """uint32 keys in the same order as the float32 values (-0.0 taken as 0.0)."""
    bits = lax.bitcast_convert_type(jnp.asarray(x, jnp.float32) + 0.0, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


@jax.jit
def hard_negative_mining(neg_loss, positive, negative, ratio=3):
    """SSD hard-negative mining: keep the ``ratio * num_pos`` negatives with the largest loss.

    Works on the last axis (anchors), with any leading batch dims; num_pos is counted per row, so the number
    kept per row is min(ratio * num_pos, num_neg). Ties in the loss go to the lower anchor index. Static
    shapes, and no sort: the k-th largest loss is found by a 32-step bisection on order-preserving integer
    keys, O(32 A) per row instead of two argsorts (20x faster on CPU for 8k anchors). Returns the boolean
    mask of kept negatives.
    """
    negative = jnp.asarray(negative, bool)
    k = jnp.minimum(ratio * jnp.sum(jnp.asarray(positive, jnp.int32), -1, keepdims=True),
                    jnp.sum(negative, -1, keepdims=True))
    keys = _sortable_bits(neg_loss)

    def count_at_least(threshold):
        return jnp.sum(negative & (keys >= threshold), -1, keepdims=True)

    def halve(_, bounds):  # invariant: count_at_least(lo) >= k > count_at_least(hi + 1)
        lo, hi = bounds
        mid = lo + (hi - lo) // 2 + (hi - lo) % 2
        ok = count_at_least(mid) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    # Bounds made *_like(k) so that, inside shard_map, the loop carry varies over devices as the body's does.
    bounds = (jnp.zeros_like(k, jnp.uint32), jnp.full_like(k, 0xFFFFFFFF, jnp.uint32))
    kth, _ = lax.fori_loop(0, 32, halve, bounds)
    above = negative & (keys > kth)
    ties = negative & (keys == kth)
    take_ties = ties & (jnp.cumsum(ties, -1) <= k - jnp.sum(above, -1, keepdims=True))
    return (above | take_ties) & (k > 0)


def _random_subset(key, mask, count):
    """Uniformly chosen ``count`` of the True entries of ``mask`` (all of them if fewer)."""
    priority = jnp.where(mask, jax.random.uniform(key, mask.shape), 2.0)
    return mask & (_rank(priority) < count)


@functools.partial(jax.jit, static_argnames=("num_samples", "positive_fraction"))
def sample_balanced(key, positive, negative, num_samples, positive_fraction):
    """Sample a fixed-size minibatch of anchors/RoIs (torchvision ``BalancedPositiveNegativeSampler``).

    Takes up to floor(num_samples * positive_fraction) positives at random, then fills the rest of
    ``num_samples`` with random negatives (so fewer positives mean more negatives). Returns the boolean masks
    (sampled_positive, sampled_negative), same shape as the inputs [A].
    """
    positive, negative = jnp.asarray(positive, bool), jnp.asarray(negative, bool)
    num_pos = jnp.minimum(int(num_samples * positive_fraction), positive.sum())
    num_neg = jnp.minimum(num_samples - num_pos, negative.sum())
    key_pos, key_neg = jax.random.split(key)
    return _random_subset(key_pos, positive, num_pos), _random_subset(key_neg, negative, num_neg)
