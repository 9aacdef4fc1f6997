"""fine_tune and feature_extract: the seeded labelled subset (ids, nesting, repetition, run.json), a frozen
backbone bit-identical after a step under a fresh head, target labels reaching the step, 1 device == 4."""
import json

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from adapt.datasets.pipeline import DetectionPipeline
from adapt.datasets.two_domain import TRAIN_FIELDS
from adapt.methods.fine_tune import BACKBONE, choose_indices, labelled_subset
from adapt.trainers.detection import data_iterator, run_record, setup, train_data
from adapt.runs import write_run
from adapt.training import Checkpointer
from adapt.training.optim import param_path
from tests.test_methods import _assert_trees, _batch, _stepper
from tests.tiny_config import tiny_config

SIZE = 20


def _examples():
    """SIZE TFDS-format examples; example i is an 8x8 image of value i with image/id 1000 + i."""
    i = np.arange(SIZE)
    return tf.data.Dataset.from_tensor_slices({
        'image': np.broadcast_to(i[:, None, None, None], (SIZE, 8, 8, 3)).astype(np.uint8),
        'image/id': 1000 + i,
        'objects': {'bbox': np.tile([[[0.1, 0.1, 0.6, 0.6]]], (SIZE, 1, 1)).astype(np.float32),
                    'label': (i % 3)[:, None]}})


def test_subset_is_seeded_nested_and_repeated_to_fill_the_batch():
    subset = lambda n, seed: labelled_subset(_examples(), SIZE, choose_indices(SIZE, n, seed), 8)  # noqa: E731
    three = subset(3, seed=5)
    record = three.record['labelled_target']
    ids = record['image_ids']
    assert three.num_examples == record['num_labelled'] == 3 and len(set(ids)) == 3
    assert ids == [1000 + i for i in record['indices']] and record['indices'] == sorted(record['indices'])
    assert subset(3, seed=5).record == three.record                   # the same seed: the same images
    assert subset(3, seed=6).record['labelled_target']['image_ids'] != ids
    assert set(ids) <= set(subset(10, seed=5).record['labelled_target']['image_ids'])  # nested in N
    # 3 images fill batches of 8; the rows are exactly those images (pixel value = position in the split)
    pipeline = DetectionPipeline(three.examples, global_batch_size=8, image_size=(8, 8), max_boxes=2,
                                 augment=None, seed=0, local_device_count=1)
    rows = [next(pipeline) for _ in range(3)]
    seen = np.concatenate([b['image_id'] for b in rows])
    pixels = np.concatenate([np.rint(b['image'][:, 0, 0, 0] * 255) for b in rows])
    assert all(len(b['image_id']) == 8 for b in rows) and set(seen) == set(ids)
    np.testing.assert_array_equal(pixels, seen - 1000)
    everything = subset(0, seed=5)
    assert everything.num_examples == SIZE and everything.record['labelled_target']['image_ids'] is None
    for bad in (SIZE + 1, -1):
        with pytest.raises(ValueError, match='num_labelled') as error:
            subset(bad, seed=0)
        assert '\n' not in str(error.value)


def _tiny_fine_tune(data_dir, **fine_tune):
    config = tiny_config(method='fine_tune', dataset='daynight_synth/tiny', train_split='train_day',
                         target_split='train_night', batch_size=4)
    config.fine_tune.update(fine_tune)
    builder = tfds.builder('daynight_synth/tiny', data_dir=data_dir)
    return config, builder, setup(config, len(builder.info.features['objects']['label'].names))


def test_labelled_target_of_a_tfds_split_and_its_run_record(env):
    config, builder, s = _tiny_fine_tune(env[1], num_labelled=3, seed=1, keep_source=True)
    assert s.domains == ('source', 'target') and s.method.uses_target_labels
    data = train_data(config, s, builder, builder)
    record = json.loads(json.dumps(run_record(config, s, builder, None, data)))   # as run.json stores it
    chosen = record['labelled_target']
    assert record['samples'] == {'source': 4, 'target': 3} and record['uses_target_labels']
    assert chosen['split'] == 'train_night' and chosen['split_size'] == 4 and len(set(chosen['image_ids'])) == 3
    # the target examples are the split's examples at the recorded positions, repeated to fill a batch of 4
    scenes = [int(e['scene_id']) for e in tfds.as_numpy(builder.as_dataset(split='train_night', shuffle_files=False))]
    subset = [int(e['scene_id']) for e in data['target'].examples.as_numpy_iterator()]
    assert sorted(subset) == sorted([scenes[i] for i in chosen['indices']] * 2)
    iterator = data_iterator(config, s, builder, builder, data)
    assert iterator.fields['target'] == TRAIN_FIELDS and iterator.pipelines['target'].num_examples == 6
    # 0 = every image; more than the split is a one-line error
    config.fine_tune.num_labelled = 0
    assert train_data(config, setup(config, s.detector.num_classes), builder, builder)["target"].num_examples == 4
    config.fine_tune.num_labelled = 5
    with pytest.raises(ValueError, match=r'num_labelled=5: choose 0 \(all\) to 4'):
        train_data(config, setup(config, s.detector.num_classes), builder, builder)


@pytest.mark.parametrize('method,name', [('fine_tune', 'freeze'), ('feature_extract', 'freeze'),
                                         ('feature_extract', 'reinit')])
def test_bad_patterns_are_one_line_errors(method, name):
    config = tiny_config(method=method)
    config.fine_tune[name] = 'conv1_('
    with pytest.raises(ValueError, match=f'fine_tune.{name}=') as error:
        setup(config, 3)
    assert '\n' not in str(error.value)


def _paths(tree):
    return {param_path(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _source_run(workdir, config):
    """A finished 'source run' whose weights are a fresh initialisation shifted by 0.5 (statistics too)."""
    fresh = jax.device_get(setup(config, 3).detector.init(jax.random.key(config.seed, impl='rbg')))
    shifted = jax.tree.map(lambda x: x + 0.5, {'params': fresh['params'], 'batch_stats': fresh['batch_stats']})
    write_run(str(workdir), 'detector', config, class_names=['a', 'b', 'c'])
    ckpt = Checkpointer(str(workdir / 'checkpoints'))
    ckpt.save(1, {'params': {'detector': shifted['params']}, 'batch_stats': shifted['batch_stats']})
    ckpt.close()
    return fresh, shifted


def test_feature_extract_starts_a_fresh_head_and_keeps_the_backbone_bit_identical(tmp_path):
    config = tiny_config(method='feature_extract', num_steps=10, init_run=str(tmp_path))
    fresh, source = _source_run(tmp_path, tiny_config())
    state, step = _stepper(config, 1)
    start = {'params': _paths(state.params['detector']), 'batch_stats': _paths(state.batch_stats)}
    for collection in start:
        want_fresh, want_source = _paths(fresh[collection]), _paths(source[collection])
        for path, value in start[collection].items():
            in_backbone = path.startswith('features/backbone/')
            np.testing.assert_array_equal(value, (want_source if in_backbone else want_fresh)[path], err_msg=path)
    new, metrics = step(state, {'target': _batch(1)})
    assert np.isfinite(metrics['detection_target'])
    end = {'params': _paths(new.params['detector']), 'batch_stats': _paths(new.batch_stats)}
    for collection in end:
        for path, value in end[collection].items():
            if path.startswith('features/backbone/'):
                np.testing.assert_array_equal(value, start[collection][path], err_msg=path)
    moved = [p for p in end['params'] if not np.array_equal(end['params'][p], start['params'][p])]
    assert {p.split('/')[0] for p in moved} >= {'cls0', 'box0', 'features'}          # the head trains
    assert all(not np.array_equal(end['batch_stats'][p], start['batch_stats'][p])
               for p in end['batch_stats'] if p.startswith('features/extra0_bn'))    # and updates its statistics
    assert not any(p.startswith('features/backbone/') for p in moved)


def test_fine_tune_reads_target_labels_and_one_device_equals_four():
    """fine_tune with the source kept and the backbone frozen by `freeze`: 1 and 4 devices agree
    (parameters, statistics, optimizer state, metrics), and other target labels give another step. (The
    detection loss on both domains is also the step of pseudo_label and translate_train.)"""
    config = tiny_config(method='fine_tune', num_steps=10)
    config.fine_tune.update(dict(freeze=BACKBONE, keep_source=True))
    source, target = _batch(0), _batch(1)
    state, one = _stepper(config, 1)
    _, four = _stepper(config, 4)
    (s1, m1), (s4, m4) = (run(state, {'source': source, 'target': target}) for run in (one, four))
    _assert_trees((s1.params, s1.batch_stats, s1.opt_state), (s4.params, s4.batch_stats, s4.opt_state))
    assert set(m1) == set(m4) == {'loss', 'detection_source', 'detection_target'} | {
        k for k in m1 if k.startswith(('detection_source/', 'detection_target/'))}
    for k in m1:
        np.testing.assert_allclose(m1[k], m4[k], rtol=1e-4, atol=1e-6, err_msg=k)
    other = dict(target, labels=np.where(target['mask'], (target['labels'] + 1) % 3, -1))
    s_other, m_other = four(state, {'source': source, 'target': other})
    assert m_other['detection_target'] != m4['detection_target']
    assert not np.array_equal(s_other.params['detector']['cls0']['kernel'], s4.params['detector']['cls0']['kernel'])
    jax.tree.map(np.testing.assert_array_equal, s4.params['detector']['features']['backbone'],
                 state.params['detector']['features']['backbone'])
