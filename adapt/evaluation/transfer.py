"""Transfer-learning metrics for a Day2Night report: bootstrap intervals, gap closed, forgetting, transfer
matrix metrics (ACC/BWT/FWT), and the proxy A-distance. Pure NumPy; bad input raises a one-line ValueError.

Definitions (the lecture's "Benchmarking" slide, after Diaz-Rodriguez et al. 2018, "Don't forget, there is
more than forgetting"; Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory"; Ben-David et al. 2007/2010):
- domain gap      = source-domain score of the source model - target-domain score of the method
- gap closed      = (method - source_only) / (oracle - source_only) on the target domain
- forgetting      = source score before adaptation - source score after (positive = forgotten)
- ACC, BWT, FWT   = GEM's definitions over the matrix R[i, j] (score on domain j after training stage i),
                    plus Diaz-Rodriguez's lower/upper-triangle variants under ``*_DR`` keys
- proxy A-distance = 2 (1 - 2 err), err the held-out error of a linear domain classifier
"""
import numpy as np

from adapt.evaluation.coco import SHORT_NAMES, SUMMARY, Params, evaluate_coco, evaluate_images, summary_values
from adapt.evaluation.cocojson import Detections, GroundTruth, load_detections, load_ground_truth

__all__ = ['bootstrap_ci', 'bootstrap_values', 'resample_images', 'gap_closed', 'domain_gap', 'forgetting',
           'transfer_matrix_metrics', 'domain_classifier_error', 'proxy_a_distance']


# ----------------------------------------------------------------------------------------------------------
# Bootstrap confidence intervals of a COCO metric over test images.

def resample_images(gt, detections, draw):
    """(GroundTruth, Detections) holding the images ``gt.image_ids[draw]``, every draw its own image.

    ``draw`` are indices into the (sorted) ``gt.image_ids``; they are sorted first, so the images of the
    resample follow the original id order and the identity draw ``arange(n)`` reproduces the original set
    exactly (pycocotools breaks score ties across images by image id). Drawn image k (after sorting) gets
    id k + 1; its annotations and detections are copied with it, keeping their relative file order (which
    breaks ties inside an image). Annotation ids become 1..G in order, except that an id 0 stays 0
    (pycocotools counts a match to annotation id 0 as a miss; the copy behaves as the original does).
    """
    gt = load_ground_truth(gt)
    dets = load_detections(detections, gt)
    num_images = gt.image_ids.size
    draw = np.sort(np.asarray(draw, np.int64).reshape(-1))
    if draw.size and (draw.min() < 0 or draw.max() >= num_images):
        raise ValueError(f'draw: image indices must lie in [0, {num_images}), got {draw.min()}..{draw.max()}')

    def gather(image_index):
        order = np.argsort(image_index, kind='stable')
        counts = np.bincount(image_index, minlength=num_images)
        starts = np.cumsum(counts) - counts
        c = counts[draw]
        offsets = np.repeat(starts[draw] - (np.cumsum(c) - c), c) + np.arange(c.sum())
        return order[offsets], np.repeat(np.arange(draw.size), c)

    g_sel, g_img = gather(gt.image_index)
    d_sel, d_img = gather(dets.image_index)
    ann_ids = gt.ann_ids[g_sel]
    new_gt = GroundTruth(
        image_ids=np.arange(1, draw.size + 1, dtype=np.int64), category_ids=gt.category_ids,
        category_names=gt.category_names, ann_ids=np.where(ann_ids != 0, np.arange(1, g_sel.size + 1), 0),
        image_index=g_img, category_index=gt.category_index[g_sel], boxes=gt.boxes[g_sel],
        areas=gt.areas[g_sel], iscrowd=gt.iscrowd[g_sel])
    new_dets = Detections(image_index=d_img, category_index=dets.category_index[d_sel],
                          boxes=dets.boxes[d_sel], scores=dets.scores[d_sel])
    return new_gt, new_dets


def _metric_params(metric):
    """Params evaluating only what ``metric`` reads: its IoU threshold(s) and area range, default max_dets.

    Exact, not an approximation: pycocotools matches and accumulates each (IoU threshold, area range) on
    its own, so dropping the others leaves the selected precision/recall entries unchanged (tested).
    """
    if metric not in SHORT_NAMES:
        raise ValueError(f'metric: unknown {metric!r}; valid choices: {", ".join(SHORT_NAMES)}')
    _, _, thr, area, _ = SUMMARY[SHORT_NAMES.index(metric)]
    base = Params()
    a = base.area_labels.index(area)
    return Params(iou_thresholds=base.iou_thresholds if thr is None else (thr,),
                  area_ranges=(base.area_ranges[a],), area_labels=(area,))


def _metric_value(gt, dets, metric, params):
    return evaluate_coco(gt, dets, params).summary()[metric]


def bootstrap_values(gt, detections, metric='AP50', num_samples=1000, seed=0):
    """The metric on ``num_samples`` bootstrap resamples of the test images, shape [num_samples].

    Resample s draws ``len(images)`` image indices with replacement, row s of
    ``np.random.default_rng(seed).integers(0, num_images, size=(num_samples, num_images))``, and is
    evaluated as ``resample_images`` builds it (a twice-drawn image counts twice). A resample where the
    metric is undefined (no ground truth in its area range) gives -1, as pycocotools does.

    The images are matched once (``coco.evaluate_images``): matching stays within an image, so a resample
    only changes how often each image occurs, and is re-accumulated from those multiplicities
    (``coco.summary_values``), with exactly the value of evaluating ``resample_images``' set (tested).
    """
    params = _metric_params(metric)
    gt = load_ground_truth(gt)
    dets = load_detections(detections, gt)
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f'num_samples: must be a positive integer, got {num_samples!r}')
    num_images = gt.image_ids.size
    if num_images == 0:
        raise ValueError('gt: no images to resample')
    draws = np.random.default_rng(seed).integers(0, num_images, size=(int(num_samples), num_images))
    multiplicity = np.stack([np.bincount(d, minlength=num_images) for d in draws])
    return summary_values(evaluate_images(gt, dets, params), multiplicity, metric)


def bootstrap_ci(gt, detections, metric='AP50', num_samples=1000, seed=0, level=0.95):
    """(value, low, high): a COCO metric of the whole test set and its percentile bootstrap interval.

    ``gt`` / ``detections``: paths, loaded COCO JSON, or the objects ``cocojson.load_ground_truth`` /
    ``load_detections`` return; ``metric``: a short name of ``CocoEvaluation.summary()`` ('AP', 'AP50',
    'AP75', 'APs', ..., 'ARl'). The value is ``evaluate_coco(gt, detections).summary()[metric]``
    (pycocotools-identical); low/high are the (1 - level)/2 and (1 + level)/2 percentiles (NumPy's linear
    interpolation) of ``bootstrap_values`` over the resamples where the metric is defined (not -1).
    Raises ValueError when the metric is undefined on the whole set or on every resample.

    Cost: the images are matched once; each resample is only re-accumulated (see ``bootstrap_values``),
    vectorised over resamples, for the metric's IoU threshold(s), area range and max-dets only. Measured on
    2 CPU cores shared with other jobs (load ~1.5), ``make_dataset(250, 100, 6, 0)`` of
    experiments/bench_coco_eval.py (250 images, 1779 objects, 25 000 detections, 6 categories), 1000
    resamples: AP50 0.4 s, AP 1.2 s; evaluating every resample afresh, as before, took 20 s and 22 s for
    the same values. Reproduce from the repository root, in Python::

        import time
        from experiments.bench_coco_eval import make_dataset
        gt, dets = make_dataset(250, 100, 6, 0)
        t = time.perf_counter(); bootstrap_values(gt, dets, 'AP', 1000); print(time.perf_counter() - t)
    """
    _check_level(level)
    params = _metric_params(metric)
    gt = load_ground_truth(gt)
    dets = load_detections(detections, gt)
    value = _metric_value(gt, dets, metric, params)
    if value == -1:
        raise ValueError(f'metric: {metric} is undefined on this set (no ground truth in its area range)')
    return (float(value), *bootstrap_interval(bootstrap_values(gt, dets, metric, num_samples, seed), level))


def bootstrap_interval(values, level=0.95):
    """(low, high): the percentile interval of ``bootstrap_values`` output, shape [num_samples], or of the
    mean over seeds of several, shape [num_seeds, num_samples].

    Several seeds' values on the same resamples (same test set, same bootstrap seed) average per resample,
    which bootstraps the seed-mean over test images: the interval of the number a multi-seed table shows.
    Resamples where the metric is undefined (-1) in any seed are left out.
    """
    _check_level(level)
    values = np.asarray(values, np.float64)
    if values.ndim not in (1, 2) or values.shape[-1] == 0:
        raise ValueError(f'values: expected shape [num_samples] or [num_seeds, num_samples], got {values.shape}')
    values = values.reshape(-1, values.shape[-1])
    values = values[:, (values != -1).all(0)].mean(0)
    if values.size == 0:
        raise ValueError('values: the metric is undefined on every bootstrap resample')
    low, high = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(low), float(high)


def _check_level(level):
    if not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f'level: must lie in (0, 1), got {level!r}')


# ----------------------------------------------------------------------------------------------------------
# Gap closed, domain gap, forgetting.

def _finite(name, x):
    """float64 array of finite numbers, else a one-line ValueError naming the argument (and the first bad entry)."""
    try:
        arr = np.asarray(x)
        if arr.dtype.kind not in 'biuf':
            raise TypeError
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        got = repr(x) if x is None or np.isscalar(x) else type(x).__name__
        raise ValueError(f'{name}: must be a number or an array of numbers, got {got}') from None
    if not np.isfinite(arr).all():
        where = '' if arr.ndim == 0 else f' at index {tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])}'
        raise ValueError(f'{name}: must be finite, got {float(arr[~np.isfinite(arr)][0])}{where}')
    return arr


def _out(arr):
    return float(arr) if arr.ndim == 0 else arr


def gap_closed(source_only, method, oracle):
    """Fraction of the source-only -> oracle gap a method closes on the target domain:
    ``(method - source_only) / (oracle - source_only)``; 1 = as good as the oracle, 0 = no better than
    source-only, < 0 = worse, > 1 = better than the oracle.

    When ``oracle <= source_only`` there is no gap to close and the ratio means nothing: the result is NaN
    (element-wise for arrays; no error, so a report table can show it as n/a). Arguments broadcast.
    """
    s, m, o = _finite('source_only', source_only), _finite('method', method), _finite('oracle', oracle)
    gap = o - s
    with np.errstate(divide='ignore', invalid='ignore'):
        out = np.where(gap > 0, (m - s) / np.where(gap > 0, gap, 1.0), np.nan)
    return _out(out)


def domain_gap(source_day, method_night):
    """Domain gap: score on the source (day) domain minus the score on the target (night) domain,
    ``source_day - method_night`` (positive: worse at night). Arguments broadcast."""
    return _out(_finite('source_day', source_day) - _finite('method_night', method_night))


def forgetting(before, after):
    """Catastrophic forgetting on the source domain: ``before - after``, the day score before adaptation
    minus the day score after it (positive: forgotten; negative: the source improved). Arguments broadcast."""
    return _out(_finite('before', before) - _finite('after', after))


# ----------------------------------------------------------------------------------------------------------
# Transfer matrix metrics.

def transfer_matrix_metrics(R, b=None):
    """ACC, BWT, FWT of a sequential run from R[i, j] = score on task j after training on tasks 0..i.

    Tasks are domains (e.g. day -> dusk -> night, N = 3); ``b[j]`` is the score of the initial model (before
    any training stage; GEM: random initialisation) on task j. GEM (Lopez-Paz & Ranzato 2017, Sec. 2), the
    keys asked for in reports:
      ACC = 1/N       sum_{j=0}^{N-1} R[N-1, j]
      BWT = 1/(N-1)   sum_{j=0}^{N-2} (R[N-1, j] - R[j, j])     (negative: forgetting)
      FWT = 1/(N-1)   sum_{j=1}^{N-1} (R[j-1, j] - b[j])
    Diaz-Rodriguez et al. 2018 average over the whole triangle instead:
      ACC_DR = sum_{i>=j} R[i, j] / (N(N+1)/2)
      BWT_DR = sum_{i>j} (R[i, j] - R[j, j]) / (N(N-1)/2)
      FWT_DR = sum_{i<j} R[i, j] / (N(N-1)/2)   (as published: no baseline subtracted)
    BWT, FWT, BWT_DR, FWT_DR are NaN for N = 1 (empty means); FWT is NaN when ``b`` is None.
    """
    R = _finite('R', R)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f'R: must be a non-empty square matrix [N, N], got shape {R.shape}')
    n = R.shape[0]
    if b is not None:
        b = _finite('b', b)
        if b.shape != (n,):
            raise ValueError(f'b: must have shape ({n},) to match R, got {b.shape}')
    diag = np.diag(R)
    lower, upper = np.tril_indices(n, -1), np.triu_indices(n, 1)
    nan = float('nan')
    return {
        'ACC': float(R[-1].mean()),
        'BWT': float(np.mean(R[-1, :-1] - diag[:-1])) if n > 1 else nan,
        'FWT': float(np.mean(R[np.arange(n - 1), np.arange(1, n)] - b[1:])) if n > 1 and b is not None else nan,
        'ACC_DR': float(R[np.tril_indices(n)].mean()),
        'BWT_DR': float(np.mean(R[lower] - diag[lower[1]])) if n > 1 else nan,
        'FWT_DR': float(R[upper].mean()) if n > 1 else nan,
    }


# ----------------------------------------------------------------------------------------------------------
# Proxy A-distance.

def _features(name, x):
    x = _finite(name, x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f'{name}: must be a [num_samples >= 2, num_features] array, got shape {x.shape}')
    return x


def domain_classifier_error(features_a, features_b, seed=0, ridge=1.0):
    """Held-out error of a linear classifier telling domain a (+1) from domain b (-1) features.

    Protocol: pool ``[features_a; features_b]`` (labels +1 / -1 in that order), standardise every feature
    by the pooled mean and standard deviation (a constant feature is only centred), split with
    ``perm = np.random.default_rng(seed).permutation(n)``: ``perm[:n // 2]`` train, ``perm[n // 2:]`` test.
    Classifier: closed-form ridge regression of the +-1 labels on the features plus an unpenalised bias,
    ``min_w |X w - y|^2 + ridge |w_features|^2`` (deterministic, no step size or convergence to tune);
    a test point is called domain a when ``x . w > 0``. Returns the fraction of test points called wrong.
    """
    a, b = _features('features_a', features_a), _features('features_b', features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f'features: domains differ in feature size, {a.shape[1]} vs {b.shape[1]}')
    if not np.isfinite(ridge) or ridge < 0:
        raise ValueError(f'ridge: must be a finite number >= 0, got {ridge!r}')
    x = np.concatenate([a, b])
    y = np.r_[np.ones(len(a)), -np.ones(len(b))]
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    perm = np.random.default_rng(seed).permutation(len(x))
    train, test = perm[:len(x) // 2], perm[len(x) // 2:]
    d = x.shape[1]
    penalty = np.sqrt(ridge) * np.eye(d)[:-1]  # rows sqrt(ridge) e_k for the features, none for the bias
    w = np.linalg.lstsq(np.concatenate([x[train], penalty]), np.r_[y[train], np.zeros(d - 1)], rcond=None)[0]
    pred = np.where(x[test] @ w > 0, 1.0, -1.0)
    return float(np.mean(pred != y[test]))


def proxy_a_distance(features_a, features_b, seed=0, ridge=1.0):
    """Ben-David et al.'s proxy A-distance ``2 (1 - 2 err)``, clipped to [0, 2]; ``err`` is
    ``domain_classifier_error(features_a, features_b, seed, ridge)`` (see there for the protocol).
    ~0: the domains are indistinguishable to a linear classifier; 2: perfectly separable."""
    err = domain_classifier_error(features_a, features_b, seed, ridge)
    return float(np.clip(2.0 * (1.0 - 2.0 * err), 0.0, 2.0))
