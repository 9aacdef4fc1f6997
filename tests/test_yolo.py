"""YOLO: k-means priors against a loop re-derivation, targets and loss against NumPy on a hand-made case, a planted
perfect prediction through post-processing and COCO AP, an overfit batch, 1 device == 4 devices, and the
data-derived priors stored in run.json and read back by a loaded run."""
import json

import jax
import numpy as np
import pytest

from adapt.evaluation import detections_to_results, evaluate_coco, ground_truth_from_arrays
from adapt.models.families import build_detector
from adapt.models.yolo import score_logits
from adapt.models.yolo_detector import derive_priors
from adapt.priors import kmeans_priors
from tests.test_methods import _assert_trees, _batch, _stepper
from tests.tiny_config import RESNET10, tiny_config

# (width, height) per level: level 0 (stride 8) the three small ones, level 1 (stride 16) the large ones
PRIORS = [[[0.1, 0.1], [0.2, 0.1], [0.15, 0.3]], [[0.4, 0.4], [0.6, 0.3], [0.8, 0.9]]]


def yolo_config(size=32, anchors=PRIORS, **overrides):
    c = tiny_config(size=size, detector='yolo', **overrides)
    c.yolo.model.update(dict(width=0.125, levels=('C3', 'C4'), anchors=anchors, neck_channels=16, instance_top_k=8))
    c.yolo.model.backbone_kwargs = RESNET10
    c.yolo.postprocess.update(dict(max_detections=20, pre_nms_top_k=100))
    return c


# ------------------------------------------------------------------------------------------ priors
def _reference_kmeans(wh, k, seed):
    """Lloyd's k-means with d = 1 - IoU of centre-aligned shapes, one box and one centroid at a time."""
    def iou(a, b):
        inter = min(a[0], b[0]) * min(a[1], b[1])
        return inter / (a[0] * a[1] + b[0] * b[1] - inter)

    unique = sorted(set(map(tuple, wh.tolist())))
    start = np.random.default_rng(seed).choice(len(unique), k, replace=False)
    centroids = [unique[i] for i in start]
    previous = None
    while True:
        assignment = []
        for box in wh.tolist():
            distances = [1 - iou(box, c) for c in centroids]
            assignment.append(distances.index(min(distances)))
        if assignment == previous:
            break
        previous = assignment
        for c in range(k):
            members = [box for box, a in zip(wh.tolist(), assignment) if a == c]
            if members:
                centroids[c] = (sum(m[0] for m in members) / len(members), sum(m[1] for m in members) / len(members))
    return sorted(centroids, key=lambda c: c[0] * c[1])


def test_kmeans_priors_equal_a_loop_reference():
    rng = np.random.default_rng(7)
    wh = np.exp(rng.normal(-2.5, 0.6, (200, 2)))
    wh = np.concatenate([wh, wh[:20]])  # repeated shapes: the start draws distinct ones
    for k, seed in ((6, 0), (4, 3)):
        np.testing.assert_allclose(kmeans_priors(wh, k, seed=seed), _reference_kmeans(wh, k, seed), rtol=1e-12)
    # derive_priors: yxyx boxes -> (w, h), k = 3 per level, the smallest to the finest level
    boxes = np.concatenate([np.full((220, 2), 0.2), 0.2 + wh[:, ::-1]], axis=1)
    anchors = derive_priors(yolo_config(), boxes, (32, 32))['anchors']
    np.testing.assert_allclose(np.concatenate(anchors), _reference_kmeans(wh, 6, 0), rtol=1e-6)
    assert [len(a) for a in anchors] == [3, 3]
    with pytest.raises(ValueError, match='at least 6 distinct'):
        kmeans_priors(wh[:5], 6)


# ------------------------------------------------------------------------------------------ targets, loss
STEPS, LR = 40, 0.05  # the overfit test's SGD schedule (the tiny preset's optimizer)


@pytest.fixture(scope='module')
def config():
    return yolo_config(method='source_only', num_steps=STEPS, lr=LR)


@pytest.fixture(scope='module')
def detector(config):
    return build_detector(config, num_classes=3)


@pytest.fixture(scope='module')
def postprocess(detector):
    return jax.jit(detector.postprocess)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _bce(x, z):
    return np.logaddexp(0, x) - x * z


def _entropy(z):
    return -sum(p * np.log(p) for p in (z, 1 - z) if p > 0)


def _iou(a, b):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# Hand-made ground truth (32-px images: level 0 a 4x4 grid, level 1 2x2; 3 priors per cell each):
#   box 0: centre (0.3, 0.6), h 0.1, w 0.2 -> prior (0.2, 0.1) of level 0 (IoU 1), cell (1, 2): slot (1*4+2)*3+1 = 19
#   box 1: centre (0.75, 0.25), h 0.5, w 0.4 -> prior (0.4, 0.4) of level 1 (IoU 0.8), cell (1, 0): 48 + 2*3 = 54
#   box 2: the cell and prior of box 0 (centre (0.32, 0.61)): the first box keeps slot 19
#   box 3: padding
GT = {'boxes': np.array([[[0.25, 0.5, 0.35, 0.7], [0.5, 0.05, 1.0, 0.45], [0.27, 0.51, 0.37, 0.71], [0, 0, 0, 0]]],
                        np.float32),
      'labels': np.array([[2, 0, 1, -1]], np.int32), 'mask': np.array([[True, True, True, False]])}
SLOTS = {19: dict(label=2, offsets=(0.3 * 4 - 1, 0.6 * 4 - 2), log_sizes=(0.0, 0.0), scale=2 - 0.02),
         54: dict(label=0, offsets=(0.75 * 2 - 1, 0.25 * 2 - 0), log_sizes=(np.log(0.5 / 0.4), 0.0), scale=2 - 0.2)}


@pytest.fixture(scope='module')
def hand_case(detector):
    """Random outputs for GT, except slot 20 (box 0's cell, prior (0.15, 0.3)) predicting box 0 shifted by 1/8
    of its height (IoU 0.78: ignored, not a negative) -> (outputs, targets, (loss, metrics))."""
    rng = np.random.default_rng(0)
    a = len(detector.grid.boxes)
    outputs = {'objectness': rng.normal(size=(1, a)), 'class_logits': rng.normal(size=(1, a, 3)),
               'box_codes': 0.5 * rng.normal(size=(1, a, 4))}
    outputs['box_codes'][0, 20] = [np.log(0.25 / 0.75), np.log(0.4 / 0.6), np.log(0.1 / 0.3), np.log(0.2 / 0.15)]
    outputs = {k: v.astype(np.float32) for k, v in outputs.items()}
    targets, loss = jax.jit(lambda o, b: (detector.targets(b), detector.loss(o, b)))(outputs, GT)
    return outputs, jax.tree.map(np.asarray, targets), loss


def test_targets_by_hand(detector, hand_case):
    t = hand_case[1]
    assert np.flatnonzero(t['responsible'][0]).tolist() == sorted(SLOTS)
    for slot, want in SLOTS.items():
        assert t['labels'][0, slot] == want['label']
        np.testing.assert_allclose(t['offsets'][0, slot], want['offsets'], atol=1e-6)
        np.testing.assert_allclose(t['log_sizes'][0, slot], want['log_sizes'], atol=1e-6)
        np.testing.assert_allclose(t['scale'][0, slot], want['scale'], atol=1e-6)
    # the prior boxes sit at their cells: slot 19 is level 0's cell (1, 2) with prior (w 0.2, h 0.1)
    np.testing.assert_allclose(detector.grid.boxes[19], [0.375 - 0.05, 0.625 - 0.1, 0.375 + 0.05, 0.625 + 0.1])


def _numpy_decode(codes):
    """Every prediction's box from the layout re-derived here: level sizes (4, 2), 3 priors, cell-major."""
    cells = [(i, j, s, w, h) for level, s in enumerate((4, 2)) for i in range(s) for j in range(s)
             for w, h in PRIORS[level]]
    out = []
    for (i, j, s, w, h), (ty, tx, th, tw) in zip(cells, codes):
        cy, cx = (i + _sigmoid(ty)) / s, (j + _sigmoid(tx)) / s
        hh, ww = h * np.exp(th), w * np.exp(tw)
        out.append((cy - hh / 2, cx - ww / 2, cy + hh / 2, cx + ww / 2))
    return np.array(out)


def test_loss_against_numpy(hand_case):
    outputs, _, (loss, metrics) = hand_case
    o, c, t = (outputs[k][0].astype(np.float64) for k in ('objectness', 'class_logits', 'box_codes'))
    decoded = _numpy_decode(t)
    best = np.array([max(_iou(d, g) for g in GT['boxes'][0, :3]) for d in decoded])
    assert best[20] > 0.5 and 20 not in SLOTS
    obj, cls, box = 0.0, 0.0, 0.0
    for slot in range(len(o)):
        if slot in SLOTS:
            want = SLOTS[slot]
            obj += _bce(o[slot], 1.0)
            cls += sum(_bce(c[slot, k], float(k == want['label'])) for k in range(3))
            box += want['scale'] * sum(
                [_bce(t[slot, d], want['offsets'][d]) - _entropy(want['offsets'][d]) for d in (0, 1)]
                + [(t[slot, 2 + d] - want['log_sizes'][d]) ** 2 for d in (0, 1)])
        elif best[slot] <= 0.5:
            obj += _bce(o[slot], 0.0)
    n = len(SLOTS)
    np.testing.assert_allclose(metrics['obj_loss'], obj / n, rtol=1e-5)
    np.testing.assert_allclose(metrics['cls_loss'], (obj + cls) / n, rtol=1e-5)
    np.testing.assert_allclose(metrics['box_loss'], box / n, rtol=1e-5)
    np.testing.assert_allclose(loss, (obj + cls + box) / n, rtol=1e-5)
    assert metrics['positives_per_image'] == 2


def test_instances_are_the_neck_maps_at_the_top_scores_cells(detector):
    """Instances at the K predictions of highest objectness x class probability: the neck map the predictor
    reads, at the prediction's cell (levels in order, cells row-major, 3 priors per cell), in its level's group;
    the generic sigmoid reader (the instance logits, LwF's 'cls_logits') sees logit(that score) per class."""
    rng = np.random.default_rng(1)
    a = len(detector.grid.boxes)
    o, c = 3 * rng.normal(size=(2, a)), 3 * rng.normal(size=(2, a, 3))
    score = _sigmoid(o)[..., None] * _sigmoid(c)
    necks = [rng.normal(size=(2, 4, 4, 8)).astype(np.float32), rng.normal(size=(2, 2, 2, 8)).astype(np.float32)]
    maps = {'P3': np.zeros((2, 4, 4, 1)), 'head_maps': necks}

    def instances(o, c, maps):
        outputs = {'cls_logits': score_logits(o, c)}
        return outputs, detector.with_instances(outputs, maps)
    outputs, features = jax.jit(instances)(o.astype(np.float32), c.astype(np.float32), maps)
    np.testing.assert_allclose(outputs['cls_logits'], np.log(score / (1 - score)), rtol=1e-5, atol=1e-5)
    top = np.argsort(-score.max(-1), axis=1, kind='stable')[:, :8]
    for b in range(2):
        for slot, index in enumerate(top[b]):
            level, cell = (0, index // 3) if index < 48 else (1, (index - 48) // 3)
            width = (4, 2)[level]
            for group, name in enumerate(('P3', 'P4')):
                got = features['instances'][name]
                assert bool(got['mask'][b, slot]) == (group == level)
                want = necks[level][b, cell // width, cell % width] if group == level else np.zeros(8)
                np.testing.assert_array_equal(got['features'][b, slot], want)
        np.testing.assert_allclose(features['instance_logits'][b], outputs['cls_logits'][b, top[b]])
    assert set(features) == {'P3', 'instances', 'instance_logits', 'instance_mask'}
    assert detector.feature_levels == ('C3', 'C4', 'P3', 'P4') and detector.alignment_levels == ('C4',)


# ------------------------------------------------------------------------------------------ decoding
def _rectangles(n=8, size=32):
    """Images of 2 coloured rectangles on grey noise; the colour (red, green, blue) is the class."""
    rng = np.random.default_rng(1)
    images = 0.5 + 0.05 * rng.standard_normal((n, size, size, 3))
    boxes, labels = np.zeros((n, 4, 4), np.float32), np.full((n, 4), -1, np.int32)
    for i in range(n):
        for k, (y, x) in enumerate(((0.05, 0.05), (0.5, 0.5))):
            y0, x0 = (np.array([y, x]) + rng.uniform(0, 0.1, 2)) * size
            y1, x1 = np.array([y0, x0]) + rng.uniform(0.2, 0.4, 2) * size
            y0, x0, y1, x1 = (int(round(v)) for v in (y0, x0, y1, x1))
            labels[i, k] = (i + k) % 3
            images[i, y0:y1, x0:x1] = np.eye(3)[labels[i, k]]
            boxes[i, k] = np.array([y0, x0, y1, x1]) / size
    return {'image': images.astype(np.float32), 'boxes': boxes, 'labels': labels, 'mask': labels >= 0}


def _coco(batch, dets, size=32):
    """COCO summary of detections against a batch's ground truth (adapt.evaluation)."""
    n = len(batch['boxes'])
    ids, sizes = np.arange(1, n + 1), np.full(n, size)
    gt = ground_truth_from_arrays(ids, batch['boxes'], batch['labels'], sizes, sizes, ('r', 'g', 'b'),
                                  mask=batch['mask'])
    mask = np.arange(dets.scores.shape[1])[None] < dets.num_valid[:, None]
    results = detections_to_results(ids, dets.boxes, dets.scores, dets.classes, sizes, sizes, mask=mask)
    return evaluate_coco(gt, results).summary()


def test_planted_perfect_prediction_decodes_to_the_ground_truth(detector, postprocess):
    """Outputs that put each box of the rectangles batch (both levels' priors) at its responsible prediction."""
    batch = _rectangles()
    t = jax.tree.map(np.asarray, jax.jit(detector.targets)({k: batch[k] for k in ('boxes', 'labels', 'mask')}))
    assert t['responsible'].sum() == batch['mask'].sum()  # no two boxes share a prediction
    level0 = t['responsible'][:, :48].sum()
    assert 0 < level0 < batch['mask'].sum()
    offsets = np.clip(t['offsets'], 1e-6, 1 - 1e-6)
    outputs = {'objectness': np.where(t['responsible'], 10.0, -10.0),
               'class_logits': np.where(np.eye(3)[t['labels']] > 0, 10.0, -10.0),
               'box_codes': np.concatenate([np.log(offsets / (1 - offsets)), t['log_sizes']], -1)}
    dets = jax.tree.map(np.asarray, postprocess({k: v.astype(np.float32) for k, v in outputs.items()}))
    np.testing.assert_array_equal(dets.num_valid, batch['mask'].sum(1))
    for b in range(len(dets.num_valid)):
        n = dets.num_valid[b]
        got = sorted(zip(dets.classes[b, :n].tolist(), dets.boxes[b, :n].tolist()))
        want = sorted(zip(batch['labels'][b][batch['mask'][b]].tolist(), batch['boxes'][b][batch['mask'][b]].tolist()))
        assert [c for c, _ in got] == [c for c, _ in want]
        np.testing.assert_allclose([bx for _, bx in got], [bx for _, bx in want], atol=1e-5)
    summary = _coco(batch, dets)
    assert summary['AP50'] == pytest.approx(1.0) and summary['AP'] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope='module')
def one_device(config):
    """(initial state, the train step on one device) of the tiny yolo preset."""
    return _stepper(config, 1)


def test_overfits_a_small_batch(detector, postprocess, one_device):
    """The train step on one batch of 8 images reaches mAP@0.5 >= 0.9 on it, evaluated with the batch's
    BatchNorm statistics (40 steps are too few for the running averages)."""
    state, step = one_device
    batch = _rectangles()
    for _ in range(STEPS):
        state, metrics = step(state, {'source': batch})
    variables = {'params': state.params['detector'], 'batch_stats': state.batch_stats}
    forward = jax.jit(lambda v, x: detector.eval_model.apply(v, x, train=True, mutable=['batch_stats'])[0][0])
    dets = jax.tree.map(np.asarray, postprocess(forward(variables, batch['image'])))
    assert _coco(batch, dets)['AP50'] >= 0.9, metrics


def test_one_device_equals_four(config, one_device):
    state, one = one_device
    batch = {'source': _batch(0)}
    (s1, m1), (s4, m4) = one(state, batch), _stepper(config, 4)[1](state, batch)
    _assert_trees((s1.params, s1.batch_stats), (s4.params, s4.batch_stats))
    assert {'detection_source/box_loss', 'detection_source/cls_loss'} <= set(m1) == set(m4)
    for k in m1:
        np.testing.assert_allclose(m1[k], m4[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_derived_priors_are_stored_and_a_loaded_run_rebuilds_the_detector(env, tmp_path):
    """What adapt.trainers.detection.train does before it trains: the None priors become k-means priors of the
    source split's boxes, then the alignment levels are chosen with them; run.json stores both, and the run read
    back builds a detector with them."""
    import tensorflow_datasets as tfds
    from adapt.models.data_settings import split_boxes
    from adapt.models.families import with_data_settings
    from adapt.priors import box_shapes
    from adapt.run_models import run_detector
    from adapt.runs import Run, read_run, write_run
    config = yolo_config(anchors=None, dataset='daynight_synth/tiny')
    builder = tfds.builder('daynight_synth/tiny', data_dir=env[1])
    boxes = split_boxes(builder, 'train_day')
    lines = []
    filled = with_data_settings(config, builder, print_fn=lines.append)
    assert config.yolo.model.anchors is None
    assert lines == [f'yolo: anchors, alignment_levels from {len(boxes)} boxes of train_day']
    want = kmeans_priors(box_shapes(boxes), 6)
    write_run(str(tmp_path), 'detector', filled, class_names=['a', 'b', 'c'])
    stored = json.load(open(tmp_path / 'run.json'))['config']['yolo']['model']['anchors']
    np.testing.assert_allclose(np.concatenate(stored), want, rtol=1e-12)
    detector = run_detector(Run(str(tmp_path), read_run(str(tmp_path), 'detector'), 0, {}))
    np.testing.assert_allclose(np.concatenate(detector.grid.priors), want, rtol=1e-12)
    np.testing.assert_allclose(detector.grid.boxes[:3, 2:] - detector.grid.boxes[:3, :2], want[:3, ::-1], rtol=1e-5)
    levels = json.load(open(tmp_path / 'run.json'))['config']['yolo']['model']['alignment_levels']
    assert set(levels) <= {'P3', 'P4'} and detector.alignment_levels == tuple(levels)  # chosen on the priors
    unresolved = build_detector(config, 3)  # what the scripts build to check a preset before the run starts
    with pytest.raises(ValueError, match='anchors is None'):
        unresolved.grid.boxes
