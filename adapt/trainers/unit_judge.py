"""The frozen networks UNIT training reads besides its own: when each is needed, loading it, checking it fits.

The frozen day detector (the judge of the detection-aware terms, adapt.losses.detection_aware) is needed
exactly when a term it computes has a positive weight (`needs_detector`): the one place that rule is
written, for the step, the trainer, train_unit and the Day2Night protocol. The feature loss reads the
backbone of a detector run (`needs_features`).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import numpy as np

from adapt.losses.gan import DEFAULT_WEIGHTS
from adapt.run_models import detector_features, run_detector
from adapt.runs import load_run
from adapt.training.config import image_size

# The loss weights whose terms the frozen detector computes.
DETECTOR_TERMS = ('semantic', 'labelled_cycle')


@dataclasses.dataclass(frozen=True)
class FrozenDetector:
    """A trained detector (adapt.models.detector interface) and its variables, held constant: the
    detection-aware terms' judge. `source`: where it came from."""
    detector: object
    variables: object
    source: str = ''


def _weight(weights: Mapping, name: str) -> float:
    return float(weights.get(name, DEFAULT_WEIGHTS[name]))


def needs_detector(weights: Mapping) -> bool:
    """Whether loss weights (a config's `loss.weights`, defaults filled in or not) switch on a term of the
    frozen day detector."""
    return any(_weight(weights, name) > 0 for name in DETECTOR_TERMS)


def needs_features(weights: Mapping) -> bool:
    """Whether loss weights switch on the feature loss (a frozen detector backbone)."""
    return _weight(weights, 'feature') > 0


def frozen_detector(workdir: str) -> FrozenDetector:
    """The detector of the finished detector run in `workdir` (its latest checkpoint)."""
    run = load_run(workdir, 'detector')
    return FrozenDetector(run_detector(run), jax.tree.map(np.asarray, run.variables()), f'{workdir} step {run.step}')


def check_detector(config, detector: FrozenDetector) -> None:
    """ValueError (one line) unless the frozen detector judges frames of the size UNIT trains on."""
    size, crop_size = tuple(image_size(config)), config.get('crop_size', 0)
    if tuple(detector.detector.image_size) != size:
        raise ValueError(f'the detector ({detector.source}) takes {detector.detector.image_size[0]}x'
                         f'{detector.detector.image_size[1]} frames and UNIT trains on {size[0]}x{size[1]}: set '
                         f'image_size to the detector\'s (and crop_size for cheaper steps)')
    if crop_size and crop_size > min(size):
        raise ValueError(f'crop_size {crop_size} is larger than the {size[0]}x{size[1]} images')


def check_sources(loss) -> None:
    """ValueError (one line) unless a config's `loss` block names the runs its frozen networks come from."""
    if needs_features(loss.weights) and not (loss.feature_backbone or loss.detector_run):
        raise ValueError('the feature loss (config.loss.weights.feature > 0) needs --config.loss.feature_backbone='
                         '<a train_detector workdir> (or loss.detector_run)')
    if needs_detector(loss.weights) and not loss.detector_run:
        raise ValueError('the semantic and labelled-cycle losses need --config.loss.detector_run=<a '
                         'train_detector workdir> (the frozen day detector)')


def frozen_networks(config):
    """(features, detector) of a UNIT config: the feature loss's frozen backbone and the frozen day
    detector, each None when no term reads it; ValueError (one line) when the config names no run."""
    loss = config.loss
    check_sources(loss)
    features = detector = None
    if needs_features(loss.weights):
        features = detector_features(loss.feature_backbone or loss.detector_run, loss.feature_levels)
    if needs_detector(loss.weights):
        detector = frozen_detector(loss.detector_run)
    return features, detector
