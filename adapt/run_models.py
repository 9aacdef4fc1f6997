"""The models of runs on disk: a detector run's detector and backbone features, a UNIT run's generator, and
any detector config built with the UNIT run it names.

adapt.runs reads and writes runs and builds nothing; adapt.models builds detectors and never reads the run
store. This module joins the two, so evaluation, inference, the trainers and the scripts get a run's
models in one call.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from adapt.models.families import build_detector as build_family, generator_source
from adapt.models.frozen_features import FrozenFeatures, from_detector
from adapt.models.unit import Generator, UNITConfig
from adapt.runs import Run, load_run


@functools.lru_cache(maxsize=4)
def load_generator(workdir: str, step: int | None = None) -> Generator:
    """The generator of the UNIT run in `workdir` at checkpoint `step` (None: the latest), parameters as
    NumPy arrays; RunError (one line) when it is not a finished UNIT run. Kept for the last few runs: the
    translator of a protocol is read by several builds."""
    return run_generator(load_run(workdir, 'unit', step))


def run_generator(run: Run) -> Generator:
    """The generator of a loaded UNIT run."""
    return Generator(UNITConfig.from_mapping(run.record['config']['model']),
                     jax.tree.map(np.asarray, run.state['params']['gen']), run.step)


def build_detector(config, num_classes: int):
    """The config's detector (adapt.models.families.build_detector), with the generator of the UNIT run it
    names loaded from disk; ValueError (one line) when that setting is empty."""
    source = generator_source(config)
    if source is None:
        return build_family(config, num_classes)
    setting, workdir, step = source
    if not workdir:
        raise ValueError(f'{setting} is empty: set it to a finished train_unit workdir')
    return build_family(config, num_classes, load_generator(workdir, step))


def run_detector(run: Run):
    """The detector of a loaded detector run (its family, settings, image size and classes)."""
    return build_detector(run.config, len(run.class_names))


def detector_features(workdir: str, levels=('C3', 'C4'), step: int | None = None) -> FrozenFeatures:
    """The backbone of the detector run in `workdir` (at `step`; None: the latest) as frozen features."""
    run = load_run(workdir, 'detector', step)
    return from_detector(run_detector(run), run.variables(), levels, f'detector {workdir} step {run.step}')
