"""Alignment where the heads read (issue 26, item 5): a dense family's instances are the maps its class predictors
read, at the chosen anchors' cells, with one domain classifier per level; image-level terms over several levels;
the default alignment levels from the source's positive anchors; runs saved with the removed instance
projections still load. Every expected number is re-derived here in NumPy or by hand."""
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.losses.adaptation import coral_loss, dann_image, dann_instance, get_loss, mmd
from adapt.methods.base import StepContext
from adapt.models.alignment_levels import fewest_levels, positives_per_level
from adapt.models.families import build_detector, with_box_settings, with_data_settings
from tests.test_ssd import _random_variables
from tests.test_yolo import PRIORS, yolo_config
from tests.tiny_config import RATIOS, tiny_config

LEVELS = ('C3', 'C4', 'extra0')  # the tiny SSD's head levels at 32 px: 4x4, 2x2 and 1x1 locations
PER_LOCATION = [2 + 2 * len(r) for r in RATIOS]  # 4, 6, 4 default boxes per location


def _ssd(head_convs=0):
    """The tiny SSD (K = 8 instances) and random variables of it (no compilation)."""
    config = tiny_config()
    config.ssd.model.head_convs = head_convs
    detector = build_detector(config, num_classes=3)
    return detector, _random_variables(detector.init)


def _images(seed, n=2):
    return jax.random.uniform(jax.random.key(seed), (n, 32, 32, 3))


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _expected_instances(detector, outputs, head_maps, k=8):
    """{level: (features [B, K, C], mask [B, K])}: the level map at each of the K anchors of highest foreground
    probability, located by the anchor order alone (levels in order, locations row-major, box types per location)
    and checked against the anchor boxes' centres."""
    logits = np.asarray(outputs['cls_logits'], np.float64)
    scores = _softmax(logits)[..., 1:].max(-1)
    order = np.argsort(-scores, axis=1, kind='stable')
    gap = np.take_along_axis(scores, order[:, k - 1:k + 1], 1)
    assert np.all(gap[:, 0] - gap[:, 1] > 1e-5)  # the K best are well apart from the rest: one choice
    top = order[:, :k]
    sizes = [m.shape[1:3] for m in head_maps]
    firsts = np.cumsum([0] + [h * w * p for (h, w), p in zip(sizes, PER_LOCATION)])
    want = {name: (np.zeros((len(top), k, m.shape[-1])), np.zeros((len(top), k), bool))
            for name, m in zip(LEVELS, head_maps)}
    for b in range(len(top)):
        for slot, index in enumerate(top[b]):
            level = int(np.searchsorted(firsts, index, side='right')) - 1
            (h, w), location = sizes[level], (index - firsts[level]) // PER_LOCATION[level]
            y, x = divmod(location, w)
            centre = (detector.anchors[index, :2] + detector.anchors[index, 2:]) / 2
            np.testing.assert_allclose(centre, [(y + 0.5) / h, (x + 0.5) / w], atol=1e-6)
            want[LEVELS[level]][0][b, slot] = head_maps[level][b, y, x]
            want[LEVELS[level]][1][b, slot] = True
    return want, top


def _assert_instances(features, want):
    assert set(features['instances']) == set(LEVELS)
    for name, (values, mask) in want.items():
        np.testing.assert_array_equal(np.asarray(features['instances'][name]['mask']), mask)
        np.testing.assert_allclose(np.asarray(features['instances'][name]['features']), values, rtol=1e-6)
    total = sum(np.asarray(features['instances'][name]['mask']).astype(int) for name in LEVELS)
    assert np.all(total == 1)  # every instance in exactly one group


# ------------------------------------------------------------------------------------------ (a) the features
def test_ssd_instances_are_the_level_maps_at_the_chosen_anchors_cells():
    detector, variables = _ssd()
    outputs, features, _ = jax.jit(detector.apply)(variables, _images(2))
    maps = [np.asarray(features[name]) for name in LEVELS]  # no head convs: the predictors read the levels
    want, top = _expected_instances(detector, outputs, maps)
    _assert_instances(features, want)
    for b in range(2):
        np.testing.assert_array_equal(np.asarray(features['instance_logits'][b]),
                                      np.asarray(outputs['cls_logits'])[b, top[b]])
    assert features['instance_mask'].shape == (2, 8) and bool(np.all(features['instance_mask']))
    assert 'head_maps' not in features


def _same_conv3x3(x, kernel, bias):
    """NumPy 3x3 convolution with zero padding ('SAME'): x [B, h, w, C], kernel [3, 3, C, O]."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    return sum(padded[:, dy:dy + h, dx:dx + w] @ kernel[dy, dx] for dy in range(3) for dx in range(3)) + bias


def test_with_head_convs_the_instances_are_the_class_convs_input():
    """With a head conv per level the class predictor reads its output: the maps the instances come from give
    back the class logits through the predictor's own kernel, re-applied in NumPy."""
    detector, variables = _ssd(head_convs=1)
    images = _images(3)
    outputs, features, _ = jax.jit(detector.apply)(variables, images)
    _, raw = jax.jit(detector.eval_model.apply)(variables, images)
    head_maps = [np.asarray(m, np.float64) for m in raw['head_maps']]
    first = 0
    for k, (m, per) in enumerate(zip(head_maps, PER_LOCATION)):
        cls = variables['params'][f'cls{k}']
        logits = _same_conv3x3(m, np.asarray(cls['kernel'], np.float64), np.asarray(cls['bias'], np.float64))
        rows = m.shape[1] * m.shape[2] * per
        np.testing.assert_allclose(np.asarray(outputs['cls_logits'])[:, first:first + rows],
                                   logits.reshape(2, rows, -1), rtol=1e-4, atol=1e-6)
        first += rows
        assert not np.allclose(m, np.asarray(features[LEVELS[k]]))  # not the level map itself
    want, _ = _expected_instances(detector, outputs, head_maps)
    _assert_instances(features, want)


# ------------------------------------------------------------------------------------------ (b) the gradient
def _ctx(detector, source_features, target_features, progress=0.0):
    return StepContext(detector, source_features=source_features, target_features=target_features,
                       progress=jnp.float32(progress))


def _mlp_logits(x, p):
    """InstanceDomainClassifier re-derived: relu(x W1 + b1) W2 + b2."""
    hidden = np.maximum(x @ np.asarray(p['hidden']['kernel']) + np.asarray(p['hidden']['bias']), 0)
    return (hidden @ np.asarray(p['logits']['kernel']) + np.asarray(p['logits']['bias']))[..., 0]


def test_dann_instance_sends_each_instance_to_its_levels_classifier():
    """One classifier per level (input width = the level's channels); the loss is the mean BCE over every
    selected instance of each domain (source 0, target 1), halved: re-derived with NumPy classifiers."""
    detector, variables = _ssd()
    forward = jax.jit(detector.apply)
    _, source, _ = forward(variables, _images(4))
    _, target, _ = forward(variables, _images(5))
    ctx = _ctx(detector, source, target)
    params = get_loss('dann_instance').init(jax.random.key(0), ctx, hidden=8)
    assert {name: p['hidden']['kernel'].shape[0] for name, p in params.items()} == {
        name: source[name].shape[-1] for name in LEVELS}
    loss, metrics = dann_instance(ctx, params, hidden=8, gamma=0.0)

    def domain_bce(features, label):
        values = []
        for name in LEVELS:
            group = features['instances'][name]
            logits = _mlp_logits(np.asarray(group['features'], np.float64), params[name])
            bce = np.maximum(logits, 0) - logits * label + np.log1p(np.exp(-np.abs(logits)))
            values.append(bce[np.asarray(group['mask'])])
        return np.concatenate(values).mean()
    want_s, want_t = domain_bce(source, 0.0), domain_bce(target, 1.0)
    np.testing.assert_allclose(float(metrics['source_bce']), want_s, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 0.5 * (want_s + want_t), rtol=1e-5)


def test_dann_instance_reaches_the_detector_only_through_the_maps_the_heads_read():
    """With a head conv per level: dann_instance's gradient reaches the backbone, the extra layers and the head
    convs (the class predictor's input), never the class or box predictors themselves; every parameter it
    reaches is one the detection loss trains too (no instance-only parameters remain)."""
    detector, variables = _ssd(head_convs=1)
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 0.5, (2, 4, 2))
    batch = {'boxes': np.concatenate([lo, lo + 0.4], -1).astype(np.float32),
             'labels': np.zeros((2, 4), np.int32), 'mask': np.ones((2, 4), bool)}
    source_images, target_images = _images(6), _images(7)
    _, features, _ = jax.jit(detector.apply)(variables, source_images)
    classifiers = get_loss('dann_instance').init(jax.random.key(1), _ctx(detector, features, features), hidden=8)

    @jax.jit
    def grads(params):
        def dann(p):
            v = {**variables, 'params': p}
            ctx = _ctx(detector, detector.apply(v, source_images)[1], detector.apply(v, target_images)[1])
            return dann_instance(ctx, classifiers, hidden=8, gamma=0.0)[0]

        def detection(p):
            outputs = detector.apply({**variables, 'params': p}, source_images)[0]
            return detector.loss(outputs, batch)[0]
        return jax.grad(dann)(params), jax.grad(detection)(params)
    dann_grads, detection_grads = grads(variables['params'])
    moved = {jax.tree_util.keystr(path): bool(np.any(np.asarray(g) != 0))
             for path, g in jax.tree_util.tree_leaves_with_path(dann_grads)}
    trained = {jax.tree_util.keystr(path): bool(np.any(np.asarray(g) != 0))
               for path, g in jax.tree_util.tree_leaves_with_path(detection_grads)}
    assert not any('instance' in path for path in moved)
    assert not any(moved[path] for path in moved if path.startswith(("['cls", "['box")))
    assert any(moved[path] for path in moved if path.startswith("['features']['backbone']"))
    assert any(moved[path] for path in moved if path.startswith("['head"))
    assert all(trained[path] for path in moved if moved[path])


# ------------------------------------------------------------------------------------------ (c) the levels
@pytest.mark.parametrize('counts,want', [([5, 3, 2], ('a', 'b')), ([1, 8, 1], ('b',)), ([3, 3, 4], ('a', 'b', 'c')),
                                         ([4, 4, 2], ('a', 'b')), ([2, 0, 8], ('c',)), ([3, 0, 1], ('a', 'c'))])
def test_fewest_levels_holding_80_percent(counts, want):
    """By hand: the largest counts first until 80 % of the total; the names in level order."""
    assert fewest_levels(counts, ('a', 'b', 'c')) == want


def test_fewest_levels_without_positives_is_a_one_line_error():
    with pytest.raises(ValueError, match='no positive anchor') as error:
        fewest_levels([0, 0], ('a', 'b'))
    assert '\n' not in str(error.value)


def _np_iou(a, b):
    """IoU [N, M] of yxyx boxes."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), -1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], -1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def test_ssd_default_levels_from_hand_built_boxes(tmp_path):
    """Six boxes equal to C3's smallest default box of a location and two equal to extra0's: by hand, a C3 box
    matches its own box and the two ratio-2 boxes at its location (IoU 0.55, under 0.5 with every other
    anchor), an extra0 box all 4 of extra0's boxes (IoU 1, 0.80, 0.55, 0.55) and nothing on C4: 18 + 0 + 8
    positives, 80 % = 20.8, so C3 (18) alone is not enough and extra0 joins it. NumPy's matcher (IoU >= 0.5, each
    box alone) agrees; the setting is derived once, stored in run.json and rebuilt by the loaded run."""
    config = tiny_config()
    detector = build_detector(config, 3)
    c3_square = [r for r in range(4 * 4 * 4) if r % 4 == 0][:6]   # the first box type of 6 C3 locations
    extra0 = 4 * 4 * 4 + 2 * 2 * 6                                 # extra0's first box: scale 0.8, centred
    boxes = detector.anchors[c3_square + [extra0, extra0]]
    iou = _np_iou(boxes, detector.anchors)
    positive = (iou >= 0.5) | (iou == iou.max(1, keepdims=True))
    firsts = [0, 64, 88, 92]
    np_counts = [int(positive[:, a:b].sum()) for a, b in zip(firsts, firsts[1:])]
    assert np_counts == [18, 0, 8]
    np.testing.assert_array_equal(positives_per_level(detector, boxes), np_counts)
    lines = []
    filled = with_box_settings(config, boxes, 'hand-built boxes', print_fn=lines.append)
    assert lines == ['ssd: alignment_levels from 8 boxes of hand-built boxes']
    assert tuple(filled.ssd.model.alignment_levels) == ('C3', 'extra0') and config.ssd.model.alignment_levels is None
    assert detector.alignment_levels == ('C4',)  # not derived: the deepest backbone level, as before
    from adapt.run_models import run_detector
    from adapt.runs import Run, read_run, write_run
    write_run(str(tmp_path), 'detector', filled, class_names=['a', 'b', 'c'])
    assert json.load(open(tmp_path / 'run.json'))['config']['ssd']['model']['alignment_levels'] == ['C3', 'extra0']
    loaded = run_detector(Run(str(tmp_path), read_run(str(tmp_path), 'detector'), 0, {}))
    assert loaded.alignment_levels == ('C3', 'extra0')


def test_yolo_default_levels_follow_the_priors_and_not_init_run(monkeypatch):
    """YOLO: a box is the positive of the one prior of highest shape IoU. Four boxes shaped like level 0's
    priors and one like level 1's: 4 of 5 = 80 % on P3, so P3 alone. A run continuing another takes its priors
    (its weights were trained with them) but chooses its levels on its own source boxes, unless that run had
    the same source split (the same boxes: its stored levels)."""
    boxes = np.array([[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.5], [0.5, 0.2, 0.8, 0.35], [0.6, 0.6, 0.7, 0.7],
                      [0.1, 0.1, 0.5, 0.5]], np.float32)  # (h, w): PRIORS[0][0], [0][1], [0][2], [0][0], [1][0]
    config = yolo_config(anchors=None, init_run='/runs/burn_in')
    import adapt.models.families as families
    monkeypatch.setattr(families, 'split_boxes', lambda builder, split: boxes)
    init_config = yolo_config(anchors=PRIORS).to_dict()
    init_config['yolo']['model']['alignment_levels'] = ['P4']
    lines = []
    same = with_data_settings(config, None, init_config, print_fn=lines.append)
    assert lines == ['yolo: anchors, alignment_levels from init_run /runs/burn_in']
    assert list(same.yolo.model.alignment_levels) == ['P4']
    lines = []
    filled = with_data_settings(config, None, {**init_config, 'train_split': 'train_dusk'}, print_fn=lines.append)
    assert lines == ['yolo: anchors from init_run /runs/burn_in', 'yolo: alignment_levels from 5 boxes of train_day']
    np.testing.assert_allclose(np.asarray(filled.yolo.model.anchors, np.float64), PRIORS)
    detector = build_detector(filled, 3)
    np.testing.assert_array_equal(positives_per_level(detector, boxes), [4, 1])
    assert detector.alignment_levels == ('P3',)


# ------------------------------------------------------------------------------------------ (d) image level
def _two_level_ctx(levels=('C3', 'C4')):
    rng = np.random.default_rng(5)
    make = lambda: {'C3': jnp.asarray(rng.normal(size=(4, 4, 4, 3)), jnp.float32),  # noqa: E731
                    'C4': jnp.asarray(rng.normal(1.0, 2.0, (4, 2, 2, 5)), jnp.float32)}
    return _ctx(types.SimpleNamespace(alignment_levels=levels), make(), make(), progress=0.4)


def test_image_terms_over_two_levels_are_the_means_of_the_single_level_values():
    ctx = _two_level_ctx()
    params = get_loss('dann_image').init(jax.random.key(2), ctx, levels='C3,C4', hidden=4)
    assert {name: p['conv']['kernel'].shape[2] for name, p in params.items()} == {'C3': 3, 'C4': 5}

    @jax.jit  # one program for every value (eagerly, each operation compiles on its own)
    def values(params):
        return {'both': dann_image(ctx, params, levels='C3,C4', hidden=4),
                'singles': [dann_image(ctx, {name: params[name]}, level=name, hidden=4) for name in ('C3', 'C4')],
                'default': dann_image(ctx, params, hidden=4)[0],  # the detector's alignment levels
                'pairs': [(term(ctx, levels=('C3', 'C4'))[0], [term(ctx, level=name)[0] for name in ('C3', 'C4')])
                          for term in (mmd, coral_loss)]}
    v = values(params)
    (both, metrics), singles = v['both'], v['singles']
    np.testing.assert_allclose(float(both), np.mean([float(x) for x, _ in singles]), rtol=1e-6)
    np.testing.assert_allclose(float(metrics['source_bce']), np.mean([float(m['source_bce']) for _, m in singles]),
                               rtol=1e-6)
    np.testing.assert_allclose(float(v['default']), float(both), rtol=1e-7)
    for pair, single in v['pairs']:
        np.testing.assert_allclose(float(pair), np.mean([float(x) for x in single]), rtol=1e-6)


@pytest.mark.parametrize('hparams,needle', [(dict(level='C3', levels='C4'), 'give one of them'),
                                            (dict(levels='C3,C9'), 'C9 is not a feature map')])
def test_bad_levels_are_one_line_errors(hparams, needle):
    with pytest.raises(ValueError, match=needle) as error:
        mmd(_two_level_ctx(), **hparams)
    assert '\n' not in str(error.value)


# ------------------------------------------------------------------------------------------ (e) Faster R-CNN
def test_faster_rcnn_instances_are_one_group_of_roi_features():
    """Faster R-CNN's instances stay the RoI head's hidden features, one group 'roi' with the instance mask;
    dann_instance has one classifier for it, is finite, and trains the RoI head through them."""
    from tests.test_faster_rcnn import frcnn_config
    detector = build_detector(frcnn_config(), 6)
    variables = _random_variables(detector.init)
    _, features, _ = jax.jit(detector.apply)(variables, _images(8))
    assert set(features['instances']) == {'roi'}
    roi = features['instances']['roi']
    assert roi['features'].shape == (2, 8, 32)
    np.testing.assert_array_equal(np.asarray(roi['mask']), np.asarray(features['instance_mask']))
    ctx = _ctx(detector, features, features)
    classifiers = get_loss('dann_instance').init(jax.random.key(3), ctx, hidden=8)
    assert set(classifiers) == {'roi'}

    def loss(params):
        v = {**variables, 'params': params}
        source, target = detector.apply(v, _images(8))[1], detector.apply(v, _images(9))[1]
        return dann_instance(_ctx(detector, source, target), classifiers, hidden=8, gamma=0.0)[0]
    value, grads = jax.jit(jax.value_and_grad(loss))(variables['params'])
    assert np.isfinite(float(value)) and float(value) > 0
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads['roi_head']))


# ------------------------------------------------------------------------------------------ saved runs
def test_a_run_saved_with_the_instance_projections_continues_as_init_run(tmp_path):
    """A burn-in saved before the instance projections went: its run.json names `instance_dim` and its
    parameters hold 'instance0..2'. It still builds and evaluates, and init_run takes every other variable of it
    unchanged (the projections dropped by the family's `from_saved`)."""
    from adapt.run_models import run_detector
    from adapt.runs import load_run, write_run
    from adapt.trainers.detection import initial_variables, setup
    from adapt.training.checkpoint import Checkpointer
    config = tiny_config()
    config.ssd.model.instance_dim = 8
    detector = build_detector(config, 3)
    variables = _random_variables(detector.init)
    rng = np.random.default_rng(9)
    old_params = {**variables['params'], **{
        f'instance{k}': {'kernel': rng.normal(size=(1, 1, c, 8)).astype(np.float32), 'bias': np.zeros(8, np.float32)}
        for k, c in enumerate((16, 32, 16))}}
    write_run(str(tmp_path), 'detector', config, class_names=['a', 'b', 'c'])
    checkpointer = Checkpointer(str(tmp_path / 'checkpoints'))
    checkpointer.save(0, {'params': {'detector': old_params}, 'batch_stats': variables['batch_stats']})
    checkpointer.close()
    run = load_run(str(tmp_path), 'detector')
    outputs, _, _ = jax.jit(run_detector(run).apply)(run.variables(), _images(10))  # evaluation reads what it has
    np.testing.assert_allclose(np.asarray(outputs['cls_logits']),
                               np.asarray(jax.jit(detector.apply)(variables, _images(10))[0]['cls_logits']), rtol=1e-6)
    continued = run.config
    continued.update(method='dann', init_run=str(tmp_path))
    loaded = initial_variables(continued, setup(continued, 3).detector)
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, variables))
