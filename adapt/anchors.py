"""Anchor (prior / default box) generators, normalised ``[ymin, xmin, ymax, xmax]`` [A, 4].

Anchors depend only on static configuration, so they are built once with NumPy and returned as float32
NumPy arrays: under ``jit`` they become constants, on the host they need no device.

Order (every generator, and every head must emit its predictions in the same order):
levels in the order given; inside a level, location-major, row by row (y), then column (x); inside a
location, the box types in the order the generator's docstring lists. So a head that outputs
``[B, fh, fw, K * D]`` for a level reshapes to ``[B, fh * fw * K, D]``, and the levels are concatenated.

Aspect ratio means width / height everywhere here (the SSD and d2l.ai convention). torchvision and
Detectron2 use height / width for grid anchors; since a ratio list is usually symmetric ({0.5, 1, 2}) the
set of boxes is the same and only the order inside a location differs.

Feature sizes are an int (square map) or a ``(height, width)`` pair per level; any sizes work.
"""
import math
from numbers import Number

import numpy as np


def _pair(x):
    return (x, x) if isinstance(x, Number) else tuple(x)


def _per_level(values, num_levels, name):
    """A flat sequence of numbers is shared by every level; otherwise there must be one entry per level."""
    values = tuple(values)
    if all(isinstance(v, Number) for v in values):
        return [values] * num_levels
    if len(values) != num_levels:
        raise ValueError(f"{name}: expected one entry per level ({num_levels}), got {len(values)}")
    return [tuple(v) for v in values]


def level_boxes(cy, cx, wh):
    """Boxes [fh * fw * K, 4] at every (cy[i], cx[j]) with normalised (width, height) pairs wh [K, 2]."""
    cy, cx = np.meshgrid(cy, cx, indexing="ij")  # [fh, fw]; row-major flattening = location-major order
    centre = np.stack([cy, cx], -1).reshape(-1, 1, 2)
    half = np.asarray(wh, np.float64)[None, :, ::-1] / 2  # (h/2, w/2)
    return np.concatenate([centre - half, centre + half], -1).reshape(-1, 4)


def cell_centres(feature_size):
    """Normalised centres (i + 0.5) / fh and (j + 0.5) / fw of a feature map's cells."""
    fh, fw = _pair(feature_size)
    return (np.arange(fh) + 0.5) / fh, (np.arange(fw) + 0.5) / fw


def ssd_scales(num_levels, min_scale=0.2, max_scale=0.9):
    """SSD eq. 4: scales spread linearly from min to max over the levels, plus s_{m+1} = 1 for the extra box."""
    if num_levels == 1:
        return [min_scale, 1.0]
    step = (max_scale - min_scale) / (num_levels - 1)
    return [min_scale + step * k for k in range(num_levels)] + [1.0]


def ssd_aspect_ratios(aspect_ratios, num_levels):
    """Per-level ratio tuples as ``ssd_default_boxes`` resolves them (heads need the count per location).

    None gives SSD300's pattern: (2,) on the first and the last two levels, (2, 3) in between.
    """
    if aspect_ratios is None:
        return [(2.0,) if k == 0 or k >= num_levels - 2 else (2.0, 3.0) for k in range(num_levels)]
    return _per_level(aspect_ratios, num_levels, "aspect_ratios")


def ssd_default_boxes(feature_sizes, min_scale=0.2, max_scale=0.9, aspect_ratios=None, clip=False):
    """SSD multi-level default boxes (Liu et al. 2016, as torchvision's DefaultBoxGenerator).

    Per location of level k, 2 + 2 * len(ratios_k) boxes, in this order:
    (s_k, ratio 1), (sqrt(s_k * s_{k+1}), ratio 1), then for each r: (s_k, r), (s_k, 1 / r), where a box of
    scale s and ratio r has width s * sqrt(r) and height s / sqrt(r). Centres at ((i + 0.5) / fh, (j + 0.5) / fw).
    ``aspect_ratios``: ratios shared by all levels, or one tuple per level; None gives SSD300's pattern.
    ``clip`` clamps the boxes to the image.
    """
    n = len(feature_sizes)
    ratios = ssd_aspect_ratios(aspect_ratios, n)
    scales = ssd_scales(n, min_scale, max_scale)
    levels = []
    for k, size in enumerate(feature_sizes):
        s = scales[k]
        extra = math.sqrt(s * scales[k + 1])
        wh = [(s, s), (extra, extra)]
        for r in ratios[k]:
            q = math.sqrt(r)
            wh += [(s * q, s / q), (s / q, s * q)]
        levels.append(level_boxes(*cell_centres(size), wh))
    boxes = np.concatenate(levels)
    return (np.clip(boxes, 0.0, 1.0) if clip else boxes).astype(np.float32)


def sizes_ratios_anchors(feature_sizes, sizes, ratios):
    """The d2l.ai multibox prior: n sizes and m ratios give n + m - 1 boxes per location.

    Per location, in this order: (s_1, r_1), (s_2, r_1), ..., (s_n, r_1), (s_1, r_2), ..., (s_1, r_m);
    a box of size s and ratio r has height s / sqrt(r) and width s * sqrt(r) * fh / fw (d2l's correction
    making ratio-1 boxes square in pixels when the map, like the image, is not square).
    Centres at ((i + 0.5) / fh, (j + 0.5) / fw). ``sizes``/``ratios``: shared, or one tuple per level.
    """
    n = len(feature_sizes)
    sizes, ratios = _per_level(sizes, n, "sizes"), _per_level(ratios, n, "ratios")
    levels = []
    for size, s, r in zip(feature_sizes, sizes, ratios):
        fh, fw = _pair(size)
        pairs = [(si, r[0]) for si in s] + [(s[0], rj) for rj in r[1:]]
        wh = [(si * math.sqrt(rj) * fh / fw, si / math.sqrt(rj)) for si, rj in pairs]
        levels.append(level_boxes(*cell_centres(size), wh))
    return np.concatenate(levels).astype(np.float32)


def grid_anchors(feature_sizes, image_size, strides, sizes, ratios, offset=0.5):
    """Faster R-CNN / FPN anchors: every (ratio, size) pair at every cell of a stride grid, in pixels.

    Level k has a ``feature_sizes[k]`` grid with ``strides[k]`` pixels between cells; anchor centres sit at
    ((i + offset) * stride_y, (j + offset) * stride_x) pixels (offset 0.5: cell centres; torchvision uses 0).
    An anchor of size s and ratio r (width / height) is s * sqrt(r) wide and s / sqrt(r) high (area s^2).
    Per location, in this order: ratios outer, sizes inner (as torchvision). ``image_size`` (height, width)
    normalises the result; anchors are not clipped (proposals are clipped after decoding).
    """
    n = len(feature_sizes)
    sizes, ratios = _per_level(sizes, n, "sizes"), _per_level(ratios, n, "ratios")
    img_h, img_w = _pair(image_size)
    levels = []
    for size, stride, s, r in zip(feature_sizes, strides, sizes, ratios):
        fh, fw = _pair(size)
        sy, sx = _pair(stride)
        cy = (np.arange(fh) + offset) * sy / img_h
        cx = (np.arange(fw) + offset) * sx / img_w
        wh = [(si * math.sqrt(rj) / img_w, si / math.sqrt(rj) / img_h) for rj in r for si in s]
        levels.append(level_boxes(cy, cx, wh))
    return np.concatenate(levels).astype(np.float32)
