"""Faster R-CNN: the proposal layer against a NumPy re-derivation (decode, clip, size filter, per-level top-k,
greedy NMS, merge), anchor sizes from the data's quantiles, overfitting one batch, 1 device == 4 devices
(sampling included) with DANN at image and instance level on, and a DANN run through the trainer.

The training tests share one config whose train step is one program for any step count (constant learning
rate, constant reversal coefficient): the 1-device step compiles once for the 1 == 4 and the overfit tests,
and the trainer's 4-device step and predict function are the ones those tests compiled (same shapes as the
tiny script preset's batches), found in the session's compilation cache."""
import json

import jax
import numpy as np
import pytest

from adapt.evaluation import detections_to_results, evaluate_coco, ground_truth_from_arrays
from adapt.trainers.detection import init_state, setup
from adapt.models.inference import make_predict_fn
from adapt.models.rpn import ProposalSettings, propose
from adapt.training import data_parallel, make_mesh, replicate, shard_batch, to_host
from tests.tiny_config import RESNET10, get_config

NUM_CLASSES = 6  # daynight_synth's
NO_SCHEDULE = dict(dann_image=dict(level='', hidden=8, gamma=0.0), dann_instance=dict(hidden=8, gamma=0.0))


def frcnn_config():
    """The tiny script preset (daynight_synth/tiny, 32 px, batches of 4, 8 boxes) with a tiny Faster R-CNN
    (ResNet-10 x0.125, FPN on C2-C3: 8x8 and 4x4 maps), DANN at both levels, SGD at a constant rate."""
    c = get_config()
    c.update(dict(detector='faster_rcnn', method='dann', adaptation_losses='dann_image:0.1,dann_instance:0.1',
                  lr=0.02, num_steps=2, checkpoint_every=2, log_every=1, num_draw=0))
    c.optimizer.update(dict(name='sgd', schedule='constant', warmup_steps=10))
    c.adaptation_hparams.update(NO_SCHEDULE)  # reversal coefficient 1 from step 0
    c.faster_rcnn.model.update(dict(width=0.125, backbone_kwargs=RESNET10, levels=('C2', 'C3'), fpn_channels=16,
                                    anchor_sizes=(8.0, 16.0), head_dim=32, instance_top_k=8))
    c.faster_rcnn.rpn.update(dict(pre_nms_top_n=(48, 48), post_nms_top_n=(16, 16), batch_size_per_image=64))
    c.faster_rcnn.roi.update(dict(output_size=4, batch_size_per_image=16))
    return c


# ----------------------------------------------------------------------------------------- proposals
def np_decode(codes, anchors):
    """Faster R-CNN decoding with weights (1, 1, 1, 1), exponent clamped at log(1000 / 16), re-derived."""
    ha, wa = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cy, cx = anchors[:, 0] + ha / 2 + codes[..., 0] * ha, anchors[:, 1] + wa / 2 + codes[..., 1] * wa
    h = np.exp(np.minimum(codes[..., 2], np.log(1000 / 16))) * ha
    w = np.exp(np.minimum(codes[..., 3], np.log(1000 / 16))) * wa
    return np.clip(np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1), 0, 1)


def np_iou(a, b):
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.maximum(hi - lo, 0))
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return inter / union if union > 0 else 0.0


def np_greedy_nms(boxes, scores, threshold):
    kept = []
    for i in np.argsort(-scores, kind='stable'):
        if all(np_iou(boxes[k], boxes[i]) <= threshold for k in kept):
            kept.append(i)
    return kept


def test_proposals_are_the_greedy_per_level_nms_of_the_best_anchors():
    """Two levels of anchors with random objectness and codes; the reference walks each level: decode and
    clip every anchor, drop boxes under min_size pixels, keep the pre_nms_top_n best, greedy NMS at 0.7,
    then the post_nms_top_n best of both levels by score."""
    from adapt.anchors import grid_anchors
    rng = np.random.default_rng(0)
    image = (64, 64)
    anchors = grid_anchors([(8, 8), (4, 4)], image, (8, 16), [(12.0,), (28.0,)], (0.5, 1.0, 2.0))
    counts = [8 * 8 * 3, 4 * 4 * 3]
    logits = rng.normal(size=(2, len(anchors))).astype(np.float32)
    codes = (rng.normal(size=(2, len(anchors), 4)) * 0.6).astype(np.float32)
    settings = ProposalSettings(pre_nms_top_n=(40, 40), post_nms_top_n=(30, 30), iou_threshold=0.7, min_size=4.0)
    boxes, scores, valid = (np.asarray(x) for x in jax.jit(
        lambda l, c: propose(l, c, anchors, counts, image, settings, train=True))(logits, codes))
    assert boxes.shape == (2, 30, 4) and scores.shape == valid.shape == (2, 30)
    level = np.repeat([0, 1], counts)
    for b in range(2):
        decoded = np_decode(codes[b].astype(np.float64), anchors.astype(np.float64))
        sides = (decoded[:, 2:] - decoded[:, :2]) * 64
        big = (sides >= 4.0).all(-1)
        assert (~big).sum() > 10  # the size filter did something
        candidates = []
        for lv in range(2):
            idx = np.nonzero((level == lv) & big)[0]
            idx = idx[np.argsort(-logits[b, idx], kind='stable')[:40]]
            candidates += [idx[k] for k in np_greedy_nms(decoded[idx], logits[b, idx], 0.7)]
        want = sorted(candidates, key=lambda i: -logits[b, i])[:30]
        n = int(valid[b].sum())
        assert n == len(want) and valid[b, :n].all()
        np.testing.assert_array_equal(scores[b, :n], logits[b, want])
        np.testing.assert_allclose(boxes[b, :n], decoded[want], atol=2e-6)
        assert np.all(np.diff(scores[b, :n]) <= 0) and np.all(boxes[b, n:] == 0)
        assert np.all((boxes[b, :n] >= 0) & (boxes[b, :n] <= 1)) and np.all(boxes[b, :n, 2:] >= boxes[b, :n, :2])
        for lv in range(2):  # NMS at 0.7 holds within each level
            same = [k for k, i in enumerate(want) if level[i] == lv]
            assert all(np_iou(boxes[b, i], boxes[b, j]) <= 0.7 for i in same for j in same if i < j)


# ----------------------------------------------------------------------------------------- training
def test_anchor_sizes_are_quantiles_of_the_training_boxes(env):
    import tensorflow_datasets as tfds
    from adapt.models.data_settings import split_boxes
    from adapt.models.families import with_data_settings
    config = frcnn_config()
    config.faster_rcnn.model.anchor_sizes = None
    builder = tfds.builder('daynight_synth/tiny', data_dir=env[1])
    filled = with_data_settings(config, builder, print_fn=lambda *a: None)
    boxes = split_boxes(builder, 'train_day')
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) * 32  # 32-px inputs
    np.testing.assert_allclose(filled.faster_rcnn.model.anchor_sizes, np.quantile(sides, [0.25, 0.75]), atol=0.05)
    assert len(boxes) > 10 and config.faster_rcnn.model.anchor_sizes is None  # the input config is left alone


@pytest.fixture(scope='module')
def compiled():
    """(config, setup, initial state, {devices: train step}) of the shared config."""
    config = frcnn_config()
    s = setup(config, NUM_CLASSES)
    return config, s, init_state(config, s), {n: data_parallel(s.step(config), make_mesh(n)) for n in (1, 4)}


def _run(step, state, batch, devices):
    mesh = make_mesh(devices)
    new, metrics, finite = step(replicate(state, mesh), shard_batch(batch, mesh))
    assert bool(finite)
    return to_host(new), to_host(metrics)


def _batch(seed, n=4, size=32, max_boxes=8):
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0.0, 0.5, (n, max_boxes, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.2, 0.5, (n, max_boxes, 2))], -1).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, (n, max_boxes)).astype(np.int32)
    labels[:, 3:] = -1
    return {'image': rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32), 'boxes': boxes,
            'labels': labels, 'mask': labels >= 0}


def test_one_device_equals_four_with_dann_on_both_levels(compiled):
    """One step of dann (source detection loss with its anchor and RoI sampling, image- and instance-level
    domain classifiers) on 1 and on 4 devices: parameters, BatchNorm statistics and metrics agree; the
    adversarial terms are finite and non-zero and the classifiers moved."""
    config, _, state, steps = compiled
    batch = {'source': _batch(0), 'target': {'image': _batch(1)['image']}}
    (s1, m1), (s4, m4) = (_run(steps[n], state, batch, n) for n in (1, 4))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
                 (s1.params, s1.batch_stats), (s4.params, s4.batch_stats))
    assert set(m1) == set(m4)
    for k in m1:
        np.testing.assert_allclose(m1[k], m4[k], rtol=1e-4, atol=1e-6, err_msg=k)
    for term in ('dann_image', 'dann_instance'):
        assert np.isfinite(m1[term]) and m1[term] > 0
        assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params['adaptation'][term]),
                                                              jax.tree.leaves(s1.params['adaptation'][term])))
    for k in ('rpn_cls_loss', 'rpn_box_loss', 'roi_cls_loss', 'roi_box_loss'):
        assert m1[f'detection_source/{k}'] > 0
    np.testing.assert_allclose(m1['detection_source/cls_loss'], m1['detection_source/rpn_cls_loss']
                               + m1['detection_source/roi_cls_loss'], rtol=1e-6)


def _scene_batch(n=4, size=32, max_boxes=8):
    """Coloured rectangles (class = colour) on dark noise: 1-2 objects of 8-16 px per image."""
    rng = np.random.default_rng(7)
    colours = np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.3, 1.0]])
    images = rng.uniform(0, 0.25, (n, size, size, 3)).astype(np.float32)
    boxes = np.zeros((n, max_boxes, 4), np.float32)
    labels = np.full((n, max_boxes), -1, np.int32)
    for i in range(n):
        for j in range(1 + i % 2):
            h, w = rng.integers(8, 17, 2)
            y, x = (0, 0) if j == 0 else (size - h, size - w)  # opposite corners: no overlap
            labels[i, j] = (i + j) % 3
            images[i, y:y + h, x:x + w] = colours[labels[i, j]]
            boxes[i, j] = np.array([y, x, y + h, x + w], np.float32) / size
    return {'image': images, 'boxes': boxes, 'labels': labels, 'mask': labels >= 0}


def _ap50(detector, variables, batch):
    """COCO AP@0.5 of the detector's predictions (the evaluator's predict function on 4 devices)."""
    mesh = make_mesh(4)
    dets = jax.tree.map(np.asarray, make_predict_fn(detector, mesh)(replicate(variables, mesh),
                                                                    shard_batch(batch['image'], mesh)))
    n = len(batch['image'])
    ids, sizes = np.arange(1, n + 1), np.full(n, 32)
    gt = ground_truth_from_arrays(ids, batch['boxes'], batch['labels'], sizes, sizes, tuple('abcdef'),
                                  mask=batch['mask'])
    mask = np.arange(dets.scores.shape[1])[None] < dets.num_valid[:, None]
    return evaluate_coco(gt, detections_to_results(ids, dets.boxes, dets.scores, dets.classes, sizes, sizes,
                                                   mask=mask)).summary()['AP50']


def test_overfits_one_batch(compiled):
    """The four losses trained jointly (with the domain terms on; the target is the same images) fit one batch."""
    _, s, state, steps = compiled
    scenes = _scene_batch()
    batch = {'source': scenes, 'target': {'image': scenes['image']}}
    mesh = make_mesh(1)
    state, sharded = replicate(state, mesh), shard_batch(batch, mesh)
    history = []
    for _ in range(150):
        state, metrics, _ = steps[1](state, sharded)
        history.append({k: float(v) for k, v in metrics.items() if k.startswith('detection_source/')})
    first, last = history[0], history[-1]
    for k in ('rpn_cls_loss', 'roi_cls_loss'):  # (the box terms start near 0: the appended true boxes)
        assert last[f'detection_source/{k}'] < 0.3 * first[f'detection_source/{k}'], k
    state = to_host(state)
    assert _ap50(s.detector, {'params': state.params['detector'], 'batch_stats': state.batch_stats}, scenes) >= 0.9


def test_dann_runs_through_the_trainer(tmp_path, env, compiled):
    """adapt.trainers.detection.train (what adapt_detector runs) for 2 steps of DANN at both levels on the tiny
    dataset: the terms are finite and non-zero at every step and the domain classifiers are trained."""
    import tensorflow_datasets as tfds
    from adapt.trainers.detection import train
    from tests.script_runner import final_params
    config, _, state, _ = compiled
    summary = train(config, tfds.builder('daynight_synth/tiny', data_dir=env[1]), workdir=str(tmp_path),
                    print_fn=lambda *a: None)
    assert np.isfinite(summary['validation_day']['AP50'])
    rows = [row for row in map(json.loads, open(tmp_path / 'metrics.jsonl')) if row['split'] == 'train']
    assert len(rows) == 2
    for term in ('dann_image', 'dann_instance'):
        assert all(np.isfinite(row[term]) and row[term] > 0 for row in rows)
    step, final = final_params(str(tmp_path))
    assert step == 2 and json.load(open(tmp_path / 'run.json'))['config']['detector'] == 'faster_rcnn'
    for term in ('dann_image', 'dann_instance'):
        assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params['adaptation'][term]),
                                                              jax.tree.leaves(final['params']['adaptation'][term])))
