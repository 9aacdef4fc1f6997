"""The camera between the lens image and the 8-bit file: auto-exposure, gain, sensor noise, quantisation.

Why: under the night ambient (2-5 % of day) an unlit object's radiance is a few hundredths of full
scale, so a camera left at the day's exposure records it on a handful of grey levels with its noise
clipped at black. A real dashcam raises exposure time and then analog gain at night, trading
darkness for noise. The night severity levels (LEVELS) are one camera whose auto-exposure aims for
less and less brightness, down to the renderer's original camera, which never changes its exposure
(`unexposed`, the hardest level); the levels are the one axis "how much the camera lifts the night".

Model, in linear units where 1 is full scale at the day's exposure:
- Auto-exposure picks the multiplier E that brings the frame's mean luminance, as the sensor would
  record it without noise (each channel clipped at full scale), to the level's target
  (`exposure_for`), within [1, MAX_TIME * MAX_GAIN]: night is never exposed shorter than day, and a
  frame too dark for the longest exposure at the highest gain stays below its target.
- E is exposure time t first (more light collected: the signal grows, the read noise does not), up
  to MAX_TIME, and analog gain g = E / t for the rest (signal and noise amplified alike).
- Sensor noise at unit gain is the renderer's per-domain curve, std = read + shot * signal with
  signal = t * radiance; the gain multiplies it: std = g * (read + shot * t * radiance). Its
  unit-variance field is the same at every level (seeded by the scene and the domain), so the
  levels of one scene differ only in the camera's settings.
- Quantisation: clip to [0, 1], round to 8 bits.
With t = g = 1 the arithmetic is the original camera's, operation for operation (a float32
multiplication by 1 is exact), so `unexposed` renders are the original renders byte for byte.
"""
import bisect
import dataclasses

import numpy as np

LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 relative luminance of linear RGB
MAX_TIME = 2.0    # longest exposure time at night, as a multiple of the day's (the frame rate caps it)
MAX_GAIN = 16.0   # highest analog gain (24 dB)


@dataclasses.dataclass(frozen=True)
class NightLevel:
    """One night severity: the brightness the camera's auto-exposure aims for."""
    severity: int      # 1 (easiest) .. len(LEVELS) (the original, unexposed night)
    name: str
    target: float      # mean luminance auto-exposure aims for (linear, 0..1); 0: no auto-exposure
    summary: str


LEVELS = (
    NightLevel(1, 'dashcam', 0.40, "auto-exposure to the day frames' mean luminance: bright, noisy"),
    NightLevel(2, 'dim', 0.26, 'auto-exposure to a dusk-like mean luminance'),
    NightLevel(3, 'dark', 0.17, 'weak auto-exposure: a little brighter than the unexposed night'),
    NightLevel(4, 'unexposed', 0.0, "the original renderer's night: the day's exposure"),
)
UNEXPOSED = LEVELS[-1]


def exposure_for(radiance: np.ndarray, target: float) -> float:
    """Smallest E with mean luminance of clip(E * radiance, 0, 1) equal to `target` (inf if none).

    The mean is piecewise linear and non-decreasing in E, with a breakpoint where a channel value u
    saturates (E = 1 / u). With the values >= u saturated it is sum_c w_c (n_c(>= u) + E s_c(< u))
    (w_c: the channel's luminance weight per pixel, n_c a count, s_c a sum of values). A binary search
    over the values finds the dimmest one whose breakpoint still misses the target: it is the dimmest
    value saturated at the answer, which fixes the saturated set, and E follows in closed form. Sorts
    and sequential cumulative sums keep the result bit-identical on any machine."""
    values = np.sort(np.maximum(radiance.reshape(3, -1).astype(np.float64), 0.0), axis=1)
    n = values.shape[1]
    weights = np.array(LUMA) / n
    below = np.concatenate([np.zeros((3, 1)), np.cumsum(values, axis=1)], axis=1)  # sum of the first i

    def segment(u):  # (saturated luminance, luminance per unit E) with the values >= u saturated
        idx = np.array([np.searchsorted(v, u) for v in values])
        return (weights * (n - idx)).sum(), (weights * below[np.arange(3), idx]).sum()

    def misses(u):  # the mean at E = 1 / u is below the target
        saturated, slope = segment(u)
        return saturated + slope / u < target

    thresholds = np.sort(values[values > 0.0])
    first = bisect.bisect_left(range(thresholds.size), True, key=lambda i: misses(thresholds[i]))
    if first == 0:
        return float('inf')
    saturated, slope = segment(thresholds[first] if first < thresholds.size else np.inf)  # inf: none saturates
    return float((target - saturated) / slope)


def auto_exposure(radiance: np.ndarray, level: NightLevel) -> tuple:
    """(exposure time, analog gain) of `level`'s camera for a frame's radiance [3, S, S]."""
    if level.target <= 0.0:  # E = 1 whatever the frame (never shorter than day): skip the metering
        return 1.0, 1.0
    e = min(max(exposure_for(radiance, level.target), 1.0), MAX_TIME * MAX_GAIN)
    time = min(e, MAX_TIME)
    return time, e / time


def capture(radiance: np.ndarray, noise: np.ndarray, read: float, shot: float, time: float = 1.0,
            gain: float = 1.0) -> np.ndarray:
    """uint8 [S, S, 3] image of radiance [3, S, S] recorded with exposure `time` and `gain`, given a
    unit-variance noise field of the same shape."""
    signal = radiance * np.float32(time)
    signal += (np.float32(read) + np.float32(shot) * signal) * noise
    signal *= np.float32(gain)
    planes = (np.clip(signal, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)
    return np.ascontiguousarray(planes.transpose(1, 2, 0))
