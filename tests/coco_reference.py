"""Independent COCO references for tests: pycocotools itself, and the image bootstrap built on it by hand
(every resample written out as a data set of its own), so no test checks adapt's evaluator against itself."""
import contextlib
import copy
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# pycocotools' `stats` in order
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def pycocotools_eval(gt, dets, configure=None):
    """A finished COCOeval (bbox) of COCO dicts `gt` and detection list `dets`; `configure(params)` first."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)) if dets else COCO(), 'bbox')
        if configure:
            configure(ev.params)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def pycocotools_summary(gt, dets) -> dict:
    """{short name: pycocotools' value} (-1 where undefined)."""
    return dict(zip(STAT_NAMES, pycocotools_eval(gt, dets).stats))


def resampled_set(gt, dets, draw):
    """The images `draw` (indices into the id-sorted images; a twice-drawn image twice) as a new data set:
    drawn image k (draw sorted) gets id k + 1 and copies of its annotations (ids 1..G in order) and
    detections. Annotation id 0 is not supported (pycocotools indexes annotations by id)."""
    images = sorted(gt['images'], key=lambda image: image['id'])
    new_images, new_anns, new_dets = [], [], []
    for k, index in enumerate(sorted(int(i) for i in draw)):
        old_id = images[index]['id']
        new_images.append({**images[index], 'id': k + 1})
        for ann in gt['annotations']:
            if ann['image_id'] == old_id:
                assert ann['id'] != 0, 'resampled_set: annotation id 0'
                new_anns.append({**ann, 'id': len(new_anns) + 1, 'image_id': k + 1})
        new_dets += [{**d, 'image_id': k + 1} for d in dets if d['image_id'] == old_id]
    return {**gt, 'images': new_images, 'annotations': new_anns}, new_dets


def bootstrap_draws(num_images, num_samples, seed):
    """The documented draws of `adapt.evaluation.transfer.bootstrap_values`."""
    return np.random.default_rng(seed).integers(0, num_images, size=(num_samples, num_images))


def bootstrap_reference(gt, dets, metric, num_samples, seed=0, level=0.95):
    """(values [num_samples], low, high): pycocotools on every resample, then the percentile interval of the
    resamples where the metric is defined (equal resamples evaluated once)."""
    cache = {}
    values = []
    for draw in bootstrap_draws(len(gt['images']), num_samples, seed):
        key = tuple(sorted(draw))
        if key not in cache:
            cache[key] = pycocotools_summary(*resampled_set(gt, dets, key))[metric]
        values.append(cache[key])
    values = np.asarray(values)
    defined = values[values != -1]
    low, high = np.percentile(defined, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return values, float(low), float(high)
