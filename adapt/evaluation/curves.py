"""Diagnostic curves for a detector, as the lectures define them.

A detection is a true positive when it matches a ground-truth box of its class with IoU >= threshold
(VOC rule, ``voc.match_detections``; difficult objects ignored). Sweeping a score threshold over the
distinct detection scores (detections scoring >= threshold kept) gives:
- precision = TP / (TP + FP) against recall = TP / (TP + FN), per class or pooled, also as a PNG plot;
- true-positive rate (recall) against false positives per image (FP / number of images);
- F1 = 2 P R / (P + R) against the threshold, with the best threshold.
The detection confusion matrix counts, at one score and IoU threshold, which ground-truth class each
detection was matched to, with a background row (false detections) and column (missed objects); the
background/background cell, a true negative, does not exist for detectors and stays 0.

``matches`` below is the result of ``voc.match_detections(gt, detections, num_classes, iou_threshold)``;
``cls`` selects a class, or None for all classes pooled.
"""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from adapt.evaluation.coco import greedy_match, group_pairs, paired_iou
from adapt.evaluation.voc import average_precision, box_area, check_labels, flatten


def _counts(matches, cls):
    """Distinct score thresholds (decreasing), TP and FP counts at each, number of positives."""
    sel = np.ones(matches.labels.size, bool) if cls is None else matches.labels == cls
    order = np.argsort(-matches.scores[sel], kind='stable')
    scores, tp = matches.scores[sel][order], matches.true_positive[sel][order]
    last = np.r_[scores[1:] != scores[:-1], True]  # a threshold keeps every detection tied with it
    num_pos = int(matches.num_positives.sum() if cls is None else matches.num_positives[cls])
    return scores[last], np.cumsum(tp)[last], np.cumsum(~tp)[last], num_pos


def _rate(count, total):
    return count / total if total else np.full(count.shape, np.nan)


def precision_recall(matches, cls=None):
    """{'thresholds', 'precision', 'recall', 'ap'} (all-point AP of these points; NaN without positives)."""
    thresholds, tp, fp, num_pos = _counts(matches, cls)
    precision, recall = tp / np.maximum(tp + fp, 1), _rate(tp, num_pos)
    ap = average_precision(recall, precision) if num_pos else float('nan')
    return {'thresholds': thresholds, 'precision': precision, 'recall': recall, 'ap': ap}


def tpr_fppi(matches, cls=None):
    """{'thresholds', 'tpr', 'fppi'}: true-positive rate against false positives per image."""
    thresholds, tp, fp, num_pos = _counts(matches, cls)
    return {'thresholds': thresholds, 'tpr': _rate(tp, num_pos), 'fppi': fp / max(matches.num_images, 1)}


def f1_curve(matches, cls=None):
    """{'thresholds', 'f1', 'precision', 'recall', 'best_threshold', 'best_f1'} (highest threshold on ties)."""
    curve = precision_recall(matches, cls)
    p, r = curve['precision'], curve['recall']
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    f1[np.isnan(r)] = np.nan
    best = int(np.argmax(np.nan_to_num(f1, nan=-1.0))) if np.isfinite(f1).any() else None
    return {'thresholds': curve['thresholds'], 'f1': f1, 'precision': p, 'recall': r,
            'best_threshold': float(curve['thresholds'][best]) if best is not None else float('nan'),
            'best_f1': float(f1[best]) if best is not None else float('nan')}


def plot_precision_recall(matches, path, class_names=None):
    """Precision-recall curve of every class with positives, AP in the legend, saved as PNG at ``path``."""
    fig = Figure(figsize=(6, 5), dpi=100)
    FigureCanvasAgg(fig)  # draws without a display or a global pyplot backend
    ax = fig.add_subplot()
    for c in np.flatnonzero(matches.num_positives):
        curve = precision_recall(matches, int(c))
        name = class_names[c] if class_names is not None else f'class {c}'
        ax.step(np.r_[0.0, curve['recall']], np.r_[1.0, curve['precision']], where='post',
                label=f'{name} (AP {curve["ap"]:.3f})')
    ax.set(xlabel='recall', ylabel='precision', xlim=(0, 1), ylim=(0, 1.02), title='Precision-recall')
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc='lower left', fontsize='small')
    fig.savefig(path, format='png')
    return path


def _greedy(d_key, d_rank, d_box, g_key, g_box, g_ignore, iou_threshold):
    """(detection, ground truth) index pairs of COCO-style greedy matching within equal keys."""
    pair_det, pair_gt = group_pairs(d_key, g_key)
    iou = paired_iou(d_box[pair_det], box_area(d_box)[pair_det], g_box[pair_gt], box_area(g_box)[pair_gt])
    _, _, det, gt = greedy_match(d_rank, pair_det, pair_gt, iou, [iou_threshold], g_ignore[None],
                                 np.zeros(g_key.size, bool))
    return det, gt


def confusion_matrix(gt, detections, num_classes, iou_threshold=0.5, score_threshold=0.5):
    """[C + 1, C + 1] counts: rows the ground-truth class, columns the detected class, index C background.

    Detections scoring >= score_threshold are matched greedily in decreasing score within each image:
    first to free objects of their own class (diagonal; a detection on a difficult object is dropped),
    then the rest to the remaining non-difficult objects of any class (confusions). Unmatched detections
    count in the background row, unmatched objects in the background column.
    """
    g_img, g_box, g_lab, g_diff = flatten(gt, (('boxes', None), ('labels', np.int64), ('difficult', bool)))
    d_img, d_box, d_score, d_lab = flatten(detections, (('boxes', None), ('scores', np.float64),
                                                        ('labels', np.int64)))
    keep = d_score >= score_threshold
    d_img, d_box, d_score, d_lab = d_img[keep], d_box[keep], d_score[keep], d_lab[keep]
    order = np.lexsort((-d_score, d_img))
    d_img, d_box, d_lab = d_img[order], d_box[order], d_lab[order]
    rank = np.arange(d_img.size) - np.searchsorted(d_img, d_img)  # score order within each image
    n = len(gt)
    cm = np.zeros((num_classes + 1, num_classes + 1), np.int64)

    check_labels(g_lab, num_classes, 'ground-truth')
    check_labels(d_lab, num_classes, 'detection')
    det, obj = _greedy(d_lab * n + d_img, rank, d_box, g_lab * n + g_img, g_box, g_diff, iou_threshold)
    real = ~g_diff[obj]
    np.add.at(cm, (g_lab[obj[real]], d_lab[det[real]]), 1)
    det_free, obj_free = np.ones(d_img.size, bool), ~g_diff
    det_free[det], obj_free[obj] = False, False
    d_idx, g_idx = np.flatnonzero(det_free), np.flatnonzero(obj_free)
    det, obj = _greedy(d_img[d_idx], rank[d_idx], d_box[d_idx], g_img[g_idx], g_box[g_idx],
                       np.zeros(g_idx.size, bool), iou_threshold)
    np.add.at(cm, (g_lab[g_idx[obj]], d_lab[d_idx[det]]), 1)
    det_free[d_idx[det]], obj_free[g_idx[obj]] = False, False
    np.add.at(cm, (num_classes, d_lab[det_free]), 1)
    np.add.at(cm, (g_lab[obj_free], num_classes), 1)
    return cm
