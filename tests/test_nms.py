"""NMS against a plain NumPy greedy loop (the textbook algorithm), at several thresholds, under jit and vmap."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.nms import (batched_non_max_suppression, class_agnostic_non_max_suppression,
                       multiclass_non_max_suppression, non_max_suppression)

THRESHOLDS = (0.3, 0.45, 0.5, 0.7)
N = 160


def _iou(a, b):
    """IoU of two boxes in float64; empty union gives 0."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda x: max(0.0, x[2] - x[0]) * max(0.0, x[3] - x[1])
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def greedy_nms(boxes, scores, thr, max_out, score_thr=-np.inf, top_k=None):
    """Textbook NMS: sort by score (ties: lower index first), keep unless IoU > thr with a kept box."""
    boxes = np.asarray(boxes, np.float64)
    order = sorted((i for i in range(len(scores)) if scores[i] > score_thr), key=lambda i: (-scores[i], i))
    if top_k is not None:
        order = order[:top_k]
    keep = []
    for i in order:
        if len(keep) == max_out:
            break
        if all(_iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def random_case(seed, n=N, kind="uniform"):
    """float32 boxes/scores. 'clusters': heavy overlap around few centres, exact duplicates, tied scores,
    and some zero-area boxes."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        centre = rng.uniform(0, 1, (n, 2))
        size = rng.uniform(0.02, 0.4, (n, 2))
        scores = rng.uniform(size=n)
    else:
        hubs = rng.uniform(0.2, 0.8, (5, 2))
        centre = hubs[rng.integers(0, 5, n)] + rng.normal(0, 0.03, (n, 2))
        size = rng.uniform(0.1, 0.3, (n, 2))
        size[rng.random(n) < 0.05] = 0.0  # degenerate boxes
        scores = rng.integers(0, 6, n) / 5.0  # many exact ties
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    if kind != "uniform":
        dup = rng.integers(0, n, n // 5)
        boxes[dup[1:]] = boxes[dup[0]]  # exact duplicate boxes
    return boxes.astype(np.float32), scores.astype(np.float32)


def _check(result, expected, max_out):
    idx, count = (np.asarray(x) for x in result)
    assert idx.shape == (max_out,) and idx.dtype == np.int32
    assert int(count) == len(expected)
    np.testing.assert_array_equal(idx[:count], expected)
    assert np.all(idx[count:] == 0)  # documented padding value


@pytest.mark.parametrize("kind", ["uniform", "clusters"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_greedy_reference(seed, kind):
    boxes, scores = random_case(seed, kind=kind)
    for thr in THRESHOLDS:
        for max_out in (N, 7):
            _check(non_max_suppression(boxes, scores, thr, max_out), greedy_nms(boxes, scores, thr, max_out), max_out)


def test_under_outer_jit_with_traced_threshold():
    boxes, scores = random_case(3, kind="clusters")
    fn = jax.jit(lambda b, s, t: non_max_suppression(b, s, t, 50, score_threshold=0.1))
    for thr in THRESHOLDS + (0.0, 0.99):
        _check(fn(boxes, scores, jnp.float32(thr)), greedy_nms(boxes, scores, thr, 50, score_thr=0.1), 50)


def test_vmap_over_images():
    cases = [random_case(10 + b, kind=k) for b, k in enumerate(["uniform", "clusters", "clusters", "uniform"])]
    boxes, scores = np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases])
    for thr in THRESHOLDS:
        idx, count = batched_non_max_suppression(boxes, scores, thr, 40)
        manual = jax.vmap(lambda b, s: non_max_suppression(b, s, thr, 40))(boxes, scores)
        np.testing.assert_array_equal(idx, manual[0])
        for b in range(len(cases)):
            _check((idx[b], count[b]), greedy_nms(boxes[b], scores[b], thr, 40), 40)


def test_score_threshold_and_top_k():
    boxes, scores = random_case(4, kind="clusters")
    for thr in THRESHOLDS:
        for top_k in (1, 10, 60):
            for score_thr in (-np.inf, 0.2, 0.6):
                got = non_max_suppression(boxes, scores, thr, 30, score_threshold=score_thr, pre_nms_top_k=top_k)
                _check(got, greedy_nms(boxes, scores, thr, 30, score_thr, top_k), 30)


def test_threshold_is_strict_and_honoured_above_half():
    # IoU of these two boxes is exactly 0.5 (0.25 / 0.5): kept at 0.5, suppressed just below.
    boxes = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.5, 1.0]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    _check(non_max_suppression(boxes, scores, 0.5, 2), [0, 1], 2)
    _check(non_max_suppression(boxes, scores, 0.49, 2), [0], 2)
    # IoU 0.6: a hard-coded 0.5 anywhere would suppress it at threshold 0.7.
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.6]], np.float32)
    _check(non_max_suppression(boxes, scores, 0.7, 2), [0, 1], 2)
    _check(non_max_suppression(boxes, scores, 0.59, 2), [0], 2)


def test_ties_go_to_lower_index_and_degenerate_boxes():
    boxes = np.array([[0, 0, 1, 1]] * 3 + [[0.5, 0.5, 0.5, 0.5]] * 2, np.float32)
    scores = np.array([0.5, 0.7, 0.7, 0.9, 0.9], np.float32)
    # The two zero-area boxes overlap nothing (IoU 0, not NaN) so both stay; box 1 beats its tie twin 2.
    _check(non_max_suppression(boxes, scores, 0.5, 5), [3, 4, 1], 5)


def test_empty_and_nan_scores():
    boxes, scores = random_case(5)
    scores[::2] = np.nan
    _check(non_max_suppression(boxes, scores, 0.5, N), greedy_nms(boxes, np.nan_to_num(scores, nan=-np.inf), 0.5, N), N)
    _check(non_max_suppression(np.zeros((0, 4)), np.zeros((0,)), 0.5, 3), [], 3)
    _check(non_max_suppression(boxes, np.full(N, -1.0), 0.5, 3, score_threshold=0.0), [], 3)


def _reference_multiclass(boxes, scores, thr, max_det, score_thr, per_class=None):
    """Per-class greedy NMS (at most per_class each), merged by score (ties: class, then selection order)."""
    rows = []
    for c in range(scores.shape[1]):
        b = boxes if boxes.ndim == 2 else boxes[:, c]
        for rank, i in enumerate(greedy_nms(b, scores[:, c], thr, per_class or max_det, score_thr)):
            rows.append((-scores[i, c], c, rank, b[i]))
    rows = sorted(rows, key=lambda r: r[:3])[:max_det]
    return [r[3] for r in rows], [-r[0] for r in rows], [r[1] for r in rows]


@pytest.mark.parametrize("per_class_boxes", [False, True])
def test_multiclass_matches_per_class_reference(per_class_boxes):
    rng = np.random.default_rng(6)
    n, c = 60, 3
    boxes, _ = random_case(6, n=n, kind="clusters")
    if per_class_boxes:
        boxes = np.stack([boxes, random_case(7, n=n)[0], random_case(8, n=n, kind="clusters")[0]], 1)
    scores = (rng.integers(0, 8, (n, c)) / 8).astype(np.float32)
    for thr in THRESHOLDS:
        for max_det, per_class in ((15, None), (200, None), (15, 2)):  # (15, 2): fewer candidates than slots
            det = multiclass_non_max_suppression(boxes, scores, thr, max_det, score_threshold=0.1,
                                                 max_per_class=per_class)
            det = jax.tree.map(np.asarray, det)
            b, s, k = _reference_multiclass(boxes, scores, thr, max_det, 0.1, per_class)
            m = int(det.num_valid)
            assert m == len(s) and det.boxes.shape == (max_det, 4)
            np.testing.assert_array_equal(det.boxes[:m], np.reshape(b, (-1, 4)))
            np.testing.assert_array_equal(det.scores[:m], s)
            np.testing.assert_array_equal(det.classes[:m], k)
            assert np.all(det.scores[m:] == 0) and np.all(det.classes[m:] == 0)


def test_class_agnostic_and_batched_multiclass():
    rng = np.random.default_rng(9)
    n, c = 50, 4
    boxes, _ = random_case(9, n=n, kind="clusters")
    scores = rng.uniform(size=(n, c)).astype(np.float32)
    best = scores.argmax(1)
    for thr in THRESHOLDS:
        det = jax.tree.map(np.asarray, class_agnostic_non_max_suppression(boxes, scores, thr, 20, score_threshold=0.3))
        keep = greedy_nms(boxes, scores.max(1), thr, 20, 0.3)
        assert int(det.num_valid) == len(keep)
        np.testing.assert_array_equal(det.boxes[:len(keep)], boxes[keep])
        np.testing.assert_array_equal(det.classes[:len(keep)], best[keep])
    # vmap over images gives the per-image results.
    fn = jax.vmap(functools.partial(multiclass_non_max_suppression, iou_threshold=0.45, max_detections=10))
    batch = fn(np.stack([boxes, boxes[::-1]]), np.stack([scores, scores[::-1]]))
    single = multiclass_non_max_suppression(boxes[::-1], scores[::-1], 0.45, 10)
    np.testing.assert_array_equal(batch.boxes[1], single.boxes)
    np.testing.assert_array_equal(batch.num_valid[1], single.num_valid)


def test_top_k_ties_signed_zeros_like_the_full_sort():
    # pre_nms_top_k < N takes lax.top_k; it must order ties (0.0 and -0.0 included) as the stable sort does.
    boxes, _ = random_case(11)
    scores = np.tile(np.array([0.0, -0.0, 0.5, -0.0, 0.0, 0.5], np.float32), N // 6 + 1)[:N]
    for top_k in (5, 40, N - 1):
        got = non_max_suppression(boxes, scores, 0.99, N, score_threshold=-1.0, pre_nms_top_k=top_k)
        _check(got, greedy_nms(boxes, scores, 0.99, N, -1.0, top_k), N)


def test_runs_in_shard_map_with_vma_checks():
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((4,), ("data",))
    cases = [random_case(30 + b, n=40, kind="clusters") for b in range(4)]
    boxes, scores = np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases])
    scores = np.stack([scores, scores[:, ::-1]], -1)  # two classes
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))  # noqa: E731
    per_image = lambda b, s: multiclass_non_max_suppression(b, s, 0.5, 10, 0.1, pre_nms_top_k=20)  # noqa: E731
    sharded = jax.jit(jax.shard_map(jax.vmap(per_image), mesh=mesh, in_specs=P("data"), out_specs=P("data")))
    got, want = sharded(put(boxes), put(scores)), jax.vmap(per_image)(boxes, scores)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
