"""mean_teacher: the teacher's EMA, pseudo-labels at the threshold, weak view to the teacher and strong view to
the student, strong views from the pipeline (same geometry, exact resume), 1 device == 4 devices, target
labels never matter, and a run through experiments/adapt_detector.py equals its stopped and resumed copy."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adapt.datasets import augment as aug
from adapt.losses.adaptation import ADAPTATION_LOSSES, adaptation_loss
from adapt.methods.mean_teacher import update_teacher
from adapt.methods.self_training import teacher_labels
from adapt.trainers.detection import init_state, setup
from adapt.nms import Detections
from adapt.training import TrainState, data_parallel, make_mesh, replicate, shard_batch, to_host
from tests.script_runner import TINY, final_params, finish, start
from tests.test_adapt_detector import USER_LOSSES
from tests.test_methods import _assert_trees, _batch
from tests.pipeline_data import _dataset, _example, _pipe, _take
from tests.tiny_config import tiny_config

DECAY, THRESHOLD = 0.75, 0.25  # tiny random detectors score every class about 1/4


def _view_probe(ctx):
    """Which images the student and the teacher saw, as the means of their target logits."""
    return 0.0, {'student': jnp.mean(ctx.target_outputs['cls_logits']),
                 'teacher': jnp.mean(ctx.teacher_outputs['target']['cls_logits'])}


if 'test_view_probe' not in ADAPTATION_LOSSES:
    adaptation_loss('test_view_probe', domains=('target',))(_view_probe)


def _config():
    config = tiny_config(method='mean_teacher', adaptation_losses='mean_teacher:1.0,test_view_probe:1.0')
    config.mean_teacher.update(dict(decay=DECAY, threshold=THRESHOLD))
    return config


@functools.lru_cache(maxsize=None)
def _initial_state():
    config = _config()
    return init_state(config, setup(config, 3))


@functools.lru_cache(maxsize=None)
def _mean_teacher_stepper(devices):
    """(initial state, step(state, batch) -> (host state, host metrics)) on `devices` devices, one initial
    state for all (see tests.test_methods._stepper)."""
    config = _config()
    mesh = make_mesh(devices)
    step = data_parallel(setup(config, 3).step(config), mesh, donate=False)

    def run(state, batch):
        new, metrics, finite = step(replicate(state, mesh), shard_batch(batch, mesh))
        assert bool(finite)
        return to_host(new), to_host(metrics)
    return _initial_state(), run


def _views(seed):
    """A target batch whose strong view is other images than its weak view."""
    return {**_batch(seed), 'image_strong': _batch(seed + 100)['image']}


def test_teacher_update_is_the_ema_of_every_leaf():
    rng = np.random.default_rng(0)
    tree = lambda: {'params': {'conv': {'kernel': rng.normal(size=(3, 3, 2)).astype(np.float32)},  # noqa: E731
                               'bias': rng.normal(size=4).astype(np.float32)},
                    'batch_stats': {'bn': {'mean': rng.normal(size=4).astype(np.float32),
                                           'var': rng.uniform(0.5, 2, size=4).astype(np.float32)}}}
    student, old = tree(), tree()
    state = TrainState.create({'detector': student['params'], 'adaptation': {}}, optax.sgd(0.1), 0,
                              batch_stats=student['batch_stats'], aux={'method': {'teacher': old, 'other': 7}})
    new = update_teacher(state, decay=0.9)
    want = jax.tree.map(lambda t, s: 0.9 * t.astype(np.float64) + 0.1 * s.astype(np.float64), old, student)
    jax.tree.map(lambda got, w: np.testing.assert_allclose(got, w, rtol=1e-6), new.aux['method']['teacher'], want)
    assert new.aux['method']['other'] == 7
    jax.tree.map(np.testing.assert_array_equal, new.params, state.params)


def test_pseudo_labels_keep_exactly_the_detections_at_or_above_the_threshold_and_ignore_the_band_below():
    rng = np.random.default_rng(1)
    threshold, low = np.float32(0.6), np.float32(0.3)
    scores = rng.uniform(0, 1, (3, 10)).astype(np.float32)
    scores[0, :4] = [threshold, np.nextafter(threshold, np.float32(0)), np.nextafter(threshold, np.float32(1)), 1.0]
    scores[1, :3] = [low, np.nextafter(low, np.float32(0)), 0.5]
    scores[2, 7:] = 0.99  # rows past num_valid: never labels, whatever their score
    num_valid = np.array([10, 3, 7], np.int32)
    boxes = rng.uniform(0, 1, (3, 10, 4)).astype(np.float32)
    classes = rng.integers(0, 5, (3, 10)).astype(np.int32)
    got = teacher_labels(Detections(boxes, scores, classes, num_valid), threshold, low)
    for b in range(3):
        for d in range(10):
            kept = d < num_valid[b] and scores[b, d] >= threshold
            unsure = d < num_valid[b] and low <= scores[b, d] < threshold
            assert bool(got['mask'][b, d]) == kept and bool(got['ignore_mask'][b, d]) == unsure, (b, d)
            assert int(got['labels'][b, d]) == (classes[b, d] if kept else -1)
            np.testing.assert_array_equal(got['boxes'][b, d], boxes[b, d] if kept else np.zeros(4))
            np.testing.assert_array_equal(got['ignore_boxes'][b, d], boxes[b, d] if unsure else np.zeros(4))
    assert np.asarray(got['mask'])[0, :4].tolist() == [True, False, True, True]
    assert np.asarray(got['ignore_mask'])[1, :4].tolist() == [True, False, True, False]


def test_the_teacher_sees_only_the_weak_view_and_the_student_only_the_strong_one():
    """Planted views: changing the strong view changes what the student saw and nothing the teacher saw; changing
    the weak view the other way round (exactly, in the same program)."""
    state, step = _mean_teacher_stepper(1)
    base = _views(1)
    seen = lambda target: step(state, {'source': _batch(0), 'target': target})[1]  # noqa: E731
    m = seen(base)
    other_strong = seen(dict(base, image_strong=_batch(7)['image']))
    other_weak = seen(dict(base, image=_batch(8)['image']))
    assert other_strong['test_view_probe/teacher'] == m['test_view_probe/teacher']
    assert other_strong['test_view_probe/student'] != m['test_view_probe/student']
    assert other_weak['test_view_probe/student'] == m['test_view_probe/student']
    assert other_weak['test_view_probe/teacher'] != m['test_view_probe/teacher']


def test_one_device_equals_four_and_the_teacher_follows_the_student():
    batch = {'source': _batch(0), 'target': _views(1)}
    state, one = _mean_teacher_stepper(1)
    (s1, m1), (s4, m4) = one(state, batch), _mean_teacher_stepper(4)[1](state, batch)
    _assert_trees((s1.params, s1.batch_stats, s1.aux), (s4.params, s4.batch_stats, s4.aux))
    assert set(m1) == set(m4)
    for k in m1:
        np.testing.assert_allclose(m1[k], m4[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert m1['mean_teacher/pseudo_boxes_per_image'] > 0 and m1['mean_teacher'] > 0
    # the configured decay: teacher_1 = a teacher_0 + (1 - a) student_1, BatchNorm statistics included
    student = {'params': s1.params['detector'], 'batch_stats': s1.batch_stats}
    want = jax.tree.map(lambda t, s: DECAY * np.float64(t) + (1 - DECAY) * np.float64(s),
                        state.aux['method']['teacher'], student)
    close = lambda got, w: np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-7)  # noqa: E731
    jax.tree.map(close, s1.aux['method']['teacher'], want)


def test_target_labels_do_not_change_the_step():
    target = _views(1)
    other = dict(target, boxes=target['boxes'][::-1] * 0.5, labels=(target['labels'] + 1) % 3, mask=~target['mask'])
    state, step = _mean_teacher_stepper(4)
    _assert_trees(step(state, {'source': _batch(0), 'target': target}),
                  step(state, {'source': _batch(0), 'target': other}), exact=True)


def test_strong_views_share_the_weak_geometry_and_resume_exactly():
    ds = _dataset([_example(i) for i in range(8)])
    grey = aug.StrongAugmentConfig(jitter_prob=0.0, greyscale_prob=1.0, blur_prob=0.0, erasing=())
    (weak,), (greyed,) = _take(_pipe(ds, seed=3), 1), _take(_pipe(ds, seed=3, strong_augment=grey), 1)
    pipe = _pipe(ds, seed=3, strong_augment=aug.StrongAugmentConfig())
    strong = [next(pipe)]
    position = pipe.state()
    strong.append(next(pipe))
    for b in (greyed, strong[0]):  # the weak view and its boxes are those of the pipeline without strong views
        assert set(b) == set(weak) | {'image_strong'}
        for key in weak:
            np.testing.assert_array_equal(b[key], weak[key], err_msg=key)
    luma = weak['image'] @ np.array([0.2989, 0.587, 0.114], np.float32)  # ITU-R 601: the weak pixels, greyed
    np.testing.assert_allclose(greyed['image_strong'], np.repeat(luma[..., None], 3, -1), atol=2e-6)
    for b in strong:
        assert b['image_strong'].shape == b['image'].shape
        assert 0 <= b['image_strong'].min() <= b['image_strong'].max() <= 1
        changed = np.abs(b['image_strong'] - b['image']).max(axis=(1, 2, 3)) > 1e-3
        assert changed.sum() >= len(changed) - 1  # (an image may draw no strong op at all: p < 0.01)
    resumed = _pipe(ds, seed=3, strong_augment=aug.StrongAugmentConfig(), start_position=position)
    np.testing.assert_array_equal(next(resumed)['image_strong'], strong[1]['image_strong'])


@pytest.mark.parametrize('key,value,needle', [('mean_teacher.decay', 1.0, 'mean_teacher.decay=1.0 must lie'),
                                               ('mean_teacher.threshold', 0.0, 'mean_teacher.threshold=0.0 must'),
                                               ('strong_augment.domains', 'night', 'valid choices: source, target'),
                                               ('strong_augment.blur_prob', 2.0, 'probabilities')])
def test_bad_settings_are_one_line_errors(key, value, needle):
    config = _config()
    block, name = key.split('.')
    config[block][name] = value
    with pytest.raises(ValueError, match=needle) as error:
        setup(config, 3)
    assert '\n' not in str(error.value)


def test_stopped_and_resumed_run_has_a_bit_identical_student_and_teacher(tmp_path, env, source_run):
    """The run goes through experiments/adapt_detector.py as a user runs it, with a user's own loss from a
    file outside adapt/ added to the method's (`user_losses:pull`, see tests/test_adapt_detector.py) and
    dann's image-level domain classifier (trainable parameters of a loss term, checkpointed too); a
    copy of it without its step-4 checkpoint (what a stop after step 3 leaves) resumes, by the same command,
    from the step-2 checkpoint and ends bit-identical. (SIGKILL at any point of the loop:
    tests/test_training_resume.py.)"""
    import shutil
    (tmp_path / 'user_losses.py').write_text(USER_LOSSES)
    user_env = (dict(env[0], PYTHONPATH=f'{env[0]["PYTHONPATH"]}{os.pathsep}{tmp_path}'), env[1])
    settings = dict(method='mean_teacher', init_run=source_run[0], target_split='train_night',
                    adaptation_losses='mean_teacher:1.0,user_losses:pull:1.0,dann_image:0.1')

    def run(workdir):
        return finish(start([f'--workdir={workdir}', f'--data_dir={env[1]}', *TINY,
                             f'--config.mean_teacher.decay={DECAY}', '--config.mean_teacher.threshold=0.2',
                             *(f'--config.{k}={v}' for k, v in settings.items())], user_env, 'adapt_detector'))[1]
    out = run(tmp_path / 'whole')
    assert 'student/validation_day: mAP@0.5' in out and 'teacher/validation_day: mAP@0.5' in out

    shutil.copytree(tmp_path / 'whole', tmp_path / 'stopped')
    shutil.rmtree(tmp_path / 'stopped' / 'checkpoints' / '4')
    assert 'resumed from' in run(tmp_path / 'stopped')  # the same command again, from step 2
    rows = [json.loads(line) for line in open(tmp_path / 'stopped' / 'metrics.jsonl')]
    assert [r['step'] for r in rows if r['split'] == 'train'] == [2, 4, 4]  # step 4 again, after the resume

    (step_w, w), (step_k, k) = (final_params(str(tmp_path / d)) for d in ('whole', 'stopped'))
    assert step_w == step_k == 4
    jax.tree.map(np.testing.assert_array_equal, w, k)  # student, teacher, classifier, optimizer: bit-identical
    assert set(w['params']['adaptation']) == {'dann_image'}
    teacher, student = w['aux']['method']['teacher'], {'params': w['params']['detector'],
                                                       'batch_stats': w['batch_stats']}
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(teacher), jax.tree.leaves(student)))

    metrics = json.load(open(tmp_path / 'whole' / 'metrics.json'))
    assert metrics['method'] == 'mean_teacher' and metrics['evaluated'] == 'student,teacher'
    assert {'student/validation_day', 'teacher/validation_day'} == set(metrics['splits'])
    assert {'pseudo_boxes_per_image', 'pseudo_precision', 'pseudo_recall'} <= set(metrics['splits']['teacher/validation_day'])
    log = [json.loads(line) for line in open(tmp_path / 'whole' / 'metrics.jsonl')]
    boxes = [row['mean_teacher/pseudo_boxes_per_image'] for row in log if row['split'] == 'train']
    assert boxes and all(np.isfinite(boxes)) and max(boxes) > 0  # the teacher's detections supervised the student
    gaps = [row['user_losses:pull/gap'] for row in log if row['split'] == 'train']
    assert gaps and all(np.isfinite(gaps)) and any(g != 0 for g in gaps)  # the user's term was computed
    run = json.load(open(tmp_path / 'whole' / 'run.json'))
    assert run['uses_target_labels'] is False
    assert run['terms'] == {'detection_source': 1.0, 'mean_teacher': 1.0, 'user_losses:pull': 1.0, 'dann_image': 0.1}
