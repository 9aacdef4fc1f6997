"""COCO bbox evaluation giving the same numbers as pycocotools ``COCOeval(iouType='bbox')``, vectorised.

Same semantics as pycocotools, re-derived (not copied) so that every comparison sees the same float64 values:
- IoU: ``w = min(x + w) - max(x)`` (no +1), zero unless both overlaps are > 0; union ``da + ga - i`` with
  areas ``w * h`` of the boxes; for a crowd region the union is the detection area.
- Per (image, category): detections ranked by score (stable, ties in file order), the top ``max(max_dets)``
  kept; greedy matching in rank order at every IoU threshold ``t``: the best untaken ground truth with
  ``iou >= min(t, 1 - 1e-10)`` among non-ignored ones (ties: the later annotation), else among ignored
  ones (crowd regions may be matched many times). Ground truth is ignored when crowd or when its 'area'
  field is outside the area range; a detection matched to an ignored one is ignored, as is an unmatched
  detection whose ``w * h`` is outside the range. A match to an annotation with id 0 counts as a miss
  (pycocotools stores matches as ids, 0 meaning none).
- Per category: detections of all images merged by score (ties: image id, then rank), cumulative TP/FP,
  precision ``tp / (tp + fp + eps)`` made monotone from the right, read at the recall thresholds with
  ``searchsorted(..., 'left')``; -1 where the category has no non-ignored ground truth in that area range.
- Summaries: pycocotools' 12 numbers, means over entries > -1.

Instead of pycocotools' loops over images, detections and ground truths, the whole data set is matched at
once: rank r of every (image, category) group is processed in one vectorised step, for all area ranges and
IoU thresholds together, over the (detection, ground truth) pairs that reach the lowest threshold.

The two stages are separate, as pycocotools' evaluate() and accumulate() are: ``evaluate_images`` matches
within each (image, category), which no other image affects; ``accumulate`` (adapt.evaluation.coco_accumulate)
merges over the images and takes how often each one occurs, so a bootstrap resample of the images is
evaluated exactly without being matched again (``summary_values``, used by ``transfer.bootstrap_values``).
"""
import dataclasses

import numpy as np

from adapt.evaluation.coco_accumulate import ImageEvaluation, accumulate
from adapt.evaluation.cocojson import load_detections, load_ground_truth

# Constructed exactly as pycocotools does, so summaries find 0.5 and 0.75 by equality.
IOU_THRESHOLDS = tuple(np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True))
REC_THRESHOLDS = tuple(np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True))
AREA_RANGES = ((0 ** 2, 1e5 ** 2), (0 ** 2, 32 ** 2), (32 ** 2, 96 ** 2), (96 ** 2, 1e5 ** 2))
AREA_LABELS = ('all', 'small', 'medium', 'large')

# The 12 summary numbers: (short name, is AP, IoU threshold, area label, max-dets).  An int max-dets is an
# index into params.max_dets; the first entry uses the literal 100, exactly as pycocotools does.
SUMMARY = (('AP', True, None, 'all', 'literal-100'), ('AP50', True, .5, 'all', 2), ('AP75', True, .75, 'all', 2),
           ('APs', True, None, 'small', 2), ('APm', True, None, 'medium', 2), ('APl', True, None, 'large', 2),
           ('AR1', False, None, 'all', 0), ('AR10', False, None, 'all', 1), ('AR100', False, None, 'all', 2),
           ('ARs', False, None, 'small', 2), ('ARm', False, None, 'medium', 2), ('ARl', False, None, 'large', 2))
SHORT_NAMES = tuple(s[0] for s in SUMMARY)


@dataclasses.dataclass(frozen=True)
class Params:
    """pycocotools Params (bbox). ``image_ids`` / ``category_ids`` restrict the evaluation (None: all)."""
    iou_thresholds: tuple = IOU_THRESHOLDS
    rec_thresholds: tuple = REC_THRESHOLDS
    max_dets: tuple = (1, 10, 100)
    area_ranges: tuple = AREA_RANGES
    area_labels: tuple = AREA_LABELS
    image_ids: tuple = None
    category_ids: tuple = None


def group_pairs(det_key, gt_key):
    """Pairs (d, g) with det_key[d] == gt_key[g], ordered by d, then g ascending."""
    g_order = np.argsort(gt_key, kind='stable')
    sorted_keys = gt_key[g_order]
    lo = np.searchsorted(sorted_keys, det_key, 'left')
    counts = np.searchsorted(sorted_keys, det_key, 'right') - lo
    pair_det = np.repeat(np.arange(len(det_key)), counts)
    starts = np.cumsum(counts) - counts
    pair_gt = g_order[np.repeat(lo - starts, counts) + np.arange(pair_det.size)]
    return pair_det, pair_gt


def paired_iou(a, a_area, b, b_area, b_crowd=None):
    """IoU of a[i] with b[i] for corner boxes [lo0, lo1, hi0, hi1]; crowd b: intersection / area of a.

    Arithmetic as pycocotools' bbIou (areas passed in, so COCO can use w * h of the xywh input).
    """
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = w * h
    union = a_area + b_area - inter
    if b_crowd is not None:
        union = np.where(b_crowd, a_area, union)
    ok = (w > 0) & (h > 0)
    iou = np.zeros(inter.shape)
    iou[ok] = inter[ok] / union[ok]
    return iou


def greedy_match(rank, pair_det, pair_gt, pair_iou, thresholds, gt_ignore, gt_crowd):
    """pycocotools' greedy matching for all groups, area ranges and thresholds at once.

    rank [D]: processing order of each detection within its group; pairs ordered by detection, then ground
    truth in group order (later wins ties); thresholds [T]; gt_ignore [A, G]; gt_crowd [G].
    Returns the matches as index arrays (area, threshold, detection, ground truth), one entry per match.
    """
    thr = np.minimum(np.asarray(thresholds, np.float64), 1 - 1e-10)
    keep = pair_iou >= thr.min()  # a pair below every threshold can never match
    pair_det, pair_gt, pair_iou = pair_det[keep], pair_gt[keep], pair_iou[keep]
    order = np.lexsort((np.arange(pair_det.size), pair_det, rank[pair_det]))
    pair_det, pair_gt, pair_iou = pair_det[order], pair_gt[order], pair_iou[order]
    pair_rank = rank[pair_det]
    bounds = np.searchsorted(pair_rank, np.arange(pair_rank[-1] + 2 if pair_rank.size else 1))
    taken = np.zeros((gt_ignore.shape[0], thr.size, gt_ignore.shape[1]), bool)
    hits = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if lo == hi:
            continue
        d, g, iou = pair_det[lo:hi], pair_gt[lo:hi], pair_iou[lo:hi]
        new_seg = np.r_[True, d[1:] != d[:-1]]
        starts, seg = np.flatnonzero(new_seg), np.cumsum(new_seg) - 1
        eligible = (iou >= thr[:, None]) & (gt_crowd[g] | ~taken[:, :, g])        # [A, T, P]
        prio = np.where(eligible, 2 - gt_ignore[:, None, g], 0).astype(np.int8)    # non-ignored first
        cand = eligible & (prio == np.maximum.reduceat(prio, starts, axis=-1)[..., seg])
        best_iou = np.maximum.reduceat(np.where(cand, iou, -1.0), starts, axis=-1)
        cand &= iou == best_iou[..., seg]
        best = np.maximum.reduceat(np.where(cand, np.arange(d.size), -1), starts, axis=-1)  # last of ties
        a, t, s = np.nonzero(best >= 0)
        g_hit = g[best[a, t, s]]
        taken[a, t, g_hit] = True
        hits.append((a, t, d[starts[s]], g_hit))
    if not hits:
        return tuple(np.zeros(0, np.int64) for _ in range(4))
    return tuple(np.concatenate(h) for h in zip(*hits))


def _xyxy(xywh):
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def _subset(gt, dets, params):
    """Category ids/names, kept annotation and detection masks, and category indices after restriction."""
    cat_ids, names = gt.category_ids, gt.category_names
    g_cat, d_cat = gt.category_index, dets.category_index
    if params.category_ids is not None:
        wanted = np.unique(np.asarray(params.category_ids, np.int64))
        pos = np.minimum(np.searchsorted(cat_ids, wanted), max(cat_ids.size - 1, 0))
        if cat_ids.size == 0 or (cat_ids[pos] != wanted).any():
            raise ValueError(f'params.category_ids: not in the ground truth: {sorted(set(wanted) - set(cat_ids))}')
        remap = np.full(cat_ids.size, -1)
        remap[pos] = np.arange(wanted.size)
        g_cat, d_cat = remap[g_cat], remap[d_cat]
        cat_ids, names = wanted, tuple(names[i] for i in pos)
    g_keep, d_keep = g_cat >= 0, d_cat >= 0
    if params.image_ids is not None:
        in_subset = np.isin(gt.image_ids, np.asarray(params.image_ids, np.int64))
        g_keep &= in_subset[gt.image_index]
        d_keep &= in_subset[dets.image_index]
    return cat_ids, names, g_keep, d_keep, g_cat, d_cat


def _check(params):
    if len(params.iou_thresholds) == 0 or len(params.rec_thresholds) == 0:
        raise ValueError('params: iou_thresholds and rec_thresholds must not be empty')
    if not params.area_ranges or len(params.area_ranges) != len(params.area_labels):
        raise ValueError('params: area_ranges and area_labels must be non-empty and of the same length')
    if not params.max_dets or any(int(m) != m or m < 1 for m in params.max_dets):
        raise ValueError(f'params: max_dets must be positive integers, got {params.max_dets}')


def evaluate_images(gt, detections, params=None):
    """COCO's per-image evaluation; ``gt``/``detections`` are paths, loaded JSON, or cocojson objects."""
    params = params or Params()
    _check(params)
    gt = load_ground_truth(gt)
    dets = load_detections(detections, gt)
    cat_ids, names, g_keep, d_keep, g_cat, d_cat = _subset(gt, dets, params)
    num_images = gt.image_ids.size

    g_cat, g_img, g_box = g_cat[g_keep], gt.image_index[g_keep], gt.boxes[g_keep]
    g_crowd, g_real = gt.iscrowd[g_keep], gt.ann_ids[g_keep] != 0
    lo, hi = (np.asarray(params.area_ranges, np.float64).reshape(-1, 2)[:, i, None] for i in (0, 1))
    g_area = gt.areas[g_keep]
    g_ignore = g_crowd | (g_area < lo) | (g_area > hi)  # [A, G]

    d_cat, d_img, d_box, d_score = d_cat[d_keep], dets.image_index[d_keep], dets.boxes[d_keep], \
        dets.scores[d_keep]
    d_key = d_cat * num_images + d_img
    order = np.lexsort((-d_score, d_key))  # stable: ties keep file order
    rank = np.arange(order.size) - np.searchsorted(d_key[order], d_key[order], 'left')
    kept = rank < max(params.max_dets)
    order, rank = order[kept], rank[kept]
    # From here on, detections are in accumulation order: by category, score, image, rank.
    acc = np.lexsort((rank, d_img[order], -d_score[order], d_cat[order]))
    order, rank = order[acc], rank[acc]
    d_cat, d_img, d_score, d_box, d_key = d_cat[order], d_img[order], d_score[order], d_box[order], d_key[order]
    d_area = d_box[:, 2] * d_box[:, 3]

    pair_det, pair_gt = group_pairs(d_key, g_cat * num_images + g_img)
    iou = paired_iou(_xyxy(d_box[pair_det]), d_area[pair_det], _xyxy(g_box[pair_gt]),
                     g_box[pair_gt, 2] * g_box[pair_gt, 3], g_crowd[pair_gt])
    a, t, d, g = greedy_match(rank, pair_det, pair_gt, iou, params.iou_thresholds, g_ignore, g_crowd)

    shape = (len(lo), len(params.iou_thresholds), d_key.size)
    real, ignored = np.zeros(shape, bool), np.zeros(shape, bool)
    real[a, t, d] = g_real[g]  # a match to annotation id 0 is no match for pycocotools
    ignored[a, t, d] = g_ignore[a, g]
    in_range = (d_area >= lo) & (d_area <= hi)
    ignored |= ~real & ~in_range[:, None, :]
    return ImageEvaluation(params, cat_ids, names, num_images, d_cat, d_img, d_score, rank, real & ~ignored,
                           ~real & ~ignored, in_range, g_cat, g_img, g_ignore)


def evaluate_coco(gt, detections, params=None):
    """COCO bbox evaluation; ``gt``/``detections`` are paths, loaded JSON, or cocojson objects.

    ``evaluate_images``, then ``accumulate`` with every image taken once.
    """
    images = evaluate_images(gt, detections, params)
    precision, recall = (x[0] for x in accumulate(images, np.ones((1, images.num_images), np.int64)))
    return CocoEvaluation(summarize(precision, recall, images.params), precision, recall, images.params,
                          images.category_ids, images.category_names)


def _mean_valid(s):
    return float(np.mean(s[s > -1])) if (s > -1).any() else -1.0


def _summary_max_dets(params, entry):
    """The max-dets value that summary ``entry`` reads; None where params lack it (the number is then -1)."""
    md, max_dets = entry[4], sorted(params.max_dets)
    return 100 if md == 'literal-100' else (max_dets[md] if md < len(max_dets) else None)


def _summary_slice(precision, recall, params, entry, max_dets):
    """The entries of precision/recall, with max-dets columns ``max_dets``, that summary ``entry`` averages."""
    _, is_ap, thr, area, _ = entry
    md = _summary_max_dets(params, entry)
    aind = [i for i, label in enumerate(params.area_labels) if label == area]
    mind = [i for i, m in enumerate(max_dets) if m == md]
    s = precision if is_ap else recall
    if thr is not None:
        s = s[np.where(thr == np.asarray(params.iou_thresholds))[0]]
    return s[..., aind, mind]


def summarize(precision, recall, params):
    """pycocotools' 12 numbers: means over entries > -1 of the selected slices (-1 when none)."""
    max_dets = sorted(params.max_dets)
    return np.array([_mean_valid(_summary_slice(precision, recall, params, e, max_dets)) for e in SUMMARY])


def summary_values(images, multiplicity, name, chunk_elements=2 ** 21):
    """[S]: summary number ``name`` ('AP50', ...) of every resample, ``evaluate_coco(...).summary()[name]``
    on the set with image i taken ``multiplicity[s, i]`` times (see ``accumulate``).

    Only the max-dets column that the number reads is accumulated, a chunk of resamples at a time (about
    ``chunk_elements`` array entries each, 2 ** 21: ~20 MiB), so memory stays bounded for any S.
    """
    entry = SUMMARY[SHORT_NAMES.index(name)]
    md = _summary_max_dets(images.params, entry)
    max_dets = [m for m in sorted(images.params.max_dets) if m == md]
    chunk = max(1, chunk_elements // max(1, _size_per_resample(images, len(max_dets))))
    values = []
    for i in range(0, len(multiplicity), chunk):
        precision, recall = accumulate(images, multiplicity[i:i + chunk], max_dets)
        values += [_mean_valid(_summary_slice(p, r, images.params, entry, max_dets))
                   for p, r in zip(precision, recall)]
    return np.array(values)


def _size_per_resample(images, num_max_dets):
    """About how many array entries ``accumulate`` holds per resample: detections, true positives, readouts."""
    num_areas, num_thr, _ = images.tp.shape
    readouts = num_areas * num_thr * images.category_ids.size * (len(images.params.rec_thresholds) + 1)
    return num_max_dets * (images.in_range.size + int(images.tp.sum()) + readouts)


@dataclasses.dataclass(frozen=True)
class CocoEvaluation:
    """Result of evaluate_coco: the 12 stats, pycocotools' precision/recall arrays, and the categories."""
    stats: np.ndarray       # [12], order and meaning of SUMMARY
    precision: np.ndarray   # [T, R, K, A, M], -1 where a category has no ground truth in that area range
    recall: np.ndarray      # [T, K, A, M]
    params: Params
    category_ids: np.ndarray
    category_names: tuple

    def descriptions(self):
        """pycocotools' line descriptions, e.g. 'Average Precision  (AP) @[ IoU=0.50:0.95 | ... ]'."""
        iou, max_dets = self.params.iou_thresholds, sorted(self.params.max_dets)
        out = []
        for _, is_ap, thr, area, md in SUMMARY:
            md = 100 if md == 'literal-100' else (max_dets[md] if md < len(max_dets) else -1)
            iou_str = f'{iou[0]:0.2f}:{iou[-1]:0.2f}' if thr is None else f'{thr:0.2f}'
            title, kind = ('Average Precision', '(AP)') if is_ap else ('Average Recall', '(AR)')
            out.append(f'{title:<18} {kind} @[ IoU={iou_str:<9} | area={area:>6s} | maxDets={md:>3d} ]')
        return out

    def summary_lines(self):
        """The 12 lines exactly as pycocotools' summarize() prints them."""
        return [f' {d} = {v:0.3f}' for d, v in zip(self.descriptions(), self.stats)]

    def summary(self):
        """{short name: value} with names AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl."""
        return dict(zip(SHORT_NAMES, map(float, self.stats)))

    def per_category_ap(self, iou_threshold=None, area='all', max_dets=None):
        """AP per category [K] (mean precision over IoU thresholds and recall points); -1 without GT."""
        labels, md = list(self.params.area_labels), sorted(self.params.max_dets)
        m = md.index(max_dets) if max_dets is not None else len(md) - 1
        s = self.precision[:, :, :, labels.index(area), m]
        if iou_threshold is not None:
            s = s[np.where(np.asarray(self.params.iou_thresholds) == iou_threshold)[0]]
        return np.array([_mean_valid(s[:, :, k]) for k in range(s.shape[2])])

    def to_json(self):
        """JSON-ready dict: the 12 numbers under pycocotools' descriptions and short names, 'stats' (list),
        and 'per_category' [{id, name, AP, AP50, AP75}] at area 'all' and the largest max_dets."""
        out = {'stats': [float(v) for v in self.stats]}
        out.update(zip(self.descriptions(), map(float, self.stats)))
        out.update(self.summary())
        area = 'all' if 'all' in self.params.area_labels else self.params.area_labels[0]
        columns = {name: self.per_category_ap(thr, area) for name, thr in (('AP', None), ('AP50', .5), ('AP75', .75))}
        out['per_category'] = [dict(id=int(c), name=n, **{k: float(v[i]) for k, v in columns.items()})
                               for i, (c, n) in enumerate(zip(self.category_ids, self.category_names))]
        return out
