"""TFDS builder `daynight_synth`: procedural dashcam scenes in day, dusk and night (no download).

Splits. `train_day`, `train_dusk`, `train_night` (unpaired: each has its own scenes),
`validation_{day,dusk,night}` (model selection) and `test_{day,dusk,night}` (final numbers),
and `paired`: scenes rendered both by day and by night, to score day-to-night translation
against ground truth. Scene `i` of split `s` is drawn from SeedSequence((base, code(s), i)), so the
scenes of different splits are disjoint, and a config with fewer examples holds a prefix of the
scenes of a bigger one; the same scene looks the same at every resolution.

Features. TFDS gives all splits of a config one feature spec, so every example has
  image        uint8 [R, R, 3] PNG (lossless): the scene in `domain` (in `paired`: by day)
  image_night  Sequence of uint8 [R, R, 3] PNG: [night render of the same scene, at the config's
               night severity] in `paired`,
               empty [0, R, R, 3] elsewhere (an empty sequence costs no storage)
  objects      Sequence of {bbox: BBoxFeature [ymin, xmin, ymax, xmax] in [0, 1], label: ClassLabel}
  domain       ClassLabel(day, dusk, night)
  scene_id     int64, code(split) * 10**9 + index: unique over all splits
The standard detection features (`image`, `objects/bbox`, `objects/label`) thus read the same way
in every split, and the paired split adds the night image beside them, with one shared set of boxes
(boxes are identical across domains by construction). This was preferred over a separate
builder config for the paired data, which would double the configs and hide the split.

Classes: car, truck, pedestrian, cyclist, traffic_light, traffic_sign (CLASS_NAMES), 0 to 15 per
image. A box is the visible extent of its object; objects less than 40 % inside the frame, less than
25 % unoccluded or under 3 x 2 visible pixels get no box (see raster.py). Traffic lights and signs
are boxed without their poles.

Configs: the image resolution, the example counts and the night severity; `tiny` is for tests.
Each of `r64`, `r128`, `r256`, their `_small` variants and `tiny` records the night with the
original, unexposed camera (severity 4, the hardest); `<config>_sev1` .. `_sev3` are the same scenes
with the night recorded by an auto-exposing camera (exposure.LEVELS: 1 `dashcam`, 2 `dim`, 3 `dark`).
Only night images depend on the severity: day and dusk images, boxes and scene ids are the same in
every severity of a config, so the levels form one axis over fixed scenes (as Foggy Cityscapes'
fog densities over Cityscapes). A severity is a config rather than a split so that every method,
split and stage reads a level the way it reads a dataset. The data is a pure function of (config,
split, index), made with NumPy only, so any machine builds the same pixels.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from adapt.datasets.daynight_synth import exposure, raster, render
from adapt.datasets.daynight_synth.scene import CLASS_NAMES, DOMAINS, sample_scene, split_seed

SPLIT_CODES = {'train_day': 1, 'train_dusk': 2, 'train_night': 3,
               'validation_day': 4, 'validation_dusk': 5, 'validation_night': 6,
               'test_day': 7, 'test_dusk': 8, 'test_night': 9, 'paired': 10}


def split_domain(split: str) -> str:
    """Domain of the `image` feature of a split (the paired split's `image` is the day render)."""
    return 'day' if split == 'paired' else split.rsplit('_', 1)[1]


def scene_id(split: str, index: int) -> int:
    return SPLIT_CODES[split] * 10**9 + index


def config_name(base: str, severity: int) -> str:
    """The builder config of `base`'s scenes with the night at `severity` (`base` itself for the unexposed
    night, `<base>_sev<k>` otherwise)."""
    return base if severity == exposure.UNEXPOSED.severity else f'{base}_sev{severity}'


def _base_and_severity(dataset: str) -> tuple:
    """(base config, night severity) of a 'daynight_synth/<config>' name: `config_name` read back; ValueError
    (one line) for another dataset."""
    family, _, config = dataset.partition('/')
    if family != 'daynight_synth' or not config:
        raise ValueError(f'night severities are levels of daynight_synth, not of {dataset!r}')
    base, sep, level = config.rpartition('_sev')
    return (base, int(level)) if sep else (config, exposure.UNEXPOSED.severity)


def at_severity(dataset: str, severity: int) -> str:
    """'daynight_synth/<config>' of the same scenes as `dataset` with the night at `severity`; ValueError (one
    line) for another dataset or an unknown level."""
    levels = [level.severity for level in exposure.LEVELS]
    base, _ = _base_and_severity(dataset)
    if severity not in levels:
        raise ValueError(f'night severity {severity!r}; valid choices: {", ".join(map(str, levels))}')
    return f'daynight_synth/{config_name(base, severity)}'


def severity_of(dataset: str) -> int:
    """The night severity of a 'daynight_synth/<config>' name."""
    return _base_and_severity(dataset)[1]


def make_example(split: str, index: int, resolution: int, severity: int = exposure.UNEXPOSED.severity) -> dict:
    """The TFDS example (NumPy values) for scene `index` of `split`, the night at `severity`."""
    scene = sample_scene(split_seed(SPLIT_CODES[split], index))
    geometry = raster.rasterize(scene, resolution)
    domain = split_domain(split)
    level = exposure.LEVELS[severity - 1]
    night = [render.shade(scene, geometry, 'night', level)] if split == 'paired' else []
    return {'image': render.shade(scene, geometry, domain, level),
            'image_night': night,
            'objects': {'bbox': geometry.boxes, 'label': geometry.labels},
            'domain': domain,
            'scene_id': scene_id(split, index)}


@dataclasses.dataclass
class DaynightSynthConfig(tfds.core.BuilderConfig):
    resolution: int = 128
    num_train: int = 10000   # per domain
    num_eval: int = 1000     # per domain, for validation and for test
    num_paired: int = 1000
    severity: int = exposure.UNEXPOSED.severity  # of the night: exposure.LEVELS[severity - 1]

    def split_sizes(self) -> dict:
        return {s: (self.num_train if s.startswith('train') else
                    self.num_paired if s == 'paired' else self.num_eval) for s in SPLIT_CODES}


def _configs(name, resolution, train, evaluation, paired):
    """The config `name` (the unexposed night) and its `name_sev<k>` for the other severities."""
    sizes = (f'{resolution}x{resolution} px; {train} train scenes per domain, {evaluation} validation and '
             f'{evaluation} test scenes per domain, {paired} paired scenes.')
    return [DaynightSynthConfig(
        name=config_name(name, level.severity), resolution=resolution,
        num_train=train, num_eval=evaluation, num_paired=paired, severity=level.severity,
        description=f'{sizes} Night severity {level.severity} ({level.name}): {level.summary}.')
        for level in (exposure.UNEXPOSED, *exposure.LEVELS[:-1])]  # `name` first: r128 stays the default


class DaynightSynth(tfds.core.GeneratorBasedBuilder):
    """Procedural day/dusk/night driving scenes with boxes of 6 classes."""

    VERSION = tfds.core.Version('1.1.0')
    RELEASE_NOTES = {
        '1.0.0': 'First release: NumPy renderer, day/dusk/night, unpaired train splits, '
                 'validation/test per domain, paired day+night split.',
        '1.1.0': 'Night severity: configs <config>_sev1 .. _sev3 record the night with an auto-exposing '
                 'camera (exposure, gain, gain-dependent noise); the existing configs are severity 4 '
                 '(the unexposed night) and their examples are unchanged (the same pixels, boxes, order).',
    }
    BUILDER_CONFIGS = [
        *_configs('r128', 128, 10000, 1000, 1000),
        *_configs('r128_small', 128, 2000, 250, 250),
        *_configs('r64', 64, 10000, 1000, 1000),
        *_configs('r64_small', 64, 2000, 250, 250),
        *_configs('r256', 256, 10000, 1000, 1000),
        *_configs('r256_small', 256, 2000, 250, 250),
        *_configs('tiny', 64, 4, 2, 2),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        image = tfds.features.Image(shape=(r, r, 3), encoding_format='png')
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'image': image,
                'image_night': tfds.features.Sequence(
                    tfds.features.Image(shape=(r, r, 3), encoding_format='png')),
                'objects': tfds.features.Sequence({
                    'bbox': tfds.features.BBoxFeature(),
                    'label': tfds.features.ClassLabel(names=CLASS_NAMES),
                }),
                'domain': tfds.features.ClassLabel(names=DOMAINS),
                'scene_id': np.int64,
            }),
            homepage=None,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # procedural: nothing to download
        return {split: self._generate_examples(split, n)
                for split, n in self.builder_config.split_sizes().items()}

    def _generate_examples(self, split, num_examples):
        for index in range(num_examples):
            yield scene_id(split, index), make_example(split, index, self.builder_config.resolution,
                                                       self.builder_config.severity)
