"""Detector settings derived from the labelled source data (YOLO's k-means priors, Faster R-CNN's quick
anchor sizes), resolved once per run and stored in it.

A family declares which keys of its `config[family].model` block may be left None in a preset and how
to derive them from the source training boxes (`register_data_settings`). `with_data_settings` fills
them before a run starts: from `init_run`'s config when the run continues one of the same family (so an
adapted model keeps the priors its weights were trained with), else from the boxes of
`config.train_split`. The filled config is what run.json stores, so a loaded run rebuilds the same
detector without the data.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

DATA_SETTINGS: dict = {}


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """`keys` of the family's `model` block filled when None; `derive(model_block, boxes, image_size)`
    -> {key: value} with `boxes` [N, 4] the normalised yxyx boxes of every object of the split and
    `image_size` (h, w) the detector's input size. Values must be JSON-friendly (lists, floats)."""
    keys: tuple
    derive: Callable


def register_data_settings(family: str, keys: tuple):
    """Decorator: `derive` computes `keys` of `config[family].model` from the source boxes."""
    def add(derive):
        DATA_SETTINGS[family] = DataSettings(tuple(keys), derive)
        return derive
    return add


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


def missing_keys(config) -> list:
    """The data-derived keys of the config's family still None."""
    from adapt.models.detector import detector_families
    detector_families()  # the built-in families register their settings on import
    spec = DATA_SETTINGS.get(settings_family(config))
    model = config[settings_family(config)].get('model', {}) if spec else {}
    return [k for k in spec.keys if model.get(k) is None] if spec else []


def with_data_settings(config, source_builder, print_fn=print):
    """`config` with its family's data-derived settings filled (a copy; `config` itself when none is
    missing): from `init_run`'s config when it is a run of the same family, else from the boxes of the
    source's `train_split`. ValueError (one line) when that split has no boxes."""
    missing = missing_keys(config)
    if not missing:
        return config
    family = settings_family(config)
    if config.get('init_run'):
        from adapt.runs import read_run
        init = read_run(config.init_run, 'detector')['config']
        if init.get('detector') == family:
            print_fn(f'{family}: {", ".join(missing)} from init_run {config.init_run}')
            return _filled(config, {k: init[family]['model'][k] for k in missing})
    return with_box_settings(config, split_boxes(source_builder, config.train_split), config.train_split, print_fn)


def with_box_settings(config, boxes, origin: str, print_fn=print):
    """`config` with its family's missing data-derived settings derived from `boxes` ([N, 4] normalised
    yxyx; `origin` names them in the message and the error)."""
    missing = missing_keys(config)
    if not missing:
        return config
    family = settings_family(config)
    if not len(boxes):
        raise ValueError(f'{family}: {origin} has no boxes to derive {", ".join(missing)} from')
    from adapt.training.config import image_size
    derived = DATA_SETTINGS[family].derive(config[family].model, np.asarray(boxes, np.float32),
                                           tuple(image_size(config)))
    print_fn(f'{family}: {", ".join(missing)} from {len(boxes)} boxes of {origin}')
    return _filled(config, {k: derived[k] for k in missing})


def _filled(config, values: dict):
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for key, value in values.items():
            config[settings_family(config)].model[key] = value
    return config
