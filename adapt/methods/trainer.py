"""Train any method on any detector: initial state, two-domain data, the generic step, evaluation, run files.

`train(config, source_builder, target_builder, workdir)` is what experiments/train_detector.py (the
source-only method) and experiments/adapt_detector.py run. The config is an experiments/configs preset:
`detector` + its block, `method`, `adaptation_losses` ('name:weight,...'; empty: the method's defaults),
`adaptation_hparams` ({loss name: {hparam: value}}), `dataset` / `train_split` (labelled source),
`target_dataset` (empty: `dataset`) / `target_split`, `ema_decay` (0: off; on, the EMA is what is
evaluated), `init_run` (a finished detector run to start from) and `init_from` (a Keras backbone file).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from adapt.datasets.augment import AugmentConfig
from adapt.datasets.pipeline import DetectionPipeline
from adapt.datasets.two_domain import TRAIN_FIELDS, ZipIterator
from adapt.evaluation.detector_eval import Evaluator, class_names, ema_variables, state_variables
from adapt.methods.base import StepContext, get_method, resolve_terms
from adapt.methods.step import active_domains, make_step
from adapt.models.detector import build_detector
from adapt.runs import load_run, write_run
from adapt.training import TrainState, make_mesh, train_loop
from adapt.training.config import image_size, loop_config, optimizer, optimizer_config
from adapt.training.metrics_log import MetricsWriter


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a config resolves to: the detector, the method and its loss terms."""
    detector: object
    method: object
    terms: list

    frozen: tuple = ()

    @property
    def domains(self):
        return active_domains(self.terms)

    def step(self, config):
        """The generic train step of this setup (run it with adapt.training.data_parallel)."""
        return make_step(self.detector, self.method, self.terms, config.num_steps, config.ema_decay,
                         frozen=self.frozen)


def setup(config, num_classes) -> Setup:
    """Detector, method and terms of a config; RegistryError (one line) for a bad name or loss list."""
    method = get_method(config.method)
    terms = resolve_terms(method, config.adaptation_losses, config.adaptation_hparams.to_dict())
    frozen = tuple(str(p) for p, m in optimizer_config(config).param_groups if float(m) == 0.0)
    return Setup(build_detector(config, num_classes), method, terms, frozen)


def _check_same_tree(what, fresh, loaded):
    if jax.tree.structure(fresh) != jax.tree.structure(loaded) or any(
            np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(loaded))):
        raise ValueError(f'{what} does not match this config\'s detector (family, backbone, width, classes)')


def initial_variables(config, detector):
    """Fresh variables, with the Keras backbone of `init_from` or every weight of `init_run` when set."""
    # An 'rbg' key: the same numbers on every run, and the init program compiles ~3x faster on CPU than
    # with threefry (one RngBitGenerator op per initializer instead of an unrolled hash).
    variables = jax.device_get(detector.init(jax.random.key(config.seed, impl='rbg')))
    variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
    if config.get('init_from'):
        from adapt.models.keras_import import load_backbone_checkpoint
        for collection, tree in load_backbone_checkpoint(config.init_from).items():
            try:
                variables = detector.with_backbone(variables, collection, jax.tree.map(np.asarray, tree))
            except ValueError as error:
                raise ValueError(f'{config.init_from}: {error}') from None
    if config.get('init_run'):
        loaded = load_run(config.init_run, 'detector').variables()
        _check_same_tree(f'init_run {config.init_run}', variables, loaded)
        variables = jax.tree.map(np.asarray, loaded)
    return variables


def init_state(config, s: Setup) -> TrainState:
    """TrainState at step 0: detector variables, the loss terms' parameters, aux (EMA, method state)."""
    variables = initial_variables(config, s.detector)
    dummy = jnp.zeros((1, *s.detector.image_size, 3), jnp.float32)
    _, features, _ = jax.eval_shape(lambda v: s.detector.apply(v, dummy), variables)
    ctx = StepContext(s.detector, source_features=features, target_features=features)
    key = jax.random.PRNGKey(config.seed + 1)
    extra = {t.name: jax.device_get(t.loss.init(jax.random.fold_in(key, i), ctx, **t.hparams))
             for i, t in enumerate(s.terms) if t.has_params and t.weight != 0}
    aux = {}
    if config.ema_decay:
        aux['ema'] = jax.tree.map(np.copy, variables)
    if s.method.init_aux is not None:
        aux['method'] = s.method.init_aux(variables)
    return TrainState.create({'detector': variables['params'], 'adaptation': extra}, optimizer(config),
                             rng=config.seed, batch_stats=variables['batch_stats'], aux=aux)


def train_pipeline(config, builder, split, seed):
    return DetectionPipeline(builder, split=split, global_batch_size=config.batch_size,
                             image_size=image_size(config), max_boxes=config.max_boxes, train=True, seed=seed,
                             augment=AugmentConfig(**config.augment))


def data_iterator(config, s: Setup, source_builder, target_builder) -> ZipIterator:
    """Batches of the domains the method reads, `batch_size` each, with the same augmentation; the
    target keeps its labels only for a method that declares it uses them."""
    pipelines, fields = {}, {}
    if 'source' in s.domains:
        pipelines['source'] = train_pipeline(config, source_builder, config.train_split, config.seed)
        fields['source'] = TRAIN_FIELDS
    if 'target' in s.domains:
        pipelines['target'] = train_pipeline(config, target_builder, config.target_split, config.seed + 1)
        fields['target'] = TRAIN_FIELDS if s.method.uses_target_labels else ('image',)
    return ZipIterator(pipelines, fields)


def eval_splits(config, source_builder, target_builder) -> dict:
    """{split: builder}: `eval_splits` of the source dataset, `target_eval_splits` of the target's."""
    names = lambda text: [x.strip() for x in text.split(',') if x.strip()]  # noqa: E731
    splits = {name: source_builder for name in names(config.eval_splits)}
    splits.update({name: target_builder for name in names(config.get('target_eval_splits', ''))})
    return splits


def run_record(config, s: Setup, source_builder, data_dir=None) -> dict:
    """What run.json says about a detector run besides its config."""
    return dict(method=s.method.name, uses_target_labels=s.method.uses_target_labels,
                terms={t.name: t.weight for t in s.terms}, evaluated='ema' if config.ema_decay else 'model',
                class_names=list(class_names(source_builder)), data_dir=data_dir)


def train(config, source_builder, target_builder=None, workdir='', *, data_dir=None, on_step=None, print_fn=None):
    """Train (or resume) in `workdir`, then evaluate the final model; returns {split: metrics}.
    `on_step(step)` runs after every step (see train_loop). Raises NonFiniteError on a NaN/Inf."""
    target_builder = target_builder or source_builder
    s = setup(config, len(class_names(source_builder)))
    record = write_run(workdir, 'detector', config, **run_record(config, s, source_builder, data_dir))
    mesh = make_mesh()
    evaluator = Evaluator(config, None, s.detector, eval_splits(config, source_builder, target_builder), mesh,
                          variables_fn=ema_variables if config.ema_decay else state_variables)
    loop = loop_config(config, print_fn)
    data = data_iterator(config, s, source_builder, target_builder)
    try:
        state = train_loop(init_state(config, s), s.step(config), data, config.num_steps, workdir, loop, mesh=mesh, eval_fn=evaluator,
                           image_fn=evaluator.images if loop.image_every else None,
                           meta={'method': s.method.name, 'detector': config.detector}, on_step=on_step)
    finally:
        data.close()
    evaluator(state, config.num_steps)
    writer = MetricsWriter(workdir, tensorboard=config.tensorboard)
    try:
        evaluator.write(workdir, config.num_steps, writer, method=s.method.name, evaluated=record['evaluated'],
                        uses_target_labels=record['uses_target_labels'])
    finally:
        writer.close()
    return evaluator.summary()
