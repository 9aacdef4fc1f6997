"""translate_train: train the detector on source images translated to the target domain, with their labels.

Translation changes how a scene looks, not where its objects are, so a day image rendered as night by a
frozen UNIT generator keeps its boxes: a labelled stand-in for the target domain that never reads a true
target label. The detector trains on it beside the untranslated source (the 'target' domain of the step
is the translated source).

The translator is deterministic (z = mu) and frozen, so the translated set is fixed: it is made once,
before training, instead of inside every step, and stored next to the translator
(`<translator>/translated/<dataset>/<split>_step<step>.tfrecord`) where later runs read it back. Writing
it streams example by example, so memory stays bounded on large sets (BDD100K: 70k 1280x720 images), and
goes to a temporary name renamed at the end, so a killed write leaves no half file that a later run
would take for the whole set.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from adapt.methods.base import Method, TrainData, register_method
from adapt.models.unit import make_translate_fn
from adapt.run_models import run_generator
from adapt.runs import RunError, load_run

# Pixels translated per call: batches of large images get fewer images, so memory stays bounded
# (4 images of 1280x720, 64 of 256x256).
MAX_PIXELS_PER_CALL = 2 ** 22
PROGRESS_EVERY_S = 30.0
RECORD_FEATURES = {'image': tf.io.FixedLenFeature([], tf.string), 'bbox': tf.io.VarLenFeature(tf.float32),
                   'label': tf.io.VarLenFeature(tf.int64)}


def cache_path(translator: str, builder, split: str, step: int) -> str:
    """Where the translations of `split` by the translator's checkpoint `step` are stored."""
    dataset = builder.info.full_name.replace('/', '_')
    return os.path.join(translator, 'translated', dataset, f'{split}_step{step}.tfrecord')


def source_examples(builder, split: str) -> tf.data.Dataset:
    """The split's images (decoded, uint8) and objects, in split order; nothing else is decoded."""
    keep = tfds.decode.PartialDecoding({'image': True, 'objects': {'bbox': True, 'label': True}})
    return builder.as_dataset(split=split, decoders=keep, shuffle_files=False)


def same_shape_batches(examples, size_of):
    """Consecutive examples in lists that share one image shape, at most `size_of(shape)` long."""
    batch = []
    for example in examples:
        shape = batch[0]['image'].shape if batch else None
        if batch and (len(batch) == size_of(shape) or example['image'].shape != shape):
            yield batch
            batch = []
        batch.append(example)
    if batch:
        yield batch


def images_per_call(image_shape, batch_size: int) -> int:
    """At most `batch_size` images, and at most MAX_PIXELS_PER_CALL pixels (always one image)."""
    return max(1, min(batch_size, MAX_PIXELS_PER_CALL // (image_shape[0] * image_shape[1])))


def translate_uint8(translate, images: np.ndarray, batch_size: int) -> np.ndarray:
    """uint8 images [n, H, W, 3] (n <= batch_size) through `translate` ([B, H, W, 3] in [0, 1] -> same),
    rounded back to uint8; zero-padded to `batch_size` so one program serves every batch of a shape."""
    padded = np.zeros((batch_size, *images.shape[1:]), np.float32)
    padded[:len(images)] = images / 255.0
    return np.round(np.asarray(translate(padded))[:len(images)] * 255.0).astype(np.uint8)


def serialize(image: np.ndarray, bbox: np.ndarray, label: np.ndarray) -> bytes:
    """One translated example as a tf.train.Example: the image PNG-encoded (lossless), its objects as given."""
    feature = {'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[tf.io.encode_png(image).numpy()])),
               'bbox': tf.train.Feature(float_list=tf.train.FloatList(value=np.reshape(bbox, -1))),
               'label': tf.train.Feature(int64_list=tf.train.Int64List(value=np.reshape(label, -1)))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_translations(path: str, examples, translate, num_examples: int, batch_size: int, print_fn) -> None:
    """Translate every example (dicts of 'image' uint8 and 'objects') and write them, in order, to `path`:
    to a temporary file first, renamed once complete."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp{jax.process_index()}'  # one per process: writers never share a file
    start = last = time.perf_counter()
    done = 0
    size_of = functools.partial(images_per_call, batch_size=batch_size)
    with tf.io.TFRecordWriter(tmp) as writer:
        for batch in same_shape_batches(examples, size_of):
            images = np.stack([e['image'] for e in batch])
            translated = translate_uint8(translate, images, size_of(images.shape[1:3]))
            for image, example in zip(translated, batch):
                writer.write(serialize(image, example['objects']['bbox'], example['objects']['label']))
            done += len(batch)
            if time.perf_counter() - last >= PROGRESS_EVERY_S:
                last = time.perf_counter()
                print_fn(f'translate_train: {done}/{num_examples} images translated ({last - start:.0f} s)')
    os.replace(tmp, path)
    print_fn(f'translate_train: {done}/{num_examples} images translated ({time.perf_counter() - start:.0f} s) '
             f'-> {path}')


def read_translations(path: str, num_examples: int) -> tf.data.Dataset:
    """The stored translations in TFDS form ('image' PNG bytes, 'objects' {'bbox', 'label'}), in split
    order (the DetectionPipeline's source index is the position in the source split)."""
    def parse(record):
        example = tf.io.parse_single_example(record, RECORD_FEATURES)
        return {'image': example['image'],
                'objects': {'bbox': tf.reshape(tf.sparse.to_dense(example['bbox']), [-1, 4]),
                            'label': tf.sparse.to_dense(example['label'])}}
    dataset = tf.data.TFRecordDataset(path).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.apply(tf.data.experimental.assert_cardinality(num_examples))


def translated_source(builder, split: str, translator: str, batch_size: int,
                      print_fn=functools.partial(print, flush=True)) -> TrainData:
    """Every image of `split` translated a -> b (day -> night) by the frozen generator of the UNIT run in
    `translator` at its own resolution, each keeping its objects; translated once (at most `batch_size`
    images per call) and read back from `cache_path` afterwards. RunError (one line) if `translator` is
    not a finished UNIT run."""
    run = load_run(translator, 'unit')
    path = cache_path(translator, builder, split, run.step)
    num_examples = builder.info.splits[split].num_examples
    if not os.path.exists(path):
        generator = run_generator(run)
        translate = functools.partial(make_translate_fn(generator.config, 'a', 'b'), generator.params)
        print_fn(f'translate_train: translating {num_examples} images of {builder.info.full_name} {split} with '
                 f'{translator} (step {run.step}), once')
        examples = tfds.as_numpy(source_examples(builder, split))
        write_translations(path, examples, translate, num_examples, batch_size, print_fn)
    record = {'split': split, 'translator': os.path.abspath(translator), 'step': run.step,
              'num_images': num_examples, 'cache': os.path.abspath(path)}
    return TrainData(read_translations(path, num_examples), None, num_examples, {'translated_source': record})


def configure(config) -> Method:
    """The method with `config.translator` bound; ValueError (one line) unless it names a UNIT run."""
    translator = config.get('translator', '')
    if not translator:
        raise ValueError('translate_train needs a finished UNIT run: pass --config.translator=<train_unit workdir>')
    try:
        load_run(translator, 'unit')  # a finished run: its record and a checkpoint
    except RunError as error:
        raise ValueError(f'translator: {error}') from None
    return dataclasses.replace(TRANSLATE_TRAIN, target_data=lambda source_builder, _: translated_source(
        source_builder, config.train_split, translator, config.eval_batch_size))


TRANSLATE_TRAIN = register_method(Method(
    'translate_train', 'labelled source + the source translated to the target by a frozen UNIT '
    '(--config.translator), with the source labels', supervised=('source', 'target'), own_target_labels=True,
    configure=configure, unit_run_setting='translator'))
