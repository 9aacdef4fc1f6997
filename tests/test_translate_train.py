"""translate_train: the translated set equals the UNIT generator applied directly and keeps every source box;
it is written once (a killed write leaves no file that is read) and read back; the target batches of the
step carry translated pixels with the source boxes; run.json records them; bad settings are one line."""
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from adapt.datasets.two_domain import TRAIN_FIELDS
from adapt.methods import translate_train
from adapt.run_models import load_generator
from adapt.trainers.detection import data_iterator, run_record, setup, train_data
from adapt.models.unit import UNIT
from adapt.runs import write_run
from tests.tiny_config import tiny_config

SPLIT = 'train_day'
MAKE_TRANSLATE_FN = translate_train.make_translate_fn


@pytest.fixture(scope='module')
def builder(env):
    return tfds.builder('daynight_synth/tiny', data_dir=env[1])


@pytest.fixture(scope='module')
def translator(unit_run, tmp_path_factory):
    """A copy of the tiny UNIT run, so the translations this module stores beside it start from none."""
    return shutil.copytree(unit_run, str(tmp_path_factory.mktemp('translator') / 'unit'))


def _source(builder):
    return list(tfds.as_numpy(builder.as_dataset(split=SPLIT, shuffle_files=False)))


def _reference(generator, image_uint8):
    """The generator (adapt.models.unit.Generator) applied directly (z = mu, a -> b) to one stored image, as uint8."""
    x = jnp.asarray(image_uint8[None], jnp.float32) / 255.0 * 2.0 - 1.0
    y = UNIT(generator.config).apply({'params': generator.params}, x, 'a', 'b', method=UNIT.translate)
    return np.round(np.clip((np.asarray(y[0]) + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8)


def _decoded(data):
    return [(tf.io.decode_png(e['image']).numpy(), e['objects']) for e in data.examples.as_numpy_iterator()]


class Interrupted(Exception):
    pass


def _counting_translate_fn(monkeypatch, fail_at=None):
    """Patch make_translate_fn to count the translation calls (batch sizes); the call numbered `fail_at`
    raises Interrupted."""
    calls = []

    def make(cfg, source, target):
        fn = MAKE_TRANSLATE_FN(cfg, source, target)

        def translate(gen_params, images):
            calls.append(len(images))
            if len(calls) == fail_at:
                raise Interrupted
            return fn(gen_params, images)
        return translate
    monkeypatch.setattr(translate_train, 'make_translate_fn', make)
    return calls


def test_translations_equal_the_generator_keep_the_boxes_and_are_written_once(builder, unit_run, tmp_path,
                                                                               monkeypatch):
    run = shutil.copytree(unit_run, str(tmp_path / 'unit'))
    path = translate_train.cache_path(run, builder, SPLIT, 0)
    assert path == os.path.join(run, 'translated', 'daynight_synth_tiny_1.1.0', 'train_day_step0.tfrecord')
    source = _source(builder)
    monkeypatch.setattr(translate_train, 'PROGRESS_EVERY_S', 0.0)  # a progress line after every batch

    # killed in its second batch: the half-written temporary file is left, no cache file
    calls = _counting_translate_fn(monkeypatch, fail_at=2)
    with pytest.raises(Interrupted):
        translate_train.translated_source(builder, SPLIT, run, batch_size=3, print_fn=lambda line: None)
    assert not os.path.exists(path) and os.path.getsize(path + '.tmp0') > 0

    # the next run translates everything again: 4 images in batches of 3 (the last one padded)
    calls, lines = _counting_translate_fn(monkeypatch), []
    data = translate_train.translated_source(builder, SPLIT, run, batch_size=3, print_fn=lines.append)
    assert calls == [3, 3] and os.path.exists(path) and not os.path.exists(path + '.tmp0')
    assert '3/4 images translated' in lines[1] and '4/4 images translated' in lines[-1]
    assert data.split is None and data.num_examples == len(source) == 4
    assert data.record == {'translated_source': {'split': SPLIT, 'translator': run, 'step': 0, 'num_images': 4,
                                                 'cache': path}}
    translated, generator = _decoded(data), load_generator(run)
    assert len(translated) == len(source)
    for (image, objects), original in zip(translated, source):
        assert image.shape == original['image'].shape == (64, 64, 3)   # the stored image's own resolution
        diff = np.abs(image.astype(int) - _reference(generator, original['image']).astype(int))
        assert diff.max() <= 1                                           # PNG stores uint8
        assert not np.array_equal(image, original['image'])
        np.testing.assert_array_equal(objects['bbox'], original['objects']['bbox'])
        np.testing.assert_array_equal(objects['label'], original['objects']['label'])

    # later runs read the stored translations back without translating
    stamp = os.path.getmtime(path)
    calls = _counting_translate_fn(monkeypatch, fail_at=1)
    again = translate_train.translated_source(builder, SPLIT, run, batch_size=3, print_fn=lines.append)
    assert calls == [] and os.path.getmtime(path) == stamp and again.record == data.record
    for (a, objects_a), (b, objects_b) in zip(_decoded(again), translated):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(objects_a['bbox'], objects_b['bbox'])


def _config(translator, **overrides):
    return tiny_config(method='translate_train', translator=translator, dataset='daynight_synth/tiny',
                       train_split=SPLIT, eval_splits='validation_day', batch_size=4, eval_batch_size=4,
                       **overrides)


def _num_classes(builder):
    return builder.info.features['objects']['label'].num_classes


def test_target_batches_carry_translated_pixels_and_the_source_boxes(builder, translator):
    config = _config(translator, image_size=64, max_boxes=16)   # the stored size: no resampling
    config.augment.update(flip_prob=0.0, crop_min_ious=(None,), brightness=0.0, contrast=0.0, saturation=0.0,
                          hue=0.0)
    s = setup(config, _num_classes(builder))
    assert s.domains == ('source', 'target') and not s.method.uses_target_labels
    with pytest.raises(ValueError, match='makes its own target labels'):  # never a TFDS target split
        data_iterator(config, s, builder, builder)
    data = train_data(config, s, builder, builder)
    assert data['target'].record['translated_source']['split'] == SPLIT
    iterator = data_iterator(config, s, builder, builder, data)
    try:
        assert iterator.fields['target'] == TRAIN_FIELDS
        batch = next(iterator.pipelines['target'])
    finally:
        iterator.close()
    source, translated = _source(builder), _decoded(data['target'])
    assert sorted(batch['index']) == [0, 1, 2, 3]
    for row, i in enumerate(batch['index']):
        pixels = np.round(batch['image'][row] * 255.0)
        assert np.abs(pixels - translated[i][0]).max() <= 1
        assert np.abs(pixels - source[i]['image']).max() > 1
        objects = source[i]['objects']
        count = len(objects['label'])
        np.testing.assert_allclose(batch['boxes'][row][:count], objects['bbox'], atol=1e-6)
        np.testing.assert_array_equal(batch['labels'][row][:count], objects['label'])
        assert batch['mask'][row].sum() == count


def test_the_run_record_names_the_translations(builder, translator):
    """What run.json keeps (`trainer.run_record`, which `train` writes): the samples of both domains, the
    translations' record, no target labels used, a detection loss on each domain. (The step itself is the
    detection loss on both domains: tests/test_fine_tune.py's keep_source step, 1 device == 4.)"""
    config = _config(translator)
    s = setup(config, _num_classes(builder))
    record = run_record(config, s, builder, data=train_data(config, s, builder, builder))
    assert record['samples'] == {'source': 4, 'target': 4} and record['uses_target_labels'] is False
    assert record['terms'] == {'detection_source': 1.0, 'detection_target': 1.0}
    translated = record['translated_source']
    assert translated['split'] == SPLIT and translated['step'] == 0 and translated['num_images'] == 4
    assert translated['cache'] == os.path.abspath(translate_train.cache_path(translator, builder, SPLIT, 0))


def test_bad_translators_are_one_line_errors(tmp_path):
    write_run(str(tmp_path / 'detector'), 'detector', tiny_config())
    for translator, needle in (('', r'--config.translator=<train_unit workdir>'),
                               (str(tmp_path / 'nothing'), 'no run.json'),
                               (str(tmp_path / 'detector'), 'is a detector run, not a unit run')):
        with pytest.raises(ValueError, match=needle) as error:
            setup(_config(translator), 3)
        assert '\n' not in str(error.value)
