"""Fine-tuning on N labelled target images, and feature extraction (a frozen backbone under a new head).

The lectures' little-data / similar-domain table as two methods over the `config.fine_tune` block:
  num_labelled: N target images with their labels, a seeded subset of `target_split` (0: all of it); a set
    smaller than the batch is repeated to fill it. seed: which subset; subsets of one seed are nested
    (its 10 images are among its 100), so a learning curve over N adds images instead of redrawing them.
  keep_source: the labelled source batches stay in the mix (supervised source + target).
  freeze: regex of parameter paths ('detector/features/backbone/conv1_conv/kernel') kept as they are,
    BatchNorm statistics included ('' = none); an optimizer parameter group of multiplier 0.
  reinit (feature_extract): regex of the parameters freshly initialised instead of taken from init_run.
`fine_tune` trains every parameter not frozen. `feature_extract` always freezes the backbone and starts
the rest (default: everything outside the backbone) from a fresh initialisation: the source run is a fixed
feature extractor under a new head. run.json stores the subset's split positions and image ids
(`labelled_target`) and the samples each domain stored (`samples`).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from adapt.datasets.pipeline import select_features
from adapt.methods.base import Method, TrainData, register_method

BACKBONE = r'^detector/features/backbone/'
# Subsets up to this size are held in memory (encoded): a few-shot epoch is a step or two, and rereading
# the whole split for it every epoch would dominate; a larger subset's epoch is long enough to reread it.
MAX_CACHED = 1000


def choose_indices(num_examples: int, num_labelled: int, seed: int) -> np.ndarray:
    """Sorted positions of `num_labelled` of `num_examples` (0: all): the first of a seeded permutation, so
    the subsets of one seed are nested. ValueError (one line) for a count the split cannot give."""
    if not 0 <= num_labelled <= num_examples:
        raise ValueError(f'fine_tune.num_labelled={num_labelled}: choose 0 (all) to {num_examples}, the size '
                         'of the target split')
    order = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(order[:num_labelled or num_examples])


def labelled_subset(examples: tf.data.Dataset, num_examples: int, indices: np.ndarray, batch_size: int,
                    split: str = '', seed: int | None = None) -> TrainData:
    """The examples at `indices` (`choose_indices`) of `examples` (TFDS-format, `num_examples` long) as
    DetectionPipeline input: in source order (held in memory after the first pass when at most
    MAX_CACHED), and repeated to at least `batch_size` examples when fewer; the record names the `split`
    and `seed` they came from."""
    everything = len(indices) == num_examples
    if not everything:
        chosen = tf.constant(indices, tf.int64)
        examples = examples.enumerate().filter(lambda i, _: tf.reduce_any(tf.equal(i, chosen)))
        examples = examples.map(lambda _, example: example)
        examples = examples.cache() if len(indices) <= MAX_CACHED else examples
        examples = examples.apply(tf.data.experimental.assert_cardinality(len(indices)))
    repeats = -(-batch_size // max(len(indices), 1))  # an empty split fails in DetectionPipeline
    record = dict(split=split, split_size=num_examples, seed=seed, num_labelled=len(indices),
                  indices=None if everything else indices.tolist(),
                  image_ids=None if everything else _image_ids(examples, indices))
    return TrainData(examples.repeat(repeats) if repeats > 1 else examples, None, len(indices),
                     {'labelled_target': record})


def _image_ids(examples, indices) -> list:
    """The DetectionPipeline's `image_id` of each example: its `image/id` if integer, else its position."""
    if 'image_id' not in select_features(examples.element_spec):
        return indices.tolist()
    return [int(i) for i in examples.map(lambda example: example['image/id']).as_numpy_iterator()]


def labelled_target(builder, split: str, *, num_labelled: int, seed: int, batch_size: int) -> TrainData:
    """`labelled_subset` of a TFDS split (images left encoded, as DetectionPipeline reads a builder)."""
    size = builder.info.splits[split].num_examples
    indices = choose_indices(size, num_labelled, seed)
    examples = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()}, shuffle_files=False)
    return labelled_subset(examples, size, indices, batch_size, split=split, seed=seed)


def _pattern(name: str, value: str) -> str:
    """`value`, checked to be a regex (a one-line ValueError naming `fine_tune.<name>` otherwise)."""
    try:
        re.compile(value)
    except re.error as error:
        raise ValueError(f'fine_tune.{name}={value!r} is not a regular expression: {error}') from None
    return value


def settings(config, frozen=()) -> dict:
    """The Method fields `config.fine_tune` sets; `frozen`: patterns the method always freezes."""
    ft = config.fine_tune
    frozen = tuple(frozen) + ((_pattern('freeze', ft.freeze),) if ft.freeze else ())
    return dict(supervised=('source', 'target') if ft.keep_source else ('target',),
                param_groups=tuple((p, 0.0) for p in frozen),
                target_data=lambda _, target_builder: labelled_target(
                    target_builder, config.target_split, num_labelled=ft.num_labelled, seed=ft.seed,
                    batch_size=config.batch_size))


FINE_TUNE = register_method(Method(
    'fine_tune', 'N labelled target images (fine_tune.num_labelled; + source with keep_source), '
    'parameters matching fine_tune.freeze frozen', supervised=('target',),
    configure=lambda config: dataclasses.replace(FINE_TUNE, **settings(config))))
FEATURE_EXTRACT = register_method(Method(
    'feature_extract', 'frozen backbone, a freshly initialised head (fine_tune.reinit) trained on N labelled '
    'target images', supervised=('target',),
    configure=lambda config: dataclasses.replace(FEATURE_EXTRACT, **settings(config, (BACKBONE,)),
                                                 reinit=_pattern('reinit', config.fine_tune.reinit))))
