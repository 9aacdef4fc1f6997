"""Benchmark adapt's COCO evaluator against pycocotools on a seeded synthetic data set, and check agreement.

  python -m experiments.bench_coco_eval            # 5000 images x 100 detections x 10 classes

Ground truth: about 7 objects per image (some images empty), sizes from 8 to 400 px so every area range
is populated, 1 % crowd regions, 'area' below the box area as for polygon masks. Detections: exactly
``--dets_per_image`` per image, jittered copies of the ground truth (sometimes with the wrong class) with
high scores, filled up with random false positives with lower scores; boxes and scores rounded as in real
results files (so ties occur). Both evaluators read the same JSON files; the script prints load and
evaluate(+accumulate+summarize) times, the speed-up, and exits 1 unless all 12 numbers agree to 1e-9.
"""
import contextlib
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from adapt.evaluation import evaluate_coco, load_detections, load_ground_truth
from experiments.common import parse_flags

flags.DEFINE_integer('num_images', 5000, 'Number of images.', lower_bound=1)
flags.DEFINE_integer('dets_per_image', 100, 'Detections per image.', lower_bound=2)
flags.DEFINE_integer('num_classes', 10, 'Number of categories.', lower_bound=1)
flags.DEFINE_integer('seed', 0, 'Seed of the synthetic data.')
FLAGS = flags.FLAGS

WIDTH, HEIGHT = 640, 480


def _random_boxes(rng, n, min_size=8.0, max_size=400.0):
    size = np.exp(rng.uniform(np.log(min_size), np.log(max_size), n))
    ratio = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n))
    w, h = np.minimum(size * np.sqrt(ratio), WIDTH - 1), np.minimum(size / np.sqrt(ratio), HEIGHT - 1)
    x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
    return np.stack([x, y, w, h], axis=1)


def make_dataset(num_images, dets_per_image, num_classes, seed):
    """(ground-truth dict, results list), deterministic for the arguments."""
    rng = np.random.default_rng(seed)
    images = [{'id': i + 1, 'width': WIDTH, 'height': HEIGHT} for i in range(num_images)]
    cats = [{'id': c + 1, 'name': f'class{c + 1}'} for c in range(num_classes)]
    anns, dets = [], []
    for image_id in range(1, num_images + 1):
        n_gt = min(int(rng.poisson(7)), dets_per_image // 2)
        boxes, labels = _random_boxes(rng, n_gt), rng.integers(1, num_classes + 1, n_gt)
        crowd = rng.random(n_gt) < 0.01
        area = boxes[:, 2] * boxes[:, 3] * rng.uniform(0.55, 0.95, n_gt)
        for b, c, cr, a in zip(np.round(boxes, 2), labels, crowd, area):
            anns.append({'id': len(anns) + 1, 'image_id': image_id, 'category_id': int(c),
                         'bbox': b.tolist(), 'area': float(a), 'iscrowd': int(cr)})
        copies = rng.choice([0, 1, 1, 2, 3], n_gt)
        src = np.repeat(np.arange(n_gt), copies)[:dets_per_image]
        tp_boxes = boxes[src] + rng.normal(0, 0.08, (src.size, 4)) * np.tile(boxes[src, 2:], 2)
        tp_boxes[:, 2:] = np.maximum(tp_boxes[:, 2:], 1.0)
        tp_labels = np.where(rng.random(src.size) < 0.9, labels[src], rng.integers(1, num_classes + 1, src.size))
        n_fp = dets_per_image - src.size
        det_boxes = np.concatenate([tp_boxes, _random_boxes(rng, n_fp, 4.0, 300.0)])
        det_labels = np.concatenate([tp_labels, rng.integers(1, num_classes + 1, n_fp)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, src.size), rng.uniform(0.0, 0.7, n_fp)])
        for b, c, s in zip(np.round(det_boxes, 2), det_labels, np.round(scores, 3)):
            dets.append({'image_id': image_id, 'category_id': int(c), 'bbox': b.tolist(), 'score': float(s)})
    return {'images': images, 'annotations': anns, 'categories': cats}, dets


def run_pycocotools(gt_path, det_path):
    from pycocotools.coco import COCO  # test-only reference
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        coco_gt = COCO(gt_path)
        coco_dt = coco_gt.loadRes(det_path)
        t1 = time.perf_counter()
        ev = COCOeval(coco_gt, coco_dt, 'bbox')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        t2 = time.perf_counter()
    return ev.stats, t1 - t0, t2 - t1


def run_adapt(gt_path, det_path):
    t0 = time.perf_counter()
    gt = load_ground_truth(gt_path)
    dets = load_detections(det_path, gt)
    t1 = time.perf_counter()
    result = evaluate_coco(gt, dets)
    t2 = time.perf_counter()
    return result, t1 - t0, t2 - t1


def main(argv):
    del argv
    gt, dets = make_dataset(FLAGS.num_images, FLAGS.dets_per_image, FLAGS.num_classes, FLAGS.seed)
    print(f'{FLAGS.num_images} images, {len(gt["annotations"])} ground truths, {len(dets)} detections, '
          f'{FLAGS.num_classes} classes (seed {FLAGS.seed})')
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, det_path = os.path.join(tmp, 'gt.json'), os.path.join(tmp, 'dets.json')
        for obj, path in ((gt, gt_path), (dets, det_path)):
            with open(path, 'w') as f:
                json.dump(obj, f)
        ours, our_load, our_eval = run_adapt(gt_path, det_path)
        ref_stats, ref_load, ref_eval = run_pycocotools(gt_path, det_path)
    print('\n'.join(ours.summary_lines()))
    print(f'{"":14s}{"load JSON":>12s}{"evaluate":>12s}{"total":>12s}')
    print(f'{"pycocotools":14s}{ref_load:11.2f}s{ref_eval:11.2f}s{ref_load + ref_eval:11.2f}s')
    print(f'{"adapt":14s}{our_load:11.2f}s{our_eval:11.2f}s{our_load + our_eval:11.2f}s')
    print(f'speed-up: evaluate {ref_eval / our_eval:.1f}x, total {(ref_load + ref_eval) / (our_load + our_eval):.1f}x')
    diff = float(np.max(np.abs(np.asarray(ref_stats) - ours.stats)))
    print(f'max |difference| of the 12 numbers vs pycocotools: {diff:.3g}')
    if not diff <= 1e-9:
        print('MISMATCH with pycocotools', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
