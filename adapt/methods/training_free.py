"""Methods that adapt without training the detector: online translation and the simple baselines it must beat.

online_translation: Day2Night; every frame goes night -> day through the frozen generator of
  `config.translator` (a train_unit run) in front of the frozen detector of `init_run`.
gamma / histeq: every frame gamma-corrected / histogram-matched to the luminance statistics of the day
  frames of `config.translated.stats_split` (a labelled source split that is not a test split:
  validation_day by default), in front of the frozen detector.
adabn: the detector's BatchNorm statistics recomputed on the unlabelled target training images
  (the first `config.adabn.num_images`; 0 = all of `target_split`).
None of them reads a target label or takes an optimizer step: `fit` saves the resulting model as the
run's step-0 checkpoint, which is evaluated and loaded like any other run. The first three wrap the
detector in the `translated` family (adapt.models.translated) through `prepare`, so run.json records
the transform and its statistics.
"""
from __future__ import annotations

import numpy as np

from adapt.methods.base import Method, register_method


def wrapped(config, transform: str, **settings):
    """`config` (a copy) with its detector wrapped in the `translated` family with `transform`."""
    if config.detector == 'translated':
        raise ValueError('the detector is already wrapped (detector=translated): name the plain family')
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.translated.detector = config.detector
        config.translated.transform = transform
        for key, value in settings.items():
            config.translated[key] = value
        config.detector = 'translated'
    return config


def _frames(config, builder, split):
    """Eval-pipeline batches of `split` at the detector's input size (the first `eval_examples` if set)."""
    from adapt.evaluation.detector_eval import eval_pipeline
    return eval_pipeline(config, builder, split)


def _day_statistics(config, source_builder, print_fn):
    from adapt.models.input_transforms import luminance_statistics
    split = config.translated.stats_split
    pipeline = _frames(config, source_builder, split)
    stats = luminance_statistics(b['image'][np.asarray(b['valid'], bool)] for b in pipeline)
    print_fn(f'luminance statistics of {split}: mean {stats["mean"]:.3f}')
    return stats


def prepare_gamma(config, source_builder, target_builder, print_fn=print):
    return wrapped(config, 'gamma', target_mean=_day_statistics(config, source_builder, print_fn)['mean'])


def prepare_histeq(config, source_builder, target_builder, print_fn=print):
    return wrapped(config, 'histeq', target_cdf=tuple(_day_statistics(config, source_builder, print_fn)['cdf']))


def prepare_translation(config, source_builder, target_builder, print_fn=print):
    from adapt.run_models import load_generator
    step = load_generator(config.translator, config.translated.get('unit_step')).step
    print_fn(f'online translation: night -> day by {config.translator} at step {step}')
    return wrapped(config, 'unit', unit_run=config.translator, unit_step=step)


def fit_untrained(run, update=None):
    """`Method.fit` of a method that trains nothing: init_run's model (changed by `update(variables, run)`
    when given), saved as the step-0 checkpoint; a saved one is reused (the same command resumes)."""
    import os

    from adapt.training.checkpoint import Checkpointer
    state = run.initial_state()
    ckpt = Checkpointer(os.path.join(run.workdir, 'checkpoints'), run.loop_config.keep)
    try:
        restored = ckpt.restore(state)
        if restored is not None:
            return restored[0]
        if update is not None:
            variables = update({'params': state.params['detector'], 'batch_stats': state.batch_stats}, run)
            state = state.replace(batch_stats=variables['batch_stats'],
                                  params={**state.params, 'detector': variables['params']})
        ckpt.save(0, state, {'method': run.setup.method.name, 'step': 0})
    finally:
        ckpt.close()
    return state


def adabn_update(variables, run):
    from adapt.models.adabn import adapted_statistics
    config = run.config
    split = config.target_split
    if config.adabn.num_images:
        split = f'{split}[:{config.adabn.num_images}]'
    eval_config = config.copy_and_resolve_references()
    with eval_config.unlocked():
        eval_config.eval_examples = 0
    print_fn = run.loop_config.print_fn or (lambda line: None)
    return adapted_statistics(run.setup.detector, variables, _frames(eval_config, run.target_builder, split),
                              run.mesh, print_fn)


def fit_adabn(run):
    return fit_untrained(run, adabn_update)


def check_settings(config, name: str):
    """ValueError (one line) unless the run has what `name` needs: a detector run to start from (and a
    translator for online_translation)."""
    from adapt.runs import RunError, read_run
    if not config.get('init_run'):
        raise ValueError(f'{name} trains nothing: it needs --config.init_run=<a finished detector run>')
    if name == 'online_translation':
        if not config.get('translator'):
            raise ValueError('online_translation needs --config.translator=<a finished train_unit workdir>')
        try:
            read_run(config.translator, 'unit')
        except RunError as error:
            raise ValueError(f'translator: {error}') from None


def untrained(name: str, description: str, **hooks) -> Method:
    """A method that trains nothing (`fit_untrained` unless `hooks` say otherwise); its settings are checked
    when the run is set up."""
    def configure(config):
        check_settings(config, name)
        return method
    method = Method(name, description, supervised=(), trains_detector=False,
                    **{'fit': fit_untrained, 'configure': configure, **hooks})
    return register_method(method)


untrained('online_translation', 'night -> day translation of every frame by a frozen UNIT generator in front '
          'of the frozen detector (Day2Night)', prepare=prepare_translation, unit_run_setting='translator')
untrained('gamma', 'gamma correction of every frame to the day mean luminance, frozen detector',
          prepare=prepare_gamma)
untrained('histeq', 'histogram matching of every frame to the day luminance histogram, frozen detector',
          prepare=prepare_histeq)
untrained('adabn', 'BatchNorm statistics recomputed on unlabelled target images (AdaBN)', fit=fit_adabn)
