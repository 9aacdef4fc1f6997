"""The UNIT trainer: unpaired night <-> day translation (domain a = source/day, b = target/night).

`from_config(config)` resolves what an experiments/configs/unit_*.py preset trains with, once: the frozen
networks its loss terms read (adapt.trainers.unit_judge); experiments/train_unit.py and the Day2Night
protocol both start there. `Trainer.train(builder_a, builder_b, workdir)` runs `train_loop` on the UNIT
step (adapt.trainers.unit_step) over the two-domain data (adapt.trainers.unit_data): resume, NaN guard,
checkpoints, logs and image grids (adapt.trainers.unit_grids); it returns the final state. Scoring the
translations is adapt.evaluation.translation_eval's.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax

from adapt.losses.gan import DEFAULT_WEIGHTS
from adapt.models.unit import UNITConfig, init_params
from adapt.runs import write_run
from adapt.trainers.unit_data import grid_samples, make_data_iterator
from adapt.trainers.unit_grids import make_grid_fn
from adapt.trainers.unit_judge import FrozenDetector, check_detector, frozen_networks
from adapt.trainers.unit_step import make_train_step
from adapt.training import MultiTrainState, train_loop
from adapt.training.config import image_size, loop_config, optimizer
from adapt.training.parallel import to_host


def model_config(config) -> UNITConfig:
    return UNITConfig.from_mapping(config.model)


def loss_weights(config) -> dict:
    return {**DEFAULT_WEIGHTS, **dict(config.loss.weights)}


def init_state(config) -> MultiTrainState:
    params = jax.device_get(init_params(model_config(config), jax.random.PRNGKey(config.seed), image_size(config)))
    tx = optimizer(config)
    return MultiTrainState.create(params, {'gen': tx, 'disc': tx}, rng=config.seed)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """A UNIT config with the frozen networks its terms read: `features` (a FrozenFeatures) for the feature
    loss, `detector` for the detection-aware terms (None where no term reads one). ValueError (one line)
    for a detector that does not judge frames of the size UNIT trains on."""
    config: Any
    features: Any = None
    detector: FrozenDetector | None = None

    def __post_init__(self):
        if self.detector is not None:
            check_detector(self.config, self.detector)

    def step(self):
        """The per-device train step (run it with adapt.training.data_parallel)."""
        c = self.config
        return make_train_step(model_config(c), loss_weights(c), c.loss.gan_kind, self.features, c.loss.feature_kind,
                               detector=self.detector, crop_size=c.get('crop_size', 0))

    def train(self, builder_a, builder_b, workdir, *, mesh=None, data_iterator=None, print_fn=None, data_dir=None,
              on_step=None):
        """Train (or resume) UNIT in `workdir` (run.json written first); returns the final replicated state.
        `on_step(step)` runs after every step (see train_loop). Raises NonFiniteError."""
        config = self.config
        write_run(workdir, 'unit', config, data_dir=data_dir, judge=self.detector.source if self.detector else None)
        grids = make_grid_fn(model_config(config))
        samples = grid_samples(config, builder_a, builder_b) if config.image_every else None
        image_fn = (lambda state, _: grids(to_host(state.params['gen']), *samples)) if samples is not None else None
        data = data_iterator or make_data_iterator(config, builder_a, builder_b,
                                                   labelled=loss_weights(config)['labelled_cycle'] > 0)
        try:
            return train_loop(init_state(config), self.step(), data, config.num_steps, workdir,
                              loop_config(config, print_fn), mesh=mesh, image_fn=image_fn,
                              meta={'method': 'unit', 'split_a': config.split_a, 'split_b': config.split_b},
                              on_step=on_step)
        finally:
            if data_iterator is None:
                data.close()


def from_config(config) -> Trainer:
    """The trainer of a UNIT preset, its frozen networks loaded from the runs the config names; ValueError
    (one line) for a missing or misfit run."""
    return Trainer(config, *frozen_networks(config))
