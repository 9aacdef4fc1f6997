"""Methods on the generic step: loss terms against hand / NumPy computations, 1 device == 4 devices with every
term on, weight 0 == source only, target labels never matter to an unsupervised method.

1 device == 4 devices for every method: each method's step is a subset of the terms and hooks of
`HOOKS` below (pseudo_label and translate_train: the detection loss on both domains, tested as
fine_tune with keep_source), plus its own checks where it adds something: mean_teacher (tests/test_mean_teacher.py),
fine_tune's frozen groups (tests/test_fine_tune.py), shared_latent's detector (tests/test_shared_latent.py)."""
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.datasets.two_domain import ZipIterator
from adapt.losses.adaptation import coral_loss, dann_image, entropy, mmd
from adapt.methods.base import Method, get_method, resolve_terms
from adapt.trainers.detection import init_state, setup
from adapt.registry import RegistryError
from adapt.training import data_parallel, make_mesh, replicate, shard_batch, to_host
from tests.test_alignment import ref_coral, ref_mmd
from tests.tiny_config import tiny_config

EVERY_LOSS = 'dann_image:0.1,dann_instance:0.1,mmd:1.0,coral:1.0,entropy:0.1,lwf:1.0'


def distill(ctx):
    """Reads the teacher's outputs and the (transformed) source batch."""
    diff = ctx.source_outputs['cls_logits'] - ctx.teacher_outputs['source']['cls_logits']
    return jnp.mean(diff ** 2), {'corner': jnp.mean(ctx.source['image'][:, 0, 0, 0])}


def _count_update(state):
    method_aux = state.aux['method']
    return state.replace(aux={**state.aux, 'method': {**method_aux, 'updates': method_aux['updates'] + 1}})


# Every hook of a Method at once, on top of every built-in term; the method and its extra loss are read by
# path ('package.module:name', as a user's would be), so nothing is added to the global registries.
DISTILL = 'tests.test_methods:distill'
HOOKS = Method(
    'test_hooks', 'labelled target, every loss, a teacher, aux state, an after-update hook, a batch transform',
    supervised=('target',), losses=f'{EVERY_LOSS},{DISTILL}:0.1',
    init_aux=lambda v: {'teacher': {**v, 'params': jax.tree.map(lambda x: 0.95 * x, v['params'])},
                        'updates': np.int32(0)},
    teacher=lambda state: state.aux['method']['teacher'], after_update=_count_update,
    transform_batch=lambda batch, key: {**batch, 'source': {**batch['source'],
                                                            'image': batch['source']['image'][:, :, ::-1]}})
NO_SCHEDULE = dict(dann_image=dict(level='', hidden=8, gamma=0.0), dann_instance=dict(hidden=8, gamma=0.0))


def _batch(seed, n=8, size=32):
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0.0, 0.5, (n, 4, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.2, 0.5, (n, 4, 2))], -1).astype(np.float32)
    labels = rng.integers(0, 3, (n, 4)).astype(np.int32)
    labels[:, 3] = -1
    return {'image': rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32), 'boxes': boxes,
            'labels': labels, 'mask': labels >= 0}


def _stepper(config, devices):
    """(initial state, step(state, batch) -> (host state, host metrics)) on `devices` devices."""
    s = setup(config, 3)
    mesh = make_mesh(devices)
    step = data_parallel(s.step(config), mesh,
                         donate=False)

    def run(state, batch):
        new, metrics, finite = step(replicate(state, mesh), shard_batch(batch, mesh))
        assert bool(finite)
        return to_host(new), to_host(metrics)
    return init_state(config, s), run


def _assert_trees(a, b, exact=False):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    check = np.testing.assert_array_equal if exact else (
        lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6))
    jax.tree.map(check, a, b)


def test_one_device_equals_four_with_every_term_on():
    """Every built-in term at once (the methods are subsets of these terms): the oracle's detection loss on
    the target, the source pass (BatchNorm statistics from it), both domain classifiers, MMD, CORAL,
    entropy and LwF's distillation, with the EMA and every Method hook on. Parameters (classifiers included), statistics, the
    EMA, the aux state and every metric agree."""
    config = tiny_config(method='tests.test_methods:HOOKS', ema_decay=0.9, num_steps=10)
    config.adaptation_hparams.update(NO_SCHEDULE)  # reversal coefficient 1 at step 0 (the schedule gives 0)
    batch = {'source': _batch(0), 'target': _batch(1)}
    state, one = _stepper(config, 1)
    (s1, m1), (s4, m4) = one(state, batch), _stepper(config, 4)[1](state, batch)
    _assert_trees((s1.params, s1.batch_stats, s1.aux), (s4.params, s4.batch_stats, s4.aux))
    assert set(m1) == set(m4) >= {'detection_target', 'dann_image', 'dann_instance', 'mmd', 'coral', 'entropy',
                                  'lwf', DISTILL}
    for k in m1:
        np.testing.assert_allclose(m1[k], m4[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # the hooks: the batch transform (a left-right flip) ran first, the teacher (0.95 x the weights) is not the student, the
    # after-update hook ran once, and the EMA moved 10 % of the way to the updated weights
    np.testing.assert_allclose(m1[f'{DISTILL}/corner'], batch['source']['image'][:, 0, -1, 0].mean(), rtol=1e-6)
    assert m1[DISTILL] > 0 and int(s1.aux['method']['updates']) == 1
    _assert_trees(s1.aux['ema'], jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b,
                                              {'params': state.params['detector'], 'batch_stats': state.batch_stats},
                                              {'params': s1.params['detector'], 'batch_stats': s1.batch_stats}))
    assert set(s1.params['adaptation']) == {'dann_image', 'dann_instance'}
    moved = lambda term: [not np.array_equal(a, b) for a, b in zip(  # noqa: E731
        jax.tree.leaves(state.params['adaptation'][term]), jax.tree.leaves(s1.params['adaptation'][term]))]
    assert all(moved('dann_image')) and any(moved('dann_instance'))  # (a level no chosen anchor was on stays)


def test_weight_zero_is_exactly_the_source_only_step(tmp_path, monkeypatch):
    """Weight 0 is the source-only step bit for bit; a user's loss from a file outside adapt/ (the README's)
    at weight 1 moves the parameters away from it. (Through adapt_detector's flags:
    tests/test_mean_teacher.py.)"""
    batch = {'source': _batch(0), 'target': _batch(1)}
    state, zero_step = _stepper(tiny_config(method='dann', adaptation_losses='dann_image:0,dann_instance:0'), 1)
    base_state, base_step = _stepper(tiny_config(method='source_only'), 1)
    zero, m_zero = zero_step(state, batch)
    base, m_base = base_step(base_state, {'source': batch['source']})
    _assert_trees((zero.params, zero.batch_stats, zero.opt_state), (base.params, base.batch_stats, base.opt_state),
                  exact=True)
    assert m_zero['loss'] == m_base['loss'] and 'dann_image' not in m_zero
    (tmp_path / 'my_losses.py').write_text(_readme_loss_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    _, user_step = _stepper(tiny_config(method='source_only', adaptation_losses='my_losses:mean_gap:1.0'), 1)
    user, m_user = user_step(base_state, batch)
    assert m_user['my_losses:mean_gap'] > 0
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(user.params), jax.tree.leaves(base.params))]
    assert any(moved)


def test_target_labels_do_not_reach_an_unsupervised_step():
    config = tiny_config(method='dann')
    config.adaptation_hparams.update(NO_SCHEDULE)
    source, target = _batch(0), _batch(1)
    other = dict(target, boxes=target['boxes'][::-1] * 0.5, labels=(target['labels'] + 1) % 3,
                 mask=~target['mask'])
    state, step = _stepper(config, 4)
    _assert_trees(step(state, {'source': source, 'target': target}),
                  step(state, {'source': source, 'target': other}), exact=True)
    # and the data layer strips them before the step: only the image of the target is batched
    it = ZipIterator({'source': iter([source]), 'target': iter([target])},
                     {'source': ('image', 'boxes', 'labels', 'mask'), 'target': ('image',)})
    assert set(next(it)['target']) == {'image'}


def _moved_objects(as_dataset):
    """`as_dataset` whose examples carry other objects: reversed, moved into the top-left corner, relabelled."""
    import tensorflow as tf

    def perturbed(self, *args, **kwargs):
        def move(example):
            objects = example['objects']
            bbox, label = objects['bbox'][::-1], objects['label'][::-1]
            objects = {**objects, 'bbox': 0.25 * bbox, 'label': (label + 1) % tf.cast(6, label.dtype)}
            return {**example, 'objects': objects}
        return as_dataset(self, *args, **kwargs).map(move)
    return perturbed


def test_unsupervised_target_batches_are_blind_to_every_target_label(env, monkeypatch):
    """Every box and label of the target split perturbed: the target batches of every method that does not
    use target labels (its weak view, and its strong view where it has one) stay bit-identical, so its step
    (a function of the batch) does too; the oracle's target labels and crops change (the perturbation reaches
    what a labelled pipeline reads). The target pipeline is a function of the config and the method's strong views
    (`data_iterator`), so one method of each kind of views is built."""
    import tensorflow_datasets as tfds
    from adapt.methods.base import METHODS
    from adapt.methods.step import active_domains
    from adapt.trainers.detection import data_iterator, strong_domains
    builder = tfds.builder('daynight_synth/tiny', data_dir=env[1])
    config = tiny_config(dataset='daynight_synth/tiny', train_split='train_day', target_split='train_night',
                         batch_size=4, max_boxes=8)
    config.augment.update(crop_min_ious=(0.0,), crop_scale=(0.3, 0.6))  # a box-driven crop: a window holding a box

    def target_batch(method):
        c = config.copy_and_resolve_references()
        c.method = method
        it = data_iterator(c, setup(c, 6), builder, builder)
        try:
            return next(it)['target']
        finally:
            it.close()

    unsupervised = [name for name in METHODS.names() if not (get_method(name).uses_target_labels or
                                                             get_method(name).own_target_labels)]
    reading_target = [name for name in unsupervised if 'target' in active_domains(resolve_terms(get_method(name)))]
    assert {'dann', 'mmd', 'coral', 'entropy', 'mean_teacher'} <= set(reading_target)
    kinds = {strong_domains(config, get_method(name)): name for name in reading_target}
    assert len(kinds) == 2  # the target with a strong view (mean_teacher) and without
    methods = [*kinds.values(), 'oracle']
    clean = {m: target_batch(m) for m in methods}
    monkeypatch.setattr(tfds.core.DatasetBuilder, 'as_dataset', _moved_objects(tfds.core.DatasetBuilder.as_dataset))
    moved = {m: target_batch(m) for m in methods}
    for m in kinds.values():
        assert set(clean[m]) <= {'image', 'image_strong'}, m
        jax.tree.map(np.testing.assert_array_equal, clean[m], moved[m])
    assert any('image_strong' in clean[m] for m in kinds.values())
    assert not np.array_equal(clean['oracle']['labels'], moved['oracle']['labels'])
    assert not np.array_equal(clean['oracle']['image'], moved['oracle']['image'])  # its crop read the boxes


def _ctx(detector=None, source_features=None, target_features=None, progress=0.0):
    from adapt.methods.base import StepContext
    return StepContext(detector, source_features=source_features, target_features=target_features,
                       progress=jnp.float32(progress))


def test_dann_image_loss_by_hand():
    """1x1 feature maps with one channel: the 3x3 conv sees only its centre tap, so the classifier is
    logit = w2 * relu(w1 * x + b1) + b2, and the loss the mean of -log(1 - sigmoid) over the source and
    -log(sigmoid) over the target, averaged."""
    xs, xt = np.array([0.5, -1.0], np.float32), np.array([2.0, 0.25], np.float32)
    feats = lambda x: {'C4': jnp.asarray(x).reshape(2, 1, 1, 1)}  # noqa: E731
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1, 0, 0] = 1.5
    params = {'C4': {'conv': {'kernel': jnp.asarray(kernel), 'bias': jnp.array([0.1])},
                     'logits': {'kernel': jnp.array([[[[-0.8]]]]), 'bias': jnp.array([0.3])}}}
    detector = types.SimpleNamespace(alignment_levels=('C4',))
    loss, metrics = dann_image(_ctx(detector, feats(xs), feats(xt), progress=0.3), params, hidden=1, gamma=10.0)
    logit = lambda x: -0.8 * np.maximum(1.5 * x + 0.1, 0) + 0.3  # noqa: E731
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    want_s = np.mean(-np.log(1 - sig(logit(xs))))
    want_t = np.mean(-np.log(sig(logit(xt))))
    np.testing.assert_allclose(float(metrics['source_bce']), want_s, rtol=1e-6)
    np.testing.assert_allclose(float(loss), 0.5 * (want_s + want_t), rtol=1e-6)
    np.testing.assert_allclose(float(metrics['reversal']), 2 / (1 + np.exp(-3.0)) - 1, rtol=1e-6)
    # the features get the classifier's gradient reversed and scaled by the schedule
    grad = jax.grad(lambda x: dann_image(_ctx(detector, feats(x), feats(xt), 0.3), params, hidden=1)[0])(
        jnp.asarray(xs))
    d_logit = sig(logit(xs)) / 2 / 2  # d(0.5 * mean BCE(label 0))/d logit, 2 examples
    want = -(2 / (1 + np.exp(-3.0)) - 1) * d_logit * -0.8 * 1.5 * (1.5 * xs + 0.1 > 0)
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-5)


def test_mmd_coral_and_entropy_terms_against_numpy():
    rng = np.random.default_rng(3)
    fs, ft = rng.normal(size=(6, 2, 3, 5)).astype(np.float32), rng.normal(1.0, 2.0, (6, 2, 3, 5)).astype(np.float32)
    detector = types.SimpleNamespace(alignment_levels=('C4',), score_kind='softmax')
    ctx = _ctx(detector, {'C4': jnp.asarray(fs)}, {'C4': jnp.asarray(ft)})
    pooled_s, pooled_t = fs.mean((1, 2)), ft.mean((1, 2))
    np.testing.assert_allclose(float(mmd(ctx)[0]), ref_mmd(pooled_s, pooled_t), rtol=2e-4)
    np.testing.assert_allclose(float(coral_loss(ctx)[0]), ref_coral(pooled_s, pooled_t), rtol=2e-4)
    logits = rng.normal(size=(2, 3, 4)).astype(np.float32)
    mask = np.array([[True, False, True], [True, True, False]])
    ctx.target_features = {'instance_logits': jnp.asarray(logits), 'instance_mask': jnp.asarray(mask)}
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    want = (-(p * np.log(p)).sum(-1))[mask].mean()
    np.testing.assert_allclose(float(entropy(ctx)[0]), want, rtol=1e-5)


@pytest.mark.parametrize('spec,needle', [('dann_imag:0.1', 'unknown adaptation loss'),
                                         ('dann_image', 'malformed'), ('dann_image:x', 'malformed'),
                                         ('no_such_module_xyz:fn:1.0', 'cannot import'),
                                         ('tests.tiny_config:missing:1.0', "has no 'missing'")])
def test_bad_loss_lists_are_one_line_errors(spec, needle):
    with pytest.raises(RegistryError, match=needle) as error:
        resolve_terms(get_method('source_only'), spec)
    assert '\n' not in str(error.value)


def test_unknown_method_lists_the_choices():
    with pytest.raises(RegistryError, match='valid choices: source_only, oracle, dann, mmd, coral, entropy'):
        get_method('dan')


def _readme_loss_example():
    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'README.md')).read()
    return next(block for block in readme.split('```python\n')[1:] if 'def mean_gap' in block).split('```')[0]


def test_readme_loss_example_runs_and_is_short(tmp_path, monkeypatch):
    """The README's new-loss example, imported as a user would (`my_losses:mean_gap`), against NumPy."""
    code = _readme_loss_example()
    assert len(code.strip().splitlines()) < 20
    (tmp_path / 'my_losses.py').write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    (term,) = resolve_terms(get_method('oracle'), 'my_losses:mean_gap:0.5')[1:]
    assert term.weight == 0.5 and term.domains == ('source', 'target')
    rng = np.random.default_rng(4)
    fs, ft = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(5, 2, 2, 4))
    value, metrics = term.value(_ctx(None, {'C4': jnp.asarray(fs)}, {'C4': jnp.asarray(ft)}))
    gap = fs.mean((1, 2)).mean(0) - ft.mean((1, 2)).mean(0)
    np.testing.assert_allclose(float(value), np.sum(gap ** 2), rtol=1e-5)
    np.testing.assert_allclose(float(metrics['gap_norm']), np.linalg.norm(gap), rtol=1e-5)
