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
"""
import dataclasses

import numpy as np

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


def _min_true_positives(npig, rec_thr):
    """[K, A, R]: the fewest true positives c with c / npig >= rec_thr in float64 (what searchsorted finds)."""
    n = np.maximum(npig, 1)[..., None].astype(np.float64)
    c = np.maximum(np.ceil(rec_thr * n), 0)
    for _ in range(2):  # correct the rounding of rec_thr * n
        c = np.where((c >= 1) & ((c - 1) / n >= rec_thr), c - 1, c)
        c = np.where(c / n < rec_thr, c + 1, c)
    return np.minimum(c, n + 1).astype(np.int64)


def _accumulate(tp, fp, cat, rank, npig, max_dets, rec_thr):
    """precision [T, R, K, A, M] and recall [T, K, A, M] from per-detection TP/FP flags [A, T, D].

    Detections come sorted by category, then as pycocotools merges them: by score, ties by image and rank.

    pycocotools reads the precision envelope at the first detection reaching each recall threshold.  That
    detection is a true positive, and the envelope (the best precision at or after it) is attained at a
    true positive, so only the precision at true positives is computed: the c-th true positive of a curve
    with ``fp`` false positives before it has precision ``c / (fp + c + eps)``, the same float64 value.
    """
    num_areas, num_thr, _ = tp.shape
    num_cats, num_rec = npig.shape[0], rec_thr.size
    precision = -np.ones((num_thr, num_rec, num_cats, num_areas, len(max_dets)))
    recall = -np.ones((num_thr, num_cats, num_areas, len(max_dets)))
    bounds = np.searchsorted(cat, np.arange(num_cats + 1))
    has_gt = (npig > 0).T[:, None, :]  # [A, 1, K]; without ground truth the entries stay -1
    min_tp = _min_true_positives(npig, rec_thr).transpose(1, 0, 2)[:, None]  # [A, 1, K, R]
    for m, max_det in enumerate(max_dets):
        keep = rank < max_det
        tp_m, fp_m = (tp, fp) if keep.all() else (tp & keep, fp & keep)
        fp_cum = np.zeros((num_areas, num_thr, cat.size + 1), np.int32)
        np.cumsum(fp_m, axis=2, dtype=np.int32, out=fp_cum[:, :, 1:])
        curve, pos = np.divmod(np.flatnonzero(tp_m), cat.size)  # true positives, by (area, threshold), position
        a, t = np.divmod(curve, num_thr)
        k = np.searchsorted(bounds, pos, 'right') - 1
        row = curve * num_cats + k  # one curve per (area, threshold, category), ascending
        row_start = np.searchsorted(row, np.arange(num_areas * num_thr * num_cats + 1))
        count = np.arange(row.size) - row_start[row] + 1
        fp_before = fp_cum[a, t, pos + 1] - fp_cum[a, t, bounds[k]]
        pr = count / ((fp_before + count) + np.spacing(1))
        for lo, hi in zip(row_start[:-1], row_start[1:]):
            if hi - lo > 1:
                pr[lo:hi] = np.maximum.accumulate(pr[lo:hi][::-1])[::-1]  # monotone envelope
        num_tp = np.diff(row_start).reshape(num_areas, num_thr, num_cats)
        rc = num_tp / np.maximum(npig.T[:, None, :], 1)
        recall[..., m] = np.where(has_gt, rc, -1).transpose(1, 2, 0)
        # Without true positives every precision is 0; pycocotools stops at the first unreachable recall.
        valid = np.logical_and.accumulate(min_tp <= num_tp[..., None], axis=-1) & (num_tp[..., None] > 0)
        first = row_start[:-1].reshape(num_tp.shape)[..., None] + np.maximum(min_tp, 1) - 1
        q = np.r_[pr, 0.0][np.where(valid, first, pr.size)]
        precision[..., m] = np.where(has_gt[..., None], q, -1).transpose(1, 3, 2, 0)
    return precision, recall


def evaluate_coco(gt, detections, params=None):
    """COCO bbox evaluation; ``gt``/``detections`` are paths, loaded JSON, or cocojson objects."""
    params = params or Params()
    _check(params)
    gt = load_ground_truth(gt)
    dets = load_detections(detections, gt)
    max_dets = sorted(int(m) for m in params.max_dets)
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
    kept = rank < max_dets[-1]
    order, rank = order[kept], rank[kept]
    # From here on, detections are in accumulation order: by category, score, image, rank.
    acc = np.lexsort((rank, d_img[order], -d_score[order], d_cat[order]))
    order, rank = order[acc], rank[acc]
    d_cat, d_box, d_key = d_cat[order], d_box[order], d_key[order]
    d_area = d_box[:, 2] * d_box[:, 3]

    pair_det, pair_gt = group_pairs(d_key, g_cat * num_images + g_img)
    iou = paired_iou(_xyxy(d_box[pair_det]), d_area[pair_det], _xyxy(g_box[pair_gt]),
                     g_box[pair_gt, 2] * g_box[pair_gt, 3], g_crowd[pair_gt])
    a, t, d, g = greedy_match(rank, pair_det, pair_gt, iou, params.iou_thresholds, g_ignore, g_crowd)

    shape = (len(lo), len(params.iou_thresholds), d_key.size)
    real, ignored = np.zeros(shape, bool), np.zeros(shape, bool)
    real[a, t, d] = g_real[g]  # a match to annotation id 0 is no match for pycocotools
    ignored[a, t, d] = g_ignore[a, g]
    ignored |= ~real & ((d_area < lo) | (d_area > hi))[:, None, :]
    tp, fp = real & ~ignored, ~real & ~ignored
    npig = np.stack([np.bincount(g_cat[~ig], minlength=cat_ids.size) for ig in g_ignore], axis=1)
    precision, recall = _accumulate(tp, fp, d_cat, rank, npig, max_dets,
                                    np.asarray(params.rec_thresholds, np.float64))
    return CocoEvaluation(summarize(precision, recall, params), precision, recall, params, cat_ids, names)


def _mean_valid(s):
    return float(np.mean(s[s > -1])) if (s > -1).any() else -1.0


def summarize(precision, recall, params):
    """pycocotools' 12 numbers: means over entries > -1 of the selected slices (-1 when none)."""
    iou, max_dets = np.asarray(params.iou_thresholds), sorted(params.max_dets)
    stats = []
    for _, is_ap, thr, area, md in SUMMARY:
        md = 100 if md == 'literal-100' else (max_dets[md] if md < len(max_dets) else None)
        aind = [i for i, label in enumerate(params.area_labels) if label == area]
        mind = [i for i, m in enumerate(max_dets) if m == md]
        s = precision if is_ap else recall
        if thr is not None:
            s = s[np.where(thr == iou)[0]]
        stats.append(_mean_valid(s[..., aind, mind]))
    return np.array(stats)


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
