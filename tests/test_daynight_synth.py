"""daynight_synth: TFDS build (tiny config), determinism, boxes on their objects, a real night shift."""
import dataclasses
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import adapt.datasets  # noqa: F401  registers the builders
from adapt.datasets.daynight_synth import CLASS_NAMES, DOMAINS, raster, render
from adapt.datasets.daynight_synth.daynight_synth import SPLIT_CODES, DaynightSynth, make_example, scene_id
from adapt.datasets.daynight_synth.scene import MAX_OBJECTS, sample_scene, split_seed

TINY = next(c for c in DaynightSynth.BUILDER_CONFIGS if c.name == 'tiny')


def _build(data_dir):
    builder = tfds.builder('daynight_synth/tiny', data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    return _build(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def examples(built):
    return {split: list(tfds.as_numpy(built.as_dataset(split=split))) for split in SPLIT_CODES}


def _scene(code, index):
    return sample_scene(split_seed(code, index))


def test_builder_registered_and_split_sizes(built):
    assert 'daynight_synth' in tfds.list_builders()
    assert {s: i.num_examples for s, i in built.info.splits.items()} == TINY.split_sizes()
    assert TINY.split_sizes()['train_night'] == TINY.num_train and TINY.split_sizes()['paired'] == TINY.num_paired


def test_features_shapes_and_dtypes(examples):
    r = TINY.resolution
    for split, exs in examples.items():
        for ex in exs:
            assert ex['image'].shape == (r, r, 3) and ex['image'].dtype == np.uint8
            assert ex['image_night'].shape == ((1 if split == 'paired' else 0), r, r, 3)
            assert ex['image_night'].dtype == np.uint8
            n = len(ex['objects']['label'])
            assert ex['objects']['bbox'].shape == (n, 4) and ex['objects']['bbox'].dtype == np.float32
            assert ex['objects']['label'].dtype == np.int64
            assert np.all((ex['objects']['label'] >= 0) & (ex['objects']['label'] < len(CLASS_NAMES)))
            assert DOMAINS[ex['domain']] == ('day' if split == 'paired' else split.rsplit('_', 1)[1])
            assert ex['scene_id'] // 10**9 == SPLIT_CODES[split]


def test_dataset_equals_renderer_output(examples):
    """Lossless PNG: every stored example is exactly what the renderer makes for its scene id."""
    for split, exs in examples.items():
        for ex in exs:
            ref = make_example(split, int(ex['scene_id'] % 10**9), TINY.resolution)
            np.testing.assert_array_equal(ex['image'], ref['image'])
            np.testing.assert_array_equal(ex['objects']['bbox'], ref['objects']['bbox'])
            np.testing.assert_array_equal(ex['objects']['label'], ref['objects']['label'])
            night = np.array(ref['image_night'], np.uint8).reshape(-1, *ex['image'].shape)
            np.testing.assert_array_equal(ex['image_night'], night)


def test_two_builds_are_byte_identical(built, tmp_path):
    second = _build(tmp_path)

    def digests(builder):
        root = builder.data_path
        return {f: hashlib.sha256(open(os.path.join(root, f), 'rb').read()).hexdigest()
                for f in sorted(os.listdir(root)) if '.tfrecord' in f}

    first = digests(built)
    assert first and first == digests(second)


GOLDEN = 'bf4406fd44d0f461f830a1934db5c988d13badc532b5bb88a45b66b2599d97af'


def test_golden_pixels():
    """Pinned checksums: the renderer's output must not change across machines or silently over time
    (a deliberate change of the data must bump DaynightSynth.VERSION and these digests)."""
    scene = _scene(SPLIT_CODES['test_day'], 3)
    geometry = raster.rasterize(scene, 64)
    digest = hashlib.sha256()
    for domain in DOMAINS:
        digest.update(render.shade(scene, geometry, domain).tobytes())
    digest.update(geometry.boxes.tobytes())
    digest.update(geometry.labels.tobytes())
    assert digest.hexdigest() == GOLDEN


def test_render_is_deterministic_and_domains_share_boxes():
    for index in range(3):
        a, b = _scene(1, index), _scene(1, index)
        assert a == b
        renders = [render.render(a, d, 64) for d in DOMAINS]
        for domain, (image, boxes, labels) in zip(DOMAINS, renders):
            image2, boxes2, labels2 = render.render(b, domain, 64)
            assert image.tobytes() == image2.tobytes()
            np.testing.assert_array_equal(boxes, renders[0][1])
            np.testing.assert_array_equal(labels, renders[0][2])


def test_paired_split_carries_day_and_night_of_one_scene(examples):
    for ex in examples['paired']:
        scene = _scene(SPLIT_CODES['paired'], int(ex['scene_id'] % 10**9))
        geometry = raster.rasterize(scene, TINY.resolution)
        np.testing.assert_array_equal(ex['image'], render.shade(scene, geometry, 'day'))
        np.testing.assert_array_equal(ex['image_night'][0], render.shade(scene, geometry, 'night'))
        np.testing.assert_array_equal(ex['objects']['bbox'], geometry.boxes)
        assert ex['image_night'][0].mean() < 0.6 * ex['image'].mean()


def test_boxes_valid_and_counts_bounded():
    counts = []
    for index in range(150):
        scene = _scene(SPLIT_CODES['train_day'], index)
        assert sum(d.label >= 0 for d in scene.drawables) <= MAX_OBJECTS
        g = raster.rasterize(scene, 128)
        b = g.boxes
        assert np.all((b >= 0.0) & (b <= 1.0))
        assert np.all(b[:, 0] < b[:, 2]) and np.all(b[:, 1] < b[:, 3])
        assert np.all(b[:, 2] - b[:, 0] >= raster.MIN_HEIGHT_PX / 128 - 1e-6)
        counts.append(len(b))
    counts = np.array(counts)
    assert counts.max() <= MAX_OBJECTS and counts.min() == 0 and counts.mean() > 3
    labels = np.concatenate([raster.rasterize(_scene(1, i), 128).labels for i in range(60)])
    assert set(labels.tolist()) == set(range(len(CLASS_NAMES)))  # every class occurs


def test_boxes_sit_on_their_objects():
    """Independent check: removing an object from the scene changes the day image only inside its
    box (plus 1 px of lens blur), and changes pixels on all four edges of the box (tight box). By day
    the light does not depend on depth and the sensor noise is the same, so any change is the object."""
    checked = 0
    for index in range(12):
        scene = _scene(SPLIT_CODES['validation_day'], index)
        geometry = raster.rasterize(scene, 128)
        full = render.shade(scene, geometry, 'day').astype(np.int16)
        for box, j in zip(geometry.boxes, geometry.source):
            drawables = scene.drawables[:j] + scene.drawables[j + 1:]
            without = render.render(dataclasses.replace(scene, drawables=drawables), 'day', 128)[0]
            changed = np.abs(full - without).max(-1) > 0
            r0, c0, r1, c1 = np.round(box * 128).astype(int)
            outside = changed.copy()
            outside[max(r0 - 1, 0):r1 + 1, max(c0 - 1, 0):c1 + 1] = False
            assert not outside.any(), (index, j)
            inner = changed[r0:r1, c0:c1]
            assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()
            checked += 1
    assert checked > 30


def _standardise(image):
    x = image.astype(np.float64)
    return (x - x.mean((0, 1))) / (x.std((0, 1)) + 1e-6)


def test_night_is_dark_and_not_a_global_colour_transform():
    """After per-image, per-channel standardisation, night still differs strongly from day, while a
    global affine colour transform of day (the reference) is undone to quantisation level."""
    night_gap, affine_gap, ratios = [], [], []
    for index in range(24):
        scene = _scene(SPLIT_CODES['test_night'], index)
        geometry = raster.rasterize(scene, 64)
        day, night = render.shade(scene, geometry, 'day'), render.shade(scene, geometry, 'night')
        affine = np.clip(day * 0.12 + np.array([3.0, 5.0, 12.0]), 0, 255).astype(np.uint8)
        night_gap.append(np.abs(_standardise(night) - _standardise(day)).mean())
        affine_gap.append(np.abs(_standardise(affine) - _standardise(day)).mean())
        ratios.append(night.mean() / day.mean())
    assert max(affine_gap) < 0.15
    assert min(night_gap) > 0.6 and np.mean(night_gap) > 0.9
    assert np.mean(ratios) < 0.4


def test_night_light_is_spatially_varying():
    """Street-lamp pools and headlight cones: the road's local brightness varies much more at night
    (relative to its mean) than by day."""
    cv = {d: [] for d in ('day', 'night')}
    for index in range(24):
        scene = _scene(SPLIT_CODES['test_night'], index)
        geometry = raster.rasterize(scene, 64)
        for domain in cv:
            lum = render.shade(scene, geometry, domain).astype(np.float64).mean(-1)[32:]  # lower half
            blocks = lum.reshape(4, 8, 8, 8).mean((1, 3))
            cv[domain].append(blocks.std() / blocks.mean())
    assert np.mean(cv['night']) > 1.5 * np.mean(cv['day'])


def test_unlit_objects_fade_and_lit_ones_stay_visible_at_night():
    """An object's contrast = mean absolute change of the image when it is removed from the scene.
    At night objects without lights of their own (pedestrians, signs) keep a small fraction of their
    day contrast, while vehicles (head- and tail-lights) and traffic lights stay visible."""
    ratios = {'unlit': [], 'lit': []}
    for index in range(16):
        scene = _scene(SPLIT_CODES['validation_night'], index)
        geometry = raster.rasterize(scene, 64)
        for j in geometry.source:
            d = scene.drawables[j]
            without = dataclasses.replace(scene, drawables=scene.drawables[:j] + scene.drawables[j + 1:])
            g2 = raster.rasterize(without, 64)
            contrast = {dom: np.abs(render.shade(scene, geometry, dom).astype(float) -
                                    render.shade(without, g2, dom)).mean() for dom in ('day', 'night')}
            lit = d.kind == 'traffic_light' or (d.kind.startswith(('car_', 'truck_')) and d.variant < 6)
            unlit = d.kind in ('pedestrian', 'traffic_sign')
            if lit or unlit:
                ratios['lit' if lit else 'unlit'].append(contrast['night'] / contrast['day'])
    assert len(ratios['unlit']) >= 8 and len(ratios['lit']) >= 8
    assert np.median(ratios['unlit']) < 0.3
    assert np.median(ratios['lit']) > 0.6


def test_splits_have_different_scenes(examples):
    ids = [int(ex['scene_id']) for exs in examples.values() for ex in exs]
    assert len(ids) == len(set(ids))
    days = {code: raster.rasterize(_scene(code, 0), 64).albedo.tobytes() for code in SPLIT_CODES.values()}
    assert len(set(days.values())) == len(days)
    assert scene_id('paired', 5) != scene_id('test_night', 5)


def test_smooth_matches_convolution_reference():
    x = np.random.default_rng(0).random((3, 9, 11)).astype(np.float32)
    for axis in (-2, -1):
        padded = np.pad(x, [(0, 0)] + [(1, 1) if a == axis % 3 else (0, 0) for a in (1, 2)], mode='edge')
        ref = np.apply_along_axis(lambda v: np.convolve(v, [0.25, 0.5, 0.25], mode='valid'), axis, padded)
        np.testing.assert_allclose(render._smooth(x, axis), ref, rtol=1e-6, atol=1e-7)


def _run(*args):
    return subprocess.run([sys.executable, '-m', *args], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_show_dataset_writes_grid_and_rejects_bad_flags(tmp_path):
    out = tmp_path / 'grid.png'
    proc = _run('experiments.show_dataset', '--config=tiny', '--num_scenes=2', '--tile=64', f'--out={out}')
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 66, 3 * 66, 3) and grid.std() > 10
    bad = _run('experiments.show_dataset', '--split=evening')
    assert bad.returncode == 2 and 'paired' in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_bench_renderer_prints_rates():
    proc = _run('experiments.bench_renderer', '--resolution=32', '--num_images=2')
    assert proc.returncode == 0, proc.stderr
    assert sum('images/s' in line for line in proc.stdout.splitlines()) == len(DOMAINS)
