"""adapt.evaluation.transfer against independent references: pycocotools, hand-built sets, hand numbers."""
import numpy as np
import pytest

from adapt.evaluation import evaluate_coco, load_detections, load_ground_truth
from adapt.evaluation.transfer import (bootstrap_ci, bootstrap_interval, bootstrap_values, domain_classifier_error,
                                       domain_gap, forgetting, gap_closed, proxy_a_distance, resample_images,
                                       transfer_matrix_metrics)
from tests.coco_reference import bootstrap_draws, pycocotools_eval, pycocotools_summary, resampled_set


def make_set(seed=0, num_images=20, num_cats=3):
    """Objects of all three COCO sizes, noisy true detections, false positives, some tied scores."""
    rng = np.random.default_rng(seed)
    images = [{'id': 10 * i + 7, 'width': 640, 'height': 480} for i in range(num_images)]
    anns, dets = [], []
    for img in images:
        for _ in range(int(rng.integers(0, 4))):
            w, h = (float(v) for v in rng.choice([12, 25, 50, 80, 130, 200], size=2))
            x, y = float(rng.uniform(0, 400)), float(rng.uniform(0, 250))
            c = int(rng.integers(1, num_cats + 1))
            anns.append({'id': len(anns) + 1, 'image_id': img['id'], 'category_id': c, 'bbox': [x, y, w, h],
                         'area': w * h, 'iscrowd': 0})
            if rng.random() < 0.75:
                dets.append({'image_id': img['id'], 'category_id': c,
                             'bbox': [x + float(rng.normal(0, w / 8)), y + float(rng.normal(0, h / 8)), w, h],
                             'score': float(np.round(rng.uniform(0.3, 1.0), 2))})
        for _ in range(int(rng.integers(0, 4))):
            dets.append({'image_id': img['id'], 'category_id': int(rng.integers(1, num_cats + 1)),
                         'bbox': [float(v) for v in rng.uniform([0, 0, 10, 10], [500, 350, 150, 150])],
                         'score': float(np.round(rng.uniform(0.0, 0.8), 2))})
    cats = [{'id': c, 'name': f'c{c}'} for c in range(1, num_cats + 1)]
    return {'images': images, 'annotations': anns, 'categories': cats}, dets



# ---------------------------------------------------------------------------------------------- bootstrap

@pytest.mark.parametrize('metric, index', [('AP50', 1), ('AP', 0), ('APs', 3), ('AR100', 8)])
def test_point_value_is_pycocotools(metric, index):
    gt, dets = make_set(0)
    ref = pycocotools_eval(gt, dets).stats
    value, low, high = bootstrap_ci(gt, dets, metric, num_samples=50)
    assert value == pytest.approx(ref[index], abs=1e-12)
    assert 0 < value < 1 and low <= value <= high


def test_interval_contains_value_and_is_reproducible():
    gt, dets = make_set(1, num_images=30)
    value, low, high = bootstrap_ci(gt, dets, 'AP50', num_samples=300, seed=3)
    assert low < value < high and high - low > 0.02
    assert bootstrap_ci(gt, dets, 'AP50', num_samples=300, seed=3) == (value, low, high)
    assert bootstrap_ci(gt, dets, 'AP50', num_samples=300, seed=4)[1:] != (low, high)
    narrow = bootstrap_ci(gt, dets, 'AP50', num_samples=300, seed=3, level=0.5)
    assert low < narrow[1] <= narrow[2] < high


def test_interval_of_several_seeds_is_of_the_per_resample_mean_without_undefined_resamples():
    values = [[0.1, -1, 0.3, 0.5], [0.3, 0.2, 0.5, 0.7]]
    # resample 1 is undefined in seed 0; the means of the others are 0.2, 0.4, 0.6: quartiles 0.3, 0.5
    assert bootstrap_interval(values, level=0.5) == pytest.approx((0.3, 0.5))
    assert bootstrap_interval([0.4, 0.1, -1, 0.2, 0.3], level=0.5) == pytest.approx((0.175, 0.325))
    with pytest.raises(ValueError, match='undefined on every bootstrap resample'):
        bootstrap_interval([[-1, 0.2], [0.1, -1]])
    with pytest.raises(ValueError, match=r'expected shape \[num_samples\]'):
        bootstrap_interval(np.zeros((1, 2, 3)))


def make_tied_set(seed=0, num_images=24):
    """A set where the order of the merge by score matters everywhere: scores from four values (ties within an
    image, also between a true and a false positive, and across images), crowd regions with detections on
    them, category 3 in images 1 and 7 only, small objects in images 0, 4 and 5 only (APs is undefined on
    some resamples), and 120 objects of one category in image 4, each detected with the same score: the
    last ones beyond maxDets."""
    rng = np.random.default_rng(seed)
    images = [{'id': 3 * i + 2} for i in range(num_images)]
    anns, dets = [], []

    def add(image, category, box, score=None, crowd=0, jitter=0.0):
        anns.append({'id': len(anns) + 1, 'image_id': image, 'category_id': category, 'bbox': box,
                     'area': float(box[2] * box[3]), 'iscrowd': crowd})
        for _ in range(int(rng.integers(1, 3)) if score is None else 1):  # duplicates: one is a false positive
            dets.append({'image_id': image, 'category_id': category, 'score': score or float(rng.choice(SCORES)),
                         'bbox': [v + float(rng.normal(0, jitter)) for v in box[:2]] + box[2:]})

    for n, image in enumerate(i['id'] for i in images):
        for _ in range(int(rng.integers(1, 4))):
            w, h = (float(v) for v in rng.choice([40, 60, 120, 200], size=2))
            add(image, int(rng.integers(1, 3)), [float(rng.uniform(0, 400)), float(rng.uniform(0, 300)), w, h],
                jitter=w / 12)
        for _ in range(int(rng.integers(0, 4))):
            dets.append({'image_id': image, 'category_id': int(rng.integers(1, 4)), 'score': float(rng.choice(SCORES)),
                         'bbox': [float(v) for v in rng.uniform([0, 0, 20, 20], [500, 400, 150, 150])]})
        if n in (0, 5):
            add(image, 1, [300.0, 300.0, 20.0, 20.0], jitter=1.0)
        if n in (1, 7):
            add(image, 3, [50.0, 50.0, 80.0, 60.0], jitter=4.0)
        if n in (2, 9):
            add(image, 2, [0.0, 0.0, 300.0, 300.0], crowd=1, score=0.5)
            dets.append({'image_id': image, 'category_id': 2, 'bbox': [10.0, 10.0, 50.0, 50.0], 'score': 0.5})
        if n == 4:
            for k in range(120):
                add(image, 2, [float(k % 12) * 40, float(k // 12) * 40, 30.0, 30.0], score=0.3)
    cats = [{'id': c, 'name': f'c{c}'} for c in (1, 2, 3)]
    return {'images': images, 'annotations': anns, 'categories': cats}, dets


SCORES = (0.3, 0.5, 0.7, 0.9)


def test_bootstrap_values_are_pycocotools_on_the_resampled_sets():
    """Every resample written out by hand as a data set of its own (a twice-drawn image twice) and
    evaluated by pycocotools: the tied set's merge order, crowds, maxDets and undefined APs included."""
    gt, dets = make_tied_set()
    num_samples = 12
    draws = bootstrap_draws(len(gt['images']), num_samples, seed=4)
    expected = [pycocotools_summary(*resampled_set(gt, dets, draw)) for draw in draws]
    for metric in ('AP50', 'AP', 'APs', 'ARl', 'AR1'):
        values = bootstrap_values(gt, dets, metric, num_samples=num_samples, seed=4)
        np.testing.assert_allclose(values, [e[metric] for e in expected], rtol=0, atol=1e-12, err_msg=metric)
    # The set covers what it should: resamples that differ, undefined APs, resamples without category 3.
    assert np.unique([e['AP'] for e in expected]).size == num_samples
    small = np.array([e['APs'] for e in expected])
    assert (small == -1).any() and (small > 0).any()
    assert not np.isin(draws, [1, 7]).any(axis=1).all()


def test_identity_resample_is_the_original_set():
    gt, dets = make_set(3)
    g = load_ground_truth(gt)
    full = evaluate_coco(gt, dets)
    same = evaluate_coco(*resample_images(g, load_detections(dets, g), np.arange(len(gt['images']))[::-1]))
    np.testing.assert_array_equal(full.precision, same.precision)
    np.testing.assert_array_equal(full.stats, same.stats)


# A tiny set by hand: three images (ids 5, 9, 12), one category; image 9 is well detected, image 12 is not.
_BOX = {5: [[10, 10, 50, 40], [100, 100, 30, 30]], 9: [[20, 20, 60, 60]], 12: [[200, 50, 40, 80]]}
TINY_GT = {
    'images': [{'id': 5}, {'id': 9}, {'id': 12}],
    'categories': [{'id': 1, 'name': 'car'}],
    'annotations': [
        {'id': 1, 'image_id': 5, 'category_id': 1, 'bbox': _BOX[5][0], 'area': 2000.0, 'iscrowd': 0},
        {'id': 2, 'image_id': 5, 'category_id': 1, 'bbox': _BOX[5][1], 'area': 900.0, 'iscrowd': 0},
        {'id': 3, 'image_id': 9, 'category_id': 1, 'bbox': _BOX[9][0], 'area': 3600.0, 'iscrowd': 0},
        {'id': 4, 'image_id': 12, 'category_id': 1, 'bbox': _BOX[12][0], 'area': 3200.0, 'iscrowd': 0}]}
TINY_DETS = [
    {'image_id': 5, 'category_id': 1, 'bbox': [12, 10, 50, 40], 'score': 0.9},     # hit
    {'image_id': 5, 'category_id': 1, 'bbox': [300, 300, 30, 30], 'score': 0.8},   # miss
    {'image_id': 9, 'category_id': 1, 'bbox': [21, 22, 60, 58], 'score': 0.7},     # hit
    {'image_id': 9, 'category_id': 1, 'bbox': [400, 10, 20, 20], 'score': 0.95},   # miss, top score
    {'image_id': 12, 'category_id': 1, 'bbox': [205, 60, 40, 80], 'score': 0.6}]   # hit
# Draw [1, 1, 0] = images 9, 9, 5 (12 left out). resample_images sorts the draw and renumbers: image 5 ->
# id 1, the two copies of 9 -> ids 2 and 3, annotations 1..4 in order.
DUPLICATED_GT = {
    'images': [{'id': 1}, {'id': 2}, {'id': 3}],
    'categories': [{'id': 1, 'name': 'car'}],
    'annotations': [
        {'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': _BOX[5][0], 'area': 2000.0, 'iscrowd': 0},
        {'id': 2, 'image_id': 1, 'category_id': 1, 'bbox': _BOX[5][1], 'area': 900.0, 'iscrowd': 0},
        {'id': 3, 'image_id': 2, 'category_id': 1, 'bbox': _BOX[9][0], 'area': 3600.0, 'iscrowd': 0},
        {'id': 4, 'image_id': 3, 'category_id': 1, 'bbox': _BOX[9][0], 'area': 3600.0, 'iscrowd': 0}]}
DUPLICATED_DETS = [
    {'image_id': 1, 'category_id': 1, 'bbox': [12, 10, 50, 40], 'score': 0.9},
    {'image_id': 1, 'category_id': 1, 'bbox': [300, 300, 30, 30], 'score': 0.8},
    {'image_id': 2, 'category_id': 1, 'bbox': [21, 22, 60, 58], 'score': 0.7},
    {'image_id': 2, 'category_id': 1, 'bbox': [400, 10, 20, 20], 'score': 0.95},
    {'image_id': 3, 'category_id': 1, 'bbox': [21, 22, 60, 58], 'score': 0.7},
    {'image_id': 3, 'category_id': 1, 'bbox': [400, 10, 20, 20], 'score': 0.95}]


def test_image_drawn_twice_counts_twice_like_pycocotools_on_a_duplicated_set():
    ref = pycocotools_eval(DUPLICATED_GT, DUPLICATED_DETS).stats
    g = load_ground_truth(TINY_GT)
    new_gt, new_dets = resample_images(g, load_detections(TINY_DETS, g), [1, 1, 0])
    ours = evaluate_coco(new_gt, new_dets)
    np.testing.assert_allclose(ours.stats, ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(new_gt.image_ids, [1, 2, 3])
    np.testing.assert_array_equal(new_gt.ann_ids, [1, 2, 3, 4])
    # Counting image 9 once gives a different AP50: the duplicate is not collapsed.
    once = [d for d in DUPLICATED_DETS if d['image_id'] != 3]
    once_gt = dict(DUPLICATED_GT, images=DUPLICATED_GT['images'][:2], annotations=DUPLICATED_GT['annotations'][:3])
    assert abs(pycocotools_eval(once_gt, once).stats[1] - ref[1]) > 0.01


@pytest.mark.parametrize('kwargs, message', [
    (dict(metric='mAP'), r"unknown 'mAP'; valid choices: AP, AP50"),
    (dict(level=1.0), r'level: must lie in \(0, 1\)'),
    (dict(num_samples=0), 'num_samples: must be a positive integer'),
    (dict(metric='APl'), 'APl is undefined on this set'),
])
def test_bootstrap_bad_input_raises_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        bootstrap_ci(TINY_GT, TINY_DETS, **kwargs)
    assert '\n' not in str(info.value)


def test_resample_rejects_indices_out_of_range():
    g = load_ground_truth(TINY_GT)
    with pytest.raises(ValueError, match=r'draw: image indices must lie in \[0, 3\)'):
        resample_images(g, load_detections(TINY_DETS, g), [0, 3])


# ------------------------------------------------------------------------ gap closed, domain gap, forgetting

def test_gap_closed_domain_gap_forgetting_hand_numbers():
    assert gap_closed(0.10, 0.25, 0.40) == pytest.approx(0.5)
    assert gap_closed(0.10, 0.40, 0.40) == pytest.approx(1.0)
    assert gap_closed(0.10, 0.05, 0.30) == pytest.approx(-0.25)
    assert gap_closed(0.20, 0.45, 0.40) == pytest.approx(1.25)
    assert np.isnan(gap_closed(0.30, 0.35, 0.30)) and np.isnan(gap_closed(0.30, 0.35, 0.20))
    np.testing.assert_allclose(gap_closed([0.1, 0.3], [0.2, 0.4], [0.3, 0.3]), [0.5, np.nan])
    assert domain_gap(0.52, 0.31) == pytest.approx(0.21)
    assert forgetting(0.52, 0.47) == pytest.approx(0.05)
    assert forgetting(0.50, 0.55) == pytest.approx(-0.05)
    np.testing.assert_allclose(domain_gap([0.5, 0.6], 0.2), [0.3, 0.4])
    assert isinstance(gap_closed(0.1, 0.2, 0.3), float) and isinstance(forgetting(1, 0), float)


@pytest.mark.parametrize('call, message', [
    (lambda: gap_closed(0.1, float('nan'), 0.3), 'method: must be finite'),
    (lambda: domain_gap('day', 0.3), 'source_day: must be a number'),
    (lambda: forgetting(0.5, None), 'after: must be a number'),
])
def test_scalar_metrics_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------------------- transfer matrix

def test_transfer_matrix_metrics_hand_example():
    # day -> dusk -> night; R[i, j] = score on domain j after stage i; b = initial model's scores.
    R = [[0.60, 0.30, 0.10],
         [0.50, 0.55, 0.25],
         [0.40, 0.45, 0.50]]
    b = [0.05, 0.10, 0.02]
    m = transfer_matrix_metrics(R, b)
    assert m['ACC'] == pytest.approx((0.40 + 0.45 + 0.50) / 3)
    assert m['BWT'] == pytest.approx(((0.40 - 0.60) + (0.45 - 0.55)) / 2)            # -0.15
    assert m['FWT'] == pytest.approx(((0.30 - 0.10) + (0.25 - 0.02)) / 2)            # 0.215
    assert m['ACC_DR'] == pytest.approx((0.60 + 0.50 + 0.55 + 0.40 + 0.45 + 0.50) / 6)
    assert m['BWT_DR'] == pytest.approx(((0.50 - 0.60) + (0.40 - 0.60) + (0.45 - 0.55)) / 3)
    assert m['FWT_DR'] == pytest.approx((0.30 + 0.10 + 0.25) / 3)
    assert np.isnan(transfer_matrix_metrics(R)['FWT'])
    one = transfer_matrix_metrics([[0.7]], [0.1])
    assert one['ACC'] == pytest.approx(0.7) and np.isnan(one['BWT']) and np.isnan(one['FWT'])


@pytest.mark.parametrize('R, b, message', [
    ([[0.1, 0.2], [0.3]], None, 'R: must be a number or an array of numbers, got list'),
    ([[0.1, 0.2]], None, r'R: must be a non-empty square matrix \[N, N\], got shape \(1, 2\)'),
    ([[0.1, 0.2], [0.3, np.inf]], None, 'R: must be finite'),
    (np.eye(2), [0.1, 0.2, 0.3], r'b: must have shape \(2,\)'),
])
def test_transfer_matrix_bad_input(R, b, message):
    with pytest.raises(ValueError, match=message):
        transfer_matrix_metrics(R, b)


# --------------------------------------------------------------------------------------- proxy A-distance

def test_proxy_a_distance_separated_and_identical_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, size=(2000, 8))
    far = rng.normal(0, 1, size=(2000, 8)) + 6.0
    same = rng.normal(0, 1, size=(2000, 8))
    assert proxy_a_distance(a, far) > 1.99
    assert proxy_a_distance(a, same, seed=1) < 0.1
    near = rng.normal(0, 1, size=(2000, 8)) + 0.3  # partly separable: in between
    assert 0.5 < proxy_a_distance(a, near) < 1.9


def test_classifier_error_is_a_hand_count_on_a_tiny_example():
    # 1-D: domain a around -2.5, domain b around +2.5; separable, so no test point is misclassified.
    a = np.array([[-3.0], [-2.8], [-2.5], [-2.2], [-2.0], [-2.6]])
    b = np.array([[2.0], [2.3], [2.5], [2.8], [3.0], [2.4]])
    assert domain_classifier_error(a, b) == 0.0 and proxy_a_distance(a, b) == 2.0
    # One point of each domain moved deep into the other: exactly those in the test half are wrong.
    a_out, b_out = a.copy(), b.copy()
    a_out[1], b_out[4] = 2.6, -2.7
    seed = 2
    perm = np.random.default_rng(seed).permutation(12)
    test = perm[6:]
    outliers = {1, 6 + 4}  # pooled order: a then b
    wrong = len(outliers & set(test.tolist()))
    assert wrong >= 1  # the seed puts at least one outlier in the test half
    err = domain_classifier_error(a_out, b_out, seed=seed)
    assert err == wrong / 6
    assert proxy_a_distance(a_out, b_out, seed=seed) == pytest.approx(max(0.0, 2 * (1 - 2 * wrong / 6)))


@pytest.mark.parametrize('fa, fb, message', [
    (np.zeros(5), np.zeros((5, 1)), r'features_a: must be a \[num_samples >= 2, num_features\] array'),
    (np.zeros((5, 2)), np.zeros((5, 3)), 'features: domains differ in feature size, 2 vs 3'),
    (np.zeros((5, 2)), np.full((5, 2), np.nan), 'features_b: must be finite'),
])
def test_proxy_a_distance_bad_input(fa, fb, message):
    with pytest.raises(ValueError, match=message):
        proxy_a_distance(fa, fb)
