"""adapt.evaluation.voc: a hand-computed case and a plain-loop re-derivation of the VOC devkit rules."""
import numpy as np
import pytest

from adapt.evaluation import average_precision, evaluate_voc


def hand_case():
    gt = [{'boxes': [[0, 0, .5, .5], [.5, .5, 1, 1], [0, .5, .5, 1]], 'labels': [0, 0, 1],
           'difficult': [False, True, False]},
          {'boxes': [[.2, .2, .6, .6]], 'labels': [0]}]
    dets = [{'boxes': [[0, 0, .5, .5], [.01, 0, .5, .5], [.5, .5, 1, 1], [0, .5, .5, .9], [.1, .1, .2, .2]],
             'scores': [.9, .8, .7, .4, .05], 'labels': [0, 0, 0, 1, 2]},
            {'boxes': [[.2, .2, .6, .6], [.7, .7, .9, .9]], 'scores': [.6, .5], 'labels': [0, 0]}]
    return gt, dets


def test_hand_computed_case():
    # Class 0 in score order: TP, duplicate FP, difficult (ignored), TP, FP; 2 positives.
    # recall .5 .5 1 1, precision 1 .5 2/3 .5.  All-point: .5 * 1 + .5 * 2/3.  11-point: (6 * 1 + 5 * 2/3) / 11.
    gt, dets = hand_case()
    result = evaluate_voc(gt, dets, num_classes=3)
    np.testing.assert_allclose(result.ap[:2], [5 / 6, 1.0], rtol=1e-12)
    assert np.isnan(result.ap[2])  # no ground truth: left out of the mean
    assert result.map == pytest.approx(11 / 12, rel=1e-12)
    result07 = evaluate_voc(gt, dets, num_classes=3, use_07_metric=True)
    np.testing.assert_allclose(result07.ap[:2], [28 / 33, 1.0], rtol=1e-12)
    assert result07.map == pytest.approx(61 / 66, rel=1e-12)
    np.testing.assert_array_equal(result.matches.num_positives, [2, 1, 0])


def test_iou_threshold_is_inclusive_and_configurable():
    gt = [{'boxes': [[0, 0, 1, 1]], 'labels': [0]}]
    dets = [{'boxes': [[0, 0, 1, .5]], 'scores': [1.0], 'labels': [0]}]  # IoU exactly 0.5
    assert evaluate_voc(gt, dets, 1).ap[0] == 1.0
    assert evaluate_voc(gt, dets, 1, iou_threshold=0.6).ap[0] == 0.0


def iou(a, b):
    ih, iw = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if ih <= 0 or iw <= 0:
        return 0.0
    inter = ih * iw
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def reference_voc(gt, dets, num_classes, thr, use_07):
    """The devkit's per-class loop, written out plainly; difficult detections stay in as 0/0 rows."""
    aps = []
    for c in range(num_classes):
        objs = [[(b, bool(d)) for b, l, d in zip(g['boxes'], g['labels'], g.get('difficult', [0] * len(g['labels'])))
                 if l == c] for g in gt]
        taken = [[False] * len(o) for o in objs]
        npos = sum(not d for o in objs for _, d in o)
        cand = [(i, s, b) for i, dd in enumerate(dets) for b, s, l in zip(dd['boxes'], dd['scores'], dd['labels'])
                if l == c]
        order = np.argsort([-s for _, s, _ in cand], kind='stable')
        tp, fp = np.zeros(len(cand)), np.zeros(len(cand))
        for n, k in enumerate(order):
            i, _, box = cand[k]
            ovs = [iou(box, b) for b, _ in objs[i]]
            if ovs and max(ovs) >= thr:
                j = int(np.argmax(ovs))
                if not objs[i][j][1]:
                    if not taken[i][j]:
                        tp[n], taken[i][j] = 1, True
                    else:
                        fp[n] = 1
            else:
                fp[n] = 1
        if npos == 0:
            aps.append(np.nan)
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if use_07:
            ap = 0.0
            for t in np.linspace(0, 1, 11):
                ap += (np.max(prec[rec >= t]) if np.sum(rec >= t) else 0.0) / 11
        else:
            mrec, mpre = np.concatenate(([0.], rec, [1.])), np.concatenate(([0.], prec, [0.]))
            for i in range(mpre.size - 1, 0, -1):
                mpre[i - 1] = max(mpre[i - 1], mpre[i])
            i = np.where(mrec[1:] != mrec[:-1])[0]
            ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
        aps.append(ap)
    return np.array(aps)


def random_case(seed, num_images=25, num_classes=4):
    rng = np.random.default_rng(seed)
    gt, dets = [], []
    for _ in range(num_images):
        m = int(rng.integers(0, 7))
        lo = rng.uniform(0, 0.7, (m, 2))
        boxes = np.concatenate([lo, lo + rng.uniform(0.05, 0.3, (m, 2))], axis=1)
        labels = rng.integers(0, num_classes - 1, m)  # the last class never has ground truth
        gt.append({'boxes': boxes, 'labels': labels, 'difficult': rng.random(m) < 0.15})
        copies = np.repeat(np.arange(m), rng.integers(0, 3, m))
        jitter = boxes[copies] + rng.normal(0, 0.03, (copies.size, 4))
        n_fp = int(rng.integers(0, 5))
        fp_lo = rng.uniform(0, 0.8, (n_fp, 2))
        dets.append({'boxes': np.concatenate([jitter, np.concatenate([fp_lo, fp_lo + 0.15], 1)]),
                     'scores': np.round(rng.random(copies.size + n_fp), 1),
                     'labels': np.concatenate([np.where(rng.random(copies.size) < 0.9, labels[copies],
                                                        rng.integers(0, num_classes, copies.size)),
                                               rng.integers(0, num_classes, n_fp)])})
    return gt, dets


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('use_07', [False, True])
@pytest.mark.parametrize('thr', [0.5, 0.7])
def test_matches_plain_reimplementation(seed, use_07, thr):
    gt, dets = random_case(seed)
    ours = evaluate_voc(gt, dets, num_classes=4, iou_threshold=thr, use_07_metric=use_07)
    ref = reference_voc(gt, dets, 4, thr, use_07)
    np.testing.assert_allclose(ours.ap, ref, rtol=0, atol=1e-12)
    assert np.isnan(ours.ap[3]) and np.isfinite(ours.ap[:3]).all() and 0 < ours.map < 1
    assert ours.map == pytest.approx(np.nanmean(ref), abs=1e-12)


def test_average_precision_closed_forms():
    assert average_precision([1.0], [1.0]) == 1.0
    assert average_precision([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.75)
    assert average_precision([0.5, 1.0], [1.0, 0.5], use_07_metric=True) == pytest.approx((6 + 5 * 0.5) / 11)
    assert average_precision([], []) == 0.0


def test_bad_input():
    gt, dets = hand_case()
    with pytest.raises(ValueError, match='detection labels must be in'):
        evaluate_voc(gt, dets, num_classes=2)
    with pytest.raises(ValueError, match="image 1: missing \\['scores'\\]"):
        evaluate_voc(gt, [dets[0], {'boxes': [], 'labels': []}], num_classes=3)
    with pytest.raises(ValueError, match='1 ground-truth images but 2'):
        evaluate_voc(gt[:1], dets, num_classes=3)


def test_equal_overlap_takes_the_first_object_like_the_devkit():
    # d1 overlaps both objects with IoU 0.6 (exact in binary) and takes the first (np.argmax); d2 then hits
    # that same object (a duplicate, FP) although the second object is still free.
    gt = [{'boxes': [[0, 0, 1, .5], [0, .25, 1, .75]], 'labels': [0, 0]}]
    dets = [{'boxes': [[0, .125, 1, .625], [0, 0, 1, .5]], 'scores': [.9, .8], 'labels': [0, 0]}]
    result = evaluate_voc(gt, dets, num_classes=1)
    np.testing.assert_array_equal(result.matches.true_positive, [True, False])
    assert result.ap[0] == 0.5
