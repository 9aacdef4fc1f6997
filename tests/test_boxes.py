"""Box converters, areas, IoU/GIoU on hand-computed cases and a NumPy loop, and the box coder."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt import boxes as B


def _np_iou_giou(a, b):
    """Scalar float64 IoU and GIoU straight from the definitions."""
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda x: max(0.0, x[2] - x[0]) * max(0.0, x[3] - x[1])
    inter = ih * iw
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    iou = inter / union if union > 0 else 0.0
    return iou, (iou - (hull - union) / hull if hull > 0 else 0.0)


def test_converters_hand_values_and_round_trips():
    yxyx = np.array([[0.1, 0.2, 0.5, 0.6]], np.float32)
    np.testing.assert_allclose(B.yxyx_to_xyxy(yxyx, 100, 200), [[40, 10, 120, 50]], rtol=1e-6)
    np.testing.assert_allclose(B.yxyx_to_xywh(yxyx, 100, 200), [[40, 10, 80, 40]], rtol=1e-6)
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 0.5, (2, 7, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0, 0.5, (2, 7, 2))], -1).astype(np.float32)  # leading dims
    for to, back in ((B.yxyx_to_xyxy, B.xyxy_to_yxyx), (B.yxyx_to_xywh, B.xywh_to_yxyx)):
        np.testing.assert_allclose(back(to(boxes, 480, 640), 480, 640), boxes, atol=1e-6)
    xywh = np.array([[40, 10, 80, 40]], np.float32)
    np.testing.assert_allclose(B.xywh_to_yxyx(xywh, 100, 200), yxyx, rtol=1e-6)


def test_area_and_clip():
    boxes = np.array([[0, 0, 2, 3], [1, 1, 1, 5], [2, 2, 1, 1]], np.float32)  # normal, zero-height, flipped
    np.testing.assert_array_equal(B.area(boxes), [6, 0, 0])
    np.testing.assert_array_equal(B.clip_boxes([[-0.2, 0.5, 1.3, 0.75]]), [[0, 0.5, 1, 0.75]])
    np.testing.assert_array_equal(B.clip_boxes([[-3, 5, 130, 7]], 0, 100), [[0, 5, 100, 7]])


@pytest.mark.parametrize("a,b,iou,giou", [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 7 - 2 / 9),  # partial overlap: inter 1, union 7, hull 9
    ([0, 0, 4, 4], [1, 1, 2, 2], 1 / 16, 1 / 16),  # contained: hull == union
    ([0, 0, 1, 1], [2, 2, 3, 3], 0.0, -7 / 9),  # disjoint: hull 9, union 2
    ([0, 0, 1, 1], [0, 0, 1, 1], 1.0, 1.0),  # identical
    ([0, 0, 1, 1], [0, 1, 1, 2], 0.0, 0.0),  # touching edges: hull == union
    ([1, 1, 1, 1], [1, 1, 1, 1], 0.0, 0.0),  # degenerate point vs itself: 0, not NaN
    ([0, 0, 0, 2], [0, 0, 0, 2], 0.0, 0.0),  # degenerate segments, zero-area hull
    ([0.5, 0.5, 0.5, 0.5], [0, 0, 1, 1], 0.0, 0.0),  # point inside a box: hull == union == 1
])
def test_iou_giou_hand_cases(a, b, iou, giou):
    got_iou = B.pairwise_iou(np.array([a], np.float32), np.array([b], np.float32))
    got_giou = B.pairwise_giou(np.array([a], np.float32), np.array([b], np.float32))
    np.testing.assert_allclose(got_iou, [[iou]], atol=1e-7)
    np.testing.assert_allclose(got_giou, [[giou]], atol=1e-7)
    np.testing.assert_allclose(B.pairwise_iou(np.array([b], np.float32), np.array([a], np.float32)), [[iou]], atol=1e-7)


def test_pairwise_against_numpy_loop_with_batch_dims_jit_vmap():
    rng = np.random.default_rng(1)
    lo = rng.uniform(0, 1, (3, 9, 2))
    a = np.concatenate([lo, lo + rng.uniform(0, 0.5, (3, 9, 2))], -1).astype(np.float32)
    b = a[:, ::-1][:, :5].copy()
    b[:, 0, 2:] = b[:, 0, :2]  # a zero-area box
    want = np.array([[[_np_iou_giou(x, y) for y in b[k]] for x in a[k]] for k in range(3)])
    np.testing.assert_allclose(B.pairwise_iou(a, b), want[..., 0], atol=1e-6)
    np.testing.assert_allclose(B.pairwise_giou(a, b), want[..., 1], atol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(B.pairwise_iou))(a, b), want[..., 0], atol=1e-6)
    np.testing.assert_allclose(jax.vmap(B.pairwise_giou)(a, b), want[..., 1], atol=1e-6)


def test_no_nan_gradients_on_degenerate_boxes():
    boxes = jnp.array([[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.2, 0.6], [0.1, 0.1, 0.4, 0.4]])
    for fn in (B.pairwise_iou, B.pairwise_giou):
        grad = jax.grad(lambda x: fn(x, x).sum())(boxes)
        assert np.all(np.isfinite(grad))
    codes = B.encode_boxes(boxes[:2], boxes[::-1][:2])
    assert np.all(np.isfinite(codes))


def test_encode_hand_value():
    anchor = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)  # centre (0.5, 0.5), size 1 x 1
    box = np.array([[0.1, 0.2, 0.5, 1.0]], np.float32)  # centre (0.3, 0.6), size 0.4 x 0.8
    want = [[10 * -0.2, 10 * 0.1, 5 * math.log(0.4), 5 * math.log(0.8)]]
    np.testing.assert_allclose(B.encode_boxes(box, anchor), want, rtol=1e-5)
    np.testing.assert_allclose(B.encode_boxes(box, anchor, (1, 1, 1, 1)), np.divide(want, [10, 10, 5, 5]), rtol=1e-5)


def test_coder_round_trip_and_clamp():
    rng = np.random.default_rng(2)
    def rand(n):
        lo = rng.uniform(0, 0.7, (n, 2))
        return np.concatenate([lo, lo + rng.uniform(0.05, 0.3, (n, 2))], -1).astype(np.float32)
    boxes, anchors = rand(50), rand(50)
    for w in ((10, 10, 5, 5), (1, 1, 1, 1)):
        codes = jax.jit(lambda b, a: B.encode_boxes(b, a, w))(boxes, anchors)
        np.testing.assert_allclose(B.decode_boxes(codes, anchors, w), boxes, atol=1e-5)
    # Huge log-scales are clamped at log(1000/16): height = 62.5 x anchor height, finite.
    anchor = np.array([[0.4, 0.4, 0.6, 0.5]], np.float32)
    out = B.decode_boxes(np.array([[0, 0, 1e4, 1e4]], np.float32), anchor)
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 62.5 * 0.2, rtol=1e-5)
    np.testing.assert_allclose(out[0, 3] - out[0, 1], 62.5 * 0.1, rtol=1e-5)
