"""Object templates: each drawable kind is a list of flat-coloured parts on its canvas.

A part is (shape, u0, v0, u1, v1, colour, emission) with (u, v) in [0, 1] across the drawable's
canvas (u left to right, v from its top down to its base). A colour is either an RGB tuple or an
int i naming the drawable's own colour `d.colors[i]` (per-instance variety), optionally scaled as
(i, gain). Emission (night units, scaled per domain by the renderer) uses the same forms; day
shows only the albedo. Templates depend only on (kind, variant) and are cached as arrays, so a
drawable costs one palette lookup instead of Python work per part.
"""
import functools
import typing

import numpy as np

SIGN_STYLES = ('prohibit', 'warn', 'yield', 'stop', 'mandatory', 'diamond', 'info')
_TYRE, _DARK, _PLATE = (0.04, 0.04, 0.045), (0.08, 0.08, 0.09), (0.88, 0.88, 0.84)
_HEADLIGHT, _HEAD_EMIT = (0.86, 0.86, 0.82), (4.0, 3.7, 3.2)
_TAIL, _TAIL_EMIT = (0.55, 0.05, 0.05), (1.3, 0.08, 0.05)
_POLE = (0.40, 0.41, 0.43)
_LAMP_ON = ((1.0, 0.12, 0.08), (1.0, 0.72, 0.10), (0.15, 1.0, 0.45))  # red, amber, green
_LAMP_OFF = ((0.20, 0.07, 0.06), (0.20, 0.16, 0.05), (0.05, 0.18, 0.10))


class Template(typing.NamedTuple):
    shapes: tuple          # per part: 'rect' or a shape_mask name
    uv: np.ndarray         # float64 [P, 4] u0, v0, u1, v1
    slot: np.ndarray       # int [P] row of the colour table (instance colours first)
    gain: np.ndarray       # float32 [P] albedo gain
    eslot: np.ndarray      # int [P] row of the colour table for the emission
    egain: np.ndarray      # float32 [P] emission gain (0: not emissive)
    fixed: np.ndarray      # float32 [F, 3] fixed colours, after the instance colours
    emissive: bool         # whether any part emits


@functools.lru_cache(maxsize=8192)
def shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    """Boolean h x w mask of a unit shape sampled at pixel centres (read-only, cached)."""
    u = (np.arange(w) + 0.5) * (2.0 / w) - 1.0  # [-1, 1] left to right
    v = (np.arange(h) + 0.5) * (2.0 / h) - 1.0  # [-1, 1] top to bottom
    au, vv = np.abs(u)[None, :], v[:, None]
    if shape == 'ellipse':
        m = au * au + vv * vv <= 1.0
    elif shape == 'ring':
        r = au * au + vv * vv
        m = (r <= 1.0) & (r >= 0.45)
    elif shape == 'trap':  # top 70 % as wide as the bottom (car cabins)
        m = au <= 0.7 + 0.3 * (vv + 1.0) / 2.0
    elif shape == 'tri':
        m = au <= (vv + 1.0) / 2.0
    elif shape == 'itri':
        m = au <= (1.0 - vv) / 2.0
    elif shape == 'diamond':
        m = au + np.abs(vv) <= 1.0
    elif shape == 'octagon':
        m = au + np.abs(vv) <= 1.42
    else:
        raise ValueError(f'unknown shape {shape!r}')
    m = np.ascontiguousarray(np.broadcast_to(m, (h, w)))
    m.setflags(write=False)
    return m


def _mirror(parts):
    return [(s, 1.0 - u1, v0, 1.0 - u0, v1, c, e) for (s, u0, v0, u1, v1, c, e) in parts]


def _lights(variant, front):
    """Head- or tail-light emission of a vehicle; variant = style + 3 * braking + 6 * parked."""
    if variant >= 6:
        return None, None  # parked: lights off
    if front:
        return _HEAD_EMIT, None
    return None, tuple(2.0 * c for c in _TAIL_EMIT) if variant >= 3 else _TAIL_EMIT


def _car(variant, front):
    top, side = ((0.04, 0.10), (0.08, 0.08), (0.0, 0.05))[variant % 3]  # sedan, hatchback, SUV
    head, tail = _lights(variant, front)
    parts = [('trap', side, top, 1 - side, 0.46, 0, None),
             ('trap', side + 0.06, top + 0.05, 0.94 - side, 0.43, 1, None),
             ('rect', 0.0, 0.42, 1.0, 0.82, 0, None),
             ('rect', 0.0, 0.73, 1.0, 0.82, (0, 0.55), None),
             ('rect', 0.05, 0.78, 0.24, 1.0, _TYRE, None), ('rect', 0.76, 0.78, 0.95, 1.0, _TYRE, None),
             ('rect', 0.24, 0.82, 0.76, 0.95, (0.03, 0.03, 0.03), None)]
    if front:
        return parts + [('rect', 0.04, 0.50, 0.24, 0.60, _HEADLIGHT, head),
                        ('rect', 0.76, 0.50, 0.96, 0.60, _HEADLIGHT, head),
                        ('rect', 0.30, 0.50, 0.70, 0.64, _DARK, None),
                        ('rect', 0.40, 0.65, 0.60, 0.72, _PLATE, None)]
    return parts + [('rect', 0.03, 0.47, 0.20, 0.60, _TAIL, tail), ('rect', 0.80, 0.47, 0.97, 0.60, _TAIL, tail),
                    ('rect', 0.38, 0.60, 0.62, 0.70, _PLATE, None)]


def _truck(variant, front):
    head, tail = _lights(variant, front)
    if front:
        return [('rect', 0.0, 0.0, 1.0, 0.28, (0.86, 0.86, 0.84), None), ('rect', 0.04, 0.25, 0.96, 0.86, 0, None),
                ('rect', 0.10, 0.30, 0.90, 0.52, 1, None), ('rect', 0.30, 0.58, 0.70, 0.78, _DARK, None),
                ('rect', 0.08, 0.64, 0.24, 0.72, _HEADLIGHT, head),
                ('rect', 0.76, 0.64, 0.92, 0.72, _HEADLIGHT, head),
                ('rect', 0.04, 0.80, 0.96, 0.87, (0, 0.5), None),
                ('rect', 0.08, 0.85, 0.28, 1.0, _TYRE, None), ('rect', 0.72, 0.85, 0.92, 1.0, _TYRE, None)]
    return [('rect', 0.0, 0.0, 1.0, 0.80, 0, None), ('rect', 0.485, 0.03, 0.515, 0.78, (0, 0.7), None),
            ('rect', 0.0, 0.0, 1.0, 0.03, (0, 0.8), None),
            ('rect', 0.03, 0.70, 0.14, 0.78, _TAIL, tail), ('rect', 0.86, 0.70, 0.97, 0.78, _TAIL, tail),
            ('rect', 0.04, 0.80, 0.96, 0.86, _DARK, None),
            ('rect', 0.05, 0.84, 0.33, 1.0, _TYRE, None), ('rect', 0.67, 0.84, 0.95, 1.0, _TYRE, None),
            ('rect', 0.33, 0.86, 0.67, 0.95, (0.03, 0.03, 0.03), None)]


def _pedestrian(variant):
    # colours: 0 skin, 1 hair, 2 shirt, 3 trousers; variant: facing away, legs apart
    back, wide = variant % 2, variant // 2
    legs = (0.22, 0.47, 0.53, 0.78) if not wide else (0.14, 0.42, 0.58, 0.86)
    return [('ellipse', 0.32, 0.0, 0.68, 0.13, 1 if back else 0, None), ('rect', 0.34, 0.0, 0.66, 0.035, 1, None),
            ('rect', 0.18, 0.12, 0.82, 0.52, 2, None),
            ('rect', 0.02, 0.14, 0.17, 0.47, 2, None), ('rect', 0.83, 0.14, 0.98, 0.47, 2, None),
            ('rect', 0.03, 0.47, 0.16, 0.53, 0, None), ('rect', 0.84, 0.47, 0.97, 0.53, 0, None),
            ('rect', legs[0], 0.50, legs[1], 0.95, 3, None), ('rect', legs[2], 0.50, legs[3], 0.95, 3, None),
            ('rect', legs[0] - 0.02, 0.95, legs[1], 1.0, _DARK, None),
            ('rect', legs[2], 0.95, legs[3] + 0.02, 1.0, _DARK, None)]


def _cyclist(variant, side_view):
    # colours: 0 skin, 1 hair, 2 shirt, 3 trousers, 4 bike/helmet
    if not side_view:
        return [('ellipse', 0.34, 0.0, 0.66, 0.12, 4, None), ('rect', 0.22, 0.11, 0.78, 0.42, 2, None),
                ('rect', 0.08, 0.14, 0.22, 0.39, 2, None), ('rect', 0.78, 0.14, 0.92, 0.39, 2, None),
                ('rect', 0.0, 0.38, 1.0, 0.41, _DARK, None),
                ('rect', 0.27, 0.42, 0.45, 0.72, 3, None), ('rect', 0.55, 0.42, 0.73, 0.72, 3, None),
                ('rect', 0.43, 0.56, 0.57, 1.0, _TYRE, None), ('rect', 0.40, 0.50, 0.60, 0.55, _TAIL, _TAIL_EMIT)]
    parts = [('ring', 0.0, 0.62, 0.36, 1.0, _TYRE, None), ('ring', 0.64, 0.62, 1.0, 1.0, _TYRE, None),
             ('rect', 0.18, 0.72, 0.80, 0.76, 4, None), ('rect', 0.37, 0.52, 0.41, 0.80, 4, None),
             ('rect', 0.71, 0.48, 0.75, 0.80, 4, None), ('rect', 0.66, 0.46, 0.80, 0.49, _DARK, None),
             ('rect', 0.34, 0.44, 0.47, 0.76, 3, None), ('rect', 0.45, 0.44, 0.58, 0.70, 3, None),
             ('rect', 0.36, 0.14, 0.60, 0.46, 2, None), ('rect', 0.55, 0.22, 0.75, 0.28, 2, None),
             ('ellipse', 0.52, 0.01, 0.70, 0.15, 0, None), ('rect', 0.52, 0.0, 0.70, 0.05, 1, None),
             ('rect', 0.88, 0.50, 0.94, 0.55, _HEADLIGHT, _HEAD_EMIT)]
    return _mirror(parts) if variant else parts


def _traffic_light(variant):
    # housing only (the pole is a separate scenery drawable); colour 0: housing; variant: lit lamp
    parts = [('rect', 0.0, 0.0, 1.0, 1.0, 0, None)]
    for i in range(3):
        c = (2 * i + 1) / 6.0
        on = i == variant
        parts.append(('ellipse', 0.14, c - 0.13, 0.86, c + 0.13, (_LAMP_ON if on else _LAMP_OFF)[i],
                      tuple(2.5 * x for x in _LAMP_ON[i]) if on else None))
    return parts


_SIGN_FACES = {  # outer shape, outer colour, inner shape, inner colour, symbol colour
    'prohibit': ('ellipse', (0.80, 0.08, 0.08), 'ellipse', (0.92, 0.92, 0.90), (0.05, 0.05, 0.05)),
    'warn': ('tri', (0.80, 0.08, 0.08), 'tri', (0.92, 0.92, 0.90), (0.05, 0.05, 0.05)),
    'yield': ('itri', (0.80, 0.08, 0.08), 'itri', (0.92, 0.92, 0.90), None),
    'stop': ('octagon', (0.78, 0.06, 0.06), 'octagon', (0.78, 0.06, 0.06), (0.95, 0.95, 0.95)),
    'mandatory': ('ellipse', (0.10, 0.25, 0.70), 'ellipse', (0.10, 0.25, 0.70), (0.95, 0.95, 0.95)),
    'diamond': ('diamond', (0.05, 0.05, 0.05), 'diamond', (0.95, 0.78, 0.10), (0.05, 0.05, 0.05)),
    'info': ('rect', (0.95, 0.95, 0.95), 'rect', (0.10, 0.30, 0.65), (0.95, 0.95, 0.95)),
}


def _traffic_sign(variant):
    outer, oc, inner, ic, sc = _SIGN_FACES[SIGN_STYLES[variant]]
    m = 0.14 if outer not in ('tri', 'itri') else 0.2
    dv = 0.08 if outer == 'tri' else (-0.08 if outer == 'itri' else 0.0)
    parts = [(outer, 0.0, 0.0, 1.0, 1.0, oc, None), (inner, m, m + dv, 1.0 - m, 1.0 - m + dv, ic, None)]
    if sc is not None:
        parts.append(('rect', 0.45, 0.42, 0.55, 0.75, sc, None) if outer == 'tri' else
                     ('rect', 0.32, 0.44, 0.68, 0.58, sc, None))
    return parts


def _tree(variant):
    # colours: 0 leaves, 1 trunk
    if variant == 2:  # conifer
        return [('rect', 0.45, 0.80, 0.55, 1.0, 1, None), ('tri', 0.0, 0.0, 1.0, 0.85, 0, None)]
    return [('rect', 0.44, 0.50, 0.56, 1.0, 1, None), ('ellipse', 0.0, 0.0, 1.0, 0.62, 0, None),
            ('ellipse', 0.12 + 0.1 * variant, 0.22, 0.88, 0.66, (0, 0.8), None)]


def _lamp_arm(variant):
    # arm over the road with the lamp head at its free end; colour 0: the lamp's light colour
    parts = [('rect', 0.0, 0.0, 1.0, 0.35, _POLE, None), ('rect', 0.0, 0.3, 0.25, 1.0, (0.85, 0.85, 0.80), (0, 4.0))]
    return parts if variant > 0 else _mirror(parts)


_BUILDERS = {
    'car_front': lambda v: _car(v, True), 'car_rear': lambda v: _car(v, False),
    'truck_front': lambda v: _truck(v, True), 'truck_rear': lambda v: _truck(v, False),
    'cyclist_side': lambda v: _cyclist(v, True), 'cyclist_rear': lambda v: _cyclist(v, False),
    'pedestrian': _pedestrian, 'traffic_light': _traffic_light, 'traffic_sign': _traffic_sign,
    'tree': _tree, 'lamp_arm': _lamp_arm, 'pole': lambda v: [('rect', 0.0, 0.0, 1.0, 1.0, _POLE, None)],
}

@functools.lru_cache(maxsize=None)
def template(kind: str, variant: int, n_colors: int) -> Template:
    """Cached array form of a kind's part list, for drawables carrying n_colors own colours."""
    parts = _BUILDERS[kind](variant)
    fixed = []

    def ref(c):
        if c is None:
            return 0, 0.0
        if isinstance(c, int):
            return c, 1.0
        if isinstance(c[0], int):
            return c[0], float(c[1])
        fixed.append(c)
        return n_colors + len(fixed) - 1, 1.0

    slots, eslots = [ref(p[5]) for p in parts], [ref(p[6]) for p in parts]
    return Template(
        shapes=tuple(p[0] for p in parts), uv=np.array([p[1:5] for p in parts], np.float64),
        slot=np.array([s for s, _ in slots]), gain=np.array([g for _, g in slots], np.float32),
        eslot=np.array([s for s, _ in eslots]), egain=np.array([g for _, g in eslots], np.float32),
        fixed=np.array(fixed, np.float32).reshape(-1, 3), emissive=any(g > 0 for _, g in eslots))
