"""Paired comparisons (adapt.evaluation.paired) against t-table values and hand-computed percentiles."""
import numpy as np
import pytest

from adapt.evaluation.paired import minimum_detectable_difference, paired_difference_interval, pooled_std


@pytest.mark.parametrize('seeds,t_alpha,t_power', [(3, 4.3027, 1.0607), (5, 2.7764, 0.9410)])
def test_minimum_detectable_difference_against_the_t_table(seeds, t_alpha, t_power):
    want = (t_alpha + t_power) * np.sqrt(2) * 0.01 / np.sqrt(seeds)
    assert minimum_detectable_difference(0.01, seeds) == pytest.approx(want, rel=2e-4)
    assert minimum_detectable_difference(0.01, 1) is None and minimum_detectable_difference(None, 3) is None


def test_paired_interval_by_hand_and_its_errors():
    values = np.array([0.3, 0.5, 0.2, -1.0, 0.6])
    baseline = np.array([0.1, 0.4, 0.3, 0.2, 0.2])
    # defined resamples 0, 1, 2, 4: differences 0.2, 0.1, -0.1, 0.4; the 25th and 75th percentiles by linear
    # interpolation of the sorted -0.1, 0.1, 0.2, 0.4 at positions 0.75 and 2.25
    assert paired_difference_interval(values, baseline, level=0.5) == pytest.approx((0.05, 0.25))
    with pytest.raises(ValueError, match='same seeds and resamples'):
        paired_difference_interval(values, baseline[:4])
    with pytest.raises(ValueError, match='undefined on every'):
        paired_difference_interval(-np.ones(3), np.ones(3))
    assert pooled_std([0.3, None, 0.4]) == pytest.approx(np.sqrt((0.09 + 0.16) / 2)) and pooled_std([None]) is None
