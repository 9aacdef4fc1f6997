"""Detector settings derived from the labelled source data (YOLO's k-means priors, Faster R-CNN's quick
anchor sizes, a dense family's alignment levels): what a family declares, and the source boxes they are derived
from. adapt.models.families registers each family's declarations and fills a config's missing settings before a
run starts.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """`keys` of the family's `model` block filled when None; `derive(config, boxes, image_size)` -> {key: value}
    with `config` the run's config (its family's block `config[settings_family(config)]`, holding the settings
    the family's earlier declarations derived), `boxes` [N, 4] the normalised yxyx boxes of every object of the
    split and `image_size` (h, w) the detector's input size. Values must be JSON-friendly (lists, floats).
    `inherit`: a run continuing another of its family (`init_run`) takes the value stored there, because its
    weights were trained with it (priors, anchor sizes); False: derived from this run's own source boxes
    (what describes the data, not the weights), or taken from `init_run` when that run had the same source
    split (the same boxes give the same value)."""
    keys: tuple
    derive: Callable
    inherit: bool = True


def split_boxes(builder, split: str) -> np.ndarray:
    """[N, 4] float32 normalised yxyx boxes of every object in a TFDS detection split (images not decoded)."""
    import tensorflow_datasets as tfds
    ds = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()}, shuffle_files=False)
    ds = ds.map(lambda e: e['objects']['bbox'])
    rows = [b for b in ds.as_numpy_iterator() if len(b)]
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 4), np.float32)


def settings_family(config) -> str:
    """The family whose model block holds the settings: the wrapped one for a wrapper family (translated)."""
    return config.get(config.detector, {}).get('detector', config.detector)
