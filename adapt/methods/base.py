"""A method = weighted loss terms over a step context, plus optional hooks; methods are looked up by name.

`Method` fields:
  supervised: the domains whose labels train the detector ('source'; 'target' for the oracle). A method
    that lists 'target' uses target labels; for every other method the target batch reaches the step
    without them (see adapt.datasets.two_domain).
  losses: its default adaptation losses as 'name:weight,...' (`config.adaptation_losses` replaces them).
  init_aux(variables) -> aux: state that is checkpointed but not optimised (a frozen model, a teacher).
  after_update(state) -> state: runs after every optimizer update (e.g. a teacher's EMA).
  transform_batch(batch, key) -> batch: runs first in every step (e.g. strong augmentation of a view).
  teacher(state) -> variables: a model whose outputs (no gradient) the context carries as
    `ctx.teacher_outputs[domain]` and `ctx.teacher_features[domain]`.
  own_target_labels: the target labels the step sees are made by the method (the model's own detections,
    or source labels carried over to translated source images): it supervises 'target' without ever
    reading a true target label.
  fit(run) -> state: the method schedules its own training (e.g. rounds) from an
    `adapt.trainers.detection.TrainRun`; default: one loop of num_steps.
  configure(config) -> Method: the method with the settings of its config block bound into its hooks and
    `hparams`; raises ValueError (one line) for bad settings.
  hparams: {loss name: {hparam: value}}, defaults of its losses' hyper-parameters under
    `config.adaptation_hparams`.
  strong_views: the domains whose batches carry a strong view `image_strong` for this method (besides the
    config's `strong_augment.domains`); the trained model sees it, a teacher the weak view `image`.
  evaluate_teacher: the teacher is a trained model of its own (an EMA teacher): evaluated beside the student.
  param_groups: (regex, lr multiplier) pairs on the optimizer's parameter paths ('detector/...'), placed
    before the config's own (first match wins); multiplier 0 freezes the parameters and their BatchNorm
    statistics.
  reinit: regex of 'detector/...' variable paths freshly initialised instead of taken from init_run /
    init_from (a new head); '' = none.
  target_data(source_builder, target_builder) -> TrainData: the target training examples it selects or
    makes (N labelled images of `target_split`, translated source images) instead of the whole
    `target_split`; its settings are bound by `configure`.
  prepare(config, source_builder, target_builder, print_fn) -> config: rewrites the run's config before
    anything is built (e.g. wraps the detector in a frozen input transform whose statistics it takes from
    source frames); run.json stores the result, so a loaded run rebuilds the same detector.
  unit_run_setting: the config setting through which it reads a finished UNIT run ('translator', or
    'shared_latent.unit_run' for the shared_latent detector's encoders); '' = none. The protocol points it
    at its own UNIT stage's run.
  trains_detector: False for a method that takes no optimizer step (it changes or wraps init_run's detector).
  pseudo_threshold(config) -> float: a self-training method's score threshold for a pseudo-label; every
    evaluation then logs the pseudo-labels it would make on each evaluation split (per image, precision,
    recall: adapt.evaluation.pseudo_labels); None = not a self-training method.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable

import jax

from adapt.losses.adaptation import AdaptationLoss, get_loss
from adapt.registry import Registry, RegistryError, parse_weighted

METHODS = Registry('method')
DOMAINS = ('source', 'target')


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    description: str
    supervised: tuple = ('source',)
    losses: str = ''
    init_aux: Callable | None = None
    after_update: Callable | None = None
    transform_batch: Callable | None = None
    teacher: Callable | None = None
    own_target_labels: bool = False
    fit: Callable | None = None
    configure: Callable | None = None
    hparams: dict = dataclasses.field(default_factory=dict)
    strong_views: tuple = ()
    evaluate_teacher: bool = False
    param_groups: tuple = ()
    reinit: str = ''
    target_data: Callable | None = None
    prepare: Callable | None = None
    unit_run_setting: str = ''
    trains_detector: bool = True
    pseudo_threshold: Callable | None = None

    @property
    def uses_target_labels(self) -> bool:
        return 'target' in self.supervised and not self.own_target_labels


def register_method(method: Method) -> Method:
    return METHODS.register(method.name)(method)


@dataclasses.dataclass(frozen=True)
class TrainData:
    """One domain's training examples: `examples` and `split` as DetectionPipeline takes them (a builder and
    a split, or a tf.data.Dataset and None); `num_examples` distinct ones (the samples the run stores);
    `record`: what run.json keeps about them."""
    examples: Any
    split: str | None
    num_examples: int
    record: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StepContext:
    """What a loss term sees in one step (on this device's shard; see `adapt.training.parallel.global_mean` for
    batch statistics).

    source / target: the batches ({'image', and 'boxes', 'labels', 'mask' where labels are allowed});
    <domain>_outputs / <domain>_features: the trained detector's pass (None where no active term needs
    it); progress: training progress in [0, 1] (before this update); key: this step's PRNG key;
    teacher_outputs / teacher_features: {domain: ...} when the method has a teacher; aux: the aux state.
    """
    detector: Any
    source: dict | None = None
    target: dict | None = None
    source_outputs: Any = None
    source_features: Any = None
    target_outputs: Any = None
    target_features: Any = None
    progress: Any = 0.0
    key: Any = None
    teacher_outputs: dict = dataclasses.field(default_factory=dict)
    teacher_features: dict = dataclasses.field(default_factory=dict)
    aux: Any = None
    axis_name: str | None = None

    def loss_key(self, name: str):
        """The key of one detector-loss call of this step (`name`: its domain or term), for the families
        that sample anchors or RoIs; None where the context has no key."""
        if self.key is None:
            return None
        return jax.random.fold_in(self.key, zlib.crc32(name.encode()) & 0x7fffffff)


@dataclasses.dataclass(frozen=True)
class Term:
    """One weighted loss term: `value(ctx, params) -> (scalar, metrics)`, reading `domains`."""
    name: str
    weight: float
    loss: AdaptationLoss
    hparams: dict

    @property
    def domains(self):
        return self.loss.domains

    @property
    def has_params(self):
        return self.loss.init is not None

    def value(self, ctx, params=None):
        if self.has_params:
            return self.loss.fn(ctx, params, **self.hparams)
        return self.loss.fn(ctx, **self.hparams)


def _detection(domain):
    def detection_loss(ctx):
        outputs = getattr(ctx, f'{domain}_outputs')
        return ctx.detector.loss(outputs, getattr(ctx, domain), ctx.axis_name, ctx.loss_key(domain))
    return AdaptationLoss(detection_loss, domains=(domain,))


def resolve_terms(method: Method, adaptation_losses: str = '', hparams=None) -> list[Term]:
    """The method's terms: a detection loss (weight 1) per supervised domain, then the adaptation losses
    ('name:weight,...'; empty: the method's defaults) with their hyper-parameters from `hparams[name]` over
    `method.hparams[name]`.
    Raises RegistryError (one line) for a malformed list or an unknown loss."""
    hparams = dict(hparams or {})
    terms = [Term(f'detection_{d}', 1.0, _detection(d), {}) for d in method.supervised]
    for name, weight in parse_weighted(adaptation_losses or method.losses, 'adaptation loss'):
        terms.append(Term(name, weight, get_loss(name), {**method.hparams.get(name, {}), **hparams.get(name, {})}))
    return terms


def get_method(name: str) -> Method:
    method = METHODS.get(name)
    if not isinstance(method, Method):
        raise RegistryError(f'method {name!r} is not an adapt.methods.Method')
    return method
