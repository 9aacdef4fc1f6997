"""The built-in detector families, registered here and only here, and how a config becomes a detector.

Importing this module registers every built-in family (one line each below) with its data-derived
settings; a new family is its own module, its preset block and one line here. `build_detector` builds the
family `config.detector` from its block `config[config.detector]`. Two families read a finished UNIT run
(shared_latent its encoders, translated's unit transform its generator): they are built with the
`generator` that `generator_source` names, which `adapt.run_models.build_detector` loads from disk (models
never read the run store themselves).

Data-derived settings (YOLO's k-means priors, Faster R-CNN's anchor sizes, the dense families' alignment
levels: adapt.models.alignment_levels): a family declares which keys of its `model` block may be left None in
a preset and how to derive them from the source training boxes (`adapt.models.data_settings.DataSettings`, in
order: a later declaration reads what an earlier one derived). `with_data_settings` fills them before a run
starts: an inherited setting from `init_config` (the config of the run it continues) when that run is of the
same family and stored it, so an adapted model keeps the priors its weights were trained with, every other
from the boxes of `config.train_split`. The filled config is what run.json stores, so a loaded run rebuilds
the same detector without the data.
"""
from __future__ import annotations

import functools

import numpy as np

from adapt.models import faster_rcnn_detector, shared_latent, ssd, translated, yolo_detector
from adapt.models.alignment_levels import derive_alignment_levels
from adapt.models.data_settings import DataSettings, settings_family, split_boxes
from adapt.models.detector import DETECTORS, Detector
from adapt.training.config import image_size

DATA_SETTINGS: dict = {}  # family -> (DataSettings, ...) in the order they are derived
ALIGNMENT_LEVELS = DataSettings(('alignment_levels',), derive_alignment_levels, inherit=False)


def register_family(name: str, build, data_settings: tuple = ()) -> None:
    DETECTORS.register(name)(build)
    if data_settings:
        DATA_SETTINGS[name] = tuple(data_settings)


register_family('ssd', functools.partial(ssd.build, 'ssd'), (ALIGNMENT_LEVELS,))
register_family('retinanet', functools.partial(ssd.build, 'retinanet'), (ALIGNMENT_LEVELS,))
register_family('shared_latent', shared_latent.build)  # building it needs the UNIT run: no derived setting
register_family('yolo', yolo_detector.build,
                (DataSettings(('anchors',), yolo_detector.derive_priors), ALIGNMENT_LEVELS))
register_family('faster_rcnn', faster_rcnn_detector.build,
                (DataSettings(('anchor_sizes',), faster_rcnn_detector.derive_anchor_sizes),))
register_family('translated', translated.build)


def detector_families() -> list:
    """The registered family names, the built-in ones first."""
    return DETECTORS.names()


def generator_source(config):
    """(setting, workdir, step) of the UNIT run whose generator the config's detector reads (step None: the
    latest), or None for a family that reads none."""
    if config.detector == 'shared_latent':
        return 'shared_latent.unit_run', config.shared_latent.unit_run, None
    if config.detector == 'translated' and config.translated.transform == 'unit':
        return 'translated.unit_run', config.translated.unit_run, config.translated.get('unit_step')
    return None


def build_detector(config, num_classes: int, generator=None) -> Detector:
    """The family `config.detector` built from its block; `generator` (adapt.models.unit.Generator): the UNIT
    generator `generator_source(config)` names, for the families that read one (ValueError without it)."""
    build = DETECTORS.get(config.detector)
    source = generator_source(config)
    if source is None:
        return build(config, num_classes, image_size(config))
    if generator is None:
        raise ValueError(f'{config.detector} reads the UNIT generator of {source[0]}: build it with '
                         f'adapt.run_models.build_detector, which loads that run')
    return build(config, num_classes, image_size(config), generator)


def missing_settings(config) -> list:
    """The data-derived keys of the config's family still None (or absent: a run.json written before)."""
    model = config[settings_family(config)].get('model', {})
    return [k for spec in DATA_SETTINGS.get(settings_family(config), ()) for k in spec.keys if model.get(k) is None]


def with_data_settings(config, source_builder, init_config=None, print_fn=print):
    """`config` with its family's data-derived settings filled (a copy; `config` itself when none is
    missing): from `init_config` (the run.json config of `config.init_run`) when it is a run of the same family
    that stored them, for the inherited ones always and for the others when it had the same source split
    (they would be derived again from the same boxes); the rest from the boxes of the source's `train_split`.
    ValueError (one line) when that split has no boxes."""
    family, missing = settings_family(config), missing_settings(config)
    if missing and init_config is not None and init_config.get('detector') == family:
        stored = init_config[family]['model']
        same_source = (init_config.get('dataset'), init_config.get('train_split')) == (config.dataset,
                                                                                      config.train_split)
        inherited = {k: stored[k] for spec in DATA_SETTINGS[family] if spec.inherit or same_source for k in spec.keys
                     if k in missing and stored.get(k) is not None}
        if inherited:
            print_fn(f'{family}: {", ".join(inherited)} from init_run {config.init_run}')
            config = _filled(config, inherited)
    if not missing_settings(config):
        return config
    return with_box_settings(config, split_boxes(source_builder, config.train_split), config.train_split, print_fn)


def with_box_settings(config, boxes, origin: str, print_fn=print):
    """`config` with its family's missing data-derived settings derived from `boxes` ([N, 4] normalised
    yxyx; `origin` names them in the message and the error)."""
    missing = missing_settings(config)
    if not missing:
        return config
    family = settings_family(config)
    if not len(boxes):
        raise ValueError(f'{family}: {origin} has no boxes to derive {", ".join(missing)} from')
    boxes = np.asarray(boxes, np.float32)
    for spec in DATA_SETTINGS[family]:
        keys = [k for k in spec.keys if k in missing]
        if keys:
            derived = spec.derive(config, boxes, tuple(image_size(config)))
            config = _filled(config, {k: derived[k] for k in keys})
    print_fn(f'{family}: {", ".join(missing)} from {len(boxes)} boxes of {origin}')
    return config


def with_frozen_bn(config):
    """`config` (a copy) with its family's BatchNorm frozen (`model.frozen_bn`: running statistics in every
    pass, never updated); ValueError (one line) for a family without that setting."""
    family = settings_family(config)
    if 'frozen_bn' not in config[family].get('model', {}):
        raise ValueError(f'{family} has no model.frozen_bn setting: bn_policy frozen needs one')
    return _filled(config, {'frozen_bn': True})


def _filled(config, values: dict):
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for key, value in values.items():
            config[settings_family(config)].model[key] = value
    return config
