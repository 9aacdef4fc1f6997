"""UNIT training data: unpaired image batches of two TFDS splits (domain a = source/day, b = target/night).

Any TFDS image set serves (its boxes, if it has them, are dropped), through the detection pipeline with
horizontal flips only (crops happen in the step, `crop_size`). With `labelled`, domain a keeps its boxes
for the labelled cycle; domain b's labels never leave the iterator. The image grids read the first few
images of each training split, fixed and unaugmented.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_datasets as tfds

from adapt.datasets.augment import NO_AUGMENT
from adapt.datasets.pipeline import DetectionPipeline
from adapt.datasets.two_domain import TRAIN_FIELDS, ZipIterator
from adapt.training.config import image_size


def image_source(builder, split):
    """The images of a TFDS split with an empty object list: what DetectionPipeline reads."""
    ds = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()}, shuffle_files=False)
    return ds.map(lambda ex: {'image': ex['image'], 'objects': {'bbox': tf.zeros([0, 4], tf.float32),
                                                                'label': tf.zeros([0], tf.int64)}})


def flips_only(config):
    """UNIT's augmentation: horizontal flips, no crops (crop_size crops in the step), no colour jitter."""
    return dataclasses.replace(NO_AUGMENT, flip_prob=config.flip_prob)


def image_pipeline(builder, split, config, batch_size, train, seed=0, **kwargs):
    return DetectionPipeline(image_source(builder, split), global_batch_size=batch_size,
                             image_size=image_size(config), max_boxes=1, train=train, seed=seed,
                             augment=flips_only(config), shuffle_buffer=config.shuffle_buffer, **kwargs)


def labelled_pipeline(builder, split, config, seed):
    """Training batches of a labelled split with their boxes (the labelled cycle's day images)."""
    return DetectionPipeline(builder, split=split, global_batch_size=config.batch_size, image_size=image_size(config),
                             max_boxes=config.max_boxes, train=True, seed=seed, augment=flips_only(config),
                             shuffle_buffer=config.shuffle_buffer)


def make_data_iterator(config, builder_a, builder_b, labelled: bool = False) -> ZipIterator:
    """{'a': images, 'b': images} batches; with `labelled`, 'a' carries its labels ({'image', 'boxes',
    'labels', 'mask'}) for the labelled cycle."""
    if labelled:
        a, a_fields = labelled_pipeline(builder_a, config.split_a, config, config.seed), TRAIN_FIELDS
    else:
        a, a_fields = image_pipeline(builder_a, config.split_a, config, config.batch_size, True, config.seed), 'image'
    return ZipIterator({'a': a, 'b': image_pipeline(builder_b, config.split_b, config, config.batch_size, True,
                                                    config.seed + 1)}, fields={'a': a_fields, 'b': 'image'})


def grid_samples(config, builder_a, builder_b):
    """The first `num_grid` images of each training split (fixed, unaugmented), for the image grids."""
    n = config.num_grid

    def take(builder, split):  # host-side images (not sharded): one process, one device
        split = f'{split.split("[")[0]}[:{n}]'
        pipe = image_pipeline(builder, split, config, n, False, process_index=0, process_count=1, local_device_count=1)
        return next(pipe)['image']

    return take(builder_a, config.split_a), take(builder_b, config.split_b)
