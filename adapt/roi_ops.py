"""RoI feature extraction (RoIAlign, RoI max pooling) over one feature map or an FPN pyramid, and FPN's level rule.

Every op takes ONE image (vmap it over the batch): `maps` a sequence of levels [H_l, W_l, C], `scales` their
size relative to the network input (1 / stride), `boxes` [R, 4] yxyx in pixels of the input, `levels` [R] the
index of the map each box reads (None: all from maps[0]). The levels are flattened and concatenated, and each
RoI reads its own through one gather with per-RoI offsets and sizes: fixed shapes, no loop over RoIs or levels,
and the gradient reaches the maps (proposal boxes usually arrive without one).

Semantics are torchvision's `roi_align` / `roi_pool` (the same as Detectron2's ROIAlign / ROIPool):
  roi_align: the box scaled, minus 0.5 when `aligned` (the half-pixel offset of Detectron2's ROIAlignV2;
    torchvision's Faster R-CNN runs with it off, and then boxes are at least 1 cell high and wide); each of
    the output bins averages sampling_ratio^2 bilinear samples at its sub-bin centres; a sample outside
    [-1, size] reads 0, one in [-1, 0] reads the border. sampling_ratio must be positive: torchvision's
    adaptive count (ceil(box / bins)) would give a shape that depends on the data.
  roi_pool (Fast R-CNN's RoI max pooling): the box scaled and rounded to cells (half away from zero), each bin
    the max over the cells [floor(p * bin), ceil((p + 1) * bin)) clipped to the map, an empty bin 0. The max
    over a window of any size is a range-maximum query: a table of the maxima over 2^a x 2^b windows answers
    each bin exactly from four gathered entries (the table holds log2(H) x log2(W) copies of each map).
"""
from __future__ import annotations

from numbers import Number

import jax.numpy as jnp
import numpy as np
from jax import lax


def fpn_levels(boxes, min_level, max_level, canonical_scale=224.0, canonical_level=4):
    """Index into the maps [min_level .. max_level] of each box [R, 4] (input pixels): FPN's eq. 1 (Lin et
    al. 2017), k = floor(k0 + log2(sqrt(area) / s0) + 1e-6) clamped, as torchvision's LevelMapper (a box
    of canonical_scale^2 pixels reads level k0; an empty box the finest)."""
    boxes = jnp.asarray(boxes, jnp.float32)
    size = jnp.sqrt(jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0))
    k = jnp.floor(canonical_level + jnp.log2(size / canonical_scale) + 1e-6)
    return (jnp.clip(k, min_level, max_level) - min_level).astype(jnp.int32)


def _pair(x):
    return (x, x) if isinstance(x, Number) else tuple(x)


def _per_roi(values, levels):
    """values[levels] of a per-level list (static numbers) as a [R] array."""
    return jnp.asarray(np.asarray(values))[levels]


def _flat_levels(tables):
    """Concatenated rows [N, C] of the tables (each flattened to [-1, C]) and each table's first row."""
    sizes = [int(np.prod(t.shape[:-1])) for t in tables]
    return (jnp.concatenate([t.reshape(-1, t.shape[-1]) for t in tables]),
            np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32))


def _levels(boxes, levels):
    return jnp.zeros(boxes.shape[:1], jnp.int32) if levels is None else jnp.asarray(levels, jnp.int32)


def _bilinear_axis(coord, size):
    """torchvision's bilinear_interpolate along one axis: the (low, high) cells [..., 2] and their weights
    [..., 2] of samples at `coord` in a map of `size` cells (weights 0 outside [-1, size])."""
    inside = (coord >= -1.0) & (coord <= size)
    coord = jnp.maximum(coord, 0.0)
    low = jnp.floor(coord).astype(jnp.int32)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    frac = jnp.where(at_end, 0.0, coord - low)
    weights = jnp.stack([1.0 - frac, frac], -1) * inside[..., None]
    return jnp.stack([low, high], -1), weights


def _sample_coords(start, length, bins, sampling_ratio):
    """Sub-bin centres [R, bins * sampling_ratio] of a box side from `start` over `length` cells."""
    t = (np.arange(bins)[:, None] + (np.arange(sampling_ratio)[None, :] + 0.5) / sampling_ratio).ravel()
    return start[:, None] + (length / bins)[:, None] * jnp.asarray(t, jnp.float32)


def roi_align(maps, scales, boxes, levels=None, output_size=7, sampling_ratio=2, aligned=True):
    """RoIAlign (He et al. 2017) of boxes [R, 4] -> [R, out_h, out_w, C] (see the module docstring)."""
    if sampling_ratio <= 0:
        raise ValueError(f'sampling_ratio {sampling_ratio}: must be positive (a fixed sample count)')
    out_h, out_w = _pair(output_size)
    boxes, levels = jnp.asarray(boxes, jnp.float32), _levels(boxes, levels)
    flat, offsets = _flat_levels(maps)
    height, width = _per_roi([m.shape[0] for m in maps], levels), _per_roi([m.shape[1] for m in maps], levels)
    lo = boxes * _per_roi(scales, levels).astype(jnp.float32)[:, None] - (0.5 if aligned else 0.0)
    extent = lo[:, 2:] - lo[:, :2]
    if not aligned:
        extent = jnp.maximum(extent, 1.0)
    ys, wy = _bilinear_axis(_sample_coords(lo[:, 0], extent[:, 0], out_h, sampling_ratio), height[:, None])
    xs, wx = _bilinear_axis(_sample_coords(lo[:, 1], extent[:, 1], out_w, sampling_ratio), width[:, None])
    # corners [R, Ny, Nx, 2 (y), 2 (x)] of every sample, as rows of the flattened levels
    row = _per_roi(offsets, levels)[:, None, None] + ys * width[:, None, None]  # [R, Ny, 2]
    index = row[:, :, None, :, None] + xs[:, None, :, None, :]
    weight = wy[:, :, None, :, None] * wx[:, None, :, None, :]
    samples = jnp.einsum('ryxab,ryxabc->ryxc', weight.astype(flat.dtype), flat[index])
    r, c = samples.shape[0], samples.shape[-1]
    return samples.reshape(r, out_h, sampling_ratio, out_w, sampling_ratio, c).mean(axis=(2, 4))


def _doubling(x, axis, count):
    """Stack [count, ...] of the maxima of x over windows of 2^k along `axis` starting at each index (the
    window clipped at the far edge)."""
    out = [x]
    for k in range(1, count):
        prev, step = out[-1], 2 ** (k - 1)
        tail = jnp.full_like(lax.slice_in_dim(prev, 0, min(step, prev.shape[axis]), axis=axis), -jnp.inf)
        out.append(jnp.maximum(prev, jnp.concatenate([lax.slice_in_dim(prev, step, None, axis=axis), tail], axis)))
    return jnp.stack(out)


def _window_table(x):
    """T[kx, ky, i, j] = max of x[i : i + 2^ky, j : j + 2^kx] for a map x [H, W, C]: [Kx, Ky, H, W, C] with
    K the bit length of the side (a window may span the whole map)."""
    h, w = x.shape[:2]
    return _doubling(_doubling(x, 0, h.bit_length()), 2, w.bit_length())


def _floor_log2(n):
    """floor(log2(n)) of int32 n >= 1, exactly."""
    return 31 - lax.clz(n.astype(jnp.int32))


def _round_half_away(x):
    """C's round(): halves away from zero (jnp.round goes to even)."""
    return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def _bin_edges(start, end, bins, size):
    """Cell ranges [lo, hi) [R, bins] of the bins of a rounded box side from cell `start` to `end` (both
    inclusive), clipped to [0, size]. floor(p * n / bins) and ceil((p + 1) * n / bins) in integers: exact,
    where float32 bin sizes (x / 7 compiled as x * (1 / 7)) can land an ulp above a whole cell."""
    n = jnp.maximum(end - start + 1, 1)[:, None]
    p = jnp.arange(bins, dtype=jnp.int32)
    lo = (p * n) // bins + start[:, None]
    hi = -((-(p + 1) * n) // bins) + start[:, None]
    return jnp.clip(lo, 0, size[:, None]), jnp.clip(hi, 0, size[:, None])


def roi_pool(maps, scales, boxes, levels=None, output_size=7):
    """RoI max pooling (Girshick 2015) of boxes [R, 4] -> [R, out_h, out_w, C] (see the module docstring)."""
    out_h, out_w = _pair(output_size)
    boxes, levels = jnp.asarray(boxes, jnp.float32), _levels(boxes, levels)
    flat, offsets = _flat_levels([_window_table(m) for m in maps])
    height, width = _per_roi([m.shape[0] for m in maps], levels), _per_roi([m.shape[1] for m in maps], levels)
    rows_k = _per_roi([m.shape[0].bit_length() for m in maps], levels)
    cell = _round_half_away(boxes * _per_roi(scales, levels).astype(jnp.float32)[:, None]).astype(jnp.int32)
    y0, y1 = _bin_edges(cell[:, 0], cell[:, 2], out_h, height)
    x0, x1 = _bin_edges(cell[:, 1], cell[:, 3], out_w, width)
    ky, kx = _floor_log2(jnp.maximum(y1 - y0, 1)), _floor_log2(jnp.maximum(x1 - x0, 1))
    ys = jnp.stack([y0, y1 - 2 ** ky], -1)  # two windows of 2^ky rows cover [y0, y1)
    xs = jnp.stack([x0, x1 - 2 ** kx], -1)
    table = kx[:, None, :] * rows_k[:, None, None] + ky[:, :, None]  # [R, out_h, out_w]
    index = (_per_roi(offsets, levels)[:, None, None, None, None]
             + ((table[..., None, None] * height[:, None, None, None, None] + ys[:, :, None, :, None])
                * width[:, None, None, None, None]) + xs[:, None, :, None, :])
    best = flat[index].max(axis=(3, 4))  # [R, out_h, out_w, C]
    empty = (y1 <= y0)[:, :, None] | (x1 <= x0)[:, None, :]
    return jnp.where(empty[..., None], 0.0, best)


ROI_OPS = {'align': roi_align, 'pool': roi_pool}


def check_roi_op(name):
    """`name` if it is a key of ROI_OPS, else a one-line ValueError naming them."""
    if name not in ROI_OPS:
        raise ValueError(f'RoI op {name!r}; valid choices: {", ".join(ROI_OPS)}')
    return name
