"""Anchor generators against closed forms, box by box, and published numbers (SSD300's 8732, d2l.ai)."""
import math

import numpy as np
import pytest

from adapt.anchors import grid_anchors, sizes_ratios_anchors, ssd_aspect_ratios, ssd_default_boxes


def _box(cy, cx, h, w):
    return [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]


def test_ssd300_count_and_per_level_counts():
    sizes = [38, 19, 10, 5, 3, 1]
    boxes = ssd_default_boxes(sizes)
    assert boxes.shape == (8732, 4) and boxes.dtype == np.float32  # the SSD300 paper's figure
    ratios = [(2,), (2, 3), (2, 3), (2, 3), (2,), (2,)]
    assert ssd_aspect_ratios(None, 6) == ratios and ssd_aspect_ratios((2, 3), 2) == [(2, 3)] * 2
    assert sum(f * f * (2 + 2 * len(r)) for f, r in zip(sizes, ratios)) == 8732
    assert ssd_default_boxes([4, 2], aspect_ratios=(2, 3, 4)).shape == (16 * 8 + 4 * 8, 4)


def test_ssd_every_box_against_closed_form():
    sizes, ratios = [4, (2, 3), 1], [(2,), (2, 3), (3,)]
    min_s, max_s = 0.1, 0.7
    boxes = ssd_default_boxes(sizes, min_s, max_s, ratios)
    scales = [0.1, 0.4, 0.7, 1.0]  # linear from min to max, then s_{m+1} = 1
    expected = []
    for k, f in enumerate(sizes):
        fh, fw = (f, f) if isinstance(f, int) else f
        for i in range(fh):
            for j in range(fw):  # location-major
                cy, cx, s = (i + 0.5) / fh, (j + 0.5) / fw, scales[k]
                expected.append(_box(cy, cx, s, s))
                expected.append(_box(cy, cx, math.sqrt(s * scales[k + 1]), math.sqrt(s * scales[k + 1])))
                for r in ratios[k]:  # width = s sqrt(r), height = s / sqrt(r); then 1 / r
                    expected.append(_box(cy, cx, s / math.sqrt(r), s * math.sqrt(r)))
                    expected.append(_box(cy, cx, s * math.sqrt(r), s / math.sqrt(r)))
    np.testing.assert_allclose(boxes, expected, atol=1e-6)
    # SSD300 spot values: first box of level 0 and the extra box of the 1x1 level.
    ssd = ssd_default_boxes([38, 19, 10, 5, 3, 1])
    np.testing.assert_allclose(ssd[0], _box(0.5 / 38, 0.5 / 38, 0.2, 0.2), atol=1e-6)
    np.testing.assert_allclose(ssd[-3], _box(0.5, 0.5, math.sqrt(0.9), math.sqrt(0.9)), atol=1e-6)
    assert ssd_default_boxes([38, 19, 10, 5, 3, 1], clip=True).min() >= 0.0


def test_sizes_ratios_d2l_reference():
    # d2l.ai 14.4: a 561 x 728 map, sizes (0.75, 0.5, 0.25), ratios (1, 2, 0.5) -> 2,042,040 boxes, and the
    # first box at pixel (250, 250) printed as xyxy (0.06, 0.07, 0.63, 0.82).
    boxes = sizes_ratios_anchors([(561, 728)], (0.75, 0.5, 0.25), (1, 2, 0.5))
    assert boxes.shape == (561 * 728 * 5, 4) == (2042040, 4)
    first = boxes.reshape(561, 728, 5, 4)[250, 250, 0]
    np.testing.assert_allclose(first[[1, 0, 3, 2]], [0.06, 0.07, 0.63, 0.82], atol=0.005)


def test_sizes_ratios_order_and_values():
    sizes, ratios = [(0.2, 0.3), (0.5,)], [(1, 2, 0.5), (1, 3)]
    boxes = sizes_ratios_anchors([(2, 4), 3], sizes, ratios)
    assert boxes.shape == (2 * 4 * (2 + 3 - 1) + 9 * (1 + 2 - 1), 4)
    expected = []
    for f, s, r in zip([(2, 4), (3, 3)], sizes, ratios):
        fh, fw = f
        pairs = [(si, r[0]) for si in s] + [(s[0], rj) for rj in r[1:]]
        for i in range(fh):
            for j in range(fw):
                for si, rj in pairs:
                    expected.append(_box((i + 0.5) / fh, (j + 0.5) / fw, si / math.sqrt(rj),
                                         si * math.sqrt(rj) * fh / fw))
    np.testing.assert_allclose(boxes, expected, atol=1e-6)


def test_grid_anchors_pixels():
    image = (64, 96)
    boxes = grid_anchors([(4, 6), (2, 3)], image, [16, 32], [(16, 32), (64,)], (0.5, 1, 2))
    assert boxes.shape == (4 * 6 * 6 + 2 * 3 * 3, 4)
    px = boxes * np.array([64, 96, 64, 96])
    h, w = px[:, 2] - px[:, 0], px[:, 3] - px[:, 1]
    np.testing.assert_allclose(h * w, [s * s for s in [16, 32] * 3] * 24 + [64 * 64] * 18, rtol=1e-5)
    np.testing.assert_allclose(w / h, [r for r in (0.5, 1, 2) for _ in (16, 32)] * 24 + [0.5, 1, 2] * 6, rtol=1e-5)
    # Location-major: cell (i=1, j=2) of level 0 starts at row (1 * 6 + 2) * 6; centre at cell centre (24, 40).
    cell = px[(1 * 6 + 2) * 6:(1 * 6 + 2) * 6 + 6]
    np.testing.assert_allclose((cell[:, :2] + cell[:, 2:]) / 2, [[24, 40]] * 6, atol=1e-4)
    # Level 1, ratio 1, cell (1, 0) with stride 32: a 64 x 64 box centred at (48, 16); offset 0 -> (32, 0).
    np.testing.assert_allclose(px[144 + 3 * 3 + 1], [16, -16, 80, 48], atol=1e-4)
    zero = grid_anchors([(2, 3)], image, [32], [(64,)], (1,), offset=0.0) * np.array([64, 96, 64, 96])
    np.testing.assert_allclose(zero[3], [0, -32, 64, 32], atol=1e-4)


def test_per_level_length_mismatch_raises():
    with pytest.raises(ValueError, match="aspect_ratios"):
        ssd_default_boxes([4, 2], aspect_ratios=[(2,), (2,), (3,)])
