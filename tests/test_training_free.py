"""Training-free adaptation (adapt.models.translated, adapt.models.adabn, adapt.methods.training_free)
against independent references (the input transforms themselves: tests/test_input_transforms.py):

- AdaBN's statistics of a two-BatchNorm Flax model against NumPy (padded rows ignored, each batch normalised
  by its own statistics), and on the tiny SSD: only the BatchNorm statistics change;
- the `translated` detector with the frozen UNIT generator = the inner detector on frames translated apart;
- the methods' `prepare` hooks (histeq's CDF against NumPy, online_translation's pinned step) and their
  one-line setting errors, raised before anything is computed;
- gamma and adabn end to end through trainer.train: run.json, the step-0 checkpoint, the loaded detector.
"""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.models import input_transforms as T
from adapt.models.adabn import adapted_statistics
from adapt.training.parallel import make_mesh
from tests.test_input_transforms import np_cdf, np_luminance


# ------------------------------------------------------------------------------------------------ 1. AdaBN
class _TwoBN(nn.Module):
    """1x1 conv -> BatchNorm -> relu -> 1x1 conv -> BatchNorm."""
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.BatchNorm(use_running_average=not train, name='bn1')(nn.Conv(5, (1, 1), name='conv1')(x))
        x = nn.Conv(4, (1, 1), name='conv2')(nn.relu(x))
        return nn.BatchNorm(use_running_average=not train, name='bn2')(x)


class _Detector:
    """What adapted_statistics reads of a Detector: `apply(variables, images, train=False)`."""
    module = _TwoBN()

    def apply(self, variables, images, train=False, labels=None):
        return self.module.apply(variables, images, train=train)


def _np_moments(h, valid):
    """Sum, sum of squares and count of the channels of h [B, H, W, C] over the valid rows."""
    rows = h[valid].reshape(-1, h.shape[-1])
    return rows.sum(0), (rows ** 2).sum(0), len(rows)


def _np_adabn(params, batches, per_batch=True):
    """NumPy AdaBN of _TwoBN: BN1's and BN2's (mean, var) pooled over the valid pixels of all batches, each
    batch normalised at BN1 by its own valid-row statistics (`per_batch`; else by the pooled ones)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    first, second = [], []
    for batch in batches:
        x, valid = np.asarray(batch['image'], np.float64), np.asarray(batch['valid'], bool)
        h1 = x @ p['conv1']['kernel'][0, 0] + p['conv1']['bias']
        if per_batch:
            s1, s2, n = _np_moments(h1, valid)
        else:
            s1, s2, n = map(sum, zip(*(_np_moments(np.asarray(b['image'], np.float64) @ p['conv1']['kernel'][0, 0]
                                                   + p['conv1']['bias'], np.asarray(b['valid'], bool))
                                       for b in batches)))
        mean, var = s1 / n, s2 / n - (s1 / n) ** 2
        y = np.maximum((h1 - mean) / np.sqrt(var + 1e-5) * p['bn1']['scale'] + p['bn1']['bias'], 0.0)
        h2 = y @ p['conv2']['kernel'][0, 0] + p['conv2']['bias']
        first.append((h1, valid))
        second.append((h2, valid))

    def pooled(parts):
        h = np.concatenate([h[v].reshape(-1, h.shape[-1]) for h, v in parts])
        return h.mean(0), h.var(0)
    return pooled(first), pooled(second)


def test_adabn_statistics_of_a_two_batchnorm_model_equal_numpy():
    rng = np.random.default_rng(3)
    module = _TwoBN()
    variables = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 4, 4, 3), np.float32))
    params = jax.tree.map(lambda a: rng.normal(0, 1, a.shape).astype(np.float32), variables['params'])
    stats = jax.tree.map(lambda a: rng.uniform(0.5, 2, a.shape).astype(np.float32), variables['batch_stats'])
    variables = {'params': params, 'batch_stats': stats}
    batches = [{'image': rng.uniform(0, 1, (4, 4, 4, 3)).astype(np.float32), 'valid': np.ones(4, bool)},
               {'image': rng.uniform(0, 1, (4, 4, 4, 3)).astype(np.float32), 'valid': np.array([1, 1, 1, 0], bool)}]
    batches[1]['image'][3] = 50.0 + 10 * batches[1]['image'][3]         # a padded row: must not count anywhere
    lines = []
    adapted = adapted_statistics(_Detector(), variables, batches, make_mesh(4), lines.append)
    (mean1, var1), (mean2, var2) = _np_adabn(params, batches)
    bs = adapted['batch_stats']
    np.testing.assert_allclose(bs['bn1']['mean'], mean1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bs['bn1']['var'], var1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bs['bn2']['mean'], mean2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bs['bn2']['var'], var2, rtol=1e-4, atol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, adapted['params'], params)   # the weights stay
    assert lines == ['adabn: statistics of 2 BatchNorm layers from 7 target images']
    # the checks tell the alternatives apart: counting the padded row, or normalising BN1 with the pooled
    # statistics, gives other numbers
    assert not np.allclose(_np_adabn(params, [dict(b, valid=np.ones(4, bool)) for b in batches])[0][0], mean1,
                           rtol=1e-2)
    (_, _), (pooled_mean2, pooled_var2) = _np_adabn(params, batches, per_batch=False)
    assert not (np.allclose(bs['bn2']['mean'], pooled_mean2, rtol=1e-3)
                and np.allclose(bs['bn2']['var'], pooled_var2, rtol=1e-3))
    with pytest.raises(ValueError, match='no target images'):
        adapted_statistics(_Detector(), variables, [dict(batches[0], valid=np.zeros(4, bool))], make_mesh(4))


def _leaves(tree):
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in paths}


def test_adabn_on_the_tiny_ssd_changes_every_batchnorm_statistic_and_no_weight(source_run):
    from adapt.run_models import run_detector
    from adapt.runs import load_run
    run = load_run(source_run[0], 'detector')
    detector, variables = run_detector(run), run.variables()
    rng = np.random.default_rng(4)
    size = tuple(detector.image_size)
    batches = [{'image': rng.uniform(0, 0.3, (4, *size, 3)).astype(np.float32), 'valid': np.array(v, bool)}
               for v in ([1, 1, 1, 1], [1, 1, 0, 0])]
    adapted = adapted_statistics(detector, variables, batches, make_mesh(4))
    before, after = _leaves(variables['batch_stats']), _leaves(adapted['batch_stats'])
    assert before.keys() == after.keys() and len(before) == 28               # 14 BatchNorm layers: mean, var
    for key, old in before.items():
        new = after[key]
        assert new.shape == old.shape and new.dtype == old.dtype and np.all(np.isfinite(new)), key
        assert not np.allclose(new, old), key
        if key.endswith("['var']"):
            assert np.all(new >= 0), key
    params = _leaves(adapted['params'])
    for key, old in _leaves(variables['params']).items():
        np.testing.assert_array_equal(params[key], old, err_msg=key)


# ---------------------------------------------------------------------------------------- 2. the wrapper
def test_translated_detector_equals_the_inner_detector_on_frames_translated_apart(source_run, unit_run):
    from adapt.models.inference import make_predict_fn
    from adapt.models.translated import TranslatedDetector
    from adapt.models.unit import make_translate_fn
    from adapt.run_models import build_detector, load_generator, run_detector
    from adapt.runs import load_run
    from adapt.training.parallel import shard_batch
    run = load_run(source_run[0], 'detector')
    config = run.config
    config.detector = 'translated'
    config.translated.update(dict(detector='ssd', transform='unit', unit_run=unit_run))
    wrapped = build_detector(config, len(run.class_names))
    inner, variables = run_detector(run), run.variables()
    assert isinstance(wrapped, TranslatedDetector) and wrapped.transform_name == 'unit'
    assert (wrapped.image_size, wrapped.num_classes) == (inner.image_size, inner.num_classes)
    shapes = jax.eval_shape(wrapped.init, jax.random.key(0))                 # the wrapped detector's variables
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(np.shape, variables)

    images = np.random.default_rng(5).uniform(0, 0.4, (4, *inner.image_size, 3)).astype(np.float32)
    generator = load_generator(unit_run)
    translated = np.asarray(make_translate_fn(generator.config, 'b', 'a')(generator.params, images))  # night -> day
    assert translated.shape == images.shape and np.abs(translated - images).mean() > 0.05
    # the evaluator's predict function (apply + postprocess, data parallel): the inner one's program is the
    # source run's evaluation program, which the session's compilation cache holds
    mesh = make_mesh()
    got = make_predict_fn(wrapped, mesh)(variables, shard_batch(images, mesh))
    predict_inner = make_predict_fn(inner, mesh)
    want = predict_inner(variables, shard_batch(translated, mesh))
    np.testing.assert_array_equal(got.num_valid, want.num_valid)
    assert int(np.sum(want.num_valid)) > 0
    for field in ('boxes', 'scores', 'classes'):
        np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=1e-4, atol=1e-5, err_msg=field)
    untranslated = predict_inner(variables, shard_batch(images, mesh))
    assert not np.allclose(untranslated.scores, want.scores, atol=1e-3)       # the translation matters


# ------------------------------------------------------------------------------------------ 3. end to end
@pytest.fixture(scope='module')
def day_frames(env):
    """The validation_day frames as the detector sees them (the tiny preset's 32 px): they come from
    adapt.evaluation.detector_eval.eval_pipeline (resized, unaugmented, padded rows dropped by `valid`); every
    statistic of them is taken with NumPy here."""
    import tensorflow_datasets as tfds

    from adapt.evaluation.detector_eval import eval_pipeline
    from tests.tiny_config import get_config
    builder = tfds.builder('daynight_synth/tiny', data_dir=env[1])
    frames = np.concatenate([b['image'][np.asarray(b['valid'], bool)]
                             for b in eval_pipeline(get_config(), builder, 'validation_day')])
    assert frames.shape[1:] == (32, 32, 3) and len(frames) == builder.info.splits['validation_day'].num_examples
    return frames


def test_prepare_hooks_wrap_the_detector_and_fill_the_transform_settings(env, unit_run, day_frames, source_run,
                                                                        tmp_path):
    import tensorflow_datasets as tfds

    from adapt.methods import training_free
    from adapt.trainers.detection import setup
    from adapt.models.families import build_detector
    from adapt.models.translated import TranslatedDetector
    from tests.tiny_config import get_config, tiny_config
    builder = tfds.builder('daynight_synth/tiny', data_dir=env[1])
    config, lines = get_config(), []
    histeq = training_free.prepare_histeq(config, builder, builder, lines.append)
    assert config.detector == 'ssd' and config.translated.target_cdf == ()          # the input is not changed
    assert histeq.detector == 'translated' and histeq.translated.detector == 'ssd'
    assert histeq.translated.transform == 'histeq' and len(histeq.translated.target_cdf) == 256
    y = np_luminance(day_frames) * 256
    ambiguous = np.sum(np.abs(y - np.round(y)) < 1e-4)                     # levels float32 may round apart
    np.testing.assert_allclose(histeq.translated.target_cdf, np_cdf(np.clip(np.floor(y), 0, 255).astype(int)),
                               atol=(ambiguous + 1e-3) / y.size)
    assert lines == [f'luminance statistics of validation_day: mean {np_luminance(day_frames).mean():.3f}']
    detector = build_detector(histeq, 3)
    assert isinstance(detector, TranslatedDetector) and detector.transform_name == 'histeq'
    with pytest.raises(ValueError, match='already wrapped'):
        training_free.wrapped(histeq, 'gamma')

    # the settings are checked when the run is set up (before anything is built: setup, what the scripts call
    # first); the messages are one line
    for settings, needle in ((dict(method='online_translation'), 'trains nothing: it needs --config.init_run='),
                             (dict(method='online_translation', init_run='x'),
                              'online_translation needs --config.translator='),
                             (dict(method='adabn'), 'adabn trains nothing')):
        with pytest.raises(ValueError, match=needle) as error:
            setup(tiny_config(**settings), 3)
        assert '\n' not in str(error.value)
    # ... and by trainer.train (in Python) before `prepare` reads them or any statistic is taken
    from adapt.trainers.detection import train
    for settings, needle in ((dict(method='gamma'), 'gamma trains nothing'),
                             (dict(method='online_translation', init_run=source_run[0]),
                              'online_translation needs --config.translator=')):
        run_config, printed = get_config(), []
        run_config.update(settings)
        with pytest.raises(ValueError, match=needle):
            train(run_config, builder, workdir=str(tmp_path / 'run'), print_fn=printed.append)
        assert printed == [] and not os.path.exists(tmp_path / 'run')
    config.translator = unit_run
    online = training_free.prepare_translation(config, builder, builder, lines.append)
    assert online.detector == 'translated' and online.translated.transform == 'unit'
    assert online.translated.unit_run == unit_run and online.translated.unit_step == 0   # pinned: the latest
    assert lines[-1] == f'online translation: night -> day by {unit_run} at step 0'

    block = get_config().translated
    for transform, needle in (('gamma', 'target_mean is not set'), ('histeq', 'target_cdf needs 256 values'),
                              ('unit', 'needs the generator of translated.unit_run'), ('sepia', 'sepia')):
        block.transform = transform
        with pytest.raises(Exception, match=needle) as error:
            T.build_transform(block)
        assert '\n' not in str(error.value)
    from adapt.run_models import build_detector as build_with_runs  # loads the UNIT run the config names
    with pytest.raises(ValueError, match='translated.unit_run is empty: set it to a finished train_unit workdir'):
        build_with_runs(training_free.wrapped(get_config(), 'unit', unit_run=''), 3)


def _train(method, source_run, env, workdir):
    """trainer.train of `method` from the tiny source run (the scripts' tiny preset it was trained with)."""
    import tensorflow_datasets as tfds

    from adapt.trainers.detection import train
    from tests.tiny_config import get_config
    config = get_config()
    config.update(dict(method=method, init_run=source_run[0]))
    builder = tfds.builder('daynight_synth/tiny', data_dir=env[1])
    lines = []
    train(config, builder, workdir=str(workdir), print_fn=lines.append)
    return lines, builder, json.load(open(os.path.join(workdir, 'run.json')))


def _assert_step0_run(workdir, record, method):
    """A finished run of a method that trains nothing: step-0 checkpoint and metrics, no target labels."""
    from adapt.runs import load_run
    assert record['method'] == method and record['uses_target_labels'] is False
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['0']
    metrics = json.load(open(os.path.join(workdir, 'metrics.json')))
    assert metrics['step'] == 0 and metrics['method'] == method and metrics['uses_target_labels'] is False
    assert np.isfinite(metrics['splits']['validation_day']['AP50'])
    run = load_run(str(workdir))
    assert run.step == 0
    return run


def test_gamma_end_to_end_wraps_the_frozen_detector_with_the_day_mean(source_run, env, tmp_path, day_frames):
    """The target mean is NumPy's mean luminance (BT.601) of the validation_day frames at the detector's
    input size (`day_frames`: read through eval_pipeline, the statistic taken with NumPy)."""
    from adapt.runs import load_run
    lines, builder, record = _train('gamma', source_run, env, tmp_path)
    config = record['config']
    assert config['detector'] == 'translated'
    block = config['translated']
    assert block['detector'] == 'ssd' and block['transform'] == 'gamma'
    np.testing.assert_allclose(block['target_mean'], np_luminance(day_frames).mean(), rtol=1e-6)
    assert any('luminance statistics of validation_day' in line for line in lines)

    from adapt.models.translated import TranslatedDetector
    from adapt.run_models import run_detector
    run = _assert_step0_run(tmp_path, record, 'gamma')
    detector = run_detector(run)
    assert isinstance(detector, TranslatedDetector) and detector.transform_name == 'gamma'
    grey = np.full((1, 4, 4, 3), 0.2, np.float32)                          # closed form: reaches the day mean
    np.testing.assert_allclose(np.asarray(detector.transform(jnp.asarray(grey))), block['target_mean'], rtol=1e-5)
    source = load_run(source_run[0], 'detector').variables()
    jax.tree.map(np.testing.assert_array_equal, run.variables(), source)   # nothing trained


def test_adabn_end_to_end_keeps_the_weights_and_replaces_the_statistics(source_run, env, tmp_path, monkeypatch):
    from adapt.methods import training_free
    from adapt.runs import load_run
    frames = []

    def recording(config, builder, split):                   # what adabn reads: the target split's images
        pipeline = FRAMES(config, builder, split)
        frames.append((split, pipeline.train))
        return pipeline
    FRAMES = training_free._frames
    monkeypatch.setattr(training_free, '_frames', recording)
    lines, builder, record = _train('adabn', source_run, env, tmp_path)
    assert frames == [('train_night', False)]                   # an unaugmented eval pass over target_split
    assert record['config']['detector'] == 'ssd'
    count = builder.info.splits['train_night'].num_examples
    assert f'adabn: statistics of 14 BatchNorm layers from {count} target images' in lines

    run = _assert_step0_run(tmp_path, record, 'adabn')
    source = load_run(source_run[0], 'detector').variables()
    adapted = run.variables()
    jax.tree.map(np.testing.assert_array_equal, adapted['params'], source['params'])
    before, after = _leaves(source['batch_stats']), _leaves(adapted['batch_stats'])
    assert before.keys() == after.keys()
    assert all(not np.allclose(after[k], before[k]) and np.all(np.isfinite(after[k])) for k in before)
