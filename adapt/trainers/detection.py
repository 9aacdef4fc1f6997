"""Train any method on any detector: initial state, two-domain data, the generic step, evaluation, run files.

`train(config, source_builder, target_builder, workdir)` is what experiments/train_detector.py (the
source-only method), experiments/adapt_detector.py and the Day2Night protocol run: everything a run trains
with is resolved from the config inside it (`setup`), so it is this trainer's `from_config`. The config is an
experiments/configs preset: `detector` + its block, `method`, `adaptation_losses` ('name:weight,...'; empty:
the method's defaults), `adaptation_hparams` ({loss name: {hparam: value}}), `dataset` / `train_split`
(labelled source), `target_dataset` (empty: `dataset`) / `target_split`, `ema_decay` (0: off; on, the EMA is
what is evaluated), `bn_policy` (adapt.methods.step: source | frozen | joint; frozen builds the model with
frozen BatchNorm), `strong_augment` (the strong view `image_strong` of the `domains` listed, and of the
method's own `strong_views`), `init_run` (a finished detector run to start from) and `init_from` (a Keras
backbone file).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapt.datasets.augment import AugmentConfig, StrongAugmentConfig
from adapt.datasets.pipeline import DetectionPipeline
from adapt.datasets.two_domain import TRAIN_FIELDS, ZipIterator
from adapt.evaluation.detector_eval import Evaluator, class_names, ema_variables, state_variables
from adapt.methods.base import DOMAINS, StepContext, TrainData, get_method, resolve_terms
from adapt.methods.step import active_domains, check_bn_policy, make_step, where_path
from adapt.models.families import missing_settings, with_data_settings, with_frozen_bn
from adapt.run_models import build_detector
from adapt.runs import load_run, read_run, write_run
from adapt.training import TrainState, make_mesh, to_host, train_loop
from adapt.training.config import image_size, loop_config, optimizer_config
from adapt.training.optim import OptimizerConfig, make_optimizer
from adapt.training.metrics_log import MetricsWriter


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a config resolves to: the detector, the method and its loss terms; `strong`: the domains whose
    batches carry a strong view."""
    detector: object
    method: object
    terms: list

    frozen: tuple = ()
    strong: tuple = ()
    bn_policy: str = 'source'

    @property
    def domains(self):
        return active_domains(self.terms)

    def step(self, config):
        """The generic train step of this setup (run it with adapt.training.data_parallel)."""
        return make_step(self.detector, self.method, self.terms, config.num_steps, config.ema_decay,
                         frozen=self.frozen, bn_policy=self.bn_policy)


def setup(config, num_classes) -> Setup:
    """Detector, method and terms of a config; RegistryError (one line) for a bad name or loss list,
    ValueError for bad method settings."""
    method = get_method(config.method)
    if method.configure is not None:
        method = method.configure(config)
    terms = resolve_terms(method, config.adaptation_losses, config.adaptation_hparams.to_dict())
    policy = check_bn_policy(config.get('bn_policy', 'source'))
    detector = build_detector(with_frozen_bn(config) if policy == 'frozen' else config, num_classes)
    frozen = tuple(str(p) for p, m in optimizer_settings(config, method, detector).param_groups if float(m) == 0.0)
    return Setup(detector, method, terms, frozen, strong_domains(config, method), policy)


def optimizer_settings(config, method, detector) -> OptimizerConfig:
    """The preset's optimizer with the method's own parameter groups and the detector's frozen parameters
    first (first match wins)."""
    settings = optimizer_config(config)
    groups = tuple((str(p), float(m)) for p, m in method.param_groups) + tuple(
        (p, 0.0) for p in detector.frozen_params)
    return dataclasses.replace(settings, param_groups=groups + settings.param_groups)


def strong_domains(config, method) -> tuple:
    """The domains with a strong view: `strong_augment.domains` ('source,target') and the method's own;
    ValueError (one line) for an unknown domain or bad strong_augment settings."""
    names = {x.strip() for x in config.get('strong_augment', {}).get('domains', '').split(',') if x.strip()}
    if names - set(DOMAINS):
        raise ValueError(f'strong_augment.domains: unknown {", ".join(sorted(names - set(DOMAINS)))}; '
                         f'valid choices: {", ".join(DOMAINS)}')
    domains = tuple(d for d in DOMAINS if d in names or d in method.strong_views)
    if domains:
        strong_augment(config)  # its settings are checked before anything runs
    return domains


def strong_augment(config) -> StrongAugmentConfig:
    return StrongAugmentConfig(**{k: v for k, v in config.strong_augment.items() if k != 'domains'})


def _check_same_tree(what, fresh, loaded):
    if jax.tree.structure(fresh) != jax.tree.structure(loaded) or any(
            np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(loaded))):
        raise ValueError(f'{what} does not match this config\'s detector (family, backbone, width, classes)')


def initial_variables(config, detector, reinit=''):
    """Fresh variables, with the Keras backbone of `init_from` or every weight of `init_run` when set;
    those whose 'detector/<path>' matches `reinit` stay fresh (a new head on a loaded backbone). `init_run`'s
    variables go through `detector.from_saved` first: a run made by an earlier version of the family (a dense
    family's burn-in with the instance projections removed since) continues with what the family has now."""
    # An 'rbg' key: the same numbers on every run, and the init program compiles ~3x faster on CPU than
    # with threefry (one RngBitGenerator op per initializer instead of an unrolled hash).
    key = jax.random.key(config.seed, impl='rbg')
    loaded = load_run(config.init_run, 'detector').variables() if config.get('init_run') else None
    # Every variable from init_run: the fresh ones' shapes suffice (traced, not compiled: seconds a stage).
    fresh = jax.eval_shape(detector.init, key) if loaded is not None and not reinit else jax.device_get(
        detector.init(key))
    fresh = {'params': fresh['params'], 'batch_stats': fresh.get('batch_stats', {})}
    if loaded is not None:
        loaded = jax.tree.map(np.asarray, detector.from_saved(loaded))
        _check_same_tree(f'init_run {config.init_run}', fresh, loaded)
        return reinitialised(loaded, fresh, reinit) if reinit else loaded
    variables = fresh
    if config.get('init_from'):
        from adapt.models.keras_import import load_backbone_checkpoint
        for collection, tree in load_backbone_checkpoint(config.init_from).items():
            try:
                variables = detector.with_backbone(variables, collection, jax.tree.map(np.asarray, tree))
            except ValueError as error:
                raise ValueError(f'{config.init_from}: {error}') from None
    return variables


def reinitialised(loaded, fresh, pattern):
    """`loaded` variables ({collection: tree}) with the `fresh` ones wherever 'detector/<path>' matches."""
    return {c: where_path((pattern,), fresh[c], tree) for c, tree in loaded.items()}


def init_state(config, s: Setup) -> TrainState:
    """TrainState at step 0: detector variables, the loss terms' parameters, aux (EMA, method state)."""
    variables = initial_variables(config, s.detector, s.method.reinit)
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
    return TrainState.create({'detector': variables['params'], 'adaptation': extra},
                             make_optimizer(optimizer_settings(config, s.method, s.detector)),
                             rng=config.seed, batch_stats=variables['batch_stats'], aux=aux)


def train_pipeline(config, builder, split, seed, strong=False, labelled=True):
    """Training batches of one domain; with `strong`, each also carries its strong view `image_strong`;
    not `labelled`, its boxes and labels are never read (box-free crop: the batches depend on the images alone)."""
    return DetectionPipeline(builder, split=split, global_batch_size=config.batch_size,
                             image_size=image_size(config), max_boxes=config.max_boxes, train=True, seed=seed,
                             augment=AugmentConfig(**config.augment),
                             strong_augment=strong_augment(config) if strong else None, labelled=labelled)


def whole_split(builder, split) -> TrainData:
    """Every example of a TFDS split (the default training data of a domain)."""
    return TrainData(builder, split, builder.info.splits[split].num_examples)


def train_data(config, s: Setup, source_builder, target_builder) -> dict:
    """{domain: TrainData} of the domains the step reads: the whole `train_split` of the source; the
    target's `target_split`, or the examples the method selects from it (`Method.target_data`).
    ValueError (one line) for a selection the split cannot give."""
    data = {}
    if 'source' in s.domains:
        data['source'] = whole_split(source_builder, config.train_split)
    if 'target' in s.domains:
        data['target'] = (s.method.target_data(source_builder, target_builder) if s.method.target_data
                          else whole_split(target_builder, config.target_split))
    return data


def data_iterator(config, s: Setup, source_builder, target_builder, data=None) -> ZipIterator:
    """Batches of the domains the method reads, `batch_size` each, with the same augmentation (and strong
    views where `s.strong` says); the target's labels are read (and kept) only for a method that declares
    it uses them, or for a method with its own target labels, whose target `data` are the examples it made
    (never a TFDS split, which would carry the true labels: such a method must pass them). `data`:
    `train_data` (computed when not given)."""
    if s.method.own_target_labels and 'target' in s.domains and (not data or data['target'].split is not None):
        # a TFDS split here would carry the true target labels into the step
        raise ValueError(f'method {s.method.name!r} makes its own target labels: pass the target data it made')
    data = data or train_data(config, s, source_builder, target_builder)
    pipelines, fields = {}, {}
    strong = lambda domain: ('image_strong',) * (domain in s.strong)  # noqa: E731
    if 'source' in s.domains:
        pipelines['source'] = train_pipeline(config, data['source'].examples, data['source'].split, config.seed,
                                             'source' in s.strong)
        fields['source'] = TRAIN_FIELDS + strong('source')
    if 'target' in s.domains:
        labelled = s.method.uses_target_labels or s.method.own_target_labels
        pipelines['target'] = train_pipeline(config, data['target'].examples, data['target'].split, config.seed + 1,
                                             'target' in s.strong, labelled)
        fields['target'] = (TRAIN_FIELDS if labelled else ('image',)) + strong('target')
    return ZipIterator(pipelines, fields)


def eval_splits(config, source_builder, target_builder) -> dict:
    """{split: builder}: `eval_splits` of the source dataset, `target_eval_splits` of the target's."""
    names = lambda text: [x.strip() for x in text.split(',') if x.strip()]  # noqa: E731
    splits = {name: source_builder for name in names(config.eval_splits)}
    splits.update({name: target_builder for name in names(config.get('target_eval_splits', ''))})
    return splits


def evaluated_models(config, method) -> dict:
    """{name: variables_fn} of the models evaluated: the trained model ('model'; its EMA 'ema' when
    `ema_decay` is on), named 'student' beside the 'teacher' of a method that trains one."""
    if config.ema_decay:
        models = {'ema': ema_variables}
    else:
        models = {'student' if method.evaluate_teacher else 'model': state_variables}
    return {**models, 'teacher': method.teacher} if method.evaluate_teacher else models


def run_record(config, s: Setup, source_builder, data_dir=None, data=None) -> dict:
    """What run.json says about a detector run besides its config; with `data` (`train_data`), the samples
    each domain stores (`samples`) and what its selection records (e.g. fine_tune's `labelled_target`)."""
    data = data or {}
    stored = {'samples': {d: t.num_examples for d, t in data.items()}} if data else {}
    return dict(**stored, **{k: v for t in data.values() for k, v in t.record.items()},
                method=s.method.name, uses_target_labels=s.method.uses_target_labels,
                terms={t.name: t.weight for t in s.terms}, evaluated=','.join(evaluated_models(config, s.method)),
                strong_views=list(s.strong), class_names=list(class_names(source_builder)), data_dir=data_dir)


@dataclasses.dataclass(frozen=True)
class TrainRun:
    """The pieces of one training run, for `Method.fit` (a method that schedules its own training, e.g.
    in rounds): `loop(state, data, until_step)` trains with the run's step, checkpoints and evaluation."""
    config: Any
    setup: Setup
    source_builder: Any
    target_builder: Any
    workdir: str
    mesh: Any
    evaluator: Evaluator
    loop_config: Any
    on_step: Any = None
    train_data: dict | None = None    # `train_data` of the run (computed when not given)

    def initial_state(self):
        """The state before the first step: init_run's (or fresh) weights, the method's aux state."""
        return init_state(self.config, self.setup)

    def data(self, train_data: dict | None = None) -> ZipIterator:
        """Batches of `train_data` ({domain: TrainData}; the run's own when None), see `data_iterator`."""
        return data_iterator(self.config, self.setup, self.source_builder, self.target_builder,
                             train_data or self.train_data)

    def loop(self, state, data, until_step: int, evaluate: bool = True):
        """train_loop up to `until_step` (resuming from the workdir's checkpoint); with `evaluate`, evaluates
        on `config.eval_every` and at `until_step`."""
        return train_loop(state, self.setup.step(self.config), data, until_step, self.workdir, self.loop_config,
                          mesh=self.mesh, eval_fn=self.evaluator if evaluate else None,
                          image_fn=self.evaluator.images if evaluate and self.loop_config.image_every else None,
                          meta={'method': self.setup.method.name, 'detector': self.config.detector},
                          on_step=self.on_step)


def fit(run: TrainRun):
    """The default schedule: one loop of `num_steps` over the method's data."""
    data = run.data()
    try:
        return run.loop(run.initial_state(), data, run.config.num_steps)
    finally:
        data.close()


def _init_config(config):
    """The run.json config of `init_run` when the data-derived settings need it (None otherwise)."""
    if not (config.get('init_run') and missing_settings(config)):
        return None
    return read_run(config.init_run, 'detector')['config']


def train(config, source_builder, target_builder=None, workdir='', *, data_dir=None, on_step=None, print_fn=None):
    """Train (or resume) in `workdir`, then evaluate the final model(s); returns {label: metrics} (label: the
    split, or '<model>/<split>' when several models are evaluated, see `evaluated_models`).
    `on_step(step)` runs after every step (see train_loop). The family's data-derived settings left None
    are filled first (adapt.models.families) and stored in run.json. Raises NonFiniteError on a NaN/Inf."""
    target_builder = target_builder or source_builder
    method = get_method(config.method)
    if method.prepare is not None and method.configure is not None:
        method.configure(config)  # its settings are checked (one-line errors) before any data is read
    config = with_data_settings(config, source_builder, _init_config(config), print_fn or print)
    if method.prepare is not None:
        config = method.prepare(config, source_builder, target_builder, print_fn or print)
    s = setup(config, len(class_names(source_builder)))
    data = train_data(config, s, source_builder, target_builder)
    record = write_run(workdir, 'detector', config, **run_record(config, s, source_builder, data_dir, data))
    mesh = make_mesh()
    evaluator = Evaluator(config, None, s.detector, eval_splits(config, source_builder, target_builder), mesh,
                          variables_fn=evaluated_models(config, s.method),
                          pseudo_threshold=s.method.pseudo_threshold(config) if s.method.pseudo_threshold else None)
    run = TrainRun(config, s, source_builder, target_builder, workdir, mesh, evaluator,
                   loop_config(config, print_fn), on_step, data)
    state = (s.method.fit or fit)(run)
    step = int(to_host(state.step))  # num_steps, or 0 for a method that trains nothing
    evaluator(state, step)
    writer = MetricsWriter(workdir, tensorboard=config.tensorboard)
    try:
        evaluator.write(workdir, step, writer, method=s.method.name, evaluated=record['evaluated'],
                        uses_target_labels=record['uses_target_labels'])
    finally:
        writer.close()
    return evaluator.summary()
