"""RoIAlign and RoI max pooling against per-RoI, per-bin NumPy loops written from torchvision's C++ kernels
(roi_align_kernel.cpp, roi_pool_kernel.cpp), and FPN's level rule against its closed form."""
import math

import jax
import numpy as np
import pytest

from adapt.roi_ops import fpn_levels, roi_align, roi_pool


def ref_bilinear(fmap, y, x):
    h, w = fmap.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(fmap.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_high = y_low = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_high = x_low = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * fmap[y_low, x_low] + hy * lx * fmap[y_low, x_high] + ly * hx * fmap[y_high, x_low]
            + ly * lx * fmap[y_high, x_high])


def ref_roi_align(fmap, box, scale, out, sampling_ratio, aligned):
    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = (float(v) * scale - offset for v in box)
    roi_h, roi_w = y2 - y1, x2 - x1
    if not aligned:
        roi_h, roi_w = max(roi_h, 1.0), max(roi_w, 1.0)
    bin_h, bin_w = roi_h / out, roi_w / out
    result = np.zeros((out, out, fmap.shape[-1]))
    for ph in range(out):
        for pw in range(out):
            total = 0.0
            for iy in range(sampling_ratio):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio
                for ix in range(sampling_ratio):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / sampling_ratio
                    total = total + ref_bilinear(fmap, y, x)
            result[ph, pw] = total / sampling_ratio ** 2
    return result


def c_round(v):
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def ref_roi_pool(fmap, box, scale, out):
    h, w = fmap.shape[:2]
    y1, x1, y2, x2 = (c_round(float(v) * scale) for v in box)
    roi_h, roi_w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
    bin_h, bin_w = np.float32(roi_h) / np.float32(out), np.float32(roi_w) / np.float32(out)  # the kernel's float
    result = np.zeros((out, out, fmap.shape[-1]))
    for ph in range(out):
        for pw in range(out):
            hs = min(max(math.floor(np.float32(ph) * bin_h) + y1, 0), h)
            he = min(max(math.ceil(np.float32(ph + 1) * bin_h) + y1, 0), h)
            ws = min(max(math.floor(np.float32(pw) * bin_w) + x1, 0), w)
            we = min(max(math.ceil(np.float32(pw + 1) * bin_w) + x1, 0), w)
            if he > hs and we > ws:
                result[ph, pw] = fmap[hs:he, ws:we].max(axis=(0, 1))
    return result


def _boxes(rng, n, image):
    """Random boxes in input pixels: inside, across the border (partly outside), smaller than a cell."""
    lo = rng.uniform(-0.2 * image, image, (n, 2))
    size = np.concatenate([rng.uniform(0.5, 0.6 * image, (n - 8, 2)), rng.uniform(0.05, 3.0, (8, 2))])
    boxes = np.concatenate([lo, lo + size], 1)
    boxes[:4] = [[-5.0, -3.0, 20.0, 30.0], [30.0, 40.0, 70.0, 75.0], [0.0, 0.0, 64.0, 64.0], [63.2, 1.0, 63.9, 2.5]]
    return boxes.astype(np.float32)


# two levels of a 64-px input: stride 4 (16 x 16) and stride 8 (8 x 8)
MAPS = [np.random.default_rng(0).standard_normal((16, 16, 3)).astype(np.float32),
        np.random.default_rng(1).standard_normal((8, 8, 3)).astype(np.float32)]
SCALES = (0.25, 0.125)


@pytest.mark.parametrize('aligned', [True, False])
def test_roi_align_matches_the_reference_loop(aligned):
    rng = np.random.default_rng(2)
    boxes = _boxes(rng, 40, 64)
    levels = rng.integers(0, 2, len(boxes)).astype(np.int32)
    got = np.asarray(jax.jit(lambda b, l: roi_align(MAPS, SCALES, b, l, output_size=5, sampling_ratio=2,
                                                    aligned=aligned))(boxes, levels))
    want = np.stack([ref_roi_align(MAPS[lv], b, SCALES[lv], 5, 2, aligned) for b, lv in zip(boxes, levels)])
    assert got.shape == (40, 5, 5, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.abs(want).max() > 0.5 and (want == 0).all(axis=-1).any()  # real values, and samples outside the map


def test_roi_align_of_one_map_with_other_sampling_and_output_sizes():
    rng = np.random.default_rng(3)
    boxes = _boxes(rng, 12, 64)
    got = np.asarray(jax.jit(lambda b: roi_align([MAPS[0]], [0.25], b, output_size=(2, 3), sampling_ratio=3))(boxes))
    for b, g in zip(boxes, got):
        offset = 0.5
        y1, x1, y2, x2 = (float(v) * 0.25 - offset for v in b)
        want = np.zeros((2, 3, 3))  # a 2 x 3 grid: the square-grid reference does not apply, so inline
        for ph in range(2):
            for pw in range(3):
                ys = [y1 + ph * (y2 - y1) / 2 + (i + 0.5) * (y2 - y1) / 2 / 3 for i in range(3)]
                xs = [x1 + pw * (x2 - x1) / 3 + (j + 0.5) * (x2 - x1) / 3 / 3 for j in range(3)]
                want[ph, pw] = np.mean([ref_bilinear(MAPS[0], y, x) for y in ys for x in xs], axis=0)
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5)


def test_roi_pool_matches_the_reference_loop():
    rng = np.random.default_rng(4)
    boxes = _boxes(rng, 40, 64)
    levels = rng.integers(0, 2, len(boxes)).astype(np.int32)
    got = np.asarray(jax.jit(lambda b, l: roi_pool(MAPS, SCALES, b, l, output_size=7))(boxes, levels))
    want = np.stack([ref_roi_pool(MAPS[lv], b, SCALES[lv], 7) for b, lv in zip(boxes, levels)])
    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert (want == 0).all(axis=-1).any()  # empty bins (a box across the border) give 0


def test_gradients_reach_the_maps_where_the_rois_read():
    """d(sum of RoIAlign)/d(map) puts each sample's bilinear weights on its corner cells: a box inside one
    cell's neighbourhood touches only the cells around it; max pooling passes the gradient to the maxima."""
    box = np.array([[9.0, 13.0, 14.0, 18.0]], np.float32)  # map cells 2.1..3.4 (aligned), inside the map
    grad = np.asarray(jax.jit(jax.grad(lambda m: roi_align([m], [0.25], box, output_size=2).sum()))(MAPS[0]))
    assert np.isclose(grad.sum(), 4 * 3, rtol=1e-5)  # 4 bins x 3 channels, each bin a mean of weights summing to 1
    rows, cols = np.nonzero(grad[..., 0])
    assert rows.min() >= 1 and rows.max() <= 4 and cols.min() >= 2 and cols.max() <= 5
    pool_grad = np.asarray(jax.jit(jax.grad(lambda m: roi_pool([m], [0.25], box, output_size=1).sum()))(MAPS[0]))
    cells = MAPS[0][2:5, 3:6]  # rounded box: rows 2..4, cols 3..5 (torchvision's end is inclusive)
    for c in range(3):
        r, q = np.unravel_index(np.argmax(cells[..., c]), (3, 3))
        expected = np.zeros((16, 16))
        expected[2 + r, 3 + q] = 1.0
        np.testing.assert_array_equal(pool_grad[..., c], expected)


def test_fpn_levels_follow_the_canonical_rule():
    sides = np.array([224.0, 223.0, 112.0, 111.0, 448.0, 10.0, 2000.0, 0.0], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1)
    want = [min(max(math.floor(4 + math.log2(s / 224) + 1e-6), 2), 5) - 2 if s > 0 else 0 for s in sides]
    np.testing.assert_array_equal(np.asarray(jax.jit(fpn_levels, static_argnums=(1, 2))(boxes, 2, 5)), want)
    assert want == [2, 1, 1, 0, 3, 0, 3, 0]
