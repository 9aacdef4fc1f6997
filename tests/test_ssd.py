"""SSD: output layout against the anchors, decode + NMS of a planted perfect prediction (instance features:
tests/test_instance_alignment.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.evaluation import detections_to_results, evaluate_coco, ground_truth_from_arrays
from adapt.models.families import build_detector
from adapt.models.ssd import SSD, level_ratios
from tests.tiny_config import RATIOS, tiny_config


def _random_variables(init, *args):
    """Variables of the right shapes without compiling `init`: N(0, 0.1) weights, unit BatchNorm variance."""
    shapes = jax.eval_shape(init, jax.random.key(0), *args)
    rng = np.random.default_rng(0)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if "'var'" in name or "'scale'" in name:
            return np.ones(s.shape, s.dtype)
        return (0.1 * rng.standard_normal(s.shape)).astype(s.dtype)
    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize('backbone,head,size', [('resnet18', 'softmax', (32, 32)), ('vgg16', 'sigmoid', (32, 48))])
def test_outputs_follow_the_anchor_order(backbone, head, size):
    num_classes = 2
    model = SSD(num_classes=num_classes, backbone=backbone, width=0.25, levels=('C3', 'C4'), extra_channels=(16,),
                aspect_ratios=RATIOS, head=head)
    images = jax.random.uniform(jax.random.key(1), (2, *size, 3))
    variables = _random_variables(model.init, images)
    (out, features), state = model.apply(variables, images, capture_intermediates=lambda m, _: m.name and m.name[:3] in (
        'cls', 'box'))
    anchors = model.anchors(size)
    sizes = model.feature_sizes(size)
    assert sizes == [(-(-size[0] // s), -(-size[1] // s)) for s in (8, 16, 32)]
    per_location = [2 + 2 * len(r) for r in level_ratios(RATIOS, 3)]
    num = [h * w * k for (h, w), k in zip(sizes, per_location)]
    c_out = num_classes + (head == 'softmax')
    assert anchors.shape == (sum(num), 4)
    assert out['cls_logits'].shape == (2, sum(num), c_out) and out['box_codes'].shape == (2, sum(num), 4)
    assert list(features) == ['C3', 'C4', 'extra0', 'head_maps']  # no head convs: the predictors read the levels
    for name, head_map in zip(['C3', 'C4', 'extra0'], features['head_maps']):
        np.testing.assert_array_equal(head_map, features[name])
    offset = 0
    for k, ((h, w), per) in enumerate(zip(sizes, per_location)):
        raw_cls = np.asarray(state['intermediates'][f'cls{k}']['__call__'][0])  # [B, h, w, per * C']
        raw_box = np.asarray(state['intermediates'][f'box{k}']['__call__'][0])
        y, x, j = np.meshgrid(np.arange(h), np.arange(w), np.arange(per), indexing='ij')
        rows = offset + ((y * w + x) * per + j).ravel()
        np.testing.assert_array_equal(np.asarray(out['cls_logits'])[:, rows],
                                      raw_cls.reshape(2, h, w, per, c_out).reshape(2, -1, c_out))
        np.testing.assert_array_equal(np.asarray(out['box_codes'])[:, rows],
                                      raw_box.reshape(2, h, w, per, 4).reshape(2, -1, 4))
        centres = (anchors[rows, :2] + anchors[rows, 2:]) / 2  # the anchor of row r sits at its cell
        np.testing.assert_allclose(centres, np.stack([(y.ravel() + 0.5) / h, (x.ravel() + 0.5) / w], -1), atol=1e-6)
        offset += h * w * per


@pytest.mark.parametrize('detector_name', ['ssd', 'retinanet'])
def test_planted_perfect_prediction_decodes_to_the_ground_truth(detector_name):
    detector = build_detector(tiny_config(size=64, detector=detector_name), num_classes=3)
    gt_boxes = np.array([[[0.1, 0.1, 0.5, 0.4], [0.55, 0.5, 0.95, 0.9], [0.2, 0.6, 0.45, 0.75], [0, 0, 0, 0]],
                         [[0.3, 0.2, 0.8, 0.6], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    gt_labels = np.array([[0, 2, 1, -1], [1, -1, -1, -1]], np.int32)
    gt_mask = gt_labels >= 0
    targets = detector.targets({'boxes': gt_boxes, 'labels': gt_labels, 'mask': gt_mask})
    cls = np.asarray(targets['cls_targets'])
    if detector.score_kind == 'softmax':
        logits = 10.0 * np.eye(4)[cls]
    else:
        logits = np.where(np.eye(4)[cls][..., 1:] > 0, 10.0, -10.0)
    outputs = {'cls_logits': jnp.asarray(logits, jnp.float32), 'box_codes': targets['box_targets']}
    dets = jax.tree.map(np.asarray, detector.postprocess(outputs))
    np.testing.assert_array_equal(dets.num_valid, gt_mask.sum(1))
    for b in range(2):
        n = dets.num_valid[b]
        got = sorted(zip(dets.classes[b, :n].tolist(), dets.boxes[b, :n].round(4).tolist()))
        want = sorted(zip(gt_labels[b][gt_mask[b]].tolist(), gt_boxes[b][gt_mask[b]].round(4).tolist()))
        assert [c for c, _ in got] == [c for c, _ in want]
        np.testing.assert_allclose([bx for _, bx in got], [bx for _, bx in want], atol=1e-4)
    sizes = np.array([64, 64])
    gt = ground_truth_from_arrays([1, 2], gt_boxes, gt_labels, sizes, sizes, ('a', 'b', 'c'), mask=gt_mask)
    mask = np.arange(dets.scores.shape[1])[None] < dets.num_valid[:, None]
    results = detections_to_results([1, 2], dets.boxes, dets.scores, dets.classes, sizes, sizes, mask=mask)
    summary = evaluate_coco(gt, results).summary()
    assert summary['AP50'] == pytest.approx(1.0) and summary['AP'] == pytest.approx(1.0)
