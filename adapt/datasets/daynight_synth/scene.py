"""Procedural dashcam scene descriptions: pure data sampled from one NumPy Generator.

A scene is described in metres in a camera frame (X right, Z forward, heights above the road), so
it is independent of the image resolution and of the time of day: the renderer turns one scene
into day, dusk and night images of any size. Everything the night needs (which street lamps work,
which windows are lit, brake lights) is part of the world and therefore sampled here too.

Only `Generator.random/uniform/integers` and IEEE + - * / are used, so a seed gives the same
scene on any machine.
"""
import dataclasses

import numpy as np

from adapt.datasets.daynight_synth.sprites import SIGN_STYLES

CLASS_NAMES = ('car', 'truck', 'pedestrian', 'cyclist', 'traffic_light', 'traffic_sign')
DOMAINS = ('day', 'dusk', 'night')
MAX_OBJECTS = 15
_BASE_SEED = 20240611

CAR_COLORS = ((0.88, 0.88, 0.86), (0.07, 0.07, 0.08), (0.62, 0.63, 0.66), (0.34, 0.35, 0.37),
              (0.62, 0.07, 0.07), (0.10, 0.20, 0.55), (0.10, 0.30, 0.18), (0.85, 0.68, 0.10),
              (0.58, 0.48, 0.36), (0.88, 0.42, 0.08), (0.30, 0.55, 0.75))
_CAR_WEIGHTS = (5, 5, 4, 3, 2, 2, 1, 1, 1, 1, 1)
CLOTH_COLORS = ((0.75, 0.12, 0.12), (0.12, 0.25, 0.60), (0.90, 0.90, 0.88), (0.10, 0.10, 0.11),
                (0.35, 0.55, 0.25), (0.85, 0.65, 0.15), (0.50, 0.30, 0.55), (0.55, 0.55, 0.57),
                (0.20, 0.50, 0.65), (0.90, 0.45, 0.30), (0.40, 0.28, 0.18))
PANTS_COLORS = ((0.12, 0.16, 0.30), (0.08, 0.08, 0.09), (0.35, 0.35, 0.37), (0.60, 0.52, 0.40),
                (0.20, 0.25, 0.45), (0.30, 0.20, 0.12))
SKIN_COLORS = ((0.94, 0.78, 0.66), (0.80, 0.60, 0.45), (0.58, 0.40, 0.28), (0.36, 0.24, 0.17))
HAIR_COLORS = ((0.05, 0.04, 0.04), (0.28, 0.17, 0.08), (0.75, 0.62, 0.35), (0.55, 0.55, 0.55))
FACADE_COLORS = ((0.62, 0.35, 0.28), (0.70, 0.66, 0.58), (0.50, 0.50, 0.52), (0.78, 0.72, 0.60),
                 (0.42, 0.30, 0.25), (0.62, 0.64, 0.68), (0.82, 0.78, 0.70), (0.55, 0.45, 0.35))
LAMP_COLORS = ((1.0, 0.58, 0.22), (0.86, 0.92, 1.0), (1.0, 0.90, 0.72))  # sodium, LED, warm LED


@dataclasses.dataclass(frozen=True)
class Camera:
    horizon: float  # image row of the horizon, as a fraction of the height
    cx: float       # image column of the vanishing point, as a fraction of the width
    focal: float    # focal length in image widths
    height: float   # metres above the road


@dataclasses.dataclass(frozen=True)
class Road:
    edges: tuple          # lateral X (m) of the left and right road edges
    sidewalk: tuple       # sidewalk widths (m) left, right
    lanes: tuple          # X of each lane centre
    centre: float         # X of the centre line: traffic at smaller X comes towards the camera
    lines: tuple          # (X, kind) per marking; kind in {'solid', 'dashed', 'double_yellow'}
    crosswalk: float      # Z of the near side of a zebra crossing, or 0 for none
    asphalt: tuple        # road colour
    pavement: tuple       # sidewalk colour
    verge: tuple          # colour beyond the sidewalks (grass or dirt)


@dataclasses.dataclass(frozen=True)
class Side:
    """One roadside: a row of facades (kind 'buildings') or open verge with trees ('trees')."""
    kind: str
    facade_x: float       # X of the facade plane (m); unused for trees
    blocks: tuple         # (z0, z1, height, colour, lit_fraction, shop) per building
    window: tuple         # window spacing along Z (m), floor height (m)


@dataclasses.dataclass(frozen=True)
class Drawable:
    """Anything standing in the street: labelled objects (label >= 0) and scenery (label -1).

    Its canvas spans x +- width / 2 and heights base .. base + height at depth z (the face seen
    by the camera)."""
    kind: str             # a template name in sprites (car_rear, pedestrian, pole, ...)
    x: float
    z: float
    width: float
    height: float
    label: int
    colors: tuple         # the kind's own colours, see sprites
    variant: int = 0
    base: float = 0.0


@dataclasses.dataclass(frozen=True)
class Lamp:
    """A street lamp head: a point light in the world (dusk and night)."""
    x: float
    y: float
    z: float
    radius: float
    power: float


@dataclasses.dataclass(frozen=True)
class Scene:
    camera: Camera
    road: Road
    sides: tuple          # (left, right)
    skyline: tuple        # (x0, x1, height in m at 400 m) blocks of the far city or tree line
    drawables: tuple      # sorted far to near
    lamps: tuple
    beams: tuple          # (x, z, direction +1 away / -1 towards camera): nearest moving cars' low beams
    lamp_color: tuple
    sky_jitter: tuple     # three numbers in [-1, 1] varying the sky colours
    noise_seed: int


def split_seed(split_code: int, index: int) -> np.random.SeedSequence:
    """Seed of scene `index` of a split: disjoint streams per (split, index) on any machine."""
    return np.random.SeedSequence([_BASE_SEED, split_code, index])


def _pick(rng, options, weights=None):
    if weights is None:
        return options[int(rng.integers(len(options)))]
    u, acc = rng.random() * sum(weights), 0.0
    for option, w in zip(options, weights):
        acc += w
        if u < acc:
            return option
    return options[-1]


def _color(rng, options, jitter=0.05, weights=None):
    base = _pick(rng, options, weights)
    return tuple(min(1.0, max(0.0, c + j)) for c, j in zip(base, rng.uniform(-jitter, jitter, 3).tolist()))


def _near_far(rng, z0, z1):
    """Depth in [z0, z1], half of the draws in the nearest quarter (quadratic in a uniform draw)."""
    u = rng.random()
    return z0 + (z1 - z0) * u * u


def _road(rng):
    lane = rng.uniform(3.0, 3.7)
    n_same, n_opp = _pick(rng, (1, 2, 2, 3)), _pick(rng, (0, 1, 1, 2))
    ego = int(rng.integers(n_same))
    xc = -(ego + 0.5) * lane + rng.uniform(-0.3, 0.3)
    left, right = xc - n_opp * lane, xc + n_same * lane
    lines = [(xc + i * lane, 'dashed') for i in range(1, n_same)]
    lines += [(xc - i * lane, 'dashed') for i in range(1, n_opp)]
    if n_opp:
        lines.append((xc, _pick(rng, ('double_yellow', 'solid', 'dashed'))))
    if rng.random() < 0.7:
        lines += [(left + 0.3, 'solid'), (right - 0.3, 'solid')]
    grey = rng.uniform(0.22, 0.38)
    return Road(
        edges=(left, right), lanes=tuple(left + (i + 0.5) * lane for i in range(n_same + n_opp)),
        centre=xc, sidewalk=(rng.uniform(2.0, 4.5), rng.uniform(2.0, 4.5)),
        lines=tuple(lines), crosswalk=rng.uniform(8.0, 40.0) if rng.random() < 0.35 else 0.0,
        asphalt=(grey, grey * rng.uniform(0.98, 1.03), grey * rng.uniform(1.0, 1.08)),
        pavement=_color(rng, ((0.60, 0.58, 0.55), (0.55, 0.52, 0.50), (0.65, 0.55, 0.48)), 0.04),
        verge=_color(rng, ((0.28, 0.42, 0.18), (0.36, 0.44, 0.20), (0.45, 0.38, 0.28)), 0.04))


def _side(rng, sign, road):
    x = road.edges[1 if sign > 0 else 0] + sign * road.sidewalk[1 if sign > 0 else 0]
    if rng.random() < 0.35:
        return Side('trees', x, (), (0.0, 0.0))
    blocks, z = [], rng.uniform(-3.0, 4.0)
    while z < 160.0:
        length = rng.uniform(8.0, 30.0)
        blocks.append((z, z + length, rng.uniform(5.0, 28.0), _color(rng, FACADE_COLORS, 0.06),
                       rng.uniform(0.1, 0.5), rng.random() < 0.5))
        z += length + (rng.uniform(2.0, 8.0) if rng.random() < 0.3 else 0.0)
    return Side('buildings', x + sign * rng.uniform(0.0, 1.0), tuple(blocks),
                (rng.uniform(2.2, 3.6), rng.uniform(2.9, 3.6)))


def _skyline(rng, urban):
    blocks, x = [], -0.2
    while x < 1.2:
        w = rng.uniform(0.02, 0.12)
        blocks.append((x, x + w, rng.uniform(8.0, 60.0) if urban else rng.uniform(6.0, 14.0)))
        x += w
    return tuple(blocks)


class _Placer:
    """Rejection sampler keeping world footprints (X interval, Z interval) apart."""

    def __init__(self):
        self.boxes = []

    def place(self, x, z, half_w, half_l):
        for (bx, bz, bw, bl) in self.boxes:
            if abs(x - bx) < half_w + bw + 0.2 and abs(z - bz) < half_l + bl + 0.5:
                return False
        self.boxes.append((x, z, half_w, half_l))
        return True


def _vehicles(rng, road, placer, out):
    left, right = road.edges
    for kind, count in (('car', int(rng.integers(0, 9))), ('truck', _pick(rng, (0, 0, 0, 1, 1, 2)))):
        for _ in range(count):
            for _try in range(10):
                parked = rng.random() < 0.25
                if parked:
                    x = (right - 1.2) if rng.random() < 0.6 else (left + 1.2)
                else:
                    x = _pick(rng, road.lanes) + rng.uniform(-0.35, 0.35)
                z = _near_far(rng, 4.0, 65.0)
                towards = x < road.centre  # right-hand traffic; parked cars face their lane's way
                w = rng.uniform(1.65, 1.95) if kind == 'car' else rng.uniform(2.3, 2.55)
                h = rng.uniform(1.35, 1.65) if kind == 'car' else rng.uniform(2.9, 3.8)
                length = 4.6 if kind == 'car' else 8.0
                if abs(x) < w / 2 + 1.0 and z < 7.0:
                    continue  # nothing sits on the bonnet of the camera car
                if placer.place(x, z + length / 2, w / 2, length / 2):
                    body = _color(rng, CAR_COLORS, 0.05, _CAR_WEIGHTS) if kind == 'car' else \
                        _color(rng, CAR_COLORS[:6] + ((0.95, 0.95, 0.95),) * 3, 0.05)
                    glass = _color(rng, ((0.10, 0.12, 0.16), (0.18, 0.22, 0.28)), 0.03)
                    brake = 1 if rng.random() < 0.3 else 0
                    out.append(Drawable(f'{kind}_{"front" if towards else "rear"}', x, z, w, h,
                                        CLASS_NAMES.index(kind), (body, glass),
                                        variant=int(rng.integers(3)) + 3 * brake + 6 * parked))
                    break


def _people(rng, road, placer, out):
    left, right = road.edges
    for _ in range(int(rng.integers(0, 8))):
        for _try in range(10):
            z = _near_far(rng, 3.0, 40.0)
            if road.crosswalk and rng.random() < 0.3:
                x, z = rng.uniform(left + 0.5, right - 0.5), road.crosswalk + rng.uniform(0.5, 3.0)
            elif rng.random() < 0.55:
                x = right + 0.3 + rng.random() * (road.sidewalk[1] - 0.6)
            else:
                x = left - 0.3 - rng.random() * (road.sidewalk[0] - 0.6)
            if placer.place(x, z, 0.3, 0.3):
                h = rng.uniform(1.5, 1.92)
                colors = (_color(rng, SKIN_COLORS, 0.03), _color(rng, HAIR_COLORS, 0.03),
                          _color(rng, CLOTH_COLORS, 0.08), _color(rng, PANTS_COLORS, 0.05))
                out.append(Drawable('pedestrian', x, z, h * rng.uniform(0.26, 0.32), h,
                                    CLASS_NAMES.index('pedestrian'), colors, int(rng.integers(4))))
                break
    for _ in range(_pick(rng, (0, 0, 1, 1, 2))):
        for _try in range(10):
            side_view = bool(road.crosswalk) and rng.random() < 0.5
            z = road.crosswalk + 1.5 if side_view else _near_far(rng, 4.0, 45.0)
            x = rng.uniform(left + 1.0, right - 1.0) if side_view else right - rng.uniform(0.6, 1.2)
            w = 1.75 if side_view else 0.6
            if abs(x) < 1.5 and z < 10.0:
                continue  # not right in front of the camera car
            if placer.place(x, z, w / 2, 0.9 if not side_view else 0.3):
                colors = (_color(rng, SKIN_COLORS, 0.03), _color(rng, HAIR_COLORS, 0.03),
                          _color(rng, CLOTH_COLORS, 0.08), _color(rng, PANTS_COLORS, 0.05),
                          _color(rng, CAR_COLORS, 0.05))
                out.append(Drawable('cyclist_side' if side_view else 'cyclist_rear', x, z, w,
                                    rng.uniform(1.65, 1.85), CLASS_NAMES.index('cyclist'), colors,
                                    int(rng.integers(2))))
                break


def _street_furniture(rng, road, placer, out):
    left, right = road.edges
    z_light = road.crosswalk + rng.uniform(3.5, 5.0) if road.crosswalk else rng.uniform(10.0, 45.0)
    n_lights = _pick(rng, (1, 2, 2, 3)) if road.crosswalk or rng.random() < 0.4 else 0
    state = int(rng.integers(3))
    housing = _color(rng, ((0.10, 0.10, 0.10), (0.12, 0.20, 0.12), (0.75, 0.62, 0.10)), 0.03)
    for i in range(n_lights):
        x = (right + 0.5, left - 0.5, right + 0.5)[i]
        z = z_light + (0.0, 0.0, 14.0)[i]
        if placer.place(x, z, 0.2, 0.2):
            w, base = rng.uniform(0.32, 0.42), rng.uniform(2.4, 3.6)
            out.append(Drawable('pole', x, z, 0.12, base + 0.1, -1, ()))
            out.append(Drawable('traffic_light', x, z, w, 2.6 * w, CLASS_NAMES.index('traffic_light'),
                                (housing,), state, base))
    for _ in range(int(rng.integers(0, 4))):
        side = 1 if rng.random() < 0.7 else -1
        x = (right + 0.4) if side > 0 else (left - 0.4)
        z = _near_far(rng, 5.0, 45.0)
        if placer.place(x, z, 0.4, 0.4):
            size, base = rng.uniform(0.6, 0.9), rng.uniform(1.7, 2.2)
            out.append(Drawable('pole', x, z, 0.08, base + 0.1, -1, ()))
            out.append(Drawable('traffic_sign', x, z, size, size, CLASS_NAMES.index('traffic_sign'), (),
                                int(rng.integers(len(SIGN_STYLES))), base))


def _scenery(rng, road, sides, placer, out, lamps, lamp_color):
    left, right = road.edges
    spacing, lamp_sides = rng.uniform(18.0, 34.0), _pick(rng, ((1,), (-1,), (1, -1)))
    z = rng.uniform(-0.5 * spacing, 0.5 * spacing)  # lamps beside or behind the camera light the near road
    k = 0
    while z < 120.0:
        side = lamp_sides[k % len(lamp_sides)]
        x_pole = right + 0.4 if side > 0 else left - 0.4
        arm = rng.uniform(1.0, 2.2)
        h = rng.uniform(6.0, 9.0)
        if z < 1.0 or placer.place(x_pole, z, 0.15, 0.15):
            if z >= 1.0:
                out.append(Drawable('pole', x_pole, z, 0.16, h, -1, ()))
                out.append(Drawable('lamp_arm', x_pole - side * arm / 2, z, arm + 0.1, 0.3, -1, (lamp_color,),
                                    side, h - 0.3))
            if rng.random() < 0.88:  # a few lamps are broken: darker stretches at night
                lamps.append(Lamp(x_pole - side * arm, h - 0.2, z, rng.uniform(4.5, 7.0),
                                  rng.uniform(0.9, 1.4)))
        z += spacing / len(lamp_sides)
        k += 1
    for sign, side in ((-1, sides[0]), (1, sides[1])):
        if side.kind != 'trees':
            continue
        z = rng.uniform(2.0, 10.0)
        edge = road.edges[1 if sign > 0 else 0] + sign * road.sidewalk[1 if sign > 0 else 0]
        while z < 90.0:
            x = edge + sign * rng.uniform(0.8, 3.0)
            if placer.place(x, z, 0.3, 0.3):
                h = rng.uniform(4.0, 9.0)
                leaf = _color(rng, ((0.16, 0.34, 0.12), (0.22, 0.40, 0.14), (0.30, 0.38, 0.12)), 0.05)
                out.append(Drawable('tree', x, z, h * rng.uniform(0.45, 0.7), h, -1,
                                    (leaf, _color(rng, ((0.30, 0.22, 0.14),), 0.04)),
                                    int(rng.integers(3))))
            z += rng.uniform(6.0, 15.0)


def sample_scene(seed: np.random.SeedSequence) -> Scene:
    """One random scene; labelled objects are capped at MAX_OBJECTS."""
    rng = np.random.default_rng(seed)
    camera = Camera(horizon=rng.uniform(0.40, 0.50), cx=rng.uniform(0.42, 0.58),
                    focal=rng.uniform(0.85, 1.15), height=rng.uniform(1.2, 1.6))
    road = _road(rng)
    sides = (_side(rng, -1, road), _side(rng, 1, road))
    placer, objects, scenery, lamps = _Placer(), [], [], []
    lamp_color = _pick(rng, LAMP_COLORS, (3, 2, 1))
    _scenery(rng, road, sides, placer, scenery, lamps, lamp_color)
    if rng.random() > 0.03:  # a few empty roads
        _street_furniture(rng, road, placer, objects)
        _vehicles(rng, road, placer, objects)
        _people(rng, road, placer, objects)
    labelled = [i for i, d in enumerate(objects) if d.label >= 0]
    if len(labelled) > MAX_OBJECTS:  # drop random objects, with their poles (listed just before)
        drop = set(rng.permutation(labelled)[MAX_OBJECTS:].tolist())
        drop |= {i - 1 for i in drop if objects[i].base > 0}
        objects = [d for i, d in enumerate(objects) if i not in drop]
    drawables = sorted(objects + scenery, key=lambda d: -d.z)  # stable: poles before their heads
    beams = sorted(((d.x, d.z, -1.0 if d.kind.endswith('front') else 1.0) for d in objects
                    if d.kind.startswith(('car_', 'truck_')) and d.variant < 6), key=lambda b: b[1])[:4]
    urban = any(s.kind == 'buildings' for s in sides)
    return Scene(camera, road, sides, _skyline(rng, urban), tuple(drawables), tuple(lamps),
                 tuple(beams), lamp_color,
                 tuple(float(v) for v in rng.uniform(-1.0, 1.0, 3)), int(rng.integers(2**62)))
