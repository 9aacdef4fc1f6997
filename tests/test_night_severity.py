"""daynight_synth night severity: the auto-exposing camera against closed forms, and the levels as one
axis over fixed scenes (same boxes, day and dusk untouched, the hardest level the original night)."""
import hashlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

import adapt.datasets  # noqa: F401  registers the builders
from adapt.datasets.daynight_synth import exposure, raster, render
from adapt.datasets.daynight_synth.daynight_synth import (SPLIT_CODES, DaynightSynth, at_severity, make_example,
                                                          severity_of)
from adapt.datasets.daynight_synth.scene import sample_scene, split_seed

LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709
READ, SHOT = render._DOMAIN['night']['read'], render._DOMAIN['night']['shot']  # the night's sensor at unit gain
# sha256 per domain of the renders of SCENES at 48 px, made by the renderer before the camera model
# existed (commit 0d8f246): the original pixels, which day, dusk and the unexposed night must keep.
SCENES = ((SPLIT_CODES['validation_night'], 0), (SPLIT_CODES['validation_night'], 1), (SPLIT_CODES['paired'], 2))
ORIGINAL = {'day': 'd956f02a00c799dedea72c995aeefa8f6caa0fa675e2b0349e5318d690535da7',
            'dusk': '43e94f43031e11f7ad4fc6090452c0e4e626e941808985c150c3981d7f2ce80f',
            'night': '4b759215e23bcd522a8d8b8077dbf3e3fc694071a661f194c0503c8865db0bbf'}


def _scene(code, index):
    return sample_scene(split_seed(code, index))


def _mean_luminance(image_uint8):
    return float(((image_uint8 / 255.0) @ LUMA).mean())


def _bisect_exposure(radiance, target):
    """Reference: bisection on E of the mean luminance of clip(E * radiance, 0, 1), evaluated directly."""
    x = radiance.astype(np.float64)
    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        mean = np.einsum('c,chw->hw', LUMA, np.clip(mid * x, 0.0, 1.0)).mean()
        lo, hi = (mid, hi) if mean < target else (lo, mid)
    return hi


def test_flat_frame_exposure_is_target_over_luminance():
    rgb = np.array([0.03, 0.05, 0.11], np.float32)
    flat = np.broadcast_to(rgb[:, None, None], (3, 16, 16)).copy()
    luminance = float(LUMA @ rgb.astype(np.float64))
    for target in (0.1, 0.4):
        assert exposure.exposure_for(flat, target) == pytest.approx(target / luminance, rel=1e-12)
    # past full scale nothing brightens: every channel saturated gives mean luminance 1 at most
    assert exposure.exposure_for(flat, 1.0) == pytest.approx(1.0 / float(rgb.min()), rel=1e-12)
    assert exposure.exposure_for(np.zeros((3, 4, 4), np.float32), 0.2) == float('inf')


@pytest.mark.parametrize('level', exposure.LEVELS[:-1], ids=lambda level: level.name)
def test_auto_exposure_brings_a_night_frame_to_its_target(level):
    """On a real night lens image (lamps and headlights saturate): E matches a direct bisection, and the
    camera without noise records the target mean luminance within quantisation (0.5 / 255)."""
    scene = _scene(SPLIT_CODES['validation_night'], 0)
    lens = render.lens_image(scene, raster.rasterize(scene, 48), 'night')
    e = exposure.exposure_for(lens, level.target)
    assert e == pytest.approx(_bisect_exposure(lens, level.target), rel=1e-9)
    time, gain = exposure.auto_exposure(lens, level)
    assert 1.0 < e < exposure.MAX_TIME * exposure.MAX_GAIN
    assert (time, gain) == pytest.approx((min(e, exposure.MAX_TIME), e / min(e, exposure.MAX_TIME)), rel=1e-12)
    image = exposure.capture(lens, np.zeros_like(lens), READ, SHOT, time, gain)
    assert abs(_mean_luminance(image) - level.target) <= 0.5 / 255 + 1e-6


def test_exposure_limits():
    """A frame darker than the longest exposure at the highest gain can lift stays below its target; a
    frame already brighter than the target keeps the day's exposure."""
    dark = np.full((3, 8, 8), 0.001, np.float32)
    dashcam = exposure.LEVELS[0]
    assert exposure.auto_exposure(dark, dashcam) == (exposure.MAX_TIME, exposure.MAX_GAIN)
    bright = np.full((3, 8, 8), 0.9, np.float32)
    assert exposure.auto_exposure(bright, dashcam) == (1.0, 1.0)
    assert exposure.auto_exposure(dark, exposure.UNEXPOSED) == (1.0, 1.0)


@pytest.mark.parametrize('radiance,target', [(0.1, 0.15), (0.1, 0.4), (0.1, 0.6), (0.025, 0.5)])
def test_noise_grows_with_gain(radiance, target):
    """A flat grey patch recorded at E = target / radiance with the renderer's noise field: its measured
    std matches the model, g * (read + shot * t * radiance) (t = min(E, MAX_TIME), g = E / t), with the
    quantisation's variance (1/255)^2 / 12 added; the mean stays at the target (no clipping here)."""
    scene = _scene(SPLIT_CODES['validation_night'], 0)
    flat = np.full((3, 192, 192), radiance, np.float32)
    e = target / radiance
    t = min(e, exposure.MAX_TIME)
    g = e / t
    level = exposure.NightLevel(0, 'test', target, '')
    assert exposure.auto_exposure(flat, level) == pytest.approx((t, g), rel=1e-6)
    image = exposure.capture(flat, render._noise(scene, 'night', flat.shape), READ, SHOT, t, g) / 255.0
    sigma = g * (READ + SHOT * t * radiance)
    assert image.std() == pytest.approx(np.sqrt(sigma ** 2 + 1 / (12 * 255 ** 2)), rel=0.01)
    assert image.mean() == pytest.approx(target, abs=0.002)


def _digest(domain, night):
    h = hashlib.sha256()
    for code, index in SCENES:
        scene = _scene(code, index)
        h.update(render.shade(scene, raster.rasterize(scene, 48), domain, night).tobytes())
    return h.hexdigest()


def test_unexposed_night_is_the_original_and_day_dusk_never_change():
    assert _digest('night', exposure.UNEXPOSED) == ORIGINAL['night']
    for level in exposure.LEVELS:
        assert _digest('day', level) == ORIGINAL['day'], level.name
        assert _digest('dusk', level) == ORIGINAL['dusk'], level.name


def test_levels_share_scenes_and_boxes_and_brighten_in_order():
    """make_example at every severity: identical boxes, labels, scene ids and day images; night images
    that differ, deterministically, and get brighter as the severity falls."""
    for split in ('validation_night', 'paired'):
        for index in range(2):
            examples = [make_example(split, index, 48, level.severity) for level in exposure.LEVELS]
            night = [np.asarray(ex['image_night'][0] if split == 'paired' else ex['image']) for ex in examples]
            for ex in examples[1:]:
                np.testing.assert_array_equal(ex['objects']['bbox'], examples[0]['objects']['bbox'])
                np.testing.assert_array_equal(ex['objects']['label'], examples[0]['objects']['label'])
                assert (ex['scene_id'], ex['domain']) == (examples[0]['scene_id'], examples[0]['domain'])
                if split == 'paired':  # its `image` is the day render
                    np.testing.assert_array_equal(ex['image'], examples[0]['image'])
            means = [image.mean() for image in night]
            assert means == sorted(means, reverse=True) and means[0] > 1.5 * means[-1], means
            again = make_example(split, index, 48, 1)
            np.testing.assert_array_equal(again['image_night'][0] if split == 'paired' else again['image'], night[0])


def test_configs_and_the_paired_split_at_a_level(tmp_path):
    configs = {c.name: c for c in DaynightSynth.BUILDER_CONFIGS}
    assert DaynightSynth.BUILDER_CONFIGS[0].name == 'r128' and configs['r128_small'].severity == len(exposure.LEVELS)
    for base in ('r64', 'r64_small', 'r128', 'r128_small', 'r256', 'r256_small', 'tiny'):
        for level in exposure.LEVELS[:-1]:
            config = configs[f'{base}_sev{level.severity}']
            assert config.severity == level.severity
            assert (config.resolution, config.split_sizes()) == (configs[base].resolution, configs[base].split_sizes())
    builder = tfds.builder('daynight_synth/tiny_sev2', data_dir=str(tmp_path))
    for key, ex in builder._generate_examples('paired', 2):
        scene = _scene(SPLIT_CODES['paired'], key % 10**9)
        geometry = raster.rasterize(scene, 64)
        np.testing.assert_array_equal(ex['image_night'][0], render.shade(scene, geometry, 'night', exposure.LEVELS[1]))
        np.testing.assert_array_equal(ex['image'], render.shade(scene, geometry, 'day'))
        np.testing.assert_array_equal(ex['objects']['bbox'], geometry.boxes)


def test_a_datasets_name_at_another_severity():
    """The protocol's sweep names a level by its builder config (written out here by hand)."""
    configs = {c.name: c.severity for c in DaynightSynth.BUILDER_CONFIGS}
    cases = {('daynight_synth/r128_small', 2): 'daynight_synth/r128_small_sev2',
             ('daynight_synth/r128_small_sev2', 4): 'daynight_synth/r128_small',
             ('daynight_synth/tiny_sev3', 1): 'daynight_synth/tiny_sev1', ('daynight_synth/r64', 4): 'daynight_synth/r64'}
    for (dataset, level), want in cases.items():
        assert at_severity(dataset, level) == want
        assert configs[want.split('/')[1]] == severity_of(want) == level
    with pytest.raises(ValueError, match='valid choices: 1, 2, 3, 4'):
        at_severity('daynight_synth/tiny', 5)
    with pytest.raises(ValueError, match="levels of daynight_synth, not of 'bdd100k/night'"):
        at_severity('bdd100k/night', 2)
