"""How far apart two rows of a results table are, and what difference the table can resolve at all.

Two rows evaluated on the same test images are compared on the same bootstrap resamples (the same test set
and bootstrap seed give the same draws, `adapt.evaluation.transfer.bootstrap_values`): the difference per
resample keeps what the images share (a hard test set is hard for both rows), so its interval is much
narrower than the two rows' own intervals suggest. Several seeds pair by index and average per resample: the
interval of the seed-mean difference. Seed noise is a second source of error that resampling images cannot
see: `minimum_detectable_difference` gives the smallest seed-mean difference a paired t-test at the run's
seeds detects, from the seed standard deviation of the rows.
"""
from __future__ import annotations

import numpy as np
from scipy import stats  # a dependency of jax


def paired_difference_interval(values, baseline, level=0.95):
    """(low, high): the percentile interval of the per-resample difference `values` - `baseline`, each shape
    [num_samples] or [num_seeds, num_samples] on the same resamples (seeds paired by index, averaged per
    resample). Resamples where either row is undefined (-1) in any seed are left out."""
    if not 0 < level < 1:
        raise ValueError(f'level: must lie in (0, 1), got {level!r}')
    values, baseline = (np.asarray(v, np.float64) for v in (values, baseline))
    values, baseline = values.reshape(-1, values.shape[-1]), baseline.reshape(-1, baseline.shape[-1])
    if values.shape != baseline.shape or values.shape[-1] == 0:
        raise ValueError(f'values {values.shape} and baseline {baseline.shape}: expected the same seeds and resamples')
    defined = (values != -1).all(0) & (baseline != -1).all(0)
    if not defined.any():
        raise ValueError('the metric is undefined on every bootstrap resample')
    difference = (values[:, defined] - baseline[:, defined]).mean(0)
    low, high = np.percentile(difference, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(low), float(high)


def minimum_detectable_difference(seed_std, num_seeds, alpha=0.05, power=0.8):
    """The smallest true difference of two rows' seed means that a two-sided paired t-test at `alpha` finds
    with probability `power`: (t[1 - alpha/2, n-1] + t[power, n-1]) x sqrt(2) x seed_std / sqrt(n), the
    difference of two independent seeds having standard deviation sqrt(2) x seed_std. None with fewer
    than two seeds (seed noise unmeasured) or no standard deviation."""
    if seed_std is None or num_seeds < 2:
        return None
    dof = num_seeds - 1
    quantiles = stats.t.ppf(1 - alpha / 2, dof) + stats.t.ppf(power, dof)
    return float(quantiles * np.sqrt(2.0) * seed_std / np.sqrt(num_seeds))


def pooled_std(stds):
    """The root mean square of the rows' seed standard deviations (each over the same number of seeds);
    None when there is none."""
    stds = [s for s in stds if s is not None]
    return float(np.sqrt(np.mean(np.square(stds)))) if stds else None
