"""The Day2Night protocol as a stage graph: data -> source-only burn-in -> detection-aware UNIT -> every method
continued from the burn-in -> a sequential day -> dusk -> night run -> evaluation -> report.

Validity is built in, not left to convention:
- training stages read train and validation splits only (`check_no_test_split` on every training config);
  test splits are read by the evaluation stages alone (adapt.protocol.evaluation);
- every method, source_only and oracle included, continues the same burn-in with the same steps, schedule,
  augmentation and EMA setting (`method_config`); unsupervised methods get no target labels (the trainer's
  data iterator drops them, tests/test_methods.py);
- every row reports the last checkpoint; the checkpoint chosen on labelled target validation is evaluated
  apart and reported in its own, named column (oracle selection).
"""
from __future__ import annotations

import os
import time

import ml_collections

from adapt.protocol.spec import (Domain, domains, extra_methods, needs_unit, row_method, severity_config,
                                 severity_methods, swept_levels)
from adapt.protocol.stages import Stage, expand_seeds, seed_name

LOG_FILE = 'log.txt'


def method_names(config) -> list:
    """The methods to run (`methods`, '' = every registered one and every extra one); ValueError (one line)
    for an unknown name or a bad extra method."""
    import adapt.methods  # noqa: F401  (registers the built-in methods)
    from adapt.methods.base import METHODS, get_method, resolve_terms
    extras = extra_methods(config)
    for name, losses in extras.items():
        if name in METHODS:
            raise ValueError(f'extra_methods: {name!r} is a registered method; name the row otherwise')
        resolve_terms(get_method('source_only'), losses, config.burn_in.adaptation_hparams.to_dict())
    known = METHODS.names() + list(extras)
    wanted = [m.strip() for m in config.methods.split(',') if m.strip()] or known
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise ValueError(f'unknown method {unknown[0]!r}; valid choices: {", ".join(known)}')
    return list(dict.fromkeys(wanted))


def check_no_test_split(config, test_splits) -> None:
    """ValueError unless a training config reads no test split (for training or for validation)."""
    read = [config.train_split, config.target_split] + [
        s.strip() for s in f'{config.eval_splits},{config.get("target_eval_splits", "")}'.split(',') if s.strip()]
    leaked = sorted({s for s in read if s.split('[')[0] in test_splits})
    if leaked:
        raise ValueError(f'a training stage would read the test split(s) {", ".join(leaked)}')


def _copy(config):
    return ml_collections.ConfigDict(config.to_dict())


def training_config(config, *, source: Domain, target: Domain, num_steps: int, seed: int):
    """The burn-in preset reading `source` (labelled) and `target` (unlabelled unless the method uses its
    labels), validated on both domains' validation splits only."""
    c = _copy(config.burn_in)
    c.seed = seed
    c.dataset, c.train_split = source.dataset, source.train
    c.target_dataset = '' if target.dataset == source.dataset else target.dataset
    c.target_split = target.train
    c.eval_splits = source.validation
    c.target_eval_splits = target.validation
    c.num_steps = num_steps
    return c


def method_config(config, method: str, seed: int, burn_in: str, unit: str):
    """One method continued from the burn-in run `burn_in` (`unit`: the translator run of the methods that
    read one); every method gets the same `adapt` schedule (steps, batch, lr, warm-up, EMA, BatchNorm
    policy), validated on the target at its middle and its end (for the oracle-selected column alone)."""
    d = domains(config)
    a = config.adapt
    c = training_config(config, source=d[config.source], target=d[config.target], num_steps=a.num_steps, seed=seed)
    extras = extra_methods(config)
    c.method = 'source_only' if method in extras else method
    c.adaptation_losses = extras.get(method, c.adaptation_losses)
    c.batch_size = a.batch_size
    c.eval_splits = ''  # validated on the target alone: only the oracle-selected column reads it
    c.lr = a.lr
    c.optimizer.warmup_steps = a.warmup_steps
    c.ema_decay = a.ema_decay
    c.bn_policy = a.bn_policy
    c.eval_every = c.checkpoint_every = max(a.num_steps // 2, 1)
    c.keep = 2
    c.init_run = burn_in
    c.mean_teacher.decay = a.mean_teacher_decay
    c.pseudo_label.rounds = a.pseudo_label_rounds
    c.pseudo_label.steps_per_round = a.num_steps // a.pseudo_label_rounds
    c.fine_tune.num_labelled = a.num_labelled
    setting = row_method(config, method).unit_run_setting
    if setting:
        *parents, key = setting.split('.')
        block = c
        for name in parents:
            block = block[name]
        block[key] = unit
    if method == 'shared_latent':  # a fresh head on the UNIT encoders: no burn-in weights fit it
        c.detector, c.init_run = 'shared_latent', ''
    return c


def unit_config(config, seed: int, burn_in: str):
    d = domains(config)
    c = _copy(config.unit)
    c.seed = seed
    c.dataset_a, c.split_a = d[config.source].dataset, d[config.source].train
    c.dataset_b, c.split_b = d[config.target].dataset, d[config.target].train
    c.eval_dataset = ''  # the paired split is not part of the protocol
    c.loss.detector_run = burn_in
    return c


class Builders:
    """TFDS builders by dataset name, made once per process."""

    def __init__(self, data_dir=None):
        self.data_dir, self._builders = data_dir, {}

    def __call__(self, name):
        if name not in self._builders:
            import tensorflow_datasets as tfds
            import adapt.datasets  # noqa: F401  (registers daynight_synth, bdd100k)
            self._builders[name] = tfds.builder(name, data_dir=self.data_dir)
        return self._builders[name]


def _logged(ctx):
    """print_fn for a stage's library calls: lines go to <stage workdir>/log.txt, not the console."""
    path = os.path.join(ctx.workdir, LOG_FILE)

    def write(line):
        with open(path, 'a') as f:
            f.write(f'{line}\n')
    return write


def _progress(ctx, total, unit='steps'):
    return lambda step: ctx.progress(step, total, unit=unit)


# --- stages ---------------------------------------------------------------------------------------------

def _prepare(ctx, builders, doms, manual_dir) -> dict:
    """Prepares the datasets of `doms` {name: Domain} and returns the frame count of every split they read."""
    import tensorflow_datasets as tfds
    counts = {}
    for dom in doms.values():
        builder = builders(dom.dataset)
        if not builder.is_prepared():
            ctx.print_fn(f'  preparing {builder.info.full_name} in {builder.data_dir} ...')
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        for role in ('train', 'validation', 'test'):
            split = getattr(dom, role)
            if split.split('[')[0] not in builder.info.splits:
                raise ValueError(f'{builder.info.full_name} has no split {split!r} ({dom.name} {role}); '
                                 f'it has {", ".join(sorted(builder.info.splits))}')
            counts[f'{dom.name}/{role}'] = {'dataset': builder.info.full_name, 'split': split,
                                            'count': int(builder.info.splits[split].num_examples)}
            ctx.print_fn(f"  {dom.name} {role}: {builder.info.full_name} {split}, "
                         f"{counts[f'{dom.name}/{role}']['count']:,} frames")
    return {'splits': counts}


def _data_headline(result):
    return ', '.join(f"{k} {v['count']}" for k, v in result['splits'].items() if k.endswith('/test'))


def data_stage(config, builders, manual_dir=None) -> Stage:
    """Prepares every dataset (procedural builders generate theirs; BDD100K reads `manual_dir`) and records
    the frame count of every split the protocol reads."""
    d = domains(config)
    settings = {'domains': config.domains.to_dict(), 'manual_dir': manual_dir or ''}
    return Stage('data', settings, run=lambda ctx: _prepare(ctx, builders, d, manual_dir), headline=_data_headline)


def severity_data_stage(config, builders, level) -> Stage:
    """The night of a swept severity level, prepared apart so that sweeping leaves every other stage as it is."""
    dom, name = severity_config(config, level).domains[config.target].to_dict(), f'{config.target}_sev{level}'
    return Stage(f'data/severity{level}', {'domain': dom},
                 run=lambda ctx: _prepare(ctx, builders, {name: Domain(name, **dom)}, None), headline=_data_headline)


def _train_detector(ctx, c, builders, test_splits):
    from adapt.trainers.detection import train
    check_no_test_split(c, test_splits)
    source = builders(c.dataset)
    target = builders(c.target_dataset) if c.target_dataset else source
    start, finished, progress = time.time(), [], _progress(ctx, c.num_steps)

    def on_step(step):
        finished.append(time.time())
        progress(step)
    summary = train(c, source, target, ctx.workdir, data_dir=builders.data_dir, on_step=on_step,
                    print_fn=_logged(ctx))
    seconds = time.time() - start
    return {'validation': summary, 'seconds': seconds, 'num_steps': c.num_steps,
            'step_seconds': _step_seconds(finished), 'steps_run': len(finished)}


def _step_seconds(finished) -> float:
    """Seconds of the steps run, from the times they finished: the first step's (its compilation inside) is
    taken as the mean of the others'; the rest of a stage is set-up, compilation and evaluation."""
    if len(finished) < 2:
        return 0.0
    return (finished[-1] - finished[0]) * len(finished) / (len(finished) - 1)


def _headline(result):
    cells = [f"{k} AP50 {v['AP50']:.3f}" for k, v in result['validation'].items() if 'AP50' in v]
    if result.get('steps_run'):
        cells.append(f"{result['steps_run']} steps {result['step_seconds']:.0f} s, other "
                     f"{result['seconds'] - result['step_seconds']:.0f} s")
    return ', '.join(cells)


def seed_stages(config, builders, methods, seed) -> list:
    """The stages of one seed (named without the seed; `expand_seeds` adds it)."""
    d = domains(config)
    tests = {dom.test.split('[')[0] for dom in d.values()}
    src, mid, tgt = d[config.source], d[config.intermediate], d[config.target]
    sn = lambda name: seed_name(name, seed)  # noqa: E731  (a dep's workdir key in ctx.dep_workdirs)
    stages = []

    burn = training_config(config, source=src, target=tgt, num_steps=config.burn_in.num_steps, seed=seed)
    stages.append(Stage('burn_in', {'config': burn.to_dict()}, deps=('data',), headline=_headline,
                        run=lambda ctx: _train_detector(ctx, burn, builders, tests)))

    stages += adaptation_stages(config, builders, methods, seed)
    if seed == 0:  # the severity sweep: one seed, every level's rows continuing the same burn-in
        for level in swept_levels(config):
            stages += adaptation_stages(severity_config(config, level), builders, severity_methods(config, methods),
                                        seed, prefix=f'severity{level}/', data=(f'data/severity{level}',))

    # Sequential labelled training day -> dusk -> night: the R[i, j] matrix of backward / forward transfer
    # (sequential_steps 0: not run).
    previous = 'burn_in'
    for dom in (mid, tgt) if config.sequential_steps else ():
        c = training_config(config, source=dom, target=dom, num_steps=config.sequential_steps, seed=seed)
        c.update(dict(lr=config.adapt.lr, batch_size=config.adapt.batch_size, eval_every=0,
                      checkpoint_every=config.sequential_steps))
        c.optimizer.warmup_steps = config.adapt.warmup_steps

        def run_seq(ctx, c=c, previous=previous):
            c = _copy(c)
            c.init_run = ctx.dep_workdirs[sn(previous)]
            return _train_detector(ctx, c, builders, tests)
        name = f'sequential/{dom.name}'
        stages.append(Stage(name, {'config': c.to_dict()}, deps=(previous,), run=run_seq, headline=_headline))
        previous = name
    stages.extend(evaluation_stages(config, builders, ['burn_in'] + [
        f'sequential/{n}' for n in (config.intermediate, config.target) if config.sequential_steps], seed, full=False))
    return stages


def adaptation_stages(config, builders, methods, seed, prefix='', data=()) -> list:
    """The UNIT stage (where a method reads it), every method continued from the burn-in, and their evaluations,
    named `<prefix><name>` (the severity sweep's levels: 'severity<k>/', each with its data stage in `data`).
    The burn-in is the one stage shared by every prefix."""
    tests = {dom.test.split('[')[0] for dom in domains(config).values()}
    sn = lambda name: seed_name(name, seed)  # noqa: E731  (a dep's workdir key in ctx.dep_workdirs)
    stages = []

    def run_unit(ctx):
        from adapt.trainers import unit
        c = unit_config(config, seed, ctx.dep_workdirs[sn('burn_in')])
        start = time.time()
        unit.from_config(c).train(builders(c.dataset_a), builders(c.dataset_b), ctx.workdir,
                                  data_dir=builders.data_dir, print_fn=_logged(ctx),
                                  on_step=_progress(ctx, c.num_steps))
        return {'num_steps': c.num_steps, 'seconds': time.time() - start}

    if any(needs_unit(config, m) for m in methods):  # no method reads a translator: no UNIT stage
        stages.append(Stage(f'{prefix}unit', {'config': unit_config(config, seed, '').to_dict()},
                            deps=('burn_in', *data), run=run_unit))

    for method in methods:
        deps = ('burn_in', f'{prefix}unit', *data) if needs_unit(config, method) else ('burn_in', *data)
        settings = {'config': method_config(config, method, seed, '', '').to_dict()}

        def run_method(ctx, method=method):
            c = method_config(config, method, seed, ctx.dep_workdirs[sn('burn_in')],
                              ctx.dep_workdirs.get(sn(f'{prefix}unit'), ''))
            return _train_detector(ctx, c, builders, tests)
        stages.append(Stage(f'{prefix}method/{method}', settings, deps=deps, run=run_method, headline=_headline))
    # The sweep's levels evaluate the source and target tests alone, without the methods' full extras.
    return stages + evaluation_stages(config, builders, [f'{prefix}method/{m}' for m in methods], seed,
                                      full=not prefix, only=(config.source, config.target) if prefix else None)


def evaluation_stages(config, builders, runs, seed, *, full, only=None) -> list:
    """One evaluation stage per evaluated run: the methods (`full`: intervals, curves, features, costs,
    examples), the burn-in (the 'before' of forgetting and row 0 of R) and the sequential runs (R's other
    rows), on every domain or on the domains named in `only`."""
    from adapt.protocol import evaluation
    d = domains(config)
    d = {name: d[name] for name in only} if only else d
    settings = {'domains': {name: config.domains[name].to_dict() for name in d},
                'bootstrap_samples': config.bootstrap_samples,
                'feature_images': config.feature_images, 'frame_sizes': config.frame_sizes,
                'num_examples': config.num_examples, 'target': config.target, 'version': 2}
    stages = []
    for run_name in runs:
        def run(ctx, run_name=run_name):
            return evaluation.evaluate_run(ctx, ctx.dep_workdirs[seed_name(run_name, seed)], d, config, builders,
                                           full=full)
        stages.append(Stage(f'evaluate/{run_name}', settings, deps=(run_name,), run=run,
                            headline=evaluation.headline))
    return stages


def build_stages(config, *, data_dir=None, manual_dir=None, builders=None) -> list:
    """Every stage of the protocol for `config.seeds` seeds, the report last."""
    from adapt.protocol import report
    builders = builders or Builders(data_dir)
    methods = method_names(config)
    seeds = list(range(config.seeds))
    stages = [data_stage(config, builders, manual_dir)]
    stages += [severity_data_stage(config, builders, level) for level in swept_levels(config)]
    stages += expand_seeds(lambda seed: seed_stages(config, builders, methods, seed), seeds)
    stages.append(report.report_stage(config, methods, seeds, [s.name for s in stages]))
    return stages
