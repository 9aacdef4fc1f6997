"""Pseudo-label self-training: the threshold keeps every detection at or above it and none below, quality
against planted ground truth by hand, and the relabelled split carries exactly the kept boxes."""
import numpy as np
import pytest

from adapt.evaluation.pseudo_labels import pseudo_label_metrics, pseudo_label_quality, select_pseudo_labels
from adapt.methods.pseudo_label import load_labels, pseudo_labelled_split, save_labels
from adapt.methods.self_training import round_labels


def _pred():
    """Two images, four detection slots each (the last slot of image 0 is padding)."""
    box = lambda y, x, s=0.2: [y, x, y + s, x + s]  # noqa: E731
    return {
        'index': np.array([1, 0]),
        'boxes': np.array([[box(0.1, 0.1), box(0.5, 0.5), box(0.1, 0.6), box(0, 0)],
                           [box(0.3, 0.3), box(0.7, 0.1), box(0.2, 0.2), box(0.6, 0.6)]], np.float32),
        'scores': np.array([[0.9, 0.5, 0.49, 0.95], [0.8, 0.7, 0.3, 0.5]], np.float32),
        'classes': np.array([[0, 1, 2, 1], [2, 0, 1, 1]]),
        'det_mask': np.array([[True, True, True, False], [True, True, True, True]]),
        # image 0: a class-0 box where detection 0 is, a class-1 box nowhere near detection 1
        # image 1: a class-2 box at detection 0, a class-0 box at detection 1 (shifted, IoU 0.6)
        'gt_boxes': np.array([[box(0.1, 0.1), box(0.8, 0.0)], [box(0.3, 0.3), box(0.7, 0.125)]], np.float32),
        'gt_labels': np.array([[0, 1], [2, 0]]), 'gt_mask': np.array([[True, True], [True, True]])}


def test_threshold_keeps_every_detection_at_or_above_and_none_below():
    pred = _pred()
    labels = select_pseudo_labels(pred, threshold=0.5)
    want_kept = pred['det_mask'] & (pred['scores'] >= 0.5)  # 0.5 exactly is kept, padding never
    assert labels['mask'].sum(1).tolist() == want_kept.sum(1).tolist() == [2, 3]
    for i in range(2):
        kept_boxes = {tuple(b) for b in pred['boxes'][i][want_kept[i]]}
        assert {tuple(b) for b in labels['boxes'][i][labels['mask'][i]]} == kept_boxes
        assert sorted(labels['labels'][i][labels['mask'][i]]) == sorted(pred['classes'][i][want_kept[i]])
        assert (labels['labels'][i][~labels['mask'][i]] == -1).all()
    np.testing.assert_array_equal(labels['index'], [1, 0])


def test_quality_against_the_true_labels_by_hand():
    pred = _pred()
    quality = pseudo_label_quality(select_pseudo_labels(pred, 0.5), pred)
    # kept: image 0 -> det 0 (correct), det 1 (wrong place); image 1 -> det 0 (correct), det 1 (IoU
    # 0.2*0.175/(0.04+0.04-0.035) = 0.78, correct), det 3 (no true box) => 3 of 5 correct, 3 of 4 found
    assert quality == {'num_boxes': 5, 'precision': pytest.approx(3 / 5), 'recall': pytest.approx(3 / 4)}
    # what an evaluation of a self-training run logs: the same, per image
    assert pseudo_label_metrics(pred, 0.5) == {'pseudo_boxes_per_image': 2.5, 'pseudo_precision': pytest.approx(3 / 5),
                                               'pseudo_recall': pytest.approx(3 / 4)}


def test_relabelled_split_carries_exactly_the_kept_boxes_and_ignore_regions(env, tmp_path):
    import tensorflow_datasets as tfds
    builder = tfds.builder('daynight_synth/tiny', data_dir=env[1])
    n = builder.info.splits['train_night'].num_examples
    rng = np.random.default_rng(0)
    pred = {'index': rng.permutation(n), 'boxes': rng.uniform(0, 0.5, (n, 3, 4)).astype(np.float32),
            'scores': rng.uniform(0, 1, (n, 3)).astype(np.float32), 'classes': rng.integers(0, 3, (n, 3)),
            'det_mask': np.ones((n, 3), bool)}
    labels = round_labels(pred, 0.4, 0.2)
    save_labels(str(tmp_path / 'round_0.npz'), labels, {'num_boxes': 1})
    labels, quality = load_labels(str(tmp_path / 'round_0.npz'))
    assert quality == {'num_boxes': 1}
    examples = list(tfds.as_numpy(pseudo_labelled_split(builder, 'train_night', labels)))
    originals = list(tfds.as_numpy(builder.as_dataset(split='train_night', shuffle_files=False)))
    assert len(examples) == n
    for position, (example, original) in enumerate(zip(examples, originals)):
        row = int(np.flatnonzero(pred['index'] == position)[0])
        kept, sure = pred['scores'][row] >= 0.2, pred['scores'][row] >= 0.4  # an ignore region is label -2
        assert sorted(map(tuple, example['objects']['bbox'])) == sorted(map(tuple, pred['boxes'][row][kept]))
        want = np.where(sure, pred['classes'][row], -2)[kept]
        assert sorted(zip(map(tuple, example['objects']['bbox']), example['objects']['label'])) == sorted(
            zip(map(tuple, pred['boxes'][row][kept]), want))
        np.testing.assert_array_equal(tf_decode(example['image']), original['image'])
    with pytest.raises(ValueError, match='not every image'):
        pseudo_labelled_split(builder, 'train_night', {**labels, 'index': labels['index'] * 0})


def tf_decode(encoded):
    import tensorflow as tf
    return tf.io.decode_image(encoded, channels=3).numpy()


def test_rounds_train_on_the_stored_labels_and_resume_inside_a_round(env, tmp_path):
    """Two rounds of two steps: each round's labels are the model's detections at the round's start
    (threshold 0 keeps every detection of the random tiny model), logged with their quality; a run
    stopped inside round 1 (a copy of the finished run without its step-4 checkpoint: what a stop after
    step 3 leaves) resumes on round 1's stored labels, predicting nothing, and ends bit-identical."""
    import shutil

    import jax
    import tensorflow_datasets as tfds
    from adapt.trainers.detection import train
    from tests.script_runner import final_params
    from tests.tiny_config import get_config
    builder = tfds.builder('daynight_synth/tiny', data_dir=env[1])
    config = get_config()
    config.update(method='pseudo_label', num_steps=4, checkpoint_every=2, num_draw=0)
    config.pseudo_label.update(threshold=0.0, ignore_low=0.0, rounds=2, steps_per_round=2)
    train(config, builder, workdir=str(tmp_path / 'whole'), print_fn=lambda line: None)

    shutil.copytree(tmp_path / 'whole', tmp_path / 'stopped')
    shutil.rmtree(tmp_path / 'stopped' / 'checkpoints' / '4')
    assert final_params(str(tmp_path / 'stopped'))[0] == 2
    lines = []
    train(config, builder, workdir=str(tmp_path / 'stopped'), print_fn=lines.append)
    assert any('resumed from' in line for line in lines) and not any('pseudo-label round' in line for line in lines)
    (_, whole), (_, resumed) = final_params(str(tmp_path / 'whole')), final_params(str(tmp_path / 'stopped'))
    jax.tree.map(np.testing.assert_array_equal, whole, resumed)

    rounds = [load_labels(str(tmp_path / 'whole' / 'pseudo_labels' / f'round_{r}.npz')) for r in (0, 1)]
    n = builder.info.splits['train_night'].num_examples
    assert all(sorted(labels['index']) == list(range(n)) and labels['mask'].any() for labels, _ in rounds)
    assert not np.array_equal(rounds[0][0]['boxes'], rounds[1][0]['boxes'])  # round 1 saw the trained model
    import json
    logged = [json.loads(line) for line in open(tmp_path / 'whole' / 'metrics.jsonl')]
    logged = [row for row in logged if row['split'] == 'pseudo_labels']
    assert [row['step'] for row in logged] == [0, 2]
    assert [row['num_boxes'] for row in logged] == [int(labels['mask'].sum()) for labels, _ in rounds]
    assert not any('precision' in row or 'recall' in row for row in logged)  # no training label was read
    final = json.load(open(tmp_path / 'whole' / 'metrics.json'))['splits']['validation_day']
    assert 0 <= final['pseudo_precision'] <= 1 and 0 <= final['pseudo_recall'] <= 1
    assert final['pseudo_boxes_per_image'] > 0  # threshold 0 keeps every detection
