"""Box priors from data: YOLOv2's k-means over the (width, height) of the training boxes.

YOLOv2 (Redmon and Farhadi 2017, section 2) clusters the ground-truth shapes with the distance
d(box, centroid) = 1 - IoU(box, centroid), both aligned at a common centre, so that large boxes do not
dominate as they would under a Euclidean distance. This is plain Lloyd k-means in NumPy (float64): every
box goes to the centroid of highest shape IoU (the first one on a tie), every centroid becomes the mean
of its boxes (a centroid left without boxes stays where it is), until no assignment changes.
"""
import numpy as np


def shape_iou(a, b):
    """IoU of (width, height) pairs a [N, 2] and b [K, 2] aligned at a common centre -> [N, K]."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    inter = np.minimum(a[..., 0], b[..., 0]) * np.minimum(a[..., 1], b[..., 1])
    return inter / (a[..., 0] * a[..., 1] + b[..., 0] * b[..., 1] - inter)


def box_shapes(boxes):
    """(width, height) [N, 2] of yxyx boxes [N, 4], boxes without area dropped."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    wh = np.stack([boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], -1)
    return wh[np.all(wh > 0, axis=1)]


def kmeans_priors(wh, k, seed=0, max_iterations=300):
    """k centroids [k, 2] (width, height) of the shapes `wh` [N, 2] under the 1 - IoU distance, smallest
    area first. The start is k distinct shapes drawn with `np.random.default_rng(seed)` from the sorted
    unique ones, so one seed always gives the same priors. ValueError (one line) with fewer than k
    distinct shapes."""
    wh = np.asarray(wh, np.float64)
    unique = np.unique(wh, axis=0)
    if len(unique) < k:
        raise ValueError(f'k-means priors: {k} priors need at least {k} distinct box shapes, got {len(unique)}')
    centroids = unique[np.random.default_rng(seed).choice(len(unique), k, replace=False)]
    assignment = None
    for _ in range(max_iterations):
        new = np.argmax(shape_iou(wh, centroids), axis=1)
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        counts = np.bincount(assignment, minlength=k)[:, None]
        sums = np.zeros((k, 2))
        np.add.at(sums, assignment, wh)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    return centroids[np.argsort(centroids[:, 0] * centroids[:, 1], kind='stable')]


def split_levels(priors, counts):
    """Priors sorted by area split into consecutive groups of `counts` (finest level first) as nested lists."""
    bounds = np.cumsum([0, *counts])
    return [np.asarray(priors)[lo:hi].tolist() for lo, hi in zip(bounds[:-1], bounds[1:])]
