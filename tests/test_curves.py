"""adapt.evaluation.curves on tiny cases computed by hand."""
import numpy as np
import pytest
from PIL import Image

from adapt.evaluation import (confusion_matrix, f1_curve, match_detections, plot_precision_recall,
                              precision_recall, tpr_fppi)

SQUARE, CORNER = [0, 0, .5, .5], [.5, .5, 1, 1]


def one_class_case():
    # 3 objects over 2 images.  Detections: .9 TP, .8 FP (img 0), .8 TP, .3 TP, .3 FP (img 1).
    gt = [{'boxes': [SQUARE], 'labels': [0]}, {'boxes': [SQUARE, CORNER], 'labels': [0, 0]}]
    dets = [{'boxes': [SQUARE, [.6, .6, .7, .7]], 'scores': [.9, .8], 'labels': [0, 0]},
            {'boxes': [SQUARE, CORNER, [0, 0, .1, .1]], 'scores': [.8, .3, .3], 'labels': [0, 0, 0]}]
    return match_detections(gt, dets, num_classes=1)


def test_precision_recall_at_distinct_thresholds():
    # score >= .9: 1 TP 0 FP; >= .8: 2 TP 1 FP; >= .3: 3 TP 2 FP.
    curve = precision_recall(one_class_case(), 0)
    np.testing.assert_allclose(curve['thresholds'], [.9, .8, .3])
    np.testing.assert_allclose(curve['precision'], [1, 2 / 3, 3 / 5])
    np.testing.assert_allclose(curve['recall'], [1 / 3, 2 / 3, 1])
    assert curve['ap'] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_tpr_against_false_positives_per_image():
    curve = tpr_fppi(one_class_case(), 0)
    np.testing.assert_allclose(curve['tpr'], [1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve['fppi'], [0, 0.5, 1])


def test_f1_and_best_threshold():
    curve = f1_curve(one_class_case(), 0)
    np.testing.assert_allclose(curve['f1'], [0.5, 2 / 3, 0.75])
    assert curve['best_threshold'] == 0.3 and curve['best_f1'] == pytest.approx(0.75)


def test_pooled_classes_and_class_without_positives():
    gt = [{'boxes': [SQUARE, CORNER], 'labels': [0, 1]}]
    dets = [{'boxes': [SQUARE, CORNER, [0, .5, .5, 1]], 'scores': [.5, .9, .7], 'labels': [0, 1, 2]}]
    matches = match_detections(gt, dets, num_classes=3)
    pooled = precision_recall(matches)
    np.testing.assert_allclose(pooled['thresholds'], [.9, .7, .5])
    np.testing.assert_allclose(pooled['precision'], [1, .5, 2 / 3])
    np.testing.assert_allclose(pooled['recall'], [.5, .5, 1])
    assert f1_curve(matches)['best_threshold'] == 0.5
    empty = precision_recall(matches, 2)  # a class with detections but no objects
    assert np.isnan(empty['ap']) and np.isnan(empty['recall']).all()
    np.testing.assert_allclose(empty['precision'], [0.0])
    assert np.isnan(f1_curve(matches, 2)['best_threshold'])


def test_plot_precision_recall_writes_png(tmp_path):
    path = plot_precision_recall(one_class_case(), str(tmp_path / 'pr.png'), class_names=['car'])
    with Image.open(path) as image:
        assert image.format == 'PNG' and image.size == (600, 500)
        pixels = np.asarray(image.convert('L'))
    assert pixels.min() < 100 < pixels.max()  # something was drawn


def test_confusion_matrix_by_hand():
    a, b, c = [0, 0, .4, .4], [.5, .5, .9, .9], [0, .5, .4, .9]
    gt = [{'boxes': [a, b, c], 'labels': [0, 1, 2], 'difficult': [False, False, True]},
          {'boxes': [a, [0, .02, .4, .42]], 'labels': [2, 1]}]
    dets = [{'boxes': [a, b, [.9, .9, 1, 1], a, c], 'scores': [.9, .8, .7, .2, .6], 'labels': [0, 2, 1, 1, 2]},
            # labelled 2, it overlaps the class-1 object more but takes the class-2 object first
            {'boxes': [[0, .015, .4, .415]], 'scores': [.95], 'labels': [2]}]
    cm = confusion_matrix(gt, dets, num_classes=3, iou_threshold=0.5, score_threshold=0.5)
    expected = np.zeros((4, 4), int)
    expected[0, 0] = 1  # a found as 0
    expected[1, 2] = 1  # b detected as 2
    expected[3, 1] = 1  # detection in empty space: background row
    expected[2, 2] = 1  # image 1: the class-2 detection matches its own class
    expected[1, 3] = 1  # image 1: the class-1 object is missed
    # the .2 detection is below the score threshold; the class-2 detection on the difficult object c is dropped
    np.testing.assert_array_equal(cm, expected)
    assert cm[3, 3] == 0


def test_confusion_matrix_thresholds():
    gt = [{'boxes': [[0, 0, 1, 1]], 'labels': [0]}]
    dets = [{'boxes': [[0, 0, 1, .5]], 'scores': [.4], 'labels': [0]}]  # IoU .5
    np.testing.assert_array_equal(confusion_matrix(gt, dets, 1, 0.5, 0.4), [[1, 0], [0, 0]])
    np.testing.assert_array_equal(confusion_matrix(gt, dets, 1, 0.6, 0.4), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(confusion_matrix(gt, dets, 1, 0.5, 0.5), [[0, 1], [0, 0]])
