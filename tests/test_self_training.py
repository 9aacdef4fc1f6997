"""Self-training targets (adapt.methods.self_training): ignore regions give exactly zero loss, a pseudo-labelled
image's negatives are weighted (not mined) so an image without pseudo-boxes still teaches background, every
family with negatives honours ignore regions, and soft distillation is a KL with the right gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.methods.self_training import IGNORE_LABEL, round_labels, soft_distillation, with_ignore_regions
from adapt.trainers.detection import setup
from tests.test_alignment import _x64
from tests.test_yolo import yolo_config
from tests.tiny_config import tiny_config


def np_iou(boxes, box):
    """IoU [A] of yxyx `boxes` [A, 4] with one `box`."""
    inter_h = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    inter_w = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    inter = inter_h * inter_w
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(boxes) + area(np.asarray(box)) - inter)


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope='module')
def ssd():
    return setup(tiny_config(), 3).detector


PSEUDO_BOX, UNSURE_BOX = [0.1, 0.1, 0.5, 0.5], [0.55, 0.5, 0.95, 0.9]


def _pseudo_batch():
    """Image 0: one pseudo-box (class 1) and one ignore region; image 1: no pseudo-box, no ignore region."""
    zeros = np.zeros((2, 2, 4), np.float32)
    boxes, ignore = zeros.copy(), zeros.copy()
    boxes[0, 0], ignore[0, 0] = PSEUDO_BOX, UNSURE_BOX
    return {'boxes': boxes, 'labels': np.array([[1, -1], [-1, -1]], np.int32),
            'mask': np.array([[True, False], [False, False]]), 'ignore_boxes': ignore,
            'ignore_mask': np.array([[True, False], [False, False]])}


def test_ssd_pseudo_label_loss_ignores_the_band_and_weights_every_negative(ssd):
    """NumPy re-derivation: positives = IoU >= 0.5 with the pseudo-box or its best anchor; negatives = every other
    anchor below 0.5 that is not at IoU >= 0.5 with the ignore region; each image's negatives share the weight
    of 3 x max(positives, 1) anchors; the sum over the batch's positives. An anchor over the ignore region
    has exactly zero gradient; image 1's most confident background anchor has a non-zero one."""
    rng = np.random.default_rng(0)
    anchors = np.asarray(ssd.anchors, np.float64)
    count = len(anchors)
    logits = rng.normal(size=(2, count, 4)).astype(np.float32)
    codes = rng.normal(size=(2, count, 4)).astype(np.float32)
    batch = _pseudo_batch()
    cls_loss = lambda x: ssd.loss({'cls_logits': x, 'box_codes': codes}, batch)[1]['cls_loss']  # noqa: E731
    value, grad = jax.value_and_grad(cls_loss)(logits)
    grad = np.asarray(grad)

    iou = np_iou(anchors, PSEUDO_BOX)
    positive = (iou >= 0.5) | (np.arange(count) == iou.argmax())
    ignored = (np_iou(anchors, UNSURE_BOX) >= 0.5) & ~positive
    negatives = [~positive & (iou < 0.5) & ~ignored, np.ones(count, bool)]
    positives = [positive, np.zeros(count, bool)]
    ce = -np_log_softmax(logits.astype(np.float64))
    total = 0.0
    for i in range(2):
        weight = 3 * max(positives[i].sum(), 1) / negatives[i].sum()
        total += ce[i, positives[i], 2].sum() + weight * ce[i, negatives[i], 0].sum()
    np.testing.assert_allclose(float(value), total / positive.sum(), rtol=1e-5)

    assert ignored.sum() >= 1
    np.testing.assert_array_equal(grad[0, ignored], 0.0)
    background = np_log_softmax(logits[1].astype(np.float64))[:, 0]
    assert np.abs(grad[1, background.argmax()]).sum() > 0
    # without the ignore region, the same anchors are negatives and get a gradient
    plain = {**batch, 'ignore_mask': np.zeros_like(batch['ignore_mask'])}
    grad_plain = np.asarray(jax.grad(lambda x: ssd.loss({'cls_logits': x, 'box_codes': codes}, plain)[1]['cls_loss'])(
        logits))
    assert (np.abs(grad_plain[0, ignored]).sum(-1) > 0).all()


def test_retinanet_and_yolo_give_no_objectness_or_class_gradient_over_an_ignore_region():
    """The focal loss (every anchor) and YOLO's objectness negatives leave out what overlaps an ignore region
    (anchors at the matcher's negative IoU; decoded YOLO boxes beyond its ignore threshold)."""
    batch = _pseudo_batch()
    for family in ('retinanet', 'yolo'):
        det = setup(yolo_config() if family == 'yolo' else tiny_config(detector=family), 3).detector
        outputs = jax.jit(lambda: det.apply(det.init(jax.random.PRNGKey(0)), jnp.zeros((2, 32, 32, 3)))[0])()
        key = 'objectness' if family == 'yolo' else 'cls_logits'

        def loss(x, b):
            return det.loss({**outputs, key: x}, b)[0]
        unmasked = {**batch, 'ignore_mask': np.zeros((2, 2), bool)}
        grad, plain = map(np.asarray, jax.jit(lambda x: (jax.grad(loss)(x, batch), jax.grad(loss)(x, unmasked)))(
            outputs[key]))
        if family == 'yolo':
            boxes = np.asarray(det.grid.decode(outputs['box_codes']))[0]
            covered = np_iou(boxes.astype(np.float64), UNSURE_BOX) > 0.5
            covered &= np_iou(boxes.astype(np.float64), PSEUDO_BOX) <= 0.5
            covered &= ~np.asarray(det.targets(batch)['responsible'])[0]
        else:
            covered = (np_iou(np.asarray(det.anchors, np.float64), UNSURE_BOX) >= 0.4) & (
                np_iou(np.asarray(det.anchors, np.float64), PSEUDO_BOX) < 0.4)
        assert covered.sum() >= 1, family
        magnitude = lambda g: np.abs(g[0].reshape(len(covered), -1)).sum(-1)  # noqa: E731
        np.testing.assert_array_equal(magnitude(grad)[covered], 0.0)
        assert (magnitude(plain)[covered] > 0).all(), family


def test_faster_rcnn_never_samples_a_negative_over_an_ignore_region():
    from adapt.models.rpn import sampled_targets
    rng = np.random.default_rng(1)
    lo = rng.uniform(0, 0.8, (400, 2))
    anchors = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, (400, 2))], -1).clip(0, 1).astype(np.float32)
    gt = {k: v[0] for k, v in _pseudo_batch().items()}
    matcher = dict(matched_threshold=0.7, unmatched_threshold=0.3, allow_low_quality=True)
    near = np_iou(anchors.astype(np.float64), UNSURE_BOX) >= 0.3
    valid = np.ones(len(anchors), bool)
    for with_regions, key in ((True, 0), (False, 0)):
        truth = gt if with_regions else {k: gt[k] for k in ('boxes', 'labels', 'mask')}
        _, _, _, negative = sampled_targets(jax.random.PRNGKey(key), anchors, valid, truth, matcher, 512, 0.25,
                                            (1.0, 1.0, 1.0, 1.0))
        assert np.asarray(negative)[near].any() != with_regions


def test_stored_rounds_keep_their_ignore_regions_as_label_minus_two():
    pred = {'index': np.array([0]), 'boxes': np.array([[PSEUDO_BOX, UNSURE_BOX, [0, 0, 0.1, 0.1]]], np.float32),
            'scores': np.array([[0.7, 0.3, 0.1]], np.float32), 'classes': np.array([[1, 2, 0]]),
            'det_mask': np.array([[True, True, True]])}
    labels = round_labels(pred, 0.5, 0.2)
    assert labels['labels'].tolist() == [[1, IGNORE_LABEL, -1]] and labels['mask'].tolist() == [[True, True, False]]
    split = with_ignore_regions({k: jnp.asarray(labels[k]) for k in ('boxes', 'labels', 'mask')})
    assert np.asarray(split['mask']).tolist() == [[True, False, False]]
    assert np.asarray(split['ignore_mask']).tolist() == [[False, True, False]]
    np.testing.assert_array_equal(np.asarray(split['ignore_boxes'])[0, 1], np.float32(UNSURE_BOX))


@pytest.mark.parametrize('family', ['ssd', 'retinanet'])
def test_soft_distillation_is_zero_at_the_teacher_and_its_gradient_matches_finite_differences(family):
    det = setup(tiny_config(detector=family), 3).detector
    rng = np.random.default_rng(2)
    shape = (2, 5, det.model.num_outputs)
    with _x64():
        teacher = {'cls_logits': rng.normal(size=shape)}
        student = rng.normal(size=shape)
        loss = lambda x: soft_distillation(det, {'cls_logits': x}, teacher)  # noqa: E731
        assert float(loss(teacher['cls_logits'])) == pytest.approx(0.0, abs=1e-12)
        assert float(loss(student)) > 0
        grad = np.asarray(jax.grad(loss)(student))
        eps = 1e-6
        for index in [(0, 0, 0), (1, 3, shape[-1] - 1), (0, 4, 1)]:
            step = np.zeros(shape)
            step[index] = eps
            numeric = (float(loss(student + step)) - float(loss(student - step))) / (2 * eps)
            np.testing.assert_allclose(grad[index], numeric, rtol=1e-6, atol=1e-10)
