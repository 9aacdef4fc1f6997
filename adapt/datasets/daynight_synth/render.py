"""Shading pass: light one rasterised scene as day, dusk or night and quantise to uint8.

radiance = albedo * light + emission, then haze, sky, lens glow (bloom), lens blur (`lens_image`);
then the camera (exposure.py): the night's auto-exposure at its severity level, sensor noise, 8 bits.
Day is sunlight everywhere. Night is a different image, not a colour transform of day: the light
field is a faint blue ambient plus street-lamp pools, the camera car's low beams and other cars'
headlight cones (computed per pixel from its 3-D position), so objects far from lights fade into
noise while lamps, headlights, tail-lights and lit windows glow. Dusk sits in between.

Only element-wise IEEE arithmetic (+ - * / sqrt; no exp, pow or BLAS), sorts and sequential sums are
used, and sensor noise comes from integer bytes of a Generator seeded by (scene, domain), so renders are bit-identical on any
machine.
"""
import math

import numpy as np

from adapt.datasets.daynight_synth import exposure, raster
from adapt.datasets.daynight_synth.scene import DOMAINS

# Per domain: ambient light, lamp/headlight power, emission scale, bloom scale, haze distance (m),
# haze colour (None: the sky's horizon), read noise and shot noise (std in [0, 1] units).
_DOMAIN = {
    'day': dict(ambient=(1.0, 0.99, 0.95), lights=0.0, emit=0.0, bloom=0.0, haze=350.0,
                haze_color=None, read=0.008, shot=0.0),
    'dusk': dict(ambient=(0.34, 0.27, 0.24), lights=0.45, emit=0.55, bloom=0.5, haze=220.0,
                 haze_color=None, read=0.014, shot=0.01),
    'night': dict(ambient=(0.022, 0.030, 0.055), lights=1.0, emit=1.0, bloom=1.0, haze=110.0,
                  haze_color=(0.012, 0.012, 0.018), read=0.022, shot=0.03),
}
_SKY = {  # (top, horizon) colours
    'day': ((0.30, 0.50, 0.84), (0.76, 0.84, 0.94)),
    'dusk': ((0.16, 0.15, 0.36), (0.98, 0.55, 0.30)),
    'night': ((0.004, 0.006, 0.018), (0.05, 0.04, 0.045)),
}
_HEADLIGHT = np.array([1.0, 0.95, 0.85], np.float32)[:, None, None]
# Bloom weight per pyramid level, keyed by the level's pixel size as a fraction of the image
# (nearest key within a factor sqrt(2)): the same glow radii at every resolution.
_BLOOM_WEIGHTS = {1 / 64: 0.6, 1 / 32: 0.45, 1 / 16: 0.35, 1 / 8: 0.25}


def _bloom_weight(pixel):
    return next((w for k, w in _BLOOM_WEIGHTS.items() if k * 0.7071 < pixel <= k * 1.4143), 0.0)


def _falloff(d2_over_r2):
    w = 1.0 / (1.0 + d2_over_r2)
    return w * w


def _lamp_light(scene, size, depth, x_of_col, y_of_row):
    """Sum of street-lamp pools: falloff with (height-flattened) distance to each lamp, per pixel."""
    cam = scene.camera
    total = np.zeros((size, size), np.float32)
    for lamp in scene.lamps:
        reach = 3.0 * lamp.radius
        z_near = max(lamp.z - reach, 0.5)
        bottom = min(size, int((cam.horizon + cam.focal * cam.height / z_near) * size) + 1)
        ratios = [(lamp.x + s * reach) / z for s in (-1, 1) for z in (z_near, lamp.z + reach)]
        c0 = max(0, int((cam.cx + cam.focal * min(ratios)) * size))
        c1 = min(size, int((cam.cx + cam.focal * max(ratios)) * size) + 1)
        if c1 <= c0 or bottom <= 0:
            continue
        z = depth[:bottom, c0:c1]
        dx = x_of_col[None, c0:c1] * z - np.float32(lamp.x)
        dz = z - np.float32(lamp.z)
        dy = (np.float32(cam.height - lamp.y) - y_of_row[:bottom, None] * z) * np.float32(0.35)
        d2 = (dx * dx + dz * dz + dy * dy) * np.float32(1.0 / lamp.radius ** 2)
        total[:bottom, c0:c1] += np.float32(lamp.power) * _falloff(d2)
    return total


def _beam_light(scene, depth, x_of_col, y_of_row):
    """Headlight cones: the camera car's low beams and the beams of the nearest other cars."""
    cam = scene.camera
    z = depth
    lat = x_of_col / np.float32(0.25)
    z2 = z * z
    ramp = z2 / (z2 + np.float32(16.0))  # low beams hit the road from a few metres ahead
    own = _falloff(lat * lat)[None, :] * (np.float32(0.9) * ramp / (1.0 + z2 * np.float32(1 / 200.0)))
    height = np.float32(cam.height) - y_of_row[:, None] * z          # metres above the road
    cutoff = np.clip((np.float32(1.1) + np.float32(0.02) * z - height) * np.float32(1.5), 0.12, 1.0)
    total = own
    x = x_of_col[None, :] * z
    for bx, bz, direction in scene.beams:
        along = (z - np.float32(bz)) * np.float32(direction)
        t = (x - np.float32(bx)) / (np.float32(0.35) * np.abs(along) + np.float32(0.8))
        cone = _falloff(t * t) / (1.0 + along * along * np.float32(1 / 200.0))
        total = total + np.float32(0.7) * np.where(along > 0.3, cone, np.float32(0.0))
    return total * cutoff


def _smooth(x, axis):
    """[1, 2, 1] / 4 filter along a (last or second-last) axis with edge replication."""
    y = 2.0 * x
    if axis == -2:
        y[..., 1:, :] += x[..., :-1, :]; y[..., :-1, :] += x[..., 1:, :]
        y[..., 0, :] += x[..., 0, :]; y[..., -1, :] += x[..., -1, :]
    else:  # shift the flat buffer by one, then undo the wrap-around at the row ends
        rows, yr, xf, yf = x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1]), x.reshape(-1), y.reshape(-1)
        yf[1:] += xf[:-1]; yf[:-1] += xf[1:]
        yr[1:, 0] -= rows[:-1, -1]; yr[:-1, -1] -= rows[1:, 0]
        yr[:, 0] += rows[:, 0]; yr[:, -1] += rows[:, -1]
    return y * np.float32(0.25)


def _blur(x):
    return _smooth(_smooth(x, -2), -1)


def _bloom(emissive):
    """Multi-scale glow: a blurred image pyramid of the emission, summed back up (before lens blur)."""
    size = emissive.shape[-1]
    levels, x = [], emissive
    while x.shape[-1] > 8 and x.shape[-1] % 2 == 0:
        x = np.float32(0.25) * (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2])
        levels.append(x)
    acc = None
    for level in range(len(levels), 0, -1):
        w = _bloom_weight((2 ** level) / size)
        if w:
            g = _blur(levels[level - 1]) * np.float32(w)
            acc = g if acc is None else acc + g
        if acc is not None:
            acc = acc.repeat(2, 1).repeat(2, 2)
            if level > 1:  # the last step to full size is left to the lens blur in shade()
                acc = _blur(acc)
    return acc if acc is not None else np.zeros_like(emissive)


def _sky(scene, domain, size):
    """Per-row sky colour [3, S, 1] and the horizon colour [3, 1, 1]."""
    top, horizon = (np.array(c, np.float32) for c in _SKY[domain])
    j = np.array(scene.sky_jitter, np.float32)
    top, horizon = top * (1.0 + 0.12 * j), horizon * (1.0 + 0.06 * j[::-1])
    h = scene.camera.horizon
    t = np.sqrt(np.clip((h - raster.centres(size)) / h, 0.0, 1.0)).astype(np.float32)
    return (horizon[:, None] + (top - horizon)[:, None] * t[None, :])[..., None], horizon[:, None, None]


def _noise(scene, domain, shape):
    """Zero-mean unit-variance noise from uniform bytes (exact integer source)."""
    rng = np.random.default_rng(np.random.SeedSequence([scene.noise_seed, DOMAINS.index(domain)]))
    b = np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape)
    return (b.astype(np.float32) - np.float32(127.5)) * np.float32(1 / 73.9)


def lens_image(scene, geometry: raster.Geometry, domain: str) -> np.ndarray:
    """float32 [3, S, S] lens image of a rasterised scene in `domain`: what reaches the sensor."""
    p = _DOMAIN[domain]
    size = geometry.depth.shape[0]
    cam = scene.camera
    grid = raster.centres(size).astype(np.float32)
    x_of_col = (grid - np.float32(cam.cx)) / np.float32(cam.focal)       # X / Z per column
    y_of_row = (grid - np.float32(cam.horizon)) / np.float32(cam.focal)  # drop below the eye / Z per row
    radiance = geometry.albedo * np.array(p['ambient'], np.float32)[:, None, None]
    if p['lights']:
        lamps = _lamp_light(scene, size, geometry.depth, x_of_col, y_of_row) * np.float32(p['lights'])
        beams = _beam_light(scene, geometry.depth, x_of_col, y_of_row) * np.float32(p['lights'])
        light = np.array(scene.lamp_color, np.float32)[:, None, None] * lamps + _HEADLIGHT * beams
        radiance += geometry.albedo * light
    if p['emit']:
        radiance += np.float32(p['emit']) * geometry.emissive
    sky, horizon = _sky(scene, domain, size)
    haze = horizon if p['haze_color'] is None else np.array(p['haze_color'], np.float32)[:, None, None]
    fog = geometry.depth / (geometry.depth + np.float32(p['haze']))
    radiance += fog * (haze - radiance)
    radiance = np.where(geometry.depth >= np.float32(raster.SKY_DEPTH), sky, radiance)
    if p['bloom']:  # glow happens in the lens: after haze, over the sky too
        radiance += np.float32(p['bloom']) * _bloom(geometry.emissive)
    return _blur(radiance)  # lens blur


def shade(scene, geometry: raster.Geometry, domain: str, night: exposure.NightLevel = exposure.UNEXPOSED
          ) -> np.ndarray:
    """uint8 [S, S, 3] image of a rasterised scene in `domain` (one of DOMAINS); the night is recorded
    by the camera of severity level `night`, day and dusk always at the day's exposure."""
    p = _DOMAIN[domain]
    lens = lens_image(scene, geometry, domain)
    time, gain = exposure.auto_exposure(lens, night) if domain == 'night' else (1.0, 1.0)
    return exposure.capture(lens, _noise(scene, domain, lens.shape), p['read'], p['shot'], time, gain)


def render(scene, domain: str, size: int, night: exposure.NightLevel = exposure.UNEXPOSED):
    """(image uint8 [S, S, 3], boxes float32 [N, 4], labels int64 [N]) of `scene` in `domain`."""
    geometry = raster.rasterize(scene, size)
    return shade(scene, geometry, domain, night), geometry.boxes, geometry.labels
