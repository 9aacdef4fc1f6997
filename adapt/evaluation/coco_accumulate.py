"""COCO accumulation over images taken any number of times: the merge by score, cumulative true and false
positives, the precision envelope and recall, from the per-image evaluation (adapt.evaluation.coco's
``evaluate_images``). Multiplicity 1 everywhere is pycocotools' accumulate(); other multiplicities give a
bootstrap resample of the images exactly, without matching them again.
"""
import dataclasses

import numpy as np


def _min_true_positives(npig, rec_thr):
    """[..., R]: the fewest true positives c with c / npig >= rec_thr in float64 (what searchsorted finds)."""
    n = np.maximum(npig, 1)[..., None].astype(np.float64)
    c = np.maximum(np.ceil(rec_thr * n), 0)
    for _ in range(2):  # correct the rounding of rec_thr * n
        c = np.where((c >= 1) & ((c - 1) / n >= rec_thr), c - 1, c)
        c = np.where(c / n < rec_thr, c + 1, c)
    return np.minimum(c, n + 1).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class ImageEvaluation:
    """COCO's per-image evaluation of a set: IoUs and greedy matching, done within each (image, category).

    It does not depend on which other images are in the set, so ``accumulate`` evaluates any resample of the
    images (an image taken several times) from it without matching again. Detections are in accumulation
    order: by category, score descending, image, rank (pycocotools' order).
    """
    params: object           # adapt.evaluation.coco.Params
    category_ids: np.ndarray
    category_names: tuple
    num_images: int
    category: np.ndarray     # [D] category index of each detection
    image: np.ndarray        # [D] image index
    score: np.ndarray        # [D]
    rank: np.ndarray         # [D] rank by score within its (image, category), ties in file order
    tp: np.ndarray           # [A, T, D] true positive at area range a and IoU threshold t
    fp: np.ndarray           # [A, T, D] false positive (neither: ignored)
    in_range: np.ndarray     # [A, D] area inside range a: an unmatched detection is then a false positive
    gt_category: np.ndarray  # [G] category index of each ground truth
    gt_image: np.ndarray     # [G] image index
    gt_ignore: np.ndarray    # [A, G] crowd or 'area' outside range a: not counted in recall


def _runs(*keys):
    """[n] start and end index of each element's run of equal consecutive keys."""
    new = np.zeros(keys[0].size, bool)
    new[:1] = True
    for k in keys:
        new[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(new)
    which = np.cumsum(new) - 1
    return starts[which], np.r_[starts[1:], new.size][which]


def _blocks(images):
    """[D] start and end of each detection's block: its run of equal (category, score, image).

    pycocotools breaks score ties by image id, then rank; the copies of an image get consecutive ids, so a
    resample repeats each block once per copy of its image, one copy after the other.
    """
    return _runs(images.category, images.score, images.image)


def _trimmed(images):
    """``images`` without the detections after the last block with a true positive in their category: they
    change no precision (read at true positives) and no recall. Detectors emit many such low scores."""
    end = _blocks(images)[1]
    is_tp = np.flatnonzero(images.tp.any(axis=(0, 1)))
    limit = np.zeros(images.category_ids.size, np.int64)
    np.maximum.at(limit, images.category[is_tp], end[is_tp])
    kept = np.flatnonzero(np.arange(images.score.size) < limit[images.category])
    return dataclasses.replace(images, category=images.category[kept], image=images.image[kept],
                               score=images.score[kept], rank=images.rank[kept], tp=images.tp[..., kept],
                               fp=images.fp[..., kept], in_range=images.in_range[:, kept])


def _entries(images, keep):
    """(curve, detection, is TP, fp - in_range) wherever the matching made a detection's outcome differ from
    an unmatched one's (a false positive iff in the area range); sorted by curve, then detection.

    keep [M, D]: within max-dets m. Curve (m, a, t) has index (m A + a) T + t.
    """
    num_at = images.tp.shape[0] * images.tp.shape[1]
    at, det = np.nonzero((images.tp | (images.fp != images.in_range[:, None])).reshape(num_at, -1))
    m, i = np.nonzero(keep[:, det])
    at, det = at[i], det[i]
    delta = images.fp.reshape(num_at, -1)[at, det].astype(np.int64) - images.in_range[at // images.tp.shape[1], det]
    return m * num_at + at, det, images.tp.reshape(num_at, -1)[at, det], delta


def _cumulative(x):
    """Exclusive cumulative sums along the last axis: [..., n + 1], int64."""
    out = np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), np.int64)
    np.cumsum(x, axis=-1, out=out[..., 1:])
    return out


def _sum_between(cumulative, lo, hi):
    """Sums over [lo, hi) along the last axis, from ``_cumulative`` (np.take: faster than fancy indexing)."""
    return np.take(cumulative, hi, axis=-1) - np.take(cumulative, lo, axis=-1)


def _first_copies(images, keep, multiplicity):
    """Every true positive of every curve: (curve [E], detection [E], its count and the false positives
    before it in its first copy, per resample [S, E], the true and false positives of its block [E] each).

    Copy j of a true positive comes after: the detections of its category before its block, each once per
    copy of its image; j copies of its block; the detections before it in the block. Its count is the true
    positives among these + 1. A false positive is an unmatched detection in the area range (dense, the
    same at every IoU threshold) or one of ``_entries``' corrections (sparse).
    """
    curve, det, is_tp, delta = _entries(images, keep)
    start, end = _blocks(images)
    group_start, group_end = _runs(curve, start[det])  # entries of one curve and block
    cat_first = _runs(curve, images.category[det])[0]  # first entry of the curve and category
    tp = np.flatnonzero(is_tp)
    gs, ge, cf, d = group_start[tp], group_end[tp], cat_first[tp], det[tp]
    unmatched_fp = keep[:, None] & images.in_range  # [M, A, D], the same at every IoU threshold
    before = _cumulative(unmatched_fp.ravel())  # how many there are before each (max-dets, area, detection)
    at = curve[tp] // images.tp.shape[1] * images.score.size
    fp_cat, fp_start, fp_d, fp_end = (before[at + p] for p in (_runs(images.category)[0][d], start[d], d, end[d]))
    s_tp, s_fp = _cumulative(np.stack([is_tp, delta]))
    tp_in, tp_block = _sum_between(s_tp, gs, tp), _sum_between(s_tp, gs, ge)
    fp_in, fp_block = fp_d - fp_start + _sum_between(s_fp, gs, tp), fp_end - fp_start + _sum_between(s_fp, gs, ge)

    s_tp, s_fp = _cumulative(np.take(multiplicity, images.image[det], axis=1) * np.stack([is_tp, delta])[:, None])
    dense = _cumulative(np.take(multiplicity, images.image[np.nonzero(unmatched_fp)[2]], axis=1))
    count = _sum_between(s_tp, cf, gs) + tp_in + 1
    fp = _sum_between(dense, fp_cat, fp_start) + _sum_between(s_fp, cf, gs) + fp_in
    return curve[tp], d, count, fp, tp_block, fp_block


def _true_positive_precision(images, keep, multiplicity):
    """Precision at every true positive of the resampled curves, in rows (resample s, curve c, category k),
    each row in curve order and followed by a 0; and the number of true positives per row [S, M, A, T, K].

    Copy j of a true positive has j more copies of its block before it than the first (``_first_copies``);
    its precision is ``count / (count + fp + eps)`` as in pycocotools, its place in the row its count.
    """
    curve, det, count, fp, tp_block, fp_block = _first_copies(images, keep, multiplicity)
    num_s, num_cats = len(multiplicity), images.category_ids.size
    num_curves = len(keep) * images.tp.shape[0] * images.tp.shape[1]
    row = (np.arange(num_s)[:, None] * num_curves + curve) * num_cats + images.category[det]  # [S, E]
    copies = np.take(multiplicity, images.image[det], axis=1).ravel()
    pair = np.repeat(np.arange(copies.size), copies)
    j = np.arange(pair.size) - (np.cumsum(copies) - copies)[pair]
    count = count.ravel()[pair] + j * np.tile(tp_block, num_s)[pair]
    fp = fp.ravel()[pair] + j * np.tile(fp_block, num_s)[pair]
    row = row.ravel()[pair]
    num_tp = np.bincount(row, minlength=num_s * num_curves * num_cats)
    precision = np.zeros(pair.size + num_tp.size)
    precision[(np.cumsum(num_tp + 1) - num_tp - 1)[row] + count - 1] = count / ((fp + count) + np.spacing(1))
    return precision, num_tp.reshape((num_s, len(keep)) + images.tp.shape[:2] + (num_cats,))


def _interpolated(tp_precision, num_tp, min_tp, rec_thr):
    """[..., R]: pycocotools' precision at each recall threshold, the best precision at or after true
    positive number min_tp [..., R] (the first to reach it); 0 from the first threshold, in the given
    order, that the curve does not reach.

    tp_precision: rows of num_tp [...] precisions at true positives, each row followed by a 0 (read for
    thresholds the row does not reach). The best precision after a point is attained at a true positive, so
    these suffice. In increasing threshold order the positions do not decrease: the maximum over each
    stretch between two of them (reduceat), then the running maximum from the right.
    """
    row_end = (np.cumsum(num_tp + 1) - 1).reshape(num_tp.shape)[..., None]
    order = np.argsort(rec_thr, kind='stable')
    bounds = np.empty(num_tp.shape + (rec_thr.size + 1,), np.int64)
    bounds[..., -1:] = row_end
    np.minimum((row_end - num_tp[..., None] - 1) + np.maximum(min_tp[..., order], 1), row_end, out=bounds[..., :-1])
    stretch = np.maximum.reduceat(tp_precision, bounds.ravel()).reshape(bounds.shape)[..., :-1]
    envelope = np.maximum.accumulate(stretch[..., ::-1], axis=-1)[..., ::-1]
    if (np.diff(rec_thr) >= 0).all():
        return envelope  # 0 where not reached, hence from the first such threshold on
    envelope = envelope[..., np.argsort(order)]
    return np.where(np.logical_and.accumulate(envelope > 0, axis=-1), envelope, 0.0)


def accumulate(images, multiplicity, max_dets=None):
    """precision [S, T, R, K, A, M] and recall [S, T, K, A, M] of the set with image i taken
    ``multiplicity[s, i]`` times, s < S; max-dets M: ``max_dets`` (default: all of params, sorted).

    Exactly what evaluate_coco gives on the resample that ``transfer.resample_images`` builds (copies of an
    image get consecutive ids), without matching again; multiplicity 1 everywhere is the set itself. Each
    (image, category) is matched on its own, so the resample repeats the detections' outcomes; only their
    merge by score (ties: image, rank) and the counts of ground truth change with it.
    """
    params = images.params
    max_dets = sorted(int(m) for m in params.max_dets) if max_dets is None else list(max_dets)
    multiplicity = np.asarray(multiplicity, np.int64)
    images = _trimmed(images)
    keep = images.rank < np.array(max_dets, np.int64)[:, None]
    tp_precision, num_tp = _true_positive_precision(images, keep, multiplicity)
    counted = multiplicity[:, None, images.gt_image] * ~images.gt_ignore  # [S, A, G]
    npig = (counted @ (images.gt_category[:, None] == np.arange(images.category_ids.size)))[:, None, :, None]
    rec_thr = np.asarray(params.rec_thresholds, np.float64)
    q = _interpolated(tp_precision, num_tp, _min_true_positives(npig, rec_thr), rec_thr)
    precision = np.where(npig[..., None] > 0, q, -1).transpose(0, 3, 5, 4, 2, 1)
    recall = np.where(npig > 0, num_tp / np.maximum(npig, 1), -1).transpose(0, 3, 4, 2, 1)
    return precision, recall
