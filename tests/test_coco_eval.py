"""adapt.evaluation.coco against pycocotools (test-only reference) on randomised, adversarial data."""
import json
import warnings

import numpy as np
import pytest

from adapt.evaluation import (CocoFormatError, Params, detections_to_results, evaluate_coco,
                              ground_truth_from_arrays, load_detections, load_ground_truth)
from adapt.evaluation.coco import SHORT_NAMES, evaluate_images, summary_values
from adapt.evaluation.coco_accumulate import accumulate
from adapt.evaluation.transfer import resample_images
from tests.coco_reference import pycocotools_eval

SEEDS = range(6)


def make_case(seed, num_images=40, num_cats=5):
    """Ground truth and detections that hit pycocotools' corner cases.

    Shuffled non-contiguous ids; empty images; a category without ground truth and one without
    detections; crowd regions; 'area' fields differing from box areas and lying exactly on the 32^2 and
    96^2 boundaries; duplicate boxes (IoU ties); integer boxes cut to IoU exactly 0.5, 0.75, ...; scores
    rounded so that they tie; 150 detections of one category in some images; results in shuffled order;
    scenes where a detection has the same IoU with two objects (which one it takes changes the next
    detection's match) and near-perfect boxes (IoU within 1e-10 of 1).
    """
    rng = np.random.default_rng(seed)
    img_ids = (rng.permutation(num_images * 3)[:num_images] + 1).tolist()
    cat_ids = (rng.permutation(num_cats * 4)[:num_cats] + 1).tolist()
    gt_cats, det_cats = cat_ids[:-1], cat_ids[:-2] + cat_ids[-1:]
    ann_ids = iter((rng.permutation(10 ** 5) + 1).tolist())
    anns, dets = [], []
    for n_img, img in enumerate(img_ids):
        for _ in range(int(rng.choice([0, 0, 1, 2, 3, 5, 8]))):
            w = int(rng.choice([4, 10, 20, 32, 40, 60, 96, 100, 140, 200, 300]))
            h = int(rng.choice([4, 10, 20, 32, 40, 60, 96, 100, 140, 200]))
            x, y = int(rng.integers(0, 400)), int(rng.integers(0, 300))
            area = float(w * h) if rng.random() < 0.5 else float(w * h * rng.choice([0.5, 0.7, 0.9]))
            if rng.random() < 0.1:
                area = float(rng.choice([32 ** 2, 96 ** 2]))
            c = int(rng.choice(gt_cats))
            anns.append({'id': next(ann_ids), 'image_id': img, 'category_id': c, 'bbox': [x, y, w, h],
                         'area': area, 'iscrowd': int(rng.random() < 0.1)})
            if rng.random() < 0.1:
                anns.append(dict(anns[-1], id=next(ann_ids), iscrowd=0))
            for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):
                dc = c if rng.random() < 0.85 else int(rng.choice(cat_ids))
                if dc not in det_cats:
                    continue
                f = rng.choice([1.0, 0.95, 0.9, 0.75, 0.7, 0.55, 0.5, 0.45, 0.0])
                bb = ([x, y, float(w * f), h] if f else
                      [x + float(rng.normal(0, 3)), y + float(rng.normal(0, 3)),
                       w * float(rng.uniform(0.7, 1.3)), h * float(rng.uniform(0.7, 1.3))])
                dets.append({'image_id': img, 'category_id': dc, 'bbox': bb,
                             'score': float(np.round(rng.uniform(0.2, 1.0), 1))})
        if rng.random() < 0.3:  # equal IoU with two objects; pycocotools picks the later one
            x, y, u = int(rng.integers(0, 300)), int(rng.integers(0, 300)), int(rng.choice([1, 3, 10]))
            c, side = int(rng.choice(det_cats[:-1])), 10 * u
            for dx in (0, 2 * u):
                anns.append({'id': next(ann_ids), 'image_id': img, 'category_id': c, 'bbox': [x + dx, y, side, side],
                             'area': float(side * side), 'iscrowd': 0})
            for dx, score in ((u, 0.95), (0, 0.9)):  # the second one only matches if the first took object 2
                dets.append({'image_id': img, 'category_id': c, 'bbox': [x + dx, y, side, side], 'score': score})
            # IoU 1 - 1e-10 / u with object 2: a match at threshold 1.0 (pycocotools uses min(t, 1 - 1e-10))
            dets.append({'image_id': img, 'category_id': c, 'bbox': [x + 2 * u, y, side + 1e-9, side], 'score': 0.3})
        n_fp = 150 if n_img % 13 == 5 else int(rng.choice([0, 1, 5, 20]))
        for _ in range(n_fp):
            dets.append({'image_id': img, 'category_id': int(rng.choice(det_cats[:1] if n_fp == 150 else det_cats)),
                         'bbox': [float(rng.uniform(0, 500)), float(rng.uniform(0, 400)),
                                  float(rng.uniform(2, 250)), float(rng.uniform(2, 250))],
                         'score': float(np.round(rng.uniform(0.0, 0.6), 2))})
    dets = [dets[i] for i in rng.permutation(len(dets))]
    images = [{'id': i, 'width': 640, 'height': 480} for i in img_ids]
    return {'images': images, 'annotations': anns, 'categories': [{'id': c, 'name': f'c{c}'} for c in cat_ids]}, dets


def reference_per_category_ap(precision, iou_index=slice(None)):
    p = precision[iou_index, :, :, 0, -1]
    return np.array([np.mean(p[..., k][p[..., k] > -1]) if (p[..., k] > -1).any() else -1
                     for k in range(p.shape[-1])])


def assert_same(ours, ev):
    np.testing.assert_allclose(ours.stats, ev.stats, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.precision, ev.eval['precision'], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.recall, ev.eval['recall'], rtol=0, atol=1e-9)


def test_case_covers_the_corner_cases():
    gt, dets = make_case(0)
    anns = gt['annotations']
    per_image = {i['id']: 0 for i in gt['images']}
    for a in anns:
        per_image[a['image_id']] += 1
    assert min(per_image.values()) == 0
    assert any(a['iscrowd'] for a in anns)
    areas = np.array([a['area'] for a in anns])
    assert (areas < 32 ** 2).any() and ((areas > 32 ** 2) & (areas < 96 ** 2)).any() and (areas > 96 ** 2).any()
    assert (areas == 32 ** 2).any() and (areas == 96 ** 2).any()
    det_cats = {d['category_id'] for d in dets}
    gt_cats = {a['category_id'] for a in anns}
    assert {c['id'] for c in gt['categories']} - det_cats and {c['id'] for c in gt['categories']} - gt_cats
    counts = {}
    for d in dets:
        counts[d['image_id'], d['category_id']] = counts.get((d['image_id'], d['category_id']), 0) + 1
    assert max(counts.values()) > 100
    scores = [d['score'] for d in dets]
    assert len(set(scores)) < len(scores) / 2


@pytest.mark.parametrize('seed', SEEDS)
def test_identical_to_pycocotools(seed):
    gt, dets = make_case(seed)
    ev = pycocotools_eval(gt, dets)
    ours = evaluate_coco(gt, dets)
    assert_same(ours, ev)
    assert (ours.stats > 0.1).sum() >= 8  # meaningful numbers, not all zeros
    np.testing.assert_allclose(ours.per_category_ap(), reference_per_category_ap(ev.eval['precision']),
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.per_category_ap(0.5), reference_per_category_ap(ev.eval['precision'], [0]),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize('seed', SEEDS[:3])
def test_custom_parameters_identical_to_pycocotools(seed):
    gt, dets = make_case(seed)
    img_ids = [i['id'] for i in gt['images']][::2]
    cat_ids = [c['id'] for c in gt['categories']][1:]
    ranges = [[0, 1e10], [0, 50 ** 2], [50 ** 2, 80 ** 2], [80 ** 2, 1e10], [10 ** 2, 200 ** 2]]
    labels = ['all', 'small', 'medium', 'large', 'band']
    iou = [0.3, 0.5, 0.6, 0.75, 0.9, 1.0]
    rec = np.linspace(0, 1, 41)

    def configure(p):
        p.iouThrs, p.maxDets, p.areaRng, p.areaRngLbl = np.array(iou), [2, 7, 30], ranges, labels
        p.recThrs, p.imgIds, p.catIds = rec, img_ids, cat_ids

    ev = pycocotools_eval(gt, dets, configure)
    ours = evaluate_coco(gt, dets, Params(iou_thresholds=tuple(iou), rec_thresholds=tuple(rec), max_dets=(30, 2, 7),
                                          area_ranges=tuple(map(tuple, ranges)), area_labels=tuple(labels),
                                          image_ids=tuple(img_ids), category_ids=tuple(cat_ids)))
    assert_same(ours, ev)
    assert ours.stats[0] == -1  # pycocotools' first summary always asks for maxDets=100


def test_unsorted_recall_thresholds_like_pycocotools():
    """pycocotools reads the thresholds in the given order and stops at the first one a curve does not reach."""
    gt, dets = make_case(2)
    rec = (0.5, 0.1, 0.9, 0.0, 1.0, 0.3)
    ev = pycocotools_eval(gt, dets, lambda p: setattr(p, 'recThrs', np.array(rec)))
    ours = evaluate_coco(gt, dets, Params(rec_thresholds=rec))
    assert_same(ours, ev)
    assert ((ours.precision[:, 3] == 0) & (ours.precision[:, 1] > 0)).any()  # 0.0 after an unreached 0.9


@pytest.mark.parametrize('seed, params', [
    (0, Params()), (1, Params(rec_thresholds=(0.5, 0.1, 0.9, 0.0, 1.0, 0.3), max_dets=(100, 3, 3)))])
def test_accumulate_with_multiplicities_is_the_evaluation_of_the_resampled_set(seed, params):
    """Images taken 0 to 3 times: the arrays and numbers of evaluating resample_images' set from scratch."""
    gt, dets = make_case(seed)
    g = load_ground_truth(gt)
    d = load_detections(dets, g)
    n = len(gt['images'])
    multiplicity = np.random.default_rng(seed).integers(0, 4, size=(3, n))
    images = evaluate_images(g, d, params)
    precision, recall = accumulate(images, multiplicity)
    one_by_one = {name: summary_values(images, multiplicity, name, chunk_elements=1) for name in SHORT_NAMES}
    for s, m in enumerate(multiplicity):
        ref = evaluate_coco(*resample_images(g, d, np.repeat(np.arange(n), m)), params)
        np.testing.assert_array_equal(precision[s], ref.precision)
        np.testing.assert_array_equal(recall[s], ref.recall)
        assert {name: v[s] for name, v in one_by_one.items()} == ref.summary()
    assert (multiplicity == 0).any() and (multiplicity == 3).any() and (ref.stats > 0.1).sum() >= 6


def test_annotation_id_zero_counts_as_miss_like_pycocotools():
    gt, dets = make_case(1)
    gt['annotations'][0]['id'], gt['annotations'][0]['iscrowd'] = 0, 0
    first = gt['annotations'][0]
    dets.append({'image_id': first['image_id'], 'category_id': first['category_id'], 'bbox': first['bbox'],
                 'score': 1.0})
    with pytest.warns(UserWarning, match=r'annotations\[0\]: annotation id 0'):
        ours = evaluate_coco(gt, dets)
    assert_same(ours, pycocotools_eval(gt, dets))


def test_files_and_loaded_objects_give_the_same_result(tmp_path):
    gt, dets = make_case(2)
    (tmp_path / 'gt.json').write_text(json.dumps(gt))
    (tmp_path / 'dets.json').write_text(json.dumps(dets))
    loaded = load_ground_truth(str(tmp_path / 'gt.json'))
    from_files = evaluate_coco(str(tmp_path / 'gt.json'), str(tmp_path / 'dets.json'))
    from_objects = evaluate_coco(loaded, load_detections(dets, loaded))
    np.testing.assert_array_equal(from_files.precision, from_objects.precision)
    np.testing.assert_array_equal(from_files.stats, evaluate_coco(gt, dets).stats)


def test_empty_results_give_zero_and_minus_one():
    gt, _ = make_case(3)
    ours = evaluate_coco(gt, [])  # pycocotools cannot load an empty results list
    assert set(np.unique(ours.stats)) <= {0.0, -1.0}
    assert ours.stats[0] == 0.0
    with_gt = {a['category_id'] for a in gt['annotations'] if not a['iscrowd']}
    expected = [0.0 if c in with_gt else -1.0 for c in sorted(c['id'] for c in gt['categories'])]
    np.testing.assert_array_equal(ours.per_category_ap(), expected)


def test_summary_lines_and_json_keys():
    gt, dets = make_case(4)
    ours = evaluate_coco(gt, dets)
    lines = ours.summary_lines()
    assert lines[0] == f' Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = {ours.stats[0]:0.3f}'
    assert lines[6].startswith(' Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]')
    out = ours.to_json()
    assert out['AP50'] == out['Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]'] == ours.stats[1]
    assert [c['id'] for c in out['per_category']] == sorted(c['id'] for c in gt['categories'])
    json.dumps(out)


def test_results_and_ground_truth_from_arrays_round_trip():
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0]],
                      [[0.25, 0.25, 0.75, 0.5], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    labels = np.array([[0, 1, -1], [1, -1, -1]])
    mask = labels >= 0
    heights, widths = np.array([100, 200]), np.array([300, 400])
    gt = ground_truth_from_arrays([7, 9], boxes, labels, heights, widths, ['a', 'b'], mask=mask)
    assert gt['annotations'][0]['bbox'] == pytest.approx([60, 10, 120, 40], abs=1e-4)
    assert gt['annotations'][0]['area'] == pytest.approx(4800, abs=1e-2)
    assert [a['category_id'] for a in gt['annotations']] == [1, 2, 2]
    results = detections_to_results([7, 9], boxes, np.full(labels.shape, 0.9), labels, heights, widths, mask=mask)
    assert [r['bbox'] for r in results] == [a['bbox'] for a in gt['annotations']]
    ours = evaluate_coco(gt, results)
    assert ours.stats[0] == pytest.approx(1.0)
    assert_same(ours, pycocotools_eval(gt, results))


def _one_image_gt():
    return {'images': [{'id': 1}, {'id': 2}], 'categories': [{'id': 3, 'name': 'car'}],
            'annotations': [{'id': 1, 'image_id': 1, 'category_id': 3, 'bbox': [0, 0, 10, 10], 'area': 100,
                             'iscrowd': 0}]}


GOOD = {'image_id': 1, 'category_id': 3, 'bbox': [0, 0, 10, 10], 'score': 0.5}


@pytest.mark.parametrize('bad, message', [
    (dict(GOOD, image_id=42), 'detections[1]: unknown image_id 42'),
    (dict(GOOD, category_id=4), 'detections[1]: unknown category_id 4'),
    (dict(GOOD, score=float('nan')), 'detections[1]: score must be a finite number, got nan'),
    (dict(GOOD, score=float('inf')), 'detections[1]: score must be a finite number, got inf'),
    (dict(GOOD, score='high'), "detections[1]: score must be a finite number, got 'high'"),
    (dict(GOOD, bbox=[0, 0, -5, 10]), 'detections[1]: bbox width and height must be >= 0, got [0, 0, -5, 10]'),
    (dict(GOOD, bbox=[0, 0, 10]), 'detections[1]: bbox must be [x, y, width, height] of 4 finite numbers'),
    ({k: v for k, v in GOOD.items() if k != 'bbox'}, "detections[1]: missing key 'bbox'"),
    (dict(GOOD, image_id=1.5), 'detections[1]: image_id must be an integer id, got 1.5'),
    ([1, 2], 'detections[1]: expected an object, got [1, 2]'),
])
def test_bad_detections_raise_one_line(bad, message):
    with pytest.raises(CocoFormatError) as info:
        evaluate_coco(_one_image_gt(), [GOOD, bad])
    assert str(info.value).startswith(message)
    assert '\n' not in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize('edit, message', [
    (lambda g: g.pop('annotations'), "ground truth: missing key 'annotations'"),
    (lambda g: g['annotations'][0].pop('area'), "annotations[0]: missing key 'area'"),
    (lambda g: g['annotations'].append(dict(g['annotations'][0])), 'annotations[1]: duplicate id 1'),
    (lambda g: g['annotations'][0].update(image_id=5), 'annotations[0]: unknown image_id 5'),
    (lambda g: g['annotations'][0].update(bbox=[0, 0, 1, -1]), 'annotations[0]: bbox width and height'),
    (lambda g: g['annotations'][0].update(iscrowd=2), 'annotations[0]: iscrowd must be 0 or 1'),
    (lambda g: g['images'].append({'id': 1}), 'images[2]: duplicate id 1'),
])
def test_bad_ground_truth_raises_one_line(edit, message):
    gt = _one_image_gt()
    edit(gt)
    with pytest.raises(CocoFormatError, match=None) as info:
        load_ground_truth(gt)
    assert str(info.value).startswith(message)


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / 'bad.json').write_text('[{"image_id": 1,')
    with pytest.raises(CocoFormatError, match=r'bad\.json: malformed JSON \(.* at line 1 column'):
        load_ground_truth(str(tmp_path / 'bad.json'))
    with pytest.raises(CocoFormatError, match=r'missing\.json: no such file'):
        load_ground_truth(str(tmp_path / 'missing.json'))
    (tmp_path / 'dets.json').write_text(json.dumps([GOOD, dict(GOOD, image_id=42)]))
    with pytest.raises(CocoFormatError, match=r'dets\.json: detections\[1\]: unknown image_id 42'):
        load_detections(str(tmp_path / 'dets.json'), load_ground_truth(_one_image_gt()))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        evaluate_coco(_one_image_gt(), [GOOD])
