"""decode_and_nms: exact against the NumPy greedy NMS, bit-identical to decode + vmapped multiclass NMS,
and the same inside shard_map (varying-axes checks on) and under jit with constant anchors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adapt.boxes import clip_boxes, decode_boxes
from adapt.nms import multiclass_non_max_suppression
from adapt.postprocess import _greedy_matrix, _greedy_stepwise, decode_and_nms, plain_decode_and_nms
from tests.test_nms import THRESHOLDS, greedy_nms, random_case

W = (10.0, 10.0, 5.0, 5.0)


def plain_path(codes, anchors, scores, iou, max_det, score_thr, top_k, per_class=None):
    """The reference: decode + clip every anchor's box, then per-image multiclass NMS."""
    boxes = clip_boxes(decode_boxes(codes, anchors, W))
    nms = lambda b, s: multiclass_non_max_suppression(  # noqa: E731
        b, s, iou, max_det, score_thr, max_per_class=per_class, pre_nms_top_k=top_k)
    return jax.vmap(nms)(boxes, scores)


def new_path(codes, anchors, scores, iou, max_det, score_thr, top_k, per_class=None):
    return decode_and_nms(codes, anchors, scores, box_weights=W, score_threshold=score_thr, iou_threshold=iou,
                          max_detections=max_det, pre_nms_top_k=top_k, max_per_class=per_class)


def assert_same(got, want):
    for name, a, b in zip(got._fields, got, want):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def numpy_reference(boxes, scores, iou, max_det, score_thr, top_k, per_class=None):
    """Per image: per-class textbook greedy NMS, merged by (-score, class, rank), zero-padded."""
    out = []
    for img_boxes, img_scores in zip(boxes, scores):
        rows = []
        for c in range(img_scores.shape[1]):
            keep = greedy_nms(img_boxes, img_scores[:, c], iou, per_class or max_det, score_thr, top_k)
            rows += [(-img_scores[i, c], c, rank, i) for rank, i in enumerate(keep)]
        rows = sorted(rows)[:max_det]
        det_boxes = np.zeros((max_det, 4), np.float32)
        det_scores, det_classes = np.zeros(max_det, np.float32), np.zeros(max_det, np.int32)
        for r, (_, c, _, i) in enumerate(rows):
            det_boxes[r], det_scores[r], det_classes[r] = img_boxes[i], img_scores[i, c], c
        out.append((det_boxes, det_scores, det_classes, len(rows)))
    return [np.stack(x) for x in zip(*out)]


def ssd_like(seed, batch=4, anchors=2000, classes=6, temperature=2.0):
    """Random anchors (some duplicated), codes ~ N(0, 1) and softmax scores with the background column dropped."""
    rng = np.random.default_rng(seed)
    centre, size = rng.uniform(0.05, 0.95, (anchors, 2)), rng.uniform(0.04, 0.3, (anchors, 2))
    anchor_boxes = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
    anchor_boxes[anchors // 2:anchors // 2 + 20] = anchor_boxes[anchors // 2]  # duplicate anchors
    codes = rng.normal(0, 1, (batch, anchors, 4)).astype(np.float32)
    logits = rng.normal(0, temperature, (batch, anchors, classes + 1)).astype(np.float32)
    return codes, anchor_boxes, np.array(jax.nn.softmax(logits, axis=-1))[..., 1:]


def hard_case(seed, n=160, classes=4):
    """Clustered anchors decoded with zero codes, so boxes overlap heavily, with exact duplicates and
    degenerate boxes; tied scores; class 1 empty; image 1 entirely below the score threshold; NaNs."""
    rng = np.random.default_rng(seed)
    anchors, base = random_case(seed, n=n, kind="clusters")
    codes = np.zeros((3, n, 4), np.float32)
    codes[2] = rng.normal(0, 0.5, (n, 4))
    scores = (rng.integers(0, 6, (3, n, classes)) / 5.0).astype(np.float32)  # many exact ties
    scores[:, :, 1] = 0.0  # an empty class
    scores[1] = rng.uniform(0, 0.05, (n, classes))  # everything below a 0.1 threshold
    scores[2, ::7, 2] = np.nan
    scores[0, :, 3] = base  # a class with its own ties
    return codes, anchors, scores


@pytest.mark.parametrize("top_k,max_det,per_class", [(50, 30, None), (5, 40, 3)])
def test_matches_numpy_greedy_reference(top_k, max_det, per_class):
    # (50, ...): more passing candidates than pre_nms_top_k; (5, 40, 3): at most 3 per class and fewer
    # candidates than detection slots.
    codes, anchors, scores = hard_case(0)
    boxes = np.asarray(clip_boxes(decode_boxes(codes, anchors, W)))
    for iou in THRESHOLDS:
        got = new_path(codes, anchors, scores, iou, max_det, 0.1, top_k, per_class)
        want = numpy_reference(boxes, scores, iou, max_det, 0.1, top_k, per_class)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), b)
        assert int(got.num_valid[1]) == 0  # the image below threshold
        assert not np.any(np.asarray(got.classes)[np.asarray(got.scores) > 0] == 1)  # the empty class


def test_library_plain_path_matches_numpy_greedy_reference():
    # plain_decode_and_nms: the reference a detector's reference_postprocess gives (experiments/benchmark.py)
    codes, anchors, scores = hard_case(1)
    boxes = np.asarray(clip_boxes(decode_boxes(codes, anchors, W)))
    got = plain_decode_and_nms(codes, anchors, scores, box_weights=W, score_threshold=0.1, iou_threshold=0.5,
                               max_detections=30, pre_nms_top_k=50)
    for a, b in zip(got, numpy_reference(boxes, scores, 0.5, 30, 0.1, 50)):
        np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.parametrize("seed", [0, 1])
def test_bit_identical_to_plain_path_on_ssd_like_outputs(seed):
    codes, anchors, scores = ssd_like(seed)
    for iou in THRESHOLDS:
        for score_thr in (0.01, 0.3):
            assert_same(new_path(codes, anchors, scores, iou, 100, score_thr, 200),
                        plain_path(codes, anchors, scores, iou, 100, score_thr, 200))


def test_bit_identical_without_top_k():
    # pre_nms_top_k None: 600 candidates per class, above MAX_MATRIX_CANDIDATES, so the stepwise loop.
    codes, anchors, scores = ssd_like(2, batch=2, anchors=600, classes=3, temperature=4.0)
    for iou in (0.3, 0.7):
        assert_same(new_path(codes, anchors, scores, iou, 50, 0.2, None),
                    plain_path(codes, anchors, scores, iou, 50, 0.2, None))


def test_signed_zero_scores_and_empty_inputs():
    # With a negative threshold, 0.0 and -0.0 pass and tie (lower index first), as in the plain path.
    codes, anchors, scores = ssd_like(3)  # shapes and settings of the SSD-like test: no new compile
    scores[:, ::3] = 0.0
    scores[:, 1::3] = -0.0
    assert_same(new_path(codes, anchors, scores, 0.5, 100, -1.0, 200),
                plain_path(codes, anchors, scores, 0.5, 100, -1.0, 200))
    for top_k, max_det in ((0, 5), (60, 0)):
        got = new_path(codes[:1], anchors, scores[:1], 0.5, max_det, -1.0, top_k)
        assert got.boxes.shape == (1, max_det, 4) and got.classes.dtype == jnp.int32
        assert not np.any(np.asarray(got.num_valid)) and not np.any(np.asarray(got.boxes))


@pytest.mark.parametrize("kind", ["uniform", "clusters"])
def test_nms_kernels_against_greedy(kind):
    # The two NMS kernels on sorted candidates (one per row), with some candidates not alive.
    cases = [random_case(20 + i, n=150, kind=kind) for i in range(3)]
    order = [np.lexsort((np.arange(150), -s)) for _, s in cases]
    boxes = np.stack([b[o] for (b, _), o in zip(cases, order)])
    alive = np.random.default_rng(5).random((3, 150)) < 0.8
    for iou in THRESHOLDS + (0.0, 0.99):
        want = np.zeros((3, 150), bool)
        for r in range(3):
            scores = np.where(alive[r], -np.arange(150.0), -np.inf)  # sorted order, dead ones dropped
            want[r, greedy_nms(boxes[r], scores, iou, 150, score_thr=-np.inf)] = True
        # 7 uneven row chunks (decode_and_nms runs 1 here, 4 on big batches).
        np.testing.assert_array_equal(jax.jit(_greedy_matrix, static_argnums=3)(boxes, alive, iou, 7), want)
        np.testing.assert_array_equal(jax.jit(_greedy_stepwise, static_argnums=3)(boxes, alive, iou, 150), want)


def test_shard_map_with_vma_checks_and_constant_anchors():
    codes, anchors, scores = ssd_like(4)
    want = plain_path(codes, anchors, scores, 0.45, 100, 0.01, 200)
    mesh = jax.make_mesh((4,), ("data",))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))  # noqa: E731
    fn = functools.partial(new_path, anchors=anchors, iou=0.45, max_det=100, score_thr=0.01, top_k=200)
    sharded = jax.jit(jax.shard_map(lambda c, s: fn(c, scores=s), mesh=mesh, in_specs=P("data"),
                                    out_specs=P("data")))  # check_vma defaults to True
    assert_same(sharded(put(codes), put(scores)), want)
    # The stepwise kernel's loop state passes the checks too.
    boxes = np.asarray(clip_boxes(decode_boxes(codes[:, :64], anchors[:64], W)))
    alive = scores[:, :64, 0] > 0.1
    stepwise = jax.jit(jax.shard_map(lambda b, a: _greedy_stepwise(b, a, 0.5, 10), mesh=mesh, in_specs=P("data"),
                                     out_specs=P("data")))
    np.testing.assert_array_equal(stepwise(put(boxes), put(alive)), _greedy_stepwise(boxes, alive, 0.5, 10))
    # Under jit with the anchors and weights as compile-time constants: still the eager result.
    constant = jax.jit(lambda c, s: new_path(c, anchors, s, 0.45, 100, 0.01, 200))
    assert_same(constant(codes, scores), want)
