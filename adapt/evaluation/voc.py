"""PASCAL VOC detection AP: 11-point (VOC2007) and all-point (VOC2010+), with 'difficult' objects ignored.

Matching follows the VOC devkit: per class, detections in decreasing score (stable, so ties keep image
order, then order within the image) take the ground truth of their image and class with the highest IoU
(first on ties); with IoU >= threshold the detection is ignored if that object is difficult, a true
positive if the object is still free, otherwise a false positive (a duplicate); below the threshold it
is a false positive. IoU is continuous (no VOC "+1 pixel"), as boxes are normalised here.

Inputs are per-image lists of dicts, boxes in any one corner format such as ``[ymin, xmin, ymax, xmax]``:
ground truth ``{'boxes' [M, 4], 'labels' [M], 'difficult' [M] (optional)}``, detections
``{'boxes' [N, 4], 'scores' [N], 'labels' [N]}``; labels are 0-based class ids.
"""
import dataclasses

import numpy as np

from adapt.evaluation.coco import group_pairs, paired_iou

# The 11 recall points 0, 0.1, ..., 1 of VOC2007 (k / 10 as the nearest doubles).
ELEVEN_POINTS = np.linspace(0.0, 1.0, 11)


@dataclasses.dataclass(frozen=True)
class Matches:
    """Non-ignored detections sorted by class then decreasing score, with their true-positive flags."""
    scores: np.ndarray          # [N]
    labels: np.ndarray          # [N]
    true_positive: np.ndarray   # [N] bool
    num_positives: np.ndarray   # [C] non-difficult ground truth per class
    num_images: int


@dataclasses.dataclass(frozen=True)
class VocResult:
    ap: np.ndarray       # [C], NaN for a class without non-difficult ground truth
    map: float           # mean of the finite entries of ap (NaN if none)
    matches: Matches


def flatten(per_image, fields):
    """Concatenate per-image arrays so all images are handled at once.

    fields: (key, dtype) pairs, the first being 'boxes'; only 'difficult' may be missing (all False).
    Returns (image index [N], one array per field).
    """
    for i, item in enumerate(per_image):
        missing = [key for key, _ in fields if key not in item and key != 'difficult']
        if missing:
            raise ValueError(f"image {i}: missing {missing}")
    boxes = [np.asarray(item['boxes'], np.float64).reshape(-1, 4) for item in per_image]
    counts = [len(b) for b in boxes]
    out = [np.concatenate(boxes) if boxes else np.zeros((0, 4))]
    for key, dtype in fields[1:]:
        parts = [np.asarray(item.get(key, np.zeros(n)), dtype).reshape(-1) for item, n in zip(per_image, counts)]
        arr = np.concatenate(parts) if parts else np.zeros(0, dtype)
        if arr.size != sum(counts):
            raise ValueError(f"'{key}': expected one entry per box ({sum(counts)}), got {arr.size}")
        out.append(arr)
    return (np.repeat(np.arange(len(per_image)), counts), *out)


def check_labels(labels, num_classes, name):
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f'{name} labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}')


def box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def match_detections(gt, detections, num_classes, iou_threshold=0.5):
    """Matches for all classes at once (VOC devkit rule); see the module docstring."""
    if len(gt) != len(detections):
        raise ValueError(f'{len(gt)} ground-truth images but {len(detections)} detection images')
    g_img, g_box, g_lab, g_diff = flatten(gt, (('boxes', None), ('labels', np.int64), ('difficult', bool)))
    d_img, d_box, d_score, d_lab = flatten(detections, (('boxes', None), ('scores', np.float64),
                                                        ('labels', np.int64)))
    check_labels(g_lab, num_classes, 'ground-truth')
    check_labels(d_lab, num_classes, 'detection')
    if not np.isfinite(d_score).all():
        raise ValueError('detection scores must be finite')
    num_images = len(gt)
    order = np.lexsort((-d_score, d_lab))  # stable: ties keep image order, then order within the image
    d_img, d_box, d_score, d_lab = d_img[order], d_box[order], d_score[order], d_lab[order]

    pair_det, pair_gt = group_pairs(d_lab * num_images + d_img, g_lab * num_images + g_img)
    iou = paired_iou(d_box[pair_det], box_area(d_box)[pair_det], g_box[pair_gt], box_area(g_box)[pair_gt])
    has_pair = np.bincount(pair_det, minlength=d_img.size) > 0
    target = np.full(d_img.size, -1)
    if pair_det.size:
        starts = np.flatnonzero(np.r_[True, pair_det[1:] != pair_det[:-1]])
        best = np.maximum.reduceat(iou, starts)
        at_best = iou == best[np.cumsum(np.r_[True, pair_det[1:] != pair_det[:-1]]) - 1]
        first = np.minimum.reduceat(np.where(at_best, np.arange(iou.size), iou.size), starts)
        hit = best >= iou_threshold
        target[np.flatnonzero(has_pair)[hit]] = pair_gt[first[hit]]
    ignored = np.r_[g_diff, False][target]  # target -1 (no match) reads the appended False
    # Among detections hitting the same free object, the first (highest score) is the true positive.
    candidates = np.flatnonzero((target >= 0) & ~ignored)
    _, first_hit = np.unique(target[candidates], return_index=True)
    tp = np.zeros(d_img.size, bool)
    tp[candidates[first_hit]] = True
    keep = ~ignored
    return Matches(d_score[keep], d_lab[keep], tp[keep],
                   np.bincount(g_lab[~g_diff], minlength=num_classes), num_images)


def average_precision(recall, precision, use_07_metric=False):
    """AP of one precision/recall curve (points in decreasing-score order).

    use_07_metric: mean over recall 0, 0.1, ..., 1 of the best precision at recall >= r (0 if none).
    Otherwise: area under the monotone precision envelope, summed where recall changes.
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        reach = recall[None, :] >= ELEVEN_POINTS[:, None]
        return float(np.mean(np.max(np.where(reach, precision[None, :], 0.0), axis=1, initial=0.0)))
    mrec = np.r_[0.0, recall, 1.0]
    mpre = np.maximum.accumulate(np.r_[0.0, precision, 0.0][::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def class_curve(matches, cls):
    """(recall, precision) per detection of class ``cls`` (None: all classes pooled), in score order."""
    sel = np.ones(matches.labels.size, bool) if cls is None else matches.labels == cls
    tp = matches.true_positive[sel]
    if cls is None:
        tp = tp[np.argsort(-matches.scores[sel], kind='stable')]
    num_pos = matches.num_positives.sum() if cls is None else matches.num_positives[cls]
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(~tp)
    return tp_cum / max(num_pos, 1), tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)


def evaluate_voc(gt, detections, num_classes, iou_threshold=0.5, use_07_metric=False):
    """Per-class VOC AP and mAP (classes without non-difficult ground truth are NaN and left out)."""
    matches = match_detections(gt, detections, num_classes, iou_threshold)
    ap = np.full(num_classes, np.nan)
    for c in np.flatnonzero(matches.num_positives):
        ap[c] = average_precision(*class_curve(matches, c), use_07_metric=use_07_metric)
    valid = np.isfinite(ap)
    return VocResult(ap, float(ap[valid].mean()) if valid.any() else float('nan'), matches)
