"""Matcher against a NumPy transcription of torchvision's Matcher; targets, mining and sampling by count."""
import jax
import numpy as np
import pytest

from adapt.boxes import decode_boxes
from adapt.matching import IGNORE, NEGATIVE, assign_targets, hard_negative_mining, match_anchors, sample_balanced


def torchvision_matcher(iou, high, low, allow_low_quality):
    """torchvision.models.detection._utils.Matcher.__call__, line by line in NumPy (valid gt rows only)."""
    matched_vals, matches = iou.max(0), iou.argmax(0)
    all_matches = matches.copy()
    matches[matched_vals < low] = -1
    matches[(matched_vals >= low) & (matched_vals < high)] = -2
    if allow_low_quality:
        highest = iou.max(1)
        _, pred_inds = np.nonzero((iou == highest[:, None]) & (highest[:, None] > 0))  # + zero-IoU guard
        matches[pred_inds] = all_matches[pred_inds]
    return matches


IOU = np.array([[0.8, 0.5, 0.2, 0.0, 0.4],
                [0.1, 0.6, 0.25, 0.3, 0.4],
                [0.95, 0.95, 0.95, 0.95, 0.95]], np.float32)  # last row is padding
MASK = np.array([True, True, False])


def test_thresholds_and_ignore_band_by_hand():
    np.testing.assert_array_equal(match_anchors(IOU, MASK, 0.7, 0.3), [0, IGNORE, NEGATIVE, IGNORE, IGNORE])
    np.testing.assert_array_equal(match_anchors(IOU, MASK, 0.5), [0, 1, NEGATIVE, NEGATIVE, NEGATIVE])
    # The same padded row, unmasked, would win every anchor.
    np.testing.assert_array_equal(match_anchors(IOU, np.ones(3, bool), 0.7, 0.3), [2] * 5)
    np.testing.assert_array_equal(match_anchors(IOU, np.zeros(3, bool), 0.5), [NEGATIVE] * 5)


def test_low_quality_matches_by_hand():
    np.testing.assert_array_equal(match_anchors(IOU, MASK, 0.7, 0.3, True), [0, 1, NEGATIVE, IGNORE, IGNORE])
    tie = IOU.copy()
    tie[1, 4] = 0.6  # gt 1 now ties between anchors 1 and 4: both get it
    np.testing.assert_array_equal(match_anchors(tie, MASK, 0.7, 0.3, True), [0, 1, NEGATIVE, IGNORE, 1])
    # gt 0's best anchor (0) prefers gt 1: torchvision gives the anchor its own argmax, gt 1.
    steal = np.array([[0.5, 0.1], [0.6, 0.0]], np.float32)
    np.testing.assert_array_equal(match_anchors(steal, np.ones(2, bool), 0.7, 0.3, True), [1, NEGATIVE])
    # A gt overlapping no anchor adds nothing (torchvision would turn every zero-IoU anchor positive).
    none = np.array([[0.0, 0.0, 0.0], [0.9, 0.1, 0.0]], np.float32)
    np.testing.assert_array_equal(match_anchors(none, np.ones(2, bool), 0.7, 0.3, True), [1, NEGATIVE, NEGATIVE])


@pytest.mark.parametrize("seed", range(4))
def test_against_torchvision_matcher_with_padding(seed):
    rng = np.random.default_rng(seed)
    g, a = 6, 40
    iou = (rng.integers(1, 11, (g, a)) / 10).astype(np.float32)  # coarse values: many ties
    iou[rng.random((g, a)) < 0.5] = 0.0
    iou[:, 0] = 0.05  # no all-zero row
    mask = rng.random(g) < 0.7
    mask[0] = True
    valid = np.flatnonzero(mask)
    fn = match_anchors
    for high, low in ((0.7, 0.3), (0.5, 0.5), (0.5, 0.4)):
        for lq in (False, True):
            ref = torchvision_matcher(iou[valid], high, low, lq)
            ref = np.where(ref >= 0, valid[np.maximum(ref, 0)], ref)
            np.testing.assert_array_equal(fn(iou, mask, high, low, lq), ref)


def test_assign_targets():
    anchors = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0.5, 0.5, 1], [0.5, 0, 1, 0.5]], np.float32)
    gt = np.array([[0.02, 0, 0.5, 0.52], [0.5, 0.5, 0.9, 0.9], [0.5, 0, 1, 0.5]], np.float32)
    labels = np.array([2, 0, 5], np.int32)
    mask = np.array([True, True, False])  # gt 2 equals anchor 3 but is padding
    out = assign_targets(anchors, gt, labels, mask, matched_threshold=0.5, unmatched_threshold=0.4)
    # IoUs: anchor 0 / gt 0 = 0.24 / 0.2596 = 0.92; anchor 1 / gt 1 = 0.16 / 0.25 = 0.64; others < 0.02.
    np.testing.assert_array_equal(out["matches"], [0, 1, NEGATIVE, NEGATIVE])
    np.testing.assert_array_equal(out["cls_targets"], [3, 1, 0, 0])
    np.testing.assert_array_equal(out["positive"], [True, True, False, False])
    np.testing.assert_array_equal(out["negative"], [False, False, True, True])
    np.testing.assert_array_equal(out["ignore"], [False] * 4)
    np.testing.assert_allclose(decode_boxes(out["box_targets"], anchors)[:2], gt[:2], atol=1e-6)
    np.testing.assert_array_equal(out["box_targets"][2:], 0)
    # Ignore band: at 0.7 / 0.4 anchor 1 (IoU 0.64) is ignored; vmap over a batch of two images.
    batch = jax.vmap(lambda g, l, m: assign_targets(anchors, g, l, m, 0.7, 0.4))(
        np.stack([gt, gt]), np.stack([labels, labels]), np.stack([mask, mask]))
    np.testing.assert_array_equal(batch["matches"][1], [0, IGNORE, NEGATIVE, NEGATIVE])
    np.testing.assert_array_equal(batch["ignore"][1], [False, True, False, False])


def test_hard_negative_mining_counts_and_order():
    rng = np.random.default_rng(0)
    b, a = 4, 60
    loss = (rng.integers(0, 10, (b, a)) / 10).astype(np.float32)  # ties resolved by lower index
    positive = np.zeros((b, a), bool)
    for row, n in enumerate([0, 3, 12, 30]):
        positive[row, rng.choice(a, n, replace=False)] = True
    negative = ~positive & (rng.random((b, a)) < 0.8)
    got = np.asarray(hard_negative_mining(loss, positive, negative))
    for row in range(b):
        neg = np.flatnonzero(negative[row])
        k = min(3 * positive[row].sum(), len(neg))
        want = sorted(neg, key=lambda i: (-loss[row, i], i))[:k]
        assert got[row].sum() == k
        np.testing.assert_array_equal(np.flatnonzero(got[row]), sorted(want))
    assert np.asarray(hard_negative_mining(loss[1], positive[1], negative[1], ratio=1)).sum() == 3


_sample_many = jax.jit(jax.vmap(lambda k, p, n: sample_balanced(k, p, n, 32, 0.25), in_axes=(0, None, None)))


@pytest.mark.parametrize("num_pos,num_neg,want_pos,want_neg", [(10, 70, 8, 24), (3, 70, 3, 29), (3, 10, 3, 10),
                                                               (40, 0, 8, 0)])
def test_sample_balanced_counts(num_pos, num_neg, want_pos, want_neg):
    rng = np.random.default_rng(1)
    perm = rng.permutation(100)
    positive = np.isin(np.arange(100), perm[:num_pos])
    negative = np.isin(np.arange(100), perm[num_pos:num_pos + num_neg])
    keys = jax.random.split(jax.random.key(0), 2000)
    sp, sn = _sample_many(keys, positive, negative)
    sp, sn = np.asarray(sp), np.asarray(sn)
    assert np.all(sp.sum(1) == want_pos) and np.all(sn.sum(1) == want_neg)
    assert not np.any(sp & ~positive) and not np.any(sn & ~negative)
    # Uniform over the candidates: each is drawn with probability want / available (std < 0.012 here).
    if num_pos:
        np.testing.assert_allclose(sp[:, positive].mean(0), want_pos / num_pos, atol=0.05)
    if num_neg:
        np.testing.assert_allclose(sn[:, negative].mean(0), want_neg / num_neg, atol=0.05)
    assert len({r.tobytes() for r in sp[:50]}) > 1 or want_pos == num_pos  # different keys, different draws
