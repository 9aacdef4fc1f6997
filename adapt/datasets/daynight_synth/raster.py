"""Geometry pass: one scene to albedo, emission, depth and the visible boxes, at one resolution.

Everything here is independent of the time of day, so the three domains share the pixels of every
object and the boxes. Painting follows depth (far skyline, ground, facades, then drawables far to
near), so nearer things occlude farther ones. Images are channel-first float32 planes [3, S, S]
(NumPy broadcasts a per-pixel field over leading channels much faster than over a trailing one).

Box rule (visible extent): an object keeps a box when at least MIN_IN_FRAME of its full box lies
inside the image (not mostly out of frame), at least MIN_VISIBLE of its in-frame pixels are not
covered by nearer things (not almost fully occluded), and its visible pixels span at least
MIN_HEIGHT_PX x MIN_WIDTH_PX. The box is the extent of its visible pixels, so it sits on what
can be seen and lies inside [0, 1] by construction.
"""
import dataclasses
import functools
import math

import numpy as np

from adapt.datasets.daynight_synth import sprites

SKY_DEPTH = 1.0e4
MIN_IN_FRAME, MIN_VISIBLE, MIN_HEIGHT_PX, MIN_WIDTH_PX = 0.4, 0.25, 3, 2
_WHITE, _YELLOW = (0.86, 0.86, 0.82), (0.86, 0.66, 0.12)
_GLASS = np.array([0.20, 0.24, 0.30], np.float32)[:, None, None]
_WARM = np.array([1.0, 0.76, 0.42], np.float32)[:, None, None]
_LINE_HALF_WIDTH, _DASH_PERIOD, _DASH_DUTY = 0.075, 9.0, 0.35


@dataclasses.dataclass
class Geometry:
    albedo: np.ndarray    # float32 [3, S, S]
    emissive: np.ndarray  # float32 [3, S, S], night units
    depth: np.ndarray     # float32 [S, S], metres along the view axis, SKY_DEPTH for sky
    boxes: np.ndarray     # float32 [N, 4] normalised ymin, xmin, ymax, xmax
    labels: np.ndarray    # int64 [N]
    source: np.ndarray    # int64 [N], index in scene.drawables of each box's object


@functools.lru_cache(maxsize=8)
def centres(size):
    """Pixel centres as fractions of the image size, float64 [size] (read-only)."""
    c = (np.arange(size) + 0.5) / size
    c.setflags(write=False)
    return c


def _rnd(v):
    return math.floor(v + 0.5)


def _ground(scene, size, albedo, depth):
    cam, road = scene.camera, scene.road
    ys = centres(size)
    r0 = int(np.searchsorted(ys, cam.horizon + 0.5 / size))
    z = np.minimum(cam.focal * cam.height / (ys[r0:] - cam.horizon), 1.0e3)
    gx = (((centres(size) - cam.cx) / cam.focal)[None, :] * z[:, None]).astype(np.float32)
    (left, right), (swl, swr) = road.edges, road.sidewalk
    curb = tuple(0.8 * c for c in road.pavement)
    verge = [road.verge if s.kind == 'trees' else curb for s in scene.sides]
    pal = np.array([verge[0], road.pavement, curb, road.asphalt, curb, road.pavement, verge[1]],
                   np.float32).T
    region = np.zeros(gx.shape, np.intp)
    for b in (left - swl, left - 0.2, left, right, right + 0.2, right + swr):
        region += gx > np.float32(b)
    albedo[:, r0:] = pal[:, region]
    depth[r0:] = z[:, None]
    _markings(scene, size, albedo, r0, z)
    if road.crosswalk:
        _crosswalk(scene, albedo, r0, z, gx)


def _markings(scene, size, albedo, r0, z):
    """All lane lines at once: per row, the few pixels around each line, anti-aliased."""
    cam = scene.camera
    near = z < 250.0
    rows, zz = np.arange(r0, size)[near], z[near]
    if not scene.road.lines or rows.size == 0:
        return
    scale = cam.focal * size / zz                           # pixels per metre at each row
    footprint = zz * zz / (cam.focal * cam.height * size)   # metres of road per pixel row
    phase = (zz + 3.7) / _DASH_PERIOD
    dash = np.where(footprint > 0.5 * _DASH_PERIOD, _DASH_DUTY, (phase - np.floor(phase) < _DASH_DUTY) * 1.0)
    xs, strength, colors = [], [], []
    for x, kind in scene.road.lines:
        for dx in ((-0.12, 0.12) if kind == 'double_yellow' else (0.0,)):
            xs.append(x + dx)
            strength.append(dash if kind == 'dashed' else np.ones_like(dash))
            colors.append(_YELLOW if kind == 'double_yellow' else _WHITE)
    xc = cam.cx * size + np.array(xs)[:, None] * scale[None, :]                  # [L, R]
    hw = np.broadcast_to(_LINE_HALF_WIDTH * scale, xc.shape)
    k = int(math.ceil(_LINE_HALF_WIDTH * scale[-1])) + 1
    cols = np.floor(xc)[..., None].astype(np.intp) + np.arange(-k, k + 1)      # [L, R, K]
    dist = np.abs(cols + 0.5 - xc[..., None])
    cov = np.clip(np.minimum(hw[..., None] + 0.5 - dist, 2.0 * hw[..., None]), 0.0, 1.0)
    cov *= np.array(strength)[..., None]
    ok = (cols >= 0) & (cols < size) & (cov > 0.0)
    line, rr = np.broadcast_to(np.arange(len(xs))[:, None, None], cols.shape)[ok], \
        np.broadcast_to(rows[None, :, None], cols.shape)[ok]
    cc, cv = cols[ok], cov[ok].astype(np.float32)
    color = np.array(colors, np.float32).T[:, line]
    albedo[:, rr, cc] += cv * (color - albedo[:, rr, cc])


def _crosswalk(scene, albedo, r0, z, gx):
    road = scene.road
    zc, (left, right) = road.crosswalk, road.edges
    for rows, stripes in ((np.nonzero((z >= zc) & (z <= zc + 3.5))[0], True),
                          (np.nonzero((z >= zc - 2.0) & (z <= zc - 1.6))[0], False)):
        if rows.size == 0:
            continue
        g = gx[rows]
        if stripes:
            paint = ((g - left) - np.floor(g - left) < 0.5) & (g > left + 0.3) & (g < right - 0.3)
        else:  # stop line across the lanes going our way
            paint = (g > road.centre) & (g < right - 0.3)
        sub = albedo[:, r0 + rows[0]:r0 + rows[-1] + 1]
        np.copyto(sub, np.array(_WHITE, np.float32)[:, None, None], where=paint[None])


def _skyline(scene, size, albedo, depth):
    cam = scene.camera
    urban = any(s.kind == 'buildings' for s in scene.sides)
    color = np.array((0.52, 0.56, 0.62) if urban else (0.20, 0.30, 0.16), np.float32)[:, None, None]
    blocks = np.array(scene.skyline)
    idx = np.clip(np.searchsorted(blocks[:, 0], centres(size), side='right') - 1, 0, len(blocks) - 1)
    top = (cam.horizon - cam.focal * blocks[idx, 2] / 400.0) * size
    r1 = _rnd(cam.horizon * size)
    mask = (np.arange(r1)[:, None] + 0.5) >= top[None, :]
    np.copyto(albedo[:, :r1], color, where=mask[None])
    depth[:r1][mask] = 400.0


def _facade(scene, side, sign, size, albedo, emissive, depth):
    """A row of building fronts in the plane X = side.facade_x, with windows and shop fronts."""
    cam = scene.camera
    xs = centres(size)
    cols = np.nonzero((xs - cam.cx) * sign > 1e-6)[0]
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    zf = cam.focal * abs(side.facade_x) / np.abs(xs[c0:c1] - cam.cx)
    blocks = np.array([b[:3] for b in side.blocks])
    idx = np.clip(np.searchsorted(blocks[:, 0], zf, side='right') - 1, 0, len(blocks) - 1)
    valid = (zf >= np.maximum(blocks[idx, 0], 0.5)) & (zf < blocks[idx, 1])
    if not valid.any():
        return
    height = blocks[idx, 2]
    top = (cam.horizon - cam.focal * (height - cam.height) / zf) * size
    bottom = (cam.horizon + cam.focal * cam.height / zf) * size
    ra = max(0, int(np.floor(top[valid].min())))
    rb = min(size, int(np.ceil(bottom[valid].max())))
    if rb <= ra:
        return
    rowc = np.arange(ra, rb, dtype=np.float64)[:, None] + 0.5
    mask = (rowc >= top) & (rowc < bottom) & valid
    t = (cam.height - (rowc / size - cam.horizon) * zf / cam.focal).astype(np.float32)  # height (m)
    ws, fh = side.window
    detail = np.maximum(zf * zf / (cam.focal * abs(side.facade_x) * size), zf / (cam.focal * size))
    sharp = detail < 0.35 * min(ws, fh)                   # windows larger than a few pixels
    su = zf / ws - np.floor(zf / ws)
    q = t * np.float32(1.0 / fh)
    floor_i = np.floor(q)
    tv = q - floor_i
    upper = (t > 3.2) & (t < (height - 0.6).astype(np.float32))
    win = ((su > 0.22) & (su < 0.78) & sharp) & (tv > 0.3) & (tv < 0.8) & upper
    column_cell = np.floor(zf / ws).astype(np.int64) * 73856093 + scene.noise_seed % 4099
    cell = floor_i.astype(np.int64) * 19349663 ^ column_cell  # hash of the window's (column, floor)
    cell_u = ((cell % 1009) * (1.0 / 1009.0)).astype(np.float32)
    lit = np.array([b[4] for b in side.blocks], np.float32)[idx]
    shop = np.array([b[5] for b in side.blocks])[idx] & (t > 0.3) & (t < 2.6) & ((su < 0.7) | ~sharp)
    wall = np.array([b[3] for b in side.blocks], np.float32)[idx].T[:, None, :]       # [3, 1, C]
    wall = np.where(sharp[None, None, :], wall, 0.78 * wall + 0.22 * _GLASS)
    glow = np.where(win & (cell_u < lit), np.float32(0.35) + 0.4 * cell_u, np.float32(0.0))
    glow = np.where(~sharp & upper, np.float32(0.25) * lit, glow)                    # unresolved windows
    glow = np.where(shop & (cell_u > 0.25), np.float32(0.5), glow)
    where = mask[None]
    np.copyto(albedo[:, ra:rb, c0:c1], np.where((win | shop)[None], _GLASS, wall), where=where)
    np.copyto(emissive[:, ra:rb, c0:c1], _WARM * glow, where=where)
    np.copyto(depth[ra:rb, c0:c1], zf.astype(np.float32)[None, :], where=mask)


def _draw(scene, d, k, size, albedo, emissive, depth, ids):
    """Paint drawable d (object k, or -1 for scenery); return (full box px, drawn px, window)."""
    cam = scene.camera
    s = cam.focal * size / d.z
    x0, x1 = cam.cx * size + (d.x - d.width / 2) * s, cam.cx * size + (d.x + d.width / 2) * s
    y1 = cam.horizon * size + (cam.height - d.base) * s
    y0 = y1 - d.height * s
    r0, r1, c0, c1 = _rnd(y0), max(_rnd(y1), _rnd(y0) + 1), _rnd(x0), max(_rnd(x1), _rnd(x0) + 1)
    wr0, wr1, wc0, wc1 = max(r0, 0), min(r1, size), max(c0, 0), min(c1, size)
    if wr1 <= wr0 or wc1 <= wc0:
        return None
    tpl = sprites.template(d.kind, d.variant, len(d.colors))
    table = np.concatenate([np.array(d.colors, np.float32).reshape(-1, 3), tpl.fixed])
    pm = np.zeros((wr1 - wr0, wc1 - wc0), np.int8)
    if (r1 - r0) * (c1 - c0) <= 4:  # a few pixels: a flat silhouette in the first part's colour
        pm[...] = 1
    else:
        uv = tpl.uv
        pr = np.floor(y0 + uv[:, 1::2] * (y1 - y0) + 0.5).astype(np.intp)          # [P, 2] rows
        pc = np.floor(x0 + uv[:, 0::2] * (x1 - x0) + 0.5).astype(np.intp)          # [P, 2] cols
        pr[:, 1] = np.maximum(pr[:, 1], pr[:, 0] + 1)                               # >= 1 pixel
        pc[:, 1] = np.maximum(pc[:, 1], pc[:, 0] + 1)
        cr = np.minimum(np.maximum(pr, wr0), wr1) - wr0  # clipped to the window (np.clip is slower)
        cc = np.minimum(np.maximum(pc, wc0), wc1) - wc0
        for i, (shape, (a0, a1), (b0, b1), (q0, q1), (p0, p1)) in enumerate(
                zip(tpl.shapes, cr.tolist(), cc.tolist(), pr.tolist(), pc.tolist())):
            if a1 <= a0 or b1 <= b0:
                continue
            if shape == 'rect':
                pm[a0:a1, b0:b1] = i + 1
            else:
                m = sprites.shape_mask(shape, q1 - q0, p1 - p0)
                pm[a0:a1, b0:b1][m[a0 + wr0 - q0:a1 + wr0 - q0, b0 + wc0 - p0:b1 + wc0 - p0]] = i + 1
    sel = pm > 0
    part = pm[sel] - 1
    win = (slice(wr0, wr1), slice(wc0, wc1))
    albedo[:, win[0], win[1]][:, sel] = (table[tpl.slot] * tpl.gain[:, None]).T[:, part]
    emissive[:, win[0], win[1]][:, sel] = (table[tpl.eslot] * tpl.egain[:, None]).T[:, part] \
        if tpl.emissive else 0.0
    depth[win][sel] = d.z
    ids[win][sel] = k
    return (r0, c0, r1, c1), int(np.count_nonzero(sel)), win


def _box(ids, k, full, drawn, win, size):
    """Visible box of object k in pixels per the module's rule, or None."""
    r0, c0, r1, c1 = full
    inside = (min(r1, size) - max(r0, 0)) * (min(c1, size) - max(c0, 0))
    if inside < MIN_IN_FRAME * (r1 - r0) * (c1 - c0):
        return None
    vis = ids[win] == k
    if np.count_nonzero(vis) < MIN_VISIBLE * drawn:
        return None
    rows, cols = np.nonzero(vis.any(1))[0], np.nonzero(vis.any(0))[0]
    if rows[-1] - rows[0] + 1 < MIN_HEIGHT_PX or cols[-1] - cols[0] + 1 < MIN_WIDTH_PX:
        return None
    wr, wc = win[0].start, win[1].start
    return (wr + rows[0], wc + cols[0], wr + rows[-1] + 1, wc + cols[-1] + 1)


def rasterize(scene, size: int) -> Geometry:
    """Geometry of `scene` as a size x size image (the camera's view is square)."""
    albedo = np.zeros((3, size, size), np.float32)
    emissive = np.zeros((3, size, size), np.float32)
    depth = np.full((size, size), SKY_DEPTH, np.float32)
    ids = np.full((size, size), -1, np.int16)
    _skyline(scene, size, albedo, depth)
    _ground(scene, size, albedo, depth)
    for sign, side in ((-1, scene.sides[0]), (1, scene.sides[1])):
        if side.kind == 'buildings':
            _facade(scene, side, sign, size, albedo, emissive, depth)
    drawn, k = [], 0
    for j, d in enumerate(scene.drawables):
        out = _draw(scene, d, k if d.label >= 0 else -1, size, albedo, emissive, depth, ids)
        if d.label >= 0:
            drawn.append((k, j, out))
            k += 1
    boxes, source = [], []
    for k, j, out in drawn:
        box = _box(ids, k, *out, size) if out is not None else None
        if box is not None:
            boxes.append(box)
            source.append(j)
    boxes = np.array(boxes, np.float32).reshape(-1, 4) / np.float32(size)
    labels = np.array([scene.drawables[j].label for j in source], np.int64)
    return Geometry(albedo, emissive, depth, boxes, labels, np.array(source, np.int64))
