"""experiments.coco_eval as a subprocess: pycocotools' exact lines, the JSON output, exit status 2 on bad input."""
import contextlib
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'experiments.coco_eval', *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def make_dataset(num_images=30, num_classes=4, seed=3):
    """Small COCO ground truth (all area ranges, some crowd) and results (jittered copies + false positives)."""
    rng = np.random.default_rng(seed)
    anns, dets = [], []
    for image_id in range(1, num_images + 1):
        for _ in range(int(rng.integers(0, 6))):
            w, h = np.exp(rng.uniform(np.log(8), np.log(300), 2))
            box = [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), float(w), float(h)]
            cat = int(rng.integers(1, num_classes + 1))
            anns.append({'id': len(anns) + 1, 'image_id': image_id, 'category_id': cat, 'bbox': box,
                         'area': float(w * h * 0.8), 'iscrowd': int(rng.random() < 0.05)})
            for _ in range(int(rng.integers(0, 3))):
                jitter = np.array(box) + rng.normal(0, 0.1, 4) * np.array([w, h, w, h])
                dets.append({'image_id': image_id, 'category_id': cat, 'bbox': jitter.round(2).tolist(),
                             'score': round(float(rng.uniform(0.3, 1)), 3)})
        for _ in range(int(rng.integers(0, 8))):
            dets.append({'image_id': image_id, 'category_id': int(rng.integers(1, num_classes + 1)),
                         'bbox': rng.uniform(1, 200, 4).round(2).tolist(), 'score': round(float(rng.random()), 3)})
    return ({'images': [{'id': i} for i in range(1, num_images + 1)], 'annotations': anns,
             'categories': [{'id': c, 'name': f'class{c}'} for c in range(1, num_classes + 1)]}, dets)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('coco')
    gt, dets = make_dataset()
    paths = {'gt': tmp / 'gt.json', 'dets': tmp / 'dets.json'}
    paths['gt'].write_text(json.dumps(gt))
    paths['dets'].write_text(json.dumps(dets))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_gt = COCO(str(paths['gt']))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(paths['dets'])), 'bbox')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    lines = [line for line in printed.getvalue().splitlines() if line.startswith(' Average')]
    return dict(paths, tmp=tmp, gt_data=gt, dets_data=dets, lines=lines, stats=ev.stats, ev=ev)


def test_prints_pycocotools_lines_and_writes_json(files):
    out = files['tmp'] / 'metrics.json'
    proc = run_cli(f'--gt={files["gt"]}', f'--detections={files["dets"]}', f'--output={out}')
    assert proc.returncode == 0, proc.stderr
    assert len(files['lines']) == 12
    assert proc.stdout.splitlines() == files['lines']
    per_category = run_cli(f'--gt={files["gt"]}', f'--detections={files["dets"]}', '--per_category')
    assert per_category.stdout.splitlines()[:12] == files['lines']
    assert [line.split()[0] for line in per_category.stdout.splitlines()[12:]] == [f'class{c}' for c in range(1, 5)]
    metrics = json.loads(out.read_text())
    for line, short, value in zip(files['lines'], ['AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10',
                                                    'AR100', 'ARs', 'ARm', 'ARl'], files['stats']):
        description = line.strip().rsplit(' = ', 1)[0]
        assert math.isclose(metrics[description], value, abs_tol=1e-9)
        assert math.isclose(metrics[short], value, abs_tol=1e-9)
    assert metrics['stats'] == pytest.approx(list(files['stats']), abs=1e-9)
    precision = files['ev'].eval['precision'][:, :, :, 0, -1]
    for k, row in enumerate(metrics['per_category']):
        p = precision[:, :, k]
        assert row['id'] == k + 1 and row['name'] == f'class{k + 1}'
        assert math.isclose(row['AP'], p[p > -1].mean(), abs_tol=1e-9)


def bad_detections(files, name, dets=None, text=None):
    path = files['tmp'] / name
    path.write_text(text if text is not None else json.dumps(dets))
    return path


@pytest.mark.parametrize('case, expected', [
    ('unknown_image', 'detections[17]: unknown image_id 4242'),
    ('unknown_category', 'detections[17]: unknown category_id 99'),
    ('nan_score', 'detections[17]: score must be a finite number, got nan'),
    ('inf_score', 'detections[17]: score must be a finite number, got inf'),
    ('negative_width', 'detections[17]: bbox width and height must be >= 0'),
    ('negative_height', 'detections[17]: bbox width and height must be >= 0'),
    ('missing_key', "detections[17]: missing key 'score'"),
    ('malformed', 'malformed JSON'),
    ('not_a_list', 'detections must be a JSON list'),
])
def test_bad_detections_exit_2_with_one_line(files, case, expected):
    dets = [dict(d) for d in files['dets_data']]
    bad = dets[17]
    if case == 'unknown_image':
        bad['image_id'] = 4242
    elif case == 'unknown_category':
        bad['category_id'] = 99
    elif case == 'nan_score':
        bad['score'] = float('nan')  # json writes NaN, which Python's json reads back
    elif case == 'inf_score':
        bad['score'] = float('inf')
    elif case == 'negative_width':
        bad['bbox'] = [1.0, 2.0, -3.0, 4.0]
    elif case == 'negative_height':
        bad['bbox'] = [1.0, 2.0, 3.0, -4.0]
    elif case == 'missing_key':
        del bad['score']
    text = json.dumps(dets)[:-20] if case == 'malformed' else None
    path = bad_detections(files, f'{case}.json', {'results': dets} if case == 'not_a_list' else dets, text)
    proc = run_cli(f'--gt={files["gt"]}', f'--detections={path}')
    assert proc.returncode == 2
    assert proc.stdout == ''
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0] and str(path) in lines[0]


def test_bad_ground_truth_and_missing_files_exit_2(files):
    gt = json.loads(json.dumps(files['gt_data']))
    del gt['annotations'][3]['bbox']
    bad_gt = files['tmp'] / 'bad_gt.json'
    bad_gt.write_text(json.dumps(gt))
    for args, expected in [((f'--gt={bad_gt}', f'--detections={files["dets"]}'), "annotations[3]: missing key 'bbox'"),
                           ((f'--gt={files["tmp"] / "nope.json"}', f'--detections={files["dets"]}'), 'no such file'),
                           ((f'--gt={files["gt"]}', f'--detections={files["tmp"] / "nope.json"}'), 'no such file'),
                           ((f'--gt={files["gt"]}',), '--detections')]:
        proc = run_cli(*args)
        assert proc.returncode == 2, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], proc.stderr
